"""The HTTP side: the aiohttp app, credentials, TLS, self-metrics."""
