"""A remote-write receiver that stores nothing: the downstream of the end-to-end benchmark.

A real receiver (Prometheus, VictoriaMetrics) would compete with the proxy for the same two
cores and make the figure about the receiver; this one only decodes what arrives, so the
benchmark can say how many output samples the proxy delivered, and answers 204.

Run as ``python benchmarks/null_sink.py``: it binds 127.0.0.1 on a port the kernel picks (no
race with other processes), prints ``listening on 127.0.0.1:PORT`` on stdout, serves
``POST /api/v1/write`` and ``GET /stats`` (JSON counts), and exits on SIGTERM or SIGINT.
"""

from __future__ import annotations

import asyncio
import signal

from aiohttp import web

from enrichproxy.errors import DecodeError
from enrichproxy.wire.codec import decode_write_request, decompress

HOST = "127.0.0.1"
WRITE_PATH = "/api/v1/write"

COUNTS = web.AppKey("counts", dict[str, int])


async def write(request: web.Request) -> web.Response:
    counts = request.app[COUNTS]
    body = await request.read()
    counts["requests"] += 1
    counts["bytes"] += len(body)
    try:
        decoded = decode_write_request(decompress(body))
    except DecodeError as exc:
        counts["bad_requests"] += 1
        return web.Response(status=400, text=str(exc))
    counts["series"] += len(decoded.series)
    counts["samples"] += sum(len(series.samples) for series in decoded.series)
    return web.Response(status=204)


async def stats(request: web.Request) -> web.Response:
    return web.json_response(request.app[COUNTS])


async def serve() -> None:
    app = web.Application(client_max_size=64 * 1024 * 1024)
    app[COUNTS] = {"requests": 0, "bytes": 0, "bad_requests": 0, "series": 0, "samples": 0}
    app.router.add_post(WRITE_PATH, write)
    app.router.add_get("/stats", stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0)
    await site.start()
    port = runner.addresses[0][1]
    print(f"listening on {HOST}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


if __name__ == "__main__":
    asyncio.run(serve())
