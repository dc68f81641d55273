"""Cutover: fence writes on the moving ranges, drain the stream to the fence, flip
routing to the targets, and start reverse replication so that rollback stays possible.

Not implemented yet (issue 4). What it will build on is in place: shard-map epochs
in the control store, and the drain proof in ``cdc_applier.offsets``.
"""
