"""The shape of a shard-map file, checked before its meaning.

Unknown keys are refused (``buckts: 1024`` is an error, not 4096 buckets), every group
must say its key type, and each group has exactly one scheme. What only the whole map
can tell (bucket ranges that overlap or leave gaps, range bounds in the key's type,
clusters reshard.yaml does not know) is checked afterwards by ``reshard.maps.shardmap``.
Published as schemas/shard-map.schema.json.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAP_FORMAT: Literal[1] = 1
MAX_BUCKETS = 1 << 20


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)


def _exactly_one(obj: BaseModel, names: tuple[str, ...], what: str) -> None:
    given = [n for n in names if getattr(obj, n) is not None]
    if len(given) != 1:
        raise ValueError(f"needs exactly one {what} of {', '.join(names)}, got {', '.join(given) or 'none'}")


class RingSection(_Strict):
    clusters: list[str] = Field(min_length=1, description="consistent hashing over these clusters")
    vnodes: int = Field(64, ge=1, description="virtual nodes per cluster")


class HashSection(_Strict):
    buckets: int | None = Field(None, ge=1, le=MAX_BUCKETS,
                                description="virtual buckets (default 4096; modulo: one per cluster)")
    clusters: dict[str, str | int] | None = Field(
        None, description="cluster -> bucket ranges such as '0-2047,3000'")
    modulo: list[str] | None = Field(None, min_length=1, description="bucket i -> i-th cluster (hash % N)")
    ring: RingSection | None = None

    @model_validator(mode="after")
    def _one_form(self) -> HashSection:
        _exactly_one(self, ("clusters", "modulo", "ring"), "assignment")
        return self


class RangeEntry(_Strict):
    cluster: str
    lower: Any = Field(None, alias="from", description="inclusive lower bound; omitted: unbounded")
    upper: Any = Field(None, alias="to", description="exclusive upper bound; omitted: unbounded")


class DirectorySection(_Strict):
    default: str = Field(description="the cluster of every key not listed")
    entries: dict[Any, str] = Field(default_factory=dict, description="key -> cluster")


class GroupSection(_Strict):
    key: str | list[str] = Field(description="the shard key's type(s), e.g. bigint, uuid, text or [bigint, text]")
    tables: dict[str, str | list[str]] = Field(
        min_length=1, description="schema.table -> its shard key column(s)")
    hash: HashSection | None = None
    range: list[RangeEntry] | None = Field(None, min_length=1)
    directory: DirectorySection | None = None

    @model_validator(mode="after")
    def _one_scheme(self) -> GroupSection:
        _exactly_one(self, ("hash", "range", "directory"), "scheme")
        return self


class MapFile(_Strict):
    """A shard map: table groups, each with its key and one scheme."""
    model_config = ConfigDict(extra="forbid", strict=True, title="reshard shard map")
    format: Literal[1] = Field(MAP_FORMAT, description="the map file format this reshard reads")
    name: str = ""
    groups: dict[str, GroupSection] = Field(min_length=1)
