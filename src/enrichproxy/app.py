"""The aiohttp application: routes, the one error-mapping middleware, background components.

Each background component is owned by one ``cleanup_ctx`` entry (start, yield, stop). At
shutdown aiohttp runs them in reverse: the flusher emits every open window and drains the
queues within ``shutdown_timeout``, then the metadata refresher stops, then the forwarder.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from enrichproxy.codec import decode_write_request, decompress
from enrichproxy.config import Config
from enrichproxy.errors import BadQuery, RequestError, Unavailable, UnsupportedMediaType
from enrichproxy.explain import EXPLAIN_PATH, SELECTOR_EXAMPLE, explain, parse_exact_selector
from enrichproxy.forwarder import Forwarder
from enrichproxy.metadata_store import (
    FollowState,
    MetadataStore,
    MetadataUnavailable,
    RuleFollower,
    Source,
    TableUpdate,
)
from enrichproxy.pipeline import Pipeline
from enrichproxy.state_store import StateStore
from enrichproxy.telemetry import EXPOSITION_CONTENT_TYPE, Telemetry

log = logging.getLogger(__name__)

WRITE_PATH = "/api/v1/write"
RW1_MESSAGE = "prometheus.WriteRequest"
RW2_MESSAGE = "io.prometheus.write.v2.Request"
# How often complete windows are looked for. Windows are seconds long; this only bounds how
# much later than necessary a complete window leaves.
FLUSH_TICK_SECONDS = 0.25


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Proxy:
    """Everything one running enrichproxy holds."""

    config: Config
    pipeline: Pipeline
    telemetry: Telemetry
    forwarder: Forwarder
    store: MetadataStore | None = None

    @property
    def ready(self) -> bool:
        return self.store is not None and self.store.loaded


PROXY = web.AppKey("proxy", Proxy)


def check_media_type(content_type: str | None, content_encoding: str | None) -> None:
    """Remote write 1.0 only, as the spec asks a receiver to decide: by Content-Type."""
    if (content_encoding or "").strip().lower() != "snappy":
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {content_encoding!r}: remote write needs snappy"
        )
    if content_type is None:
        return  # senders that predate the header mean 1.0
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/x-protobuf":
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media.strip()!r}: expected application/x-protobuf"
        )
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() == "proto" and value.strip() != RW1_MESSAGE:
            raise UnsupportedMediaType(
                f"unsupported message {value.strip()!r}: this receiver speaks remote write 1.0"
                f" ({RW1_MESSAGE}); remote write 2.0 ({RW2_MESSAGE}) is not supported yet"
            )


async def handle_write(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    check_media_type(request.headers.get("Content-Type"), request.headers.get("Content-Encoding"))
    if not proxy.ready:
        raise Unavailable("metadata table not loaded yet", retry_after_seconds=5)
    if proxy.forwarder.full:
        raise Unavailable("forwarding queue full", retry_after_seconds=2)
    body = await request.read()
    telemetry = proxy.telemetry
    telemetry.received_bytes.inc(len(body))
    started = time.perf_counter()
    decoded = decode_write_request(
        decompress(body, proxy.config.max_decoded_bytes), proxy.pipeline.known_label_bytes
    )
    result = proxy.pipeline.ingest(decoded, now_ms())
    telemetry.request_duration.observe(time.perf_counter() - started)
    telemetry.record_ingest(result)
    return web.Response(status=204)


async def handle_metrics(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    refresh_gauges(proxy)
    return web.Response(
        body=proxy.telemetry.exposition(), headers={"Content-Type": EXPOSITION_CONTENT_TYPE}
    )


async def handle_healthy(_request: web.Request) -> web.Response:
    return web.Response(text="enrichproxy is healthy.\n")


async def handle_ready(request: web.Request) -> web.Response:
    proxy = request.app[PROXY]
    if not proxy.ready:
        return web.Response(
            status=503, text="enrichproxy is not ready: metadata table not loaded.\n"
        )
    if proxy.store is not None and proxy.store.stale:
        return web.Response(
            text="enrichproxy is ready, with stale metadata: serving the snapshot file until "
            "MongoDB answers.\n"
        )
    return web.Response(text="enrichproxy is ready.\n")


async def handle_explain(request: web.Request) -> web.Response:
    """What the proxy does with one series, from its state now: text, or JSON when asked."""
    text = request.query.get("series", "").strip()
    if not text:
        raise BadQuery(f"give the series' exact labels: {EXPLAIN_PATH}?series={SELECTOR_EXAMPLE}")
    try:
        labels = parse_exact_selector(text)
    except ValueError as exc:
        raise BadQuery(f"series: {exc}") from None
    explanation = explain(request.app[PROXY].pipeline, labels)
    accepted = (
        part.split(";")[0].strip().lower() for part in request.headers.get("Accept", "").split(",")
    )
    if "application/json" in accepted:
        return web.json_response(
            explanation.to_dict(), dumps=lambda data: json.dumps(data, indent=2)
        )
    return web.Response(text=explanation.to_text())


def refresh_gauges(proxy: Proxy) -> None:
    telemetry = proxy.telemetry
    pipeline = proxy.pipeline
    telemetry.series_cache_entries.set(pipeline.cached_series)
    wall_ms = now_ms()
    for view, aggregator in zip(pipeline.views, pipeline.aggregators, strict=True):
        telemetry.output_series.labels(view.name).set(len(aggregator.groups))
        telemetry.aggregation_inputs.labels(view.name).set(len(aggregator.inputs))
        telemetry.open_windows.labels(view.name).set(aggregator.open_windows)
        if aggregator.max_timestamp_ms > 0:
            lag = (wall_ms - aggregator.max_timestamp_ms) / 1000
            telemetry.aggregation_lag.labels(view.name).set(lag)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Our exceptions become answers here, and only here; write answers are counted."""
    try:
        response: web.StreamResponse = await handler(request)
    except RequestError as exc:
        log.warning("write refused status=%d reason=%s", exc.status, exc)
        response = web.Response(status=exc.status, text=f"{exc}\n")
    except Unavailable as exc:
        response = web.Response(
            status=exc.status,
            text=f"{exc.reason}; retry later\n",
            headers={"Retry-After": str(exc.retry_after_seconds)},
        )
    except web.HTTPException as exc:
        if request.path == WRITE_PATH:
            request.app[PROXY].telemetry.requests.labels(str(exc.status)).inc()
        raise
    if request.path == WRITE_PATH:
        request.app[PROXY].telemetry.requests.labels(str(response.status)).inc()
    return response


