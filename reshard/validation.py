"""Pydantic's validation errors as sentences an operator can act on.

Each error names the file, the path inside it (``kafka.partitions``,
``groups.accounts.hash.buckets``), what was wrong and, for an unknown key, the known
key it most resembles. Used for reshard.yaml and shard maps (both exit 3).
"""

from __future__ import annotations

import difflib
import types
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _models(annotation: Any) -> list[type[BaseModel]]:
    """The models an annotation can hold (through Optional, unions, Annotated)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        return [m for arg in typing.get_args(annotation) for m in _models(arg)]
    return []


def _container_item(annotation: Any) -> Any | None:
    """For dict[K, V] / list[V] (optional or not): V; else None."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        inner = [a for a in typing.get_args(annotation) if a is not type(None)]
        annotation = inner[0] if len(inner) == 1 else annotation
    if typing.get_origin(annotation) in (dict, list):
        return typing.get_args(annotation)[-1]
    return None


def _known_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The keys allowed at ``loc`` (the path of the unknown key's parent)."""
    current: list[type[BaseModel]] = [model]
    parts = list(loc)
    while parts and current:
        name = str(parts.pop(0))
        fields = [m.model_fields[name].annotation for m in current if name in m.model_fields]
        items = [i for i in (_container_item(a) for a in fields) if i is not None]
        if items:
            parts = parts[1:]  # the mapping's key or the list's index
            current = [m for i in items for m in _models(i)]
        else:
            current = [m for a in fields for m in _models(a)]
    return sorted({f.alias or name for m in current for name, f in m.model_fields.items()})


def describe_errors(exc: ValidationError, where: str, model: type[BaseModel]) -> str:
    """One line per problem, e.g. ``reshard.yaml: kafka.partitons: unknown key (did you
    mean 'partitions'?)``."""
    lines = []
    for err in exc.errors(include_url=False):
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and (p == "[key]" or p.startswith("function-"))))
        path = _path(loc)
        kind = err["type"]
        if kind == "missing":
            parent = _path(loc[:-1])
            lines.append(f"{where}: {parent + ': ' if parent else ''}missing required key {loc[-1]!r}")
        elif kind == "extra_forbidden":
            known = _known_keys(model, loc[:-1])
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(known)}"
            lines.append(f"{where}: {path}: unknown key ({hint})")
        else:
            msg = str(err["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
            got = "" if kind.startswith("value_error") else f" (got {err.get('input')!r:.80})"
            lines.append(f"{where}: {path + ': ' if path else ''}{msg}{got}")
    return "\n".join(lines)
