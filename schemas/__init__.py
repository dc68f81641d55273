"""The schemas of what reshard publishes and prints (Avro records, --json documents) and of
the files it reads, shipped as package data (``reshard.schemas``) and read with
importlib.resources."""
