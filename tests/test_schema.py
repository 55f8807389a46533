"""`recoverd schema`: the JSON Schema editors use, built from the loader's own key tables. It
accepts every example policy, rejects what `check` rejects for its shape, and knows every key."""

from __future__ import annotations

import json
import tomllib
from pathlib import Path

import jsonschema
import pytest

from recoverd.cli import main
from recoverd.policy import load
from recoverd.policy.schema import fragment, policy_schema

EXAMPLES = sorted(
    p
    for p in (Path(__file__).resolve().parent.parent / "policies").glob("*.toml")
    if p.name != "provider.toml"  # the provider's settings, not a client's policy
)


def as_editors_see(document: dict) -> dict:
    """TOML dates and times as JSON Schema validators see them: strings (format date)."""
    return json.loads(json.dumps(document, default=str))


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft7Validator:
    schema = policy_schema()
    jsonschema.Draft7Validator.check_schema(schema)
    return jsonschema.Draft7Validator(schema)


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_schema_accepts_every_example_policy(
    validator: jsonschema.Draft7Validator, path: Path
) -> None:
    document = as_editors_see(tomllib.loads(path.read_text(encoding="utf-8")))
    assert [error.message for error in validator.iter_errors(document)] == []


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda d: d["client"].pop("name"), "'name' is a required property"),
        (lambda d: d["client"].update(nmae="x"), "Additional properties are not allowed"),
        (lambda d: d["repositories"]["nas"].update(password="hunter2"), "does not match"),
        (lambda d: d["machines"]["ws-042"].update(port=70000), "70000 is greater than"),
        (lambda d: d["machines"]["ws-042"].update(transport="mosh"), "'mosh' is not one of"),
        (lambda d: d["machines"]["ws-042"]["levels"][0].pop("device"), "'device' is a required"),
        (lambda d: d["machines"]["ws-042"]["levels"][0].update(keep={"daily": 0}), "less than"),
    ],
)
def test_schema_rejects_a_broken_policy(
    validator: jsonschema.Draft7Validator, edit: object, expected: str
) -> None:
    document = tomllib.loads((EXAMPLES[0].parent / "acme.toml").read_text(encoding="utf-8"))
    assert document["machines"]["ws-042"]["levels"][0]["kind"] == "image"
    edit(document)  # type: ignore[operator]
    messages = [error.message for error in validator.iter_errors(document)]
    assert any(expected in message for message in messages), messages


def test_schema_maps_every_check_of_the_loader_to_a_type() -> None:
    """A key added to the loader with a new kind of check must get its schema too."""
    checker = load._PolicyFile(Path("policy.toml"), load.SECRET_SCHEMES)
    tables = {
        "client": checker._client_checks(),
        "repository": checker._repository_checks(),
        "machine": checker._machine_checks(),
        "level": checker._level_checks(set()),
    }
    untyped = [
        f"{where}.{key}"
        for where, checks in tables.items()
        for key, check in checks.items()
        if check is not load._any and not fragment(check)
    ]
    assert untyped == []


def test_schema_command_prints_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schema"]) == 0
    assert json.loads(capsys.readouterr().out) == policy_schema()
    assert main(["schema", "-o", str(tmp_path / "policy.schema.json")]) == 0
    assert json.loads((tmp_path / "policy.schema.json").read_text()) == policy_schema()
