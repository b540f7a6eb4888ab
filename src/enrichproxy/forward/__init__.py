"""Sending the views' output downstream: shards, retries, queues."""
