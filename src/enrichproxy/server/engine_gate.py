"""Who may use the engine when: ingests share it, flush / checkpoint / reload have it alone.

An ingest runs in steps (``Engine.ingest_steps``) and gives the event loop back between two, so
a request with a million new series does not hold up the small writes that arrive meanwhile;
its decompression and decoding run in a worker thread when the body is large. Other ingests
may run between two steps of one; what must not is anything that needs whole requests: a flush
(a window could close on half a request), a checkpoint (it would cover half a request that the
input log then replays whole), a reload (the engine is replaced). Those take the gate
exclusively: they wait for the ingests under way to finish, and new ingests wait for them.
A flush needs the engine alone only to decide which windows close; it settles them in steps
that share the engine with ingests (``Engine.flush_steps``), so closing the windows of a
million series does not hold up the writes either.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from enrichproxy.engine.interface import Engine, IngestResult, ViewOutput
from enrichproxy.wire.v2 import WireProtocol

OFF_LOOP_BYTES = 256 * 1024
"""Bodies at least this large (compressed) are decompressed and decoded in a worker thread:
about a millisecond of work or more."""


class EngineGate:
    """Shared use for ingests, exclusive use for whole-engine work; exclusive waiters go first,
    so a stream of writes cannot starve the flusher."""

    def __init__(self) -> None:
        self._ingests = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._exclusive = asyncio.Lock()
        self._open = asyncio.Event()
        self._open.set()

    @property
    def ingests(self) -> int:
        """Ingests under way now."""
        return self._ingests

    @contextlib.asynccontextmanager
    async def shared(self) -> AsyncIterator[None]:
        while not self._open.is_set():
            await self._open.wait()
        self._ingests += 1
        self._idle.clear()
        try:
            yield
        finally:
            self._ingests -= 1
            if not self._ingests:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        async with self._exclusive:
            self._open.clear()
            try:
                await self._idle.wait()
                yield
            finally:
                self._open.set()


async def ingest(
    engine: Engine, body: bytes, now_ms: int, protocol: WireProtocol = WireProtocol.V1
) -> IngestResult:
    """``engine.ingest(body, now_ms, protocol)``, giving the event loop back between steps;
    the caller holds the gate's shared side."""
    if len(body) >= OFF_LOOP_BYTES:
        prepared = await asyncio.to_thread(engine.prepare, body, protocol)
    else:
        prepared = engine.prepare(body, protocol)
    steps = engine.ingest_steps(prepared, now_ms)
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: IngestResult = done.value
            return result
        await asyncio.sleep(0)


async def flush(engine: Engine, gate: EngineGate, now_ms: int, final: bool) -> list[ViewOutput]:
    """``engine.flush(now_ms, final)`` in steps: the first with the engine alone, the others
    sharing it with ingests, giving the event loop back between two. The caller keeps anything
    else that needs the engine alone (a reload) out until it returns. If the caller is
    cancelled between two steps, the engine's next flush finishes this one: no window is lost.
    """
    steps = engine.flush_steps(now_ms, final)
    async with gate.exclusive():
        try:
            next(steps)
        except StopIteration as done:
            outputs: list[ViewOutput] = done.value
            return outputs
    while True:
        await asyncio.sleep(0)
        async with gate.shared():
            try:
                next(steps)
            except StopIteration as done:
                outputs = done.value
                return outputs
