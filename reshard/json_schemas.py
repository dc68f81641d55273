"""The JSON Schemas of the commands' --json documents (schemas/cli/), and a check of a
document against its command's schema.

The test suite sets RESHARD_CHECK_JSON_SCHEMAS=1, so every document any test makes a
command print is checked against the published schema before it is printed (a
document that does not match fails the command, exit 2): the schemas describe real
output, not a wish. Checking needs the ``jsonschema`` package (a test dependency).
"""

from __future__ import annotations

import json
import os
from functools import cache
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

SCHEMAS = resources.files("reshard.schemas") / "cli"  # schemas/cli in the repository
CHECK_ENV = "RESHARD_CHECK_JSON_SCHEMAS"


def schema_path(command: str) -> Traversable:
    return SCHEMAS / f"{command.replace(' ', '-')}.schema.json"


@cache
def _validator(command: str):
    from jsonschema import Draft202012Validator
    from referencing import Registry, Resource

    envelope = json.loads((SCHEMAS / "envelope.schema.json").read_text())
    registry = Registry().with_resource("https://reshard.dev/schemas/cli/envelope.schema.json",
                                        Resource.from_contents(envelope))
    return Draft202012Validator(json.loads(schema_path(command).read_text()), registry=registry,
                                format_checker=Draft202012Validator.FORMAT_CHECKER)


def problems(doc: dict[str, Any]) -> list[str]:
    """Where ``doc`` (as printed: JSON types only) departs from its command's schema."""
    command = doc.get("command")
    if not isinstance(command, str) or not schema_path(command).is_file():
        return [f"no schema for command {command!r} in {SCHEMAS}"]
    return [f"{'/'.join(map(str, e.absolute_path)) or '(document)'}: {e.message}"
            for e in _validator(command).iter_errors(doc)]


def check_if_asked(text: str) -> None:
    if os.environ.get(CHECK_ENV):
        found = problems(json.loads(text))
        if found:
            raise AssertionError("the --json document does not match its schema:\n" + "\n".join(found[:10]))
