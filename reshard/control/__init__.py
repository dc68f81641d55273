"""The control store: map versions, migrations and their state, checkpoints, audit log."""

from reshard.control.store import ControlStore, MigrationRecord

__all__ = ["ControlStore", "MigrationRecord"]
