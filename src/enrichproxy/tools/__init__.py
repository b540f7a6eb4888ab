"""Tools around the proxy: load generator, its exporter, the demo."""
