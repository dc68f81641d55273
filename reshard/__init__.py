"""reshard: online resharding for live PostgreSQL over Debezium and Kafka.

The kernel is grouped by concept (the picture: docs/architecture.md):

- ``maps``: shard maps, the key hash, map files, the moves between two maps, estimates;
- ``cluster``: what reshard installs on and reads from a PostgreSQL cluster;
- ``kafka``: topics and offsets, Connect, streams, reshard's own Avro records;
- ``control``: the control database (the store and its states);
- ``proof``: verification, reconciliation, the continuous check, shadow reads, catch-up;
- ``observe``: metrics, logs, progress, status, the report, the events topic;
- ``stack``: the embedded stack, the demo and its write load;
- ``router``: the library applications embed (a leaf: no CLI, no coordinator).

The stages live in their own packages: ``snapshotter``, ``cdc_applier`` and ``cutover``;
they depend on the kernel, never the reverse, except through the CLI and the coordinator
(the two doors: the CLI parses and prints, the coordinator opens a migration and runs it).
"""

__version__ = "0.1.0"
