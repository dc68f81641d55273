"""Where a change event goes: to the owner of its key on the other side, if it moves.

Forward (source -> targets): to the new map's owner of the key, when the source owned
it in the old map and the new map gives it to another cluster. Reverse (target ->
sources, after cutover): back to the old map's owner of a key the target received.
Changes the other direction wrote (an echo, by replication origin) go nowhere.
"""

from __future__ import annotations

from reshard.cdc_applier.decode import ChangeEvent, DecodeError
from reshard.errors import ConfigError
from reshard.kafka.streams import Direction, Stream
from reshard.maps.planner import Plan

MEMO_KEYS = 1 << 17  # routes remembered (~200 bytes each, ~30 MB at most), then forgotten at once


class Router:
    def __init__(self, plan: Plan, streams: list[Stream]):
        self.plan = plan
        self.key_columns = {t: plan.new.group_of(t).key_columns(t) for t in plan.tables()}
        self.streams = list(streams)
        self.by_topic: dict[str, tuple[Stream, str]] = {}
        # routes remembered per stream (by identity: the router holds its streams, so no id is reused)
        # and (table, key): destination
        self._memos: dict[int, dict[tuple, str | None]] = {id(s): {} for s in self.streams}
        self._memo_size = 0
        for s in streams:
            for table in plan.tables():
                self.by_topic[s.topic(table)] = (s, table)
        self._labels = {topic: f"{s.direction}:{s.cluster}" for topic, (s, _) in self.by_topic.items()}

    @property
    def topics(self) -> list[str]:
        return sorted(self.by_topic)

    def label_of(self, topic: str) -> str:
        """The stream's label in metrics (``fwd:source1``), or ``unknown``."""
        return self._labels.get(topic, "unknown")

    def stream_of(self, topic: str) -> Stream:
        try:
            return self.by_topic[topic][0]
        except KeyError:
            raise DecodeError(f"record from topic {topic}, which is not one of this migration's") from None

    def is_echo(self, ev: ChangeEvent, stream: Stream) -> bool:
        """Written by the other direction's applier: its sessions take their origins from
        that direction's pool (see cdc_applier.worker.tag_origin)."""
        return ev.origin is not None and ev.origin.startswith(stream.echo_origin_prefix)

    def target(self, ev: ChangeEvent, stream: Stream) -> str | None:
        """The cluster this change must be applied on, or None when its key does not move."""
        cols = self.key_columns.get(ev.table)
        if cols is None:
            raise DecodeError(f"change to {ev.table}, which is not a table of this migration")
        try:
            key = (ev.key[cols[0]],) if len(cols) == 1 else tuple([ev.key[c] for c in cols])
        except KeyError:
            missing = [c for c in cols if c not in ev.key]
            raise DecodeError(f"{ev.table}: record key {ev.key} lacks shard key column(s) {', '.join(missing)}") \
                from None
        memo = self._memos.get(id(stream))
        memo_key = (ev.table, key)
        try:
            return memo[memo_key]
        except KeyError:
            pass
        except TypeError:  # not one of the router's streams, or an unhashable key value: no memo
            memo = None
        try:
            if stream.direction == Direction.FORWARD:
                dest = self.plan.route(ev.table, stream.cluster, key)
            else:
                old_owner, new_owner = self.plan.owners(ev.table, key)
                dest = old_owner if new_owner == stream.cluster and old_owner != stream.cluster else None
        except ConfigError as exc:
            raise DecodeError(f"{ev.table}: {exc}") from None
        if memo is not None:
            if self._memo_size >= MEMO_KEYS:
                for m in self._memos.values():
                    m.clear()
                self._memo_size = 0
            memo[memo_key] = dest
            self._memo_size += 1
        return dest
