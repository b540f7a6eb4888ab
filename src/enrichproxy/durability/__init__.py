"""What survives a restart: disk queues, the input log, the aggregation checkpoint."""
