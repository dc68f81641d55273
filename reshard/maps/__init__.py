"""Shard maps: which cluster owns a key, the key hash, map files, and the moves between two maps."""
