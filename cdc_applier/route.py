"""Which target a change event goes to: the new map's owner of its key, if it moves."""

from __future__ import annotations

from reshard.errors import ConfigError
from reshard.planner import Plan
from cdc_applier.connector import data_topic
from cdc_applier.decode import ChangeEvent, DecodeError


class Router:
    def __init__(self, plan: Plan, migration: str):
        self.plan = plan
        self.tables = set(plan.tables())
        self.by_topic: dict[str, tuple[str, str]] = {}
        for source in plan.sources():
            for table in plan.tables():
                self.by_topic[data_topic(migration, source, table)] = (source, table)

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)

    def source_of(self, topic: str) -> str:
        try:
            return self.by_topic[topic][0]
        except KeyError:
            raise DecodeError(f"record from topic {topic}, which is not one of this migration's") from None

    def target(self, ev: ChangeEvent, source: str) -> str | None:
        """The target cluster for this change, or None when its key does not move.

        Keys the source does not own in the old map (strays) and keys that stay on
        the source are not copied, so their changes are not applied either.
        """
        if ev.table not in self.tables:
            raise DecodeError(f"change to {ev.table}, which is not a table of this migration")
        group = self.plan.new.group_of(ev.table)
        cols = group.key_columns(ev.table)
        missing = [c for c in cols if c not in ev.key]
        if missing:
            raise DecodeError(f"{ev.table}: record key {ev.key} lacks shard key column(s) {', '.join(missing)}")
        try:
            return self.plan.route(ev.table, source, [ev.key[c] for c in cols])
        except ConfigError as exc:
            raise DecodeError(f"{ev.table}: {exc}") from None
