"""What a server's major offers reshard, each behind a version check.

- Failover slots (17+): a logical slot created with ``failover`` is synchronized to a
  standby that runs ``sync_replication_slots``, so a promoted standby carries the
  stream's position and the migration goes on against it. reshard creates its forward
  and reverse slots that way wherever the server has it; on 15 and 16 a slot lives on
  the primary only.
"""

from __future__ import annotations

from typing import Any

import psycopg

FAILOVER_SLOTS = 17  # the first major with CREATE_REPLICATION_SLOT ... (FAILOVER) and sync_replication_slots


def major(conn: psycopg.Connection[Any]) -> int:
    """The server's major version, as the server reported it at connection (no round trip)."""
    return conn.info.server_version // 10000


def failover_slots(conn: psycopg.Connection[Any]) -> bool:
    return major(conn) >= FAILOVER_SLOTS
