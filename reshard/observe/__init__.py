"""What a migration tells people and tools: metrics, logs, progress, status, the report and the events topic."""
