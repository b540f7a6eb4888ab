"""The data path over values: enrichment, views, aggregation (pure: no I/O, no clock)."""
