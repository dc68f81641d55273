"""The control database: map versions, migrations and their state, what workers report,
the switch's records, the audit log and the lease (store.py composes them)."""
