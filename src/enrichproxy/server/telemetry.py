"""enrichproxy's own metrics: the only module that imports prometheus_client.

Every metric takes the registry it is given, so each test (and each app) gets a fresh one.
Names follow Prometheus conventions: ``enrichproxy_`` prefix, ``_total`` for counters,
base units (``_seconds``, ``_bytes``).
"""

from __future__ import annotations

import platform
from collections.abc import Callable, Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from enrichproxy import __version__
from enrichproxy.engine.interface import IngestResult, ViewOutput

EXPOSITION_CONTENT_TYPE = CONTENT_TYPE_LATEST

# `_created` series double every counter's exposition and no dashboard of ours reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus_client

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class Telemetry:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        # --- the process. Its whole state (tables, open windows, memory queues) lives in
        # memory, so process_resident_memory_bytes is the first thing to read when it grows;
        # the file descriptors count connections and disk-queue segments against their limit.
        # These are the collectors prometheus_client puts on its default registry; ours is a
        # registry of its own, so they are registered here: process_* (from /proc, Linux
        # only), python_info, and python_gc_* (collections and their objects).
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        # --- receiving
        self.requests = Counter(
            "enrichproxy_requests_total",
            "Remote-write requests received, by HTTP answer.",
            ["code"],
            registry=r,
        )
        # --- access control and limits
        self.auth_failures = Counter(
            "enrichproxy_auth_failures_total",
            "Requests refused with 401, by reason (missing, invalid). The answer itself never "
            "says which part of the credentials was wrong.",
            ["reason"],
            registry=r,
        )
        self.limit_rejections = Counter(
            "enrichproxy_limit_rejections_total",
            "Remote-write requests refused with 400 for exceeding a limit, by limit.",
            ["limit"],
            registry=r,
        )
        self.client_disconnects = Counter(
            "enrichproxy_client_disconnects_total",
            "Remote-write requests whose client closed the connection before the body was "
            "read (counted as code 499 in enrichproxy_requests_total too).",
            registry=r,
        )
        self.request_duration = Histogram(
            "enrichproxy_request_duration_seconds",
            "Time to decode and apply one remote-write request.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.received_bytes = Counter(
            "enrichproxy_received_bytes_total", "Compressed request bytes received.", registry=r
        )
        self.received_series = Counter(
            "enrichproxy_received_series_total",
            "Series received in accepted requests.",
            registry=r,
        )
        self.received_samples = Counter(
            "enrichproxy_received_samples_total",
            "Samples received in accepted requests.",
            registry=r,
        )
        self.received_metadata = Counter(
            "enrichproxy_received_metadata_total",
            "Metric metadata entries received.",
            registry=r,
        )
        self.samples_dropped = Counter(
            "enrichproxy_samples_dropped_total",
            "Input samples that fed no view, by reason.",
            ["reason"],
            registry=r,
        )
        self.exemplars_dropped = Counter(
            "enrichproxy_exemplars_dropped_total",
            "Exemplars received and not forwarded (they do not survive aggregation).",
            registry=r,
        )
        # --- enrichment
        self.lookups = Counter(
            "enrichproxy_lookups_total",
            "Series looked up in a metadata table, by rule and result (hit, miss, no_key).",
            ["rule", "result"],
            registry=r,
        )
        self.label_conflicts = Counter(
            "enrichproxy_enrichment_label_conflicts_total",
            "Series that already carried a label the metadata table provides.",
            registry=r,
        )
        self.series_cache_entries = Gauge(
            "enrichproxy_series_cache_entries",
            "Distinct input series whose enrichment and routing are cached.",
            registry=r,
        )
        self.input_series_limit = Gauge(
            "enrichproxy_input_series_limit",
            "limits.max_input_series: the input series held at most (0: no limit).",
            registry=r,
        )
        self.metadata_documents = Gauge(
            "enrichproxy_metadata_table_documents",
            "Entries in the metadata table in use, per rule.",
            ["rule"],
            registry=r,
        )
        self.metadata_last_success = Gauge(
            "enrichproxy_metadata_last_success_timestamp_seconds",
            "When a rule's table last took data from MongoDB (a full read or a change).",
            ["rule"],
            registry=r,
        )
        self.metadata_age = Gauge(
            "enrichproxy_metadata_age_seconds",
            "Time since a rule's table was last known to match MongoDB (NaN before any).",
            ["rule"],
            registry=r,
        )
        self.metadata_reloads = Counter(
            "enrichproxy_metadata_reloads_total",
            "Full reads of a rule's collection, and failures to reach MongoDB, by result "
            "(success, failure).",
            ["rule", "result"],
            registry=r,
        )
        self.metadata_changes = Counter(
            "enrichproxy_metadata_changes_total",
            "Change-stream events applied to a rule's table, by operation.",
            ["rule", "operation"],
            registry=r,
        )
        self.metadata_follow_state = Gauge(
            "enrichproxy_metadata_follow_state",
            "1 for the way a rule's table is kept current now: following (change stream), "
            "polling, down or starting.",
            ["rule", "state"],
            registry=r,
        )
        self.metadata_stale = Gauge(
            "enrichproxy_metadata_stale",
            "1 while a rule's table comes from the snapshot file, not from MongoDB.",
            ["rule"],
            registry=r,
        )
        self.metadata_rejected = Counter(
            "enrichproxy_metadata_documents_rejected_total",
            "Metadata documents or fields skipped, by rule and reason.",
            ["rule", "reason"],
            registry=r,
        )
        # --- views and aggregation
        self.view_samples_dropped = Counter(
            "enrichproxy_view_samples_dropped_total",
            "Samples a view did not aggregate in their own window, by reason (late, out_of_order, "
            "cardinality_limit).",
            ["view", "reason"],
            registry=r,
        )
        self.output_series = Gauge(
            "enrichproxy_output_series",
            "Output series (aggregation groups) per view.",
            ["view"],
            registry=r,
        )
        self.aggregation_inputs = Gauge(
            "enrichproxy_aggregation_input_series",
            "Input series tracked by each view's aggregation.",
            ["view"],
            registry=r,
        )
        self.aggregation_input_limit = Gauge(
            "enrichproxy_aggregation_input_series_limit",
            "The view's max_input_series: the inputs it tracks at most (0: no limit).",
            ["view"],
            registry=r,
        )
        self.open_windows = Gauge(
            "enrichproxy_aggregation_open_windows",
            "Aggregation windows waiting to be emitted, per view.",
            ["view"],
            registry=r,
        )
        self.aggregation_lag = Gauge(
            "enrichproxy_aggregation_watermark_lag_seconds",
            "Wall clock minus the newest sample time seen, per view.",
            ["view"],
            registry=r,
        )
        self.checkpoint_duration = Histogram(
            "enrichproxy_aggregation_checkpoint_duration_seconds",
            "Time to write the aggregation state to aggregation.state_path.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.output_samples = Counter(
            "enrichproxy_output_samples_total",
            "Samples emitted by each view (stale markers included).",
            ["view"],
            registry=r,
        )
        # --- forwarding
        self.forward_requests = Counter(
            "enrichproxy_forward_requests_total",
            "Remote-write requests sent, by destination and answer (status code or "
            "'error' for a connection failure).",
            ["destination", "code"],
            registry=r,
        )
        self.forward_protocol_fallbacks = Counter(
            "enrichproxy_forward_protocol_fallbacks_total",
            "Times a destination configured for remote write 2.0 answered 415 and was sent"
            " 1.0 from then on, by destination.",
            ["destination"],
            registry=r,
        )
        self.forward_retries = Counter(
            "enrichproxy_forward_retries_total",
            "Requests retried, by destination.",
            ["destination"],
            registry=r,
        )
        self.forward_samples = Counter(
            "enrichproxy_forward_samples_total",
            "Samples the destination accepted.",
            ["destination"],
            registry=r,
        )
        self.forward_dropped = Counter(
            "enrichproxy_forward_samples_dropped_total",
            "Samples given up on, by destination and reason (HTTP status or 'shutdown').",
            ["destination", "reason"],
            registry=r,
        )
        self.forward_duration = Histogram(
            "enrichproxy_forward_duration_seconds",
            "Duration of one send attempt.",
            ["destination"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.forward_relabel_dropped = Counter(
            "enrichproxy_forward_relabel_dropped_samples_total",
            "Output samples a destination's write_relabel_configs dropped (as configured: not "
            "a loss).",
            ["destination"],
            registry=r,
        )
        self.queue_samples = Gauge(
            "enrichproxy_queue_samples",
            "Samples queued for a destination.",
            ["destination"],
            registry=r,
        )
        self.queue_bytes = Gauge(
            "enrichproxy_queue_bytes",
            "Bytes of a destination's disk queue (0 in memory).",
            ["destination"],
            registry=r,
        )
        self.queue_capacity = Gauge(
            "enrichproxy_queue_capacity_samples",
            "Queued samples at which writes are answered 503.",
            ["destination"],
            registry=r,
        )
        self.queue_capacity_bytes = Gauge(
            "enrichproxy_queue_capacity_bytes",
            "max_bytes of a destination's disk queue; 0 for a memory queue.",
            ["destination"],
            registry=r,
        )
        self.ready = Gauge(
            "enrichproxy_ready",
            "1 once the metadata table is loaded and writes are accepted.",
            registry=r,
        )
        # --- durability: full or failing disks, damaged files (durability/health.py)
        self.durability_errors = Counter(
            "enrichproxy_durability_errors_total",
            "Failed writes, syncs or reads of a durable file, by file (input_log, queue, "
            "queue_ack, input_log_ack, checkpoint, emitted_marker) and operation. Each is "
            "retried until it works.",
            ["file", "op"],
            registry=r,
        )
        self.durability_impaired = Gauge(
            "enrichproxy_durability_impaired",
            "1 while a durable file cannot be written (writes are answered 503, output and "
            "checkpoints wait, /-/ready fails); 0 once every failed operation worked again.",
            registry=r,
        )
        self.durability_corruption = Counter(
            "enrichproxy_durability_corruption_total",
            "Damaged durable files or records found at start (reported, moved aside), by file.",
            ["file"],
            registry=r,
        )
        self.durability_corrupt_bytes = Counter(
            "enrichproxy_durability_corrupt_bytes_total",
            "Bytes of durable files that could not be used, by file.",
            ["file"],
            registry=r,
        )
        self.durability_records_lost = Counter(
            "enrichproxy_durability_records_lost_total",
            "Records (queued batches, logged requests) lost to damage, as far as counted, by file.",
            ["file"],
            registry=r,
        )
        # --- what runs: info metrics, as Prometheus' own prometheus_build_info. build_info
        # carries everything to join on (`* on (instance) group_left (version)
        # enrichproxy_build_info`); engine_info is the same engine label alone, kept because
        # queries and the `engine` key's documentation name it. Both are set by record_build
        # from one value, so they never disagree.
        self.build_info = Gauge(
            "enrichproxy_build_info",
            "1, with the enrichproxy version, the Python version and the engine that runs the "
            "data path (native or python) as labels.",
            ["version", "python_version", "engine"],
            registry=r,
        )
        self.engine_info = Gauge(
            "enrichproxy_engine_info",
            "1 for the engine that runs the data path: native or python.",
            ["engine"],
            registry=r,
        )
        # --- configuration (named after Prometheus' own prometheus_config_* metrics)
        self.config_last_reload_successful = Gauge(
            "enrichproxy_config_last_reload_successful",
            "1 when the last attempt to load the configuration file succeeded (at start or "
            "by a reload), 0 when it failed and the running configuration was kept.",
            registry=r,
        )
        self.config_last_reload_success = Gauge(
            "enrichproxy_config_last_reload_success_timestamp_seconds",
            "When the configuration in use was loaded (Unix time).",
            registry=r,
        )
        self.config_reloads = Counter(
            "enrichproxy_config_reloads_total",
            "Configuration reloads (SIGHUP or POST /-/reload), by result (success, failure).",
            ["result"],
            registry=r,
        )
        for result in ("success", "failure"):
            self.config_reloads.labels(result)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)

    def record_ingest(self, result: IngestResult) -> None:
        self.received_series.inc(result.series)
        self.received_samples.inc(result.samples)
        if result.metadata:
            self.received_metadata.inc(result.metadata)
        for (rule, lookup), count in result.lookups.items():
            self.lookups.labels(rule, lookup.name.lower()).inc(count)
        for reason, count in result.dropped.items():
            self.samples_dropped.labels(reason).inc(count)
        if result.label_conflicts:
            self.label_conflicts.inc(result.label_conflicts)
        if result.exemplars_skipped:
            self.exemplars_dropped.inc(result.exemplars_skipped)
        for (view, reason), count in result.view_dropped.items():
            self.view_samples_dropped.labels(view, reason).inc(count)

    def record_outputs(self, outputs: list[ViewOutput]) -> None:
        for output in outputs:
            if output.samples:
                self.output_samples.labels(output.view).inc(len(output.samples))

    def watch_function(self, gauge: Gauge, function: Callable[[], float]) -> None:
        gauge.set_function(function)

    def record_build(self, engine: str) -> None:
        """The engine chosen at start (it changes only with a restart, so this runs once)."""
        self.build_info.labels(__version__, platform.python_version(), engine).set(1)
        self.engine_info.labels(engine).set(1)

    def record_config_loaded(self, timestamp: float) -> None:
        """The configuration in use was loaded (at start, or by a successful reload)."""
        self.config_last_reload_successful.set(1)
        self.config_last_reload_success.set(timestamp)

    def record_reload(self, success: bool, timestamp: float) -> None:
        self.config_reloads.labels("success" if success else "failure").inc()
        if success:
            self.record_config_loaded(timestamp)
        else:
            self.config_last_reload_successful.set(0)

    def forget_view(self, view: str) -> None:
        """A view was removed by a reload: its gauges would otherwise show their last values
        for good (counters stay, as Prometheus expects of them)."""
        for gauge in (
            self.output_series,
            self.aggregation_inputs,
            self.aggregation_input_limit,
            self.open_windows,
            self.aggregation_lag,
        ):
            gauge.remove(view)

    def forget_destination(self, destination: str) -> None:
        """A destination was stopped by a reload: its queue gauges read the stopped queue."""
        for gauge in (
            self.queue_samples,
            self.queue_bytes,
            self.queue_capacity,
            self.queue_capacity_bytes,
        ):
            gauge.remove(destination)

    def forget_rule(self, rule: str, follow_states: Iterable[str]) -> None:
        """An enrichment rule was removed by a reload: drop its gauges."""
        for gauge in (
            self.metadata_documents,
            self.metadata_last_success,
            self.metadata_age,
            self.metadata_stale,
        ):
            gauge.remove(rule)
        for state in follow_states:
            self.metadata_follow_state.remove(rule, state)
