"""The JSON Schema of the policy format (``recoverd schema``), for editors.

It is built from the loader's own key tables (:mod:`recoverd.policy.load`): each check of a
key maps to a schema fragment here, so the schema has exactly the keys ``check`` accepts. An
editor (Taplo / Even Better TOML) completes keys and flags wrong types with it; ``check``
stays the judge of everything a schema cannot say (references between levels, transports'
keys, secrets).
"""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from recoverd.policy import load
from recoverd.policy.model import KEEP_KEYS, LEVEL_KINDS

_DURATION = {"type": "string", "pattern": r"^(\d+d)?(\d+h)?(\d+m)?$"}
_SIMPLE: dict[Any, dict[str, Any]] = {
    load._any: {},
    load._string: {"type": "string", "minLength": 1},
    load._boolean: {"type": "boolean"},
    load._positive_int: {"type": "integer", "minimum": 1},
    load._positive_number: {"type": "number", "exclusiveMinimum": 0},
    load._port: {"type": "integer", "minimum": 1, "maximum": 65535},
    load._strings: {"type": "array", "items": {"type": "string", "minLength": 1}},
    load._name: {"type": "string", "pattern": r"^[A-Za-z0-9][A-Za-z0-9._-]*$"},
    load._address: {"type": "string", "minLength": 1},
    load._mac: {"type": "string", "pattern": "^[0-9a-f]{2}(:[0-9a-f]{2}){5}$"},
    load._host_key: {"type": "string", "pattern": r"^\S+ [A-Za-z0-9+/=]+$"},
    load._repository_url: {"type": "string", "minLength": 1},
    load._timezone: {"type": "string", "minLength": 1},
    load._sla: _DURATION,
    load._every: {"type": "string", "minLength": 1},
    load._sample: {"type": "string", "pattern": r"^(all|\d+%?)$"},
    load._boot_timeout: {"type": "string", "pattern": r"^([0-9]+h)?([0-9]+m)?([0-9]+s)?$"},
    load._expect: {"type": "string", "minLength": 1},
    load._probes: {
        "type": "array",
        "uniqueItems": True,
        "items": {"type": "string", "pattern": "^(ssh|tcp:[0-9]{1,5})$"},
    },
    load._since: {"type": "string", "format": "date"},
    load._seconds: {"type": "string", "pattern": r"^([0-9]+d)?([0-9]+h)?([0-9]+m)?([0-9]+s)?$"},
    load._share: {"type": "string", "pattern": r"^[0-9]{1,3}%$"},
    load._wake_to: {"type": "string", "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[^\s:\[\]]+):[0-9]+$"},
    load._keep: {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            **{key: {"type": "integer", "minimum": 1} for key in KEEP_KEYS if key != "within"},
            "within": {"type": "string", "pattern": r"^(\d+[ymdh])+$"},
        },
    },
}


def fragment(check: Any) -> dict[str, Any]:
    """Return the schema of the values one of the loader's checks accepts."""
    if isinstance(check, partial):
        if check.func is load._choice:
            return {"type": "string", "enum": list(check.keywords["choices"])}
        if check.func is load._secret:
            schemes = "|".join(sorted(check.keywords["schemes"]))
            return {
                "type": "string",
                "pattern": f"^({schemes}):.+",
                "description": "a secret reference, never the secret itself",
            }
        if check.func is load._defined:
            return {"type": "string", "minLength": 1}
        return dict(_SIMPLE.get(check.func, {}))
    return dict(_SIMPLE.get(check, {}))


def _table(checks: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "additionalProperties": False,
        "properties": {key: fragment(check) for key, check in checks.items()},
    }
    if required:
        schema["required"] = list(required)
    return schema


def policy_schema(schemes: tuple[str, ...] = load.SECRET_SCHEMES) -> dict[str, Any]:
    """Return the JSON Schema (draft-07) of a policy file with secret ``schemes``."""
    checker = load._PolicyFile(Path("policy.toml"), schemes)
    level = _table(checker._level_checks(set()), ("name",))
    # A level's kind decides its required keys; a machine's level without kind amends the
    # template's level of that name (check verifies that the name exists).
    level["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": kind}}, "required": ["kind"]},
            "then": {"required": list(load._LEVEL_REQUIRED[kind])},
        }
        for kind in LEVEL_KINDS
    ]
    machine = _table(checker._machine_checks())
    machine["properties"]["levels"] = {"type": "array", "items": {"$ref": "#/definitions/level"}}
    template = {**machine, "properties": dict(machine["properties"])}
    machine["properties"]["template"] = {"type": "string", "minLength": 1}
    return {
        "$schema": "http://json-schema.org/draft-07/schema#",
        "title": "recoverd policy file (one client company)",
        "type": "object",
        "additionalProperties": False,
        "required": ["client"],
        "properties": {
            "client": _table(checker._client_checks(), ("name",)),
            "repositories": {
                "type": "object",
                "additionalProperties": _table(checker._repository_checks(), ("url", "password")),
            },
            "templates": {"type": "object", "additionalProperties": template},
            "machines": {"type": "object", "additionalProperties": machine},
        },
        "definitions": {"level": level},
    }
