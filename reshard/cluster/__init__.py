"""What reshard installs on and reads from a PostgreSQL cluster: its schema, the fence, publications and slots, the table catalog."""
