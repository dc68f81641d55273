"""Bulk copy of the moving key ranges, consistent with a recorded WAL position.

The slot is created with an exported snapshot; every copy connection imports that
snapshot, so the rows copied are exactly the rows as of the slot's consistent
point, and Debezium streams exactly the transactions committed after it.
"""
