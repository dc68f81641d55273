"""reshard: online resharding for live PostgreSQL over Debezium and Kafka.

The shared kernel lives here (config, shard maps, control store, coordinator, CLI,
embedded stack). The stages live in their own packages: ``snapshotter``,
``cdc_applier`` and ``cutover``; they depend on this package, never the reverse,
except through the CLI and the coordinator.
"""

__version__ = "0.1.0"
