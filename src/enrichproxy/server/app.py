"""The aiohttp application: routes, the one error-mapping middleware, background components.

Inside the error middleware, the auth middleware checks credentials (``auth``) first, so a
request without them costs no body read; it raises, and the error middleware answers.

Each background component is owned by one ``cleanup_ctx`` entry (start, yield, stop). At
shutdown aiohttp runs them in reverse: the flusher emits every open window and drains the
queues within ``shutdown_timeout``, then the metadata refresher stops, then the forwarder.

The data path is an engine (``engine.interface.Engine``): the app hands it request bodies as
received and the metadata tables, and forwards what its flushes return.

A reload (``SIGHUP`` with ``serve``, or ``POST /-/reload``) swaps the engine, the metadata
store and the changed destinations of the running proxy (``reload_config``), holding
``Proxy.reload_lock`` so that the flusher emits nothing meanwhile.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from enrichproxy.config.reload import ReloadPlan, plan_reload
from enrichproxy.config.schema import Config, MetadataConfig, load_config
from enrichproxy.durability.health import Damage, DurabilityHealth
from enrichproxy.durability.input_log import InputLog, Ticket
from enrichproxy.durability.state_store import StateStore
from enrichproxy.engine.explain import EXPLAIN_PATH, SELECTOR_EXAMPLE, explain, parse_exact_selector
from enrichproxy.engine.factory import make_engine
from enrichproxy.engine.interface import Engine, ViewOutput
from enrichproxy.errors import (
    BadQuery,
    ClientDisconnected,
    ConfigError,
    LimitExceeded,
    NotReloadable,
    RequestError,
    RequestTimeout,
    Unauthorized,
    Unavailable,
    UnsupportedMediaType,
)
from enrichproxy.forward.forwarder import Forwarder
from enrichproxy.metadata.store import (
    FollowState,
    MetadataStore,
    MetadataUnavailable,
    RuleFollower,
    Source,
    TableUpdate,
)
from enrichproxy.model import MetricType
from enrichproxy.server import engine_gate
from enrichproxy.server.auth import authenticator_for
from enrichproxy.server.engine_gate import EngineGate
from enrichproxy.server.engine_gate import flush as flush_in_steps
from enrichproxy.server.telemetry import EXPOSITION_CONTENT_TYPE, Telemetry
from enrichproxy.wire.v2 import (
    EXEMPLARS_WRITTEN_HEADER,
    HISTOGRAMS_WRITTEN_HEADER,
    MESSAGE_V1,
    MESSAGE_V2,
    SAMPLES_WRITTEN_HEADER,
    WireProtocol,
)

log = logging.getLogger(__name__)

WRITE_PATH = "/api/v1/write"
RW1_MESSAGE = MESSAGE_V1
RW2_MESSAGE = MESSAGE_V2
# How often complete windows are looked for. Windows are seconds long; this only bounds how
# much later than necessary a complete window leaves.
MAX_FLUSH_DELAY_SECONDS = 5.0
"""How long the flusher lets large requests in progress put it off before it waits for them."""
FORWARD_SLICE_SAMPLES = 16_384
"""Output samples routed and queued between two turns of the event loop."""
FLUSH_TICK_SECONDS = 0.25
# Stopping the metadata store: how often to cancel it, and how long to wait after each time. A
# cancellation normally ends it within milliseconds; see stop_metadata for the exception.
STORE_STOP_ATTEMPTS = 10
STORE_STOP_WAIT_SECONDS = 0.5
# Retry-After when the input log cannot be written: a full disk takes an operator, or the
# queues draining, to heal; senders keep the data in their WAL meanwhile.
DISK_RETRY_AFTER_SECONDS = 5


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass
class Proxy:
    """Everything one running enrichproxy holds."""

    config: Config
    engine: Engine
    telemetry: Telemetry
    forwarder: Forwarder
    store: MetadataStore | None = None
    config_path: str | None = None
    """The file a reload reads again; None: this proxy cannot reload."""
    overrides: Callable[[Config], Config] = field(default=lambda config: config)
    """What the command line changes in every configuration loaded (``--listen``...)."""
    metadata_task: asyncio.Task[None] | None = None
    state_store: StateStore | None = None
    input_log: InputLog | None = None
    replaying: bool = False
    """The input log of the last run is being applied again: writes wait (503)."""
    reload_lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    gate: EngineGate = field(default_factory=EngineGate)
    """Ingests share the engine; flush, checkpoint and reload have it alone (engine_gate)."""
    """Held by a reload, and by the flusher while it emits: no window leaves mid-reload."""
    health: DurabilityHealth = field(default_factory=DurabilityHealth)
    """Whether the durable files can be written (durability/health.py)."""

    @property
    def ready(self) -> bool:
        return self.store is not None and self.store.loaded and not self.replaying


PROXY = web.AppKey("proxy", Proxy)


def check_media_type(content_type: str | None, content_encoding: str | None) -> WireProtocol:
    """The message the body holds, decided by Content-Type as the 2.0 spec asks a receiver to:
    ``proto=io.prometheus.write.v2.Request`` is 2.0; no ``proto`` parameter, or
    ``proto=prometheus.WriteRequest``, is 1.0; anything else is a 415 naming what we accept."""
    if (content_encoding or "").strip().lower() != "snappy":
        raise UnsupportedMediaType(
            f"unsupported Content-Encoding {content_encoding!r}: remote write needs snappy"
        )
    if content_type is None:
        return WireProtocol.V1  # senders that predate the header mean 1.0
    media, _, params = content_type.partition(";")
    if media.strip().lower() != "application/x-protobuf":
        raise UnsupportedMediaType(
            f"unsupported Content-Type {media.strip()!r}: expected application/x-protobuf"
            f" (remote write 1.0, or 2.0 with proto={RW2_MESSAGE})"
        )
    protocol = WireProtocol.V1
    for param in params.split(";"):
        key, _, value = param.partition("=")
        if key.strip().lower() != "proto":
            continue
        message = value.strip().strip('"')
        if message == RW1_MESSAGE:
            protocol = WireProtocol.V1
        elif message == RW2_MESSAGE:
            protocol = WireProtocol.V2
        else:
            raise UnsupportedMediaType(
                f"unsupported message {message!r}: this receiver accepts proto={RW1_MESSAGE}"
                f" (remote write 1.0) and proto={RW2_MESSAGE} (remote write 2.0)"
            )
    return protocol


def written_headers(samples: int) -> dict[str, str]:
    """What a 2.0 receiver must say it wrote, on every answer (spec, "Required Written
    Response Headers"). Float samples count once applied; native histograms and exemplars
    are not written (counted and skipped: enrichproxy_samples_dropped_total,
    enrichproxy_exemplars_skipped_total), so they count 0."""
    return {
        SAMPLES_WRITTEN_HEADER: str(samples),
        HISTOGRAMS_WRITTEN_HEADER: "0",
        EXEMPLARS_WRITTEN_HEADER: "0",
    }


async def handle_write(request: web.Request) -> web.Response:
    content_type = request.headers.get("Content-Type")
    try:
        protocol = check_media_type(content_type, request.headers.get("Content-Encoding"))
    except UnsupportedMediaType as exc:
        # A 2.0 request in a Content-Encoding we do not take: it is told nothing was written.
        if f"proto={RW2_MESSAGE}" in (content_type or "").replace(" ", ""):
            exc.extra_headers = written_headers(0)
        raise
    if protocol is WireProtocol.V1:
        return await write(request, protocol)
    # A request is applied whole or not at all, so an error answer wrote nothing.
    try:
        return await write(request, protocol)
    except (RequestError, Unavailable) as exc:
        exc.extra_headers = written_headers(0)
        raise


async def write(request: web.Request, protocol: WireProtocol) -> web.Response:
    proxy = request.app[PROXY]
    if not proxy.ready:
        if proxy.replaying:
            raise Unavailable("replaying the input log of the last run", retry_after_seconds=2)
        raise Unavailable("metadata table not loaded yet", retry_after_seconds=5)
    if proxy.forwarder.full:
        raise Unavailable("forwarding queue full", retry_after_seconds=2)
    body = await read_body(request, proxy.config.body_read_timeout_ms / 1000)
    telemetry = proxy.telemetry
    telemetry.received_bytes.inc(len(body))
    started = time.perf_counter()
    # On disk before it is applied: a write the disk refuses changes nothing and is answered
    # 503; one that is applied survives a crash (durability/input_log.py).
    input_log = proxy.input_log
    ticket = await log_durably(input_log, body, protocol) if input_log is not None else None
    applied = False
    try:
        async with proxy.gate.shared():
            result = await engine_gate.ingest(proxy.engine, body, now_ms(), protocol)
        applied = True
    finally:
        if input_log is not None and ticket is not None:
            if applied:
                input_log.applied(ticket)
            else:
                input_log.void(ticket)  # refused (4xx): a replay must refuse it too
    telemetry.record_ingest(result)
    telemetry.request_duration.observe(time.perf_counter() - started)
    if protocol is WireProtocol.V2:
        return web.Response(status=204, headers=written_headers(result.samples))
    return web.Response(status=204)


async def read_body(request: web.Request, timeout_seconds: float) -> bytes:
    """The whole request body, within ``timeout_seconds`` (``body_read_timeout``): a sender
    that stops sending must not hold its connection and buffer for ever."""
    try:
        async with asyncio.timeout(timeout_seconds):
            return await request.read()
    except TimeoutError:
        raise RequestTimeout(
            f"request body not received within {timeout_seconds:g}s (body_read_timeout)"
        ) from None
    except ConnectionResetError:
        raise ClientDisconnected("client closed the connection before its body was read") from None


async def log_durably(input_log: InputLog, body: bytes, protocol: WireProtocol) -> Ticket:
    """Append ``body`` to the input log and wait for its fsync; Unavailable (503) when the disk
    refuses it, with nothing of it kept. The failure itself is logged once and counted by
    DurabilityHealth, not for every refused request."""
    unavailable = Unavailable(
        "the input log cannot be written to disk", retry_after_seconds=DISK_RETRY_AFTER_SECONDS
    )
    try:
        ticket = input_log.append(body, protocol)
    except OSError:
        raise unavailable from None
    try:
        await input_log.durable(ticket)
    except OSError:
        raise unavailable from None
    except asyncio.CancelledError:
        input_log.void(ticket)  # the handler was cancelled: never answered, never applied
        raise
    return ticket


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
        reason = (
            "replaying the input log of the last run"
            if proxy.replaying
            else "metadata table not loaded"
        )
        return web.Response(status=503, text=f"enrichproxy is not ready: {reason}.\n")
    if proxy.health.impaired:
        return web.Response(
            status=503,
            text=f"enrichproxy is not ready: durability impaired: {proxy.health.describe()}.\n",
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
    explanation = explain(request.app[PROXY].engine, labels)
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
    stats = proxy.engine.stats()
    telemetry.series_cache_entries.set(stats.cached_series)
    telemetry.input_series_limit.set(proxy.config.limits.max_input_series)
    input_limits = {view.name: view.max_input_series for view in proxy.config.views}
    wall_ms = now_ms()
    for view in stats.views:
        telemetry.output_series.labels(view.name).set(view.output_series)
        telemetry.aggregation_inputs.labels(view.name).set(view.inputs)
        telemetry.aggregation_input_limit.labels(view.name).set(input_limits.get(view.name, 0))
        telemetry.open_windows.labels(view.name).set(view.open_windows)
        if view.max_timestamp_ms > 0:
            lag = (wall_ms - view.max_timestamp_ms) / 1000
            telemetry.aggregation_lag.labels(view.name).set(lag)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Our exceptions become answers here, and only here; write answers are counted."""
    try:
        response: web.StreamResponse = await handler(request)
    except RequestError as exc:
        log.warning("request refused path=%s status=%d reason=%s", request.path, exc.status, exc)
        if isinstance(exc, LimitExceeded):
            request.app[PROXY].telemetry.limit_rejections.labels(exc.limit).inc()
        response = web.Response(
            status=exc.status, text=f"{exc}\n", headers={**exc.headers, **exc.extra_headers}
        )
    except ClientDisconnected as exc:
        # The client's doing, and nothing was applied: INFO, no traceback. 499 as nginx
        # counts it; no one receives the answer.
        log.info("request abandoned path=%s reason=%s", request.path, exc)
        request.app[PROXY].telemetry.client_disconnects.inc()
        response = web.Response(status=499)
    except Unavailable as exc:
        response = web.Response(
            status=exc.status,
            text=f"{exc.reason}; retry later\n",
            headers={"Retry-After": str(exc.retry_after_seconds), **exc.extra_headers},
        )
    except ConfigError as exc:
        # Only a reload gets here. 500 as Prometheus answers it: the request was fine, the
        # file is not; the running configuration stays in use.
        problems = "".join(f"  {problem}\n" for problem in exc.problems)
        response = web.Response(
            status=500, text=f"configuration not reloaded, the running one is kept:\n{problems}"
        )
    except web.HTTPException as exc:
        if request.path == WRITE_PATH:
            request.app[PROXY].telemetry.requests.labels(str(exc.status)).inc()
        raise
    except Exception:
        # A bug of ours: aiohttp answers 500 (which senders retry); count it, log it there.
        if request.path == WRITE_PATH:
            request.app[PROXY].telemetry.requests.labels("500").inc()
        raise
    if request.path == WRITE_PATH:
        request.app[PROXY].telemetry.requests.labels(str(response.status)).inc()
    return response


# Open without credentials: health probes and the scrape of our own metrics carry none, and
# none of them changes anything or shows a secret. Every other path needs them: the write
# endpoint, /debug/* (it shows enrichment data) and any endpoint that changes the running proxy.
OPEN_PATHS = frozenset({"/-/healthy", "/-/ready", "/metrics"})


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``auth`` configured, refuses requests without its credentials (Unauthorized, which
    error_middleware answers 401), before anything else is done for them."""
    proxy = request.app[PROXY]
    auth = proxy.config.auth
    if auth is not None and request.path not in OPEN_PATHS:
        authenticator = authenticator_for(auth)
        failure = authenticator.check(request.headers.get("Authorization"))
        if failure is not None:
            proxy.telemetry.auth_failures.labels(failure.value).inc()
            raise Unauthorized(authenticator.challenge)
    return await handler(request)


# --- background components ---------------------------------------------------------------------


async def forwarder_ctx(app: web.Application) -> AsyncIterator[None]:
    forwarder = app[PROXY].forwarder
    await forwarder.start()
    yield
    await forwarder.stop()


def start_metadata(
    proxy: Proxy, spec: MetadataConfig, previous: MetadataStore | None = None
) -> None:
    """Run a metadata store for ``spec``; it becomes ``proxy.store``.

    On a reload ``previous`` is the store just stopped: the rules that did not change keep
    its tables (see MetadataStore.adopt), and the snapshot file is not read, since the
    tables in memory are newer. Table updates go to whatever ``proxy.engine`` is then, so
    the engine must already be the one whose rules are ``spec``'s.
    """
    telemetry = proxy.telemetry

    def on_update(update: TableUpdate) -> None:
        if proxy.store is not store:
            return  # from a store a reload replaced that has not stopped yet: its rules differ
        table, rule = update.build.table, update.rule.name
        changed = proxy.engine.set_table(table, update.rule_index)
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
        if proxy.store is not store:
            return
        telemetry.metadata_reloads.labels(follower.rule.name, "failure").inc()
        state = "keeping the last good table" if follower.table is not None else "not ready"
        log.error("rule=%s metadata unavailable (%s): %s", follower.rule.name, state, exc)

    def on_state(follower: RuleFollower) -> None:
        if proxy.store is not store:
            return
        for state in FollowState:
            gauge = telemetry.metadata_follow_state.labels(follower.rule.name, state.value)
            gauge.set(state is follower.state)
        log.info("rule=%s metadata %s", follower.rule.name, follower.state.value)

    store = MetadataStore(spec, on_update, on_failure, on_state, proxy.health)
    adopted = store.adopt(previous) if previous is not None else []
    proxy.store = store

    def age_of(follower: RuleFollower) -> Callable[[], float]:
        return lambda: time.time() - follower.confirmed_at if follower.table else math.nan

    for follower in store.followers:
        on_state(follower)
        telemetry.watch_function(
            telemetry.metadata_age.labels(follower.rule.name), age_of(follower)
        )
    if previous is None:
        store.restore_snapshot()
    else:
        names = {follower.rule.name for follower in store.followers}
        for follower in previous.followers:
            if follower.rule.name not in names:
                telemetry.forget_rule(follower.rule.name, (state.value for state in FollowState))
        for follower in store.followers:
            if follower not in adopted:
                log.info(
                    "rule=%s is new or changed: not ready until its table is read",
                    follower.rule.name,
                )
    telemetry.ready.set(proxy.ready)
    proxy.metadata_task = asyncio.create_task(store.run(), name="metadata")


async def stop_metadata(proxy: Proxy) -> None:
    """Stop ``proxy.store``'s task and close it; it stays ``proxy.store`` (for a successor).

    pymongo (4.20) sometimes swallows a cancellation that lands while it sets up a connection
    and the task carries on; cancelling again ends it. The wait is bounded all the same: a
    reload holds the flusher, and a shutdown has its deadline.
    """
    task, proxy.metadata_task = proxy.metadata_task, None
    if task is not None:
        for _ in range(STORE_STOP_ATTEMPTS):
            task.cancel()
            done, _pending = await asyncio.wait({task}, timeout=STORE_STOP_WAIT_SECONDS)
            if done:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
                break
        else:
            log.error("metadata store did not stop when cancelled; left behind")
    if proxy.store is not None:
        await proxy.store.close()


async def metadata_ctx(app: web.Application) -> AsyncIterator[None]:
    proxy = app[PROXY]
    start_metadata(proxy, proxy.config.metadata)
    yield
    await stop_metadata(proxy)


def restore_state(proxy: Proxy, store: StateStore) -> int:
    """Continue the aggregation saved by the last run: the newest checkpoint the engine can
    read, and the emitted marker. Returns the first input-log record that checkpoint does not
    cover (0 without one: the whole log is applied again).

    A damaged checkpoint was reported and moved aside by the store; one that passes its
    checksum but that the engine cannot read (another version's, a bug's) is too, and the
    engine is rebuilt empty before the previous checkpoint is tried. No file can stop a start.
    """
    for saved in store.checkpoints():
        try:
            skipped = proxy.engine.restore_state(saved.views)
        except Exception as exc:  # untrusted content: whatever the engine raises
            store.reject(saved, f"{type(exc).__name__}: {exc}")
            proxy.engine = fresh_engine(proxy)
            continue
        for name, reason in skipped.items():
            log.warning("view=%s starts empty: %s", name, reason)
        log.info("aggregation state restored from %s", saved.path)
        proxy.engine.mark_emitted_through(store.load_marker())
        return saved.input_log_next
    proxy.engine.mark_emitted_through(store.load_marker())
    return 0


def fresh_engine(proxy: Proxy) -> Engine:
    """An empty engine for the running configuration, with the tables already loaded."""
    engine, _ = make_engine(proxy.config)
    if proxy.store is not None:
        for index, follower in enumerate(proxy.store.followers):
            if follower.table is not None:
                engine.set_table(follower.table, index)
    return engine


async def replay_input_log(proxy: Proxy, input_log: InputLog, first: int) -> None:
    """Apply the requests acknowledged after the last checkpoint again, once every table is
    loaded (they need the same joins); writes wait meanwhile."""
    records = input_log.unapplied(first)
    if not records:
        proxy.replaying = False
        proxy.telemetry.ready.set(proxy.ready)
        return
    while proxy.store is None or not proxy.store.loaded:
        await asyncio.sleep(0.1)
    applied = 0
    for record in records:
        try:
            proxy.engine.ingest(record.body, now_ms(), input_log.protocol_of(record))
            applied += 1
        except RequestError as exc:  # it was accepted once: this cannot happen but must not stop us
            log.error("input log record %d skipped: %s", record.number, exc)
    proxy.replaying = False
    proxy.telemetry.ready.set(proxy.ready)
    log.info("input log: %d requests acknowledged before the stop applied again", applied)


def forward(proxy: Proxy, outputs: list[ViewOutput]) -> None:
    """Queue each view's output for the destinations that receive that view."""
    proxy.telemetry.record_outputs(outputs)
    for output in outputs:
        proxy.forwarder.enqueue(output.samples, output.view)
    proxy.forwarder.sync()


async def forward_in_slices(
    proxy: Proxy, outputs: list[ViewOutput], unqueued: list[ViewOutput]
) -> None:
    """``forward``, FORWARD_SLICE_SAMPLES at a time, giving the event loop back between two
    (routing and encoding 100 k samples is tens of milliseconds). What is not queued yet waits
    in ``unqueued``, so that if the caller is cancelled meanwhile (shutdown), the next flush
    queues it first: the windows are marked emitted already, and must not be lost."""
    slices = [
        ViewOutput(output.view, output.samples[start : start + FORWARD_SLICE_SAMPLES])
        for output in outputs
        for start in range(0, len(output.samples), FORWARD_SLICE_SAMPLES)
    ]
    proxy.telemetry.record_outputs(outputs)
    unqueued.extend(slices)
    while unqueued:
        piece = unqueued[0]
        proxy.forwarder.enqueue(piece.samples, piece.view)
        del unqueued[0]
        if unqueued:
            await asyncio.sleep(0)
    proxy.forwarder.sync()


def checkpoint(proxy: Proxy) -> None:
    """Write the aggregation state (with ``state_path``; a no-op without).

    Skipped while the last run's log is being applied (it would cover records not in yet) and
    while emitted output is held in memory because the disk refused it (a crash would lose
    it, and the checkpoint would keep the log from bringing it back). A failed write is
    reported by the store and tried again at the next interval; the input log keeps
    everything meanwhile.
    """
    store = proxy.state_store
    if store is None or proxy.replaying:
        return
    if store.marker_pending or proxy.forwarder.holds_unqueued:
        return
    started = time.perf_counter()
    input_log = proxy.input_log
    covered = input_log.covered_through if input_log is not None else 0
    try:
        cut_at = store.save(proxy.engine.export_state(), covered)
    except OSError:
        return
    if input_log is not None:
        # Only what the *previous* checkpoint covers: if the new one is found damaged at the
        # next start, the previous one and the log from there bring everything back.
        input_log.covered_by_checkpoint(cut_at)
    proxy.telemetry.checkpoint_duration.observe(time.perf_counter() - started)


async def flusher_ctx(app: web.Application) -> AsyncIterator[None]:
    """Emits complete windows every tick; with ``state_path``, also checkpoints the state."""
    proxy = app[PROXY]
    settings = proxy.config.aggregation
    store = StateStore(settings.state_path, proxy.health) if settings.state_path else None
    proxy.state_store = store
    input_log: InputLog | None = None
    replay: asyncio.Task[None] | None = None
    if store is None and any(d.queue is not None for d in proxy.config.remote_write):
        log.warning(
            "remote_write has a disk queue but aggregation.state_path is not set: a crash "
            "loses the aggregation state and what was acknowledged since the last flush"
        )
    if store is not None:
        first_unapplied = restore_state(proxy, store)
        input_log = InputLog(Path(f"{store.path}.wal"), proxy.health)
        input_log.start()
        proxy.input_log = input_log
        proxy.replaying = True
        replay = asyncio.create_task(
            replay_input_log(proxy, input_log, first_unapplied), name="input-log-replay"
        )

    held: list[ViewOutput] = []
    """Output of windows emitted but not queued yet: their marker could not be written yet, or
    the flusher was stopped while queueing them."""

    async def flush(final: bool, exclusive: bool = False) -> None:
        """Emit complete windows; OSError while the disk refuses what must come first.

        Nothing new is emitted while earlier output waits in memory for the disk (the marker,
        or a disk queue): the windows stay in the engine, and a checkpoint taken meanwhile
        would otherwise cover output that only memory holds. ``exclusive``: the caller has the
        engine alone already (shutdown), so the flush runs in one go.
        """
        if store is not None:
            store.retry_marker()
        if input_log is not None:
            input_log.retry_create()
        if held:
            forward(proxy, held)
            held.clear()
        if not proxy.forwarder.queue_held():
            return
        engine = proxy.engine
        if exclusive:
            outputs = engine.flush(now_ms(), final=final)
        else:
            outputs = await flush_in_steps(engine, proxy.gate, now_ms(), final)
        if store is not None and any(output.samples for output in outputs):
            # Before the samples are queued: after a crash, never emit these windows again.
            held.extend(outputs)
            store.mark_emitted(engine.emitted_through_ms())
            held.clear()
        if exclusive:
            forward(proxy, outputs)
        else:
            await forward_in_slices(proxy, outputs, held)

    def checkpoint_interval() -> float:
        return proxy.config.aggregation.checkpoint_interval_ms / 1000  # a reload may change it

    async def loop() -> None:
        next_checkpoint = time.monotonic() + checkpoint_interval()
        flushed_at = time.monotonic()
        last_bug = ""
        while True:
            await asyncio.sleep(FLUSH_TICK_SECONDS)
            if proxy.replaying:
                continue  # no window closes and no checkpoint covers the log before it is in
            if proxy.gate.ingests and time.monotonic() - flushed_at < MAX_FLUSH_DELAY_SECONDS:
                # A large request is being applied in steps: waiting for it would hold up
                # every small write behind the flush; the windows close a tick later.
                continue
            flushed_at = time.monotonic()
            try:
                async with proxy.reload_lock:
                    await flush(final=False)
                    if store is not None and time.monotonic() >= next_checkpoint:
                        async with proxy.gate.exclusive():
                            checkpoint(proxy)
                        next_checkpoint = time.monotonic() + checkpoint_interval()
            except OSError:
                pass  # reported (DurabilityHealth) where it happened; the next tick retries
            except Exception as exc:  # a bug must not stop forwarding for good
                if repr(exc) != last_bug:
                    log.exception("flush failed; trying again every tick")
                    last_bug = repr(exc)

    task = asyncio.create_task(loop(), name="aggregation-flush")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    if replay is not None and not replay.done():
        replay.cancel()  # the log stays: the next start replays it
        with contextlib.suppress(asyncio.CancelledError):
            await replay
    # A reload under way finishes first, and so do the ingests under way.
    async with proxy.reload_lock, proxy.gate.exclusive():
        try:
            if store is not None and not proxy.replaying:
                # The open windows stay open: the next start continues them from the checkpoint.
                await flush(final=False, exclusive=True)
                checkpoint(proxy)
            elif store is None:
                await flush(final=True, exclusive=True)
        except OSError:
            # Reported where it happened. The input log still holds every acknowledged write
            # since the last checkpoint: the next start applies them again.
            log.error("shutdown: the state could not be saved; the next start replays the log")
    if input_log is not None:
        await input_log.stop()
    timeout = proxy.config.shutdown_timeout_ms / 1000
    if not await proxy.forwarder.drain(timeout):
        log.error("shutdown: queues not drained within %.0fs", timeout)


# --- configuration reload ----------------------------------------------------------------------

RELOAD_PATH = "/-/reload"


async def reload_config(proxy: Proxy) -> ReloadPlan:
    """Read the configuration file again and apply it; ConfigError keeps the running one.

    One reload at a time. The flusher waits meanwhile (``reload_lock``), so no window leaves
    while views and destinations are switched. Every outcome is logged and counted.
    """
    path = proxy.config_path
    if path is None:
        raise NotReloadable(
            "enrichproxy was started without a configuration file: there is nothing to reload"
        )
    async with proxy.reload_lock:
        try:
            loaded = proxy.overrides(await asyncio.to_thread(load_config, path))
        except ConfigError as exc:
            proxy.telemetry.record_reload(False, time.time())
            log.error(
                "configuration %s not reloaded, the running one is kept: %s",
                path,
                "; ".join(exc.problems),
            )
            raise
        plan = plan_reload(proxy.config, loaded)
        for key in plan.restart_needed:
            log.warning("configuration: %s changed; it applies at the next restart", key)
        try:
            async with proxy.gate.exclusive():
                await apply_config(proxy, plan)
        except Exception:
            proxy.telemetry.record_reload(False, time.time())
            log.exception("configuration %s only partly applied; reload again to retry", path)
            raise
        proxy.telemetry.record_reload(True, time.time())
        log.info("configuration %s reloaded: %s", path, ", ".join(plan.changed) or "no change")
        return plan


async def apply_config(proxy: Proxy, plan: ReloadPlan) -> None:
    """Switch ``proxy`` to ``plan.config``; the caller holds ``reload_lock``.

    The order matters. The old metadata store stops before the engine is replaced, so no
    table update for its rules reaches an engine with other rules. The last windows of the
    views that changed are queued for the destinations as they were configured when those
    windows were aggregated, before the destinations change. Every step compares with what
    runs, so after a failure half-way the next reload finishes the job.
    """
    running, config = proxy.config, plan.config
    if not plan.changed:
        return
    previous_store = proxy.store if plan.metadata_changed else None
    if previous_store is not None:
        await stop_metadata(proxy)
    reconfigured = proxy.engine.reconfigure(config, now_ms())
    proxy.engine = reconfigured.engine
    if previous_store is not None:
        start_metadata(proxy, config.metadata, previous_store)
    if proxy.state_store is not None:
        # As in the flusher, before the windows are queued; and a checkpoint of the new views
        # now, so that a crash does not bring the old definitions back from the last one. A
        # disk that refuses the marker does not stop the reload (reported; the flusher retries
        # it before it emits anything else).
        with contextlib.suppress(OSError):
            proxy.state_store.mark_emitted(proxy.engine.emitted_through_ms())
        checkpoint(proxy)
    forward(proxy, reconfigured.outputs)
    for name in reconfigured.removed:
        proxy.telemetry.forget_view(name)
    for what, names in (
        ("continues with its aggregation state", reconfigured.kept),
        ("changed: its open windows were emitted and it starts empty", reconfigured.restarted),
        ("removed: its open windows were emitted", reconfigured.removed),
        ("added", reconfigured.added),
    ):
        for name in names:
            log.info("view=%s %s", name, what)
    if plan.remote_write_changed:
        await proxy.forwarder.reconfigure(config.remote_write, config.shutdown_timeout_ms / 1000)
    if config.log_level != running.log_level:
        logging.getLogger().setLevel(config.log_level.upper())
    proxy.config = config


async def handle_reload(request: web.Request) -> web.Response:
    """``POST /-/reload``: what SIGHUP does, answered 200, or 500 with the file's problems."""
    plan = await reload_config(request.app[PROXY])
    text = "configuration reloaded.\n"
    if plan.restart_needed:
        text += f"changed, applied at the next restart: {', '.join(plan.restart_needed)}\n"
    return web.Response(text=text)


async def reload_on_sighup(app: web.Application) -> AsyncIterator[None]:
    """A cleanup_ctx entry for ``serve``: SIGHUP reloads the configuration as /-/reload does.

    Not part of create_app: signals belong to the program, not to an app that a test or an
    embedding program runs in its own event loop.
    """
    proxy = app[PROXY]
    loop = asyncio.get_running_loop()
    running: set[asyncio.Task[None]] = set()

    async def reload() -> None:
        # reload_config has logged and counted whatever went wrong; nobody awaits an answer.
        with contextlib.suppress(Exception):
            await reload_config(proxy)

    def on_sighup() -> None:
        task = loop.create_task(reload(), name="config-reload")
        running.add(task)
        task.add_done_callback(running.discard)

    loop.add_signal_handler(signal.SIGHUP, on_sighup)
    yield
    loop.remove_signal_handler(signal.SIGHUP)
    await asyncio.gather(*running)


def durability_health(telemetry: Telemetry) -> DurabilityHealth:
    """A DurabilityHealth whose reports are counted in ``telemetry``."""

    def on_damage(damage: Damage) -> None:
        telemetry.durability_corruption.labels(damage.file).inc()
        telemetry.durability_corrupt_bytes.labels(damage.file).inc(damage.bytes_lost)
        telemetry.durability_records_lost.labels(damage.file).inc(damage.records_lost or 0)

    health = DurabilityHealth(
        on_error=lambda file, op: telemetry.durability_errors.labels(file, op).inc(),
        on_damage=on_damage,
    )
    telemetry.watch_function(telemetry.durability_impaired, lambda: float(health.impaired))
    return health


def create_app(
    config: Config,
    telemetry: Telemetry | None = None,
    config_path: str | None = None,
    overrides: Callable[[Config], Config] | None = None,
) -> web.Application:
    """The application for ``config``; pass ``telemetry`` to use a registry of your own.

    With ``config_path``, the file ``config`` came from, ``POST /-/reload`` reads it again;
    ``overrides`` is applied to every configuration so read, as it was to ``config``.
    """
    telemetry = telemetry or Telemetry()
    health = durability_health(telemetry)
    engine, why = make_engine(config)
    log.info("engine=%s (%s)", engine.name, why)
    telemetry.record_build(engine.name)

    def series_type(metric_name: str) -> MetricType:
        """The type 2.0 destinations send a series with, from the engine in use at the time
        (a reload replaces the engine; the types it learnt carry over)."""
        return proxy.engine.planner.types.series_type(metric_name)

    proxy = Proxy(
        config=config,
        engine=engine,
        telemetry=telemetry,
        forwarder=Forwarder(
            config.remote_write,
            telemetry,
            encode=engine.encode_output,
            health=health,
            types=series_type,
            encode_v2=engine.encode_output_v2,
        ),
        config_path=config_path,
        health=health,
    )
    if overrides is not None:
        proxy.overrides = overrides
    telemetry.record_config_loaded(time.time())
    # Snappy's worst case: a body can be slightly larger than what it decodes to.
    max_body = config.max_decoded_bytes + config.max_decoded_bytes // 6 + 32
    app = web.Application(middlewares=[error_middleware, auth_middleware], client_max_size=max_body)
    app[PROXY] = proxy
    app.router.add_post(WRITE_PATH, handle_write)
    app.router.add_get("/metrics", handle_metrics)
    app.router.add_get("/-/healthy", handle_healthy)
    app.router.add_get("/-/ready", handle_ready)
    app.router.add_get(EXPLAIN_PATH, handle_explain)
    app.router.add_post(RELOAD_PATH, handle_reload)
    app.router.add_put(RELOAD_PATH, handle_reload)  # Prometheus takes both
    app.cleanup_ctx.extend([forwarder_ctx, metadata_ctx, flusher_ctx])
    return app