# --- background components ---------------------------------------------------------------------


async def forwarder_ctx(app: web.Application) -> AsyncIterator[None]:
    forwarder = app[PROXY].forwarder
    await forwarder.start()
    yield
    await forwarder.stop()


async def metadata_ctx(app: web.Application) -> AsyncIterator[None]:
    proxy = app[PROXY]
    telemetry = proxy.telemetry

    def on_update(update: TableUpdate) -> None:
        table, rule = update.build.table, update.rule.name
        changed = proxy.pipeline.set_table(table, update.rule_index)
        telemetry.metadata_documents.labels(rule).set(len(table.entries))
        telemetry.metadata_stale.labels(rule).set(update.source is Source.SNAPSHOT)
        if update.source is Source.MONGODB:
            telemetry.metadata_last_success.labels(rule).set(time.time())
        if update.full_read:
            telemetry.metadata_reloads.labels(rule, "success").inc()
        for operation, count in update.changes.items():
            telemetry.metadata_changes.labels(rule, operation).inc(count)
        for reason, count in update.build.rejection_counts().items():
            telemetry.metadata_rejected.labels(rule, reason).inc(count)
        telemetry.ready.set(proxy.ready)
        if update.changes:
            log.debug("rule=%s applied changes %s", rule, dict(update.changes))
        elif changed or update.source is Source.SNAPSHOT:
            log.info(
                "rule=%s table loaded from %s: entries=%d rejected=%d",
                rule,
                update.source.value,
                len(table.entries),
                len(update.build.rejections),
            )

    def on_failure(follower: RuleFollower, exc: MetadataUnavailable) -> None:
        telemetry.metadata_reloads.labels(follower.rule.name, "failure").inc()
        state = "keeping the last good table" if follower.table is not None else "not ready"
        log.error("rule=%s metadata unavailable (%s): %s", follower.rule.name, state, exc)

    def on_state(follower: RuleFollower) -> None:
        for state in FollowState:
            gauge = telemetry.metadata_follow_state.labels(follower.rule.name, state.value)
            gauge.set(state is follower.state)
        log.info("rule=%s metadata %s", follower.rule.name, follower.state.value)

    store = MetadataStore(proxy.config.metadata, on_update, on_failure, on_state)
    proxy.store = store

    def age_of(follower: RuleFollower) -> Callable[[], float]:
        return lambda: time.time() - follower.confirmed_at if follower.table else math.nan

    for follower in store.followers:
        on_state(follower)
        telemetry.watch_function(
            telemetry.metadata_age.labels(follower.rule.name), age_of(follower)
        )
    store.restore_snapshot()
    task = asyncio.create_task(store.run(), name="metadata")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    await store.close()


