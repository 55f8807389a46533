"""The documentation says what the code does: the policy reference in docs/policy.md lists
exactly the keys the loader accepts, and the README stays a short entry point."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from recoverd.errors import PolicyError
from recoverd.policy.load import load_policies

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "docs" / "policy.md"
UNKNOWN = "zzqqxxkey"  # resembles no key, so the loader lists every key it knows


def documented_tables() -> dict[str, list[list[str]]]:
    """Return the rows (cells) of each ``### heading`` table of the policy reference."""
    text = REFERENCE.read_text(encoding="utf-8").split("\n## Reference\n", 1)[1]
    tables: dict[str, list[list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("### "):
            heading = line[4:].strip()
            tables[heading] = []
        elif line.startswith("| `") and heading:
            tables[heading].append([cell.strip() for cell in line.strip("|").split("|")])
    return tables


def keys_in(cell: str) -> set[str]:
    return set(re.findall(r"`([a-z_]+)`", cell))


def loader_keys(tmp_path: Path, where: str) -> set[str]:
    """Return the keys the loader knows at ``where`` (``client``, ``repository``,
    ``machine`` or ``level``), read from its "unknown key; known keys: ..." message."""
    planted = {where: f"\n{UNKNOWN} = 1"}
    (tmp_path / "docs.toml").write_text(
        f'[client]\nname = "Docs"{planted.get("client", "")}\n'
        f'[repositories.r]\nurl = "/srv/r"\npassword = "env:P"{planted.get("repository", "")}\n'
        f'[machines.m]\ntransport = "local"{planted.get("machine", "")}\n'
        f'[[machines.m.levels]]\nname = "n"\nkind = "files"\nrepository = "r"\n'
        f'paths = ["/etc"]{planted.get("level", "")}\n',
        encoding="utf-8",
    )
    with pytest.raises(PolicyError) as caught:
        load_policies(tmp_path)
    [problem] = [p for p in caught.value.problems if UNKNOWN in p]
    return {key.strip() for key in problem.split("known keys: ", 1)[1].split(",")}


@pytest.mark.parametrize(
    ("where", "heading"),
    [
        ("client", "`[client]`"),
        ("repository", "`[repositories.NAME]`"),
        ("machine", "`[machines.NAME]` and `[templates.NAME]`"),
    ],
)
def test_policy_reference_lists_exactly_the_loaders_keys(
    tmp_path: Path, where: str, heading: str
) -> None:
    documented = set().union(*(keys_in(row[0]) for row in documented_tables()[heading]))
    assert documented == loader_keys(tmp_path, where)


def test_policy_reference_lists_exactly_the_level_keys_of_every_kind(tmp_path: Path) -> None:
    from recoverd.policy.load import _LEVEL_COMMON_KEYS, _LEVEL_KIND_KEYS

    rows = documented_tables()["`[[machines.NAME.levels]]`"]
    # Two tables under one heading: the keys of every level (4 columns), by kind (5 columns).
    common = set().union(*(keys_in(row[0]) for row in rows if len(row) == 4))
    by_kind: dict[str, set[str]] = {}
    for row in (row for row in rows if len(row) == 5):
        by_kind.setdefault(row[0].strip("`"), set()).update(keys_in(row[1]))
    assert common == set(_LEVEL_COMMON_KEYS)
    assert by_kind == {kind: set(keys) for kind, keys in _LEVEL_KIND_KEYS.items()}
    assert common | set().union(*by_kind.values()) == loader_keys(tmp_path, "level")


def test_readme_is_a_short_entry_point_with_two_quick_start_commands() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) < 300
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", quick, re.S)
    assert [line for block in commands for line in block.splitlines() if line.strip()] == [
        "./setup.sh demo",
        "./setup.sh test",
    ]


def test_docs_links_point_at_files_that_exist() -> None:
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)#\s]+)(?:#[^)]*)?\)", page.read_text("utf-8")):
            if "://" in target:
                continue
            assert (page.parent / target).exists(), f"{page.name}: broken link {target}"
