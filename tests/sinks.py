"""An in-process remote-write receiver that records what it gets and answers as told.

For component tests of the forwarder and the app: fast, and it can play a failing downstream
(5xx, 429 with Retry-After, 400) on demand. Integration tests use a real Prometheus instead.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from dataclasses import dataclass, field

from aiohttp import web

from enrichproxy.model import Labels, MetricType
from enrichproxy.wire.codec import decode_labels, decode_write_request, decompress
from enrichproxy.wire.v2 import MESSAGE_V2, SAMPLES_WRITTEN_HEADER, decode_v2_request


@dataclass
class Received:
    headers: dict[str, str]
    series: list[tuple[Labels, list[tuple[int, float]]]]
    types: dict[str, MetricType] = field(default_factory=dict)
    """Remote write 2.0: metric name → the type its series came with."""


@dataclass
class Answer:
    status: int = 204
    body: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    stream_bytes: int = 0
    """Stream this many bytes of body instead (a wrong endpoint with a huge answer)."""


MOVED_PATH = "/moved"
"""A GET endpoint answering 200: where a redirecting downstream sends its writers."""
_CHUNK = b"x" * 65536


class RecordingSink:
    """``answers`` are used in order, one per request; once empty, every request gets 204.

    Only requests answered 2xx count as ``accepted``; every request lands in ``attempts``.
    """

    def __init__(self) -> None:
        self.answers: deque[Answer] = deque()
        self.attempts: list[Received] = []
        self.accepted: list[Received] = []
        self.arrived = asyncio.Event()
        self.hold = asyncio.Event()
        self.hold.set()
        self._runner: web.AppRunner | None = None
        self.url = ""
        self.moved_requests = 0
        """Requests that followed a redirect to MOVED_PATH."""
        self.streamed = 0
        """Bytes of streamed answers the client took before it hung up."""
        self.speaks_v2 = True
        """False: answer 415 to remote write 2.0, as a 1.x receiver does."""
        self.ignores_content_type = False
        """True: read every body as 1.0, as receivers older than 2.0 do (a 2.0 body reads as
        an empty request, answered 204 without the written counts)."""

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        await self.hold.wait()
        data = decompress(await request.read())
        v2 = f"proto={MESSAGE_V2}" in request.headers.get("Content-Type", "")
        if v2 and not self.ignores_content_type:
            if not self.speaks_v2:
                self.attempts.append(Received(dict(request.headers), []))
                return web.Response(status=415, text="remote write 2.0 is not supported")
            body = decode_v2_request(data)
        else:
            body = decode_write_request(data)
        received = Received(
            dict(request.headers),
            [(decode_labels(s.label_bytes), s.samples) for s in body.series],
            dict(body.series_types),
        )
        self.attempts.append(received)
        answer = self.answers.popleft() if self.answers else Answer()
        if 200 <= answer.status < 300:
            self.accepted.append(received)
        self.arrived.set()
        if answer.stream_bytes:
            return await self._stream(request, answer)
        headers = dict(answer.headers)
        if v2 and not self.ignores_content_type:  # a 2.0 receiver says what it wrote
            written = sum(len(samples) for _, samples in received.series)
            headers.setdefault(SAMPLES_WRITTEN_HEADER, str(written))
        return web.Response(status=answer.status, text=answer.body, headers=headers)

    async def _stream(self, request: web.Request, answer: Answer) -> web.StreamResponse:
        response = web.StreamResponse(status=answer.status, headers=answer.headers)
        response.content_length = answer.stream_bytes
        await response.prepare(request)
        try:
            while self.streamed < answer.stream_bytes:
                await response.write(_CHUNK)
                self.streamed += len(_CHUNK)
        except ConnectionError:
            pass  # the client closed: what it took is counted
        return response

    async def _moved(self, _request: web.Request) -> web.Response:
        self.moved_requests += 1
        return web.Response(text="a page, not a receiver")

    async def start(self, ssl_context: ssl.SSLContext | None = None) -> None:
        """Listen on a free port; with ``ssl_context``, over TLS (``url`` is then https)."""
        app = web.Application()
        app.router.add_post("/api/v1/write", self._handle)
        app.router.add_get(MOVED_PATH, self._moved)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        port = self._runner.addresses[0][1]
        scheme = "http" if ssl_context is None else "https"
        self.url = f"{scheme}://127.0.0.1:{port}/api/v1/write"

    async def stop(self) -> None:
        self.hold.set()
        if self._runner is not None:
            await self._runner.cleanup()

    def accepted_samples(self) -> list[tuple[Labels, int, float]]:
        return [
            (labels, timestamp, value)
            for received in self.accepted
            for labels, samples in received.series
            for timestamp, value in samples
        ]

    async def wait_accepted(self, count: int, timeout: float = 10.0) -> None:
        """Until ``count`` samples were accepted (bounded in time)."""
        async with asyncio.timeout(timeout):
            while len(self.accepted_samples()) < count:
                self.arrived.clear()
                await self.arrived.wait()