def restore_state(proxy: Proxy, store: StateStore) -> None:
    """Continue the aggregation saved by the last run (checkpoint plus emitted marker)."""
    states, emitted = store.load()
    if states:
        skipped = proxy.pipeline.restore_state(states)
        for name, reason in skipped.items():
            log.warning("view=%s starts empty: %s", name, reason)
        log.info("aggregation state restored from %s", store.path)
    for view, aggregator in zip(proxy.pipeline.views, proxy.pipeline.aggregators, strict=True):
        if view.name in emitted:
            aggregator.mark_emitted(emitted[view.name])


async def flusher_ctx(app: web.Application) -> AsyncIterator[None]:
    """Emits complete windows every tick; with ``state_path``, also checkpoints the state."""
    proxy = app[PROXY]
    settings = proxy.config.aggregation
    store = StateStore(settings.state_path) if settings.state_path else None
    if store is not None:
        restore_state(proxy, store)

    def flush(final: bool) -> None:
        pipeline = proxy.pipeline
        outputs = pipeline.flush(now_ms(), final=final)
        proxy.telemetry.record_outputs(outputs)
        if store is not None and any(output.samples for output in outputs):
            # Before the samples are queued: after a crash, never emit these windows again.
            store.mark_emitted(pipeline.emitted_windows())
        for output in outputs:
            proxy.forwarder.enqueue(output.samples)
        proxy.forwarder.sync()

    def checkpoint() -> None:
        if store is not None:
            started = time.perf_counter()
            store.save(proxy.pipeline.export_state())
            proxy.telemetry.checkpoint_duration.observe(time.perf_counter() - started)

    async def loop() -> None:
        next_checkpoint = time.monotonic() + settings.checkpoint_interval_ms / 1000
        while True:
            await asyncio.sleep(FLUSH_TICK_SECONDS)
            flush(final=False)
            if store is not None and time.monotonic() >= next_checkpoint:
                checkpoint()
                next_checkpoint = time.monotonic() + settings.checkpoint_interval_ms / 1000

    task = asyncio.create_task(loop(), name="aggregation-flush")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if store is not None:
        # The open windows stay open: the next start continues them from the checkpoint.
        flush(final=False)
        checkpoint()
    else:
        flush(final=True)
    timeout = proxy.config.shutdown_timeout_ms / 1000
    if not await proxy.forwarder.drain(timeout):
        log.error("shutdown: queues not drained within %.0fs", timeout)


def create_app(config: Config, telemetry: Telemetry | None = None) -> web.Application:
    """The application for ``config``; pass ``telemetry`` to use a registry of your own."""
    telemetry = telemetry or Telemetry()
    proxy = Proxy(
        config=config,
        pipeline=Pipeline(config),
        telemetry=telemetry,
        forwarder=Forwarder(config.remote_write, telemetry),
    )
    # Snappy's worst case: a body can be slightly larger than what it decodes to.
    max_body = config.max_decoded_bytes + config.max_decoded_bytes // 6 + 32
    app = web.Application(middlewares=[error_middleware], client_max_size=max_body)
    app[PROXY] = proxy
    app.router.add_post(WRITE_PATH, handle_write)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/-/healthy", handle_healthy)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_get(EXPLAIN_PATH, handle_explain)
    app.cleanup_ctx.extend([forwarder_ctx, metadata_ctx, flusher_ctx])
    return app
