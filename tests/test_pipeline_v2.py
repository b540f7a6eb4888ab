"""Remote write 2.0 requests through the engine under test: per-series types decide counter or
gauge, a series is one input whichever protocol brings it, histograms and exemplars are counted
and skipped as in 1.0."""

from __future__ import annotations

from engines import EngineUnderTest, new_engine

from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine import pipeline
from enrichproxy.metadata.table import build_table
from enrichproxy.model import MetricType
from enrichproxy.wire.codec import compress, encode_labels, encode_write_request
from enrichproxy.wire.proto import write_v2_pb2 as pb
from enrichproxy.wire.v2 import WireProtocol, encode_v2_request

START = 1_700_000_000_000
SECOND = 1000


def config() -> Config:
    return parse_config(
        {
            "views": [{"name": "ops", "keep": ["service"]}],
            "aggregation": {"interval": "10s", "lateness": "0s"},
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        }
    )


def engine_with_table() -> EngineUnderTest:
    """The engine under test, pod a of service s in its table."""
    settings = config()
    engine = new_engine(settings)
    rule = settings.metadata.enrich_rules[0]
    engine.set_table(build_table([{"pod": "a", "service": "s"}], rule, 1, 0.0).table)
    return engine


def labels(metric: str) -> bytes:
    return encode_labels((("__name__", metric), ("pod", "a")))


def outputs_of(metric: str, metric_type: MetricType) -> list[float]:
    """The view's values for the input 10, then 2 (a drop: a reset for a counter), in two
    windows, sent as 2.0 with ``metric_type`` on the series."""
    engine = engine_with_table()
    values = []
    for step, value in enumerate((10.0, 2.0)):
        at = START + step * 10 * SECOND
        body = compress(encode_v2_request([(labels(metric), [(at, value)], metric_type)]))
        engine.ingest(body, at, WireProtocol.V2)
        values += [s.value for out in engine.flush(at + 10 * SECOND) for s in out.samples]
    values += [s.value for out in engine.flush(START + 60 * SECOND, True) for s in out.samples]
    return values


def test_the_series_type_decides_counter_or_gauge_whatever_the_name_says() -> None:
    counted = outputs_of("jobs_done", MetricType.COUNTER)
    gauged = outputs_of("jobs_done", MetricType.GAUGE)
    assert counted == [10.0, 12.0]  # reset-safe: the 2 after the reset adds to the 10
    assert gauged == [10.0, 2.0]
    assert outputs_of("temperature_total", MetricType.GAUGE) == gauged
    assert outputs_of("temperature_total", MetricType.UNKNOWN) == counted  # the suffix decides


def test_a_series_is_one_input_whichever_protocol_brings_it() -> None:
    engine = engine_with_table()
    engine.ingest(compress(encode_write_request([(labels("jobs_total"), [(START, 1.0)])])), START)
    v2_body = encode_v2_request(
        [(labels("jobs_total"), [(START + SECOND, 2.0)], MetricType.COUNTER)]
    )
    engine.ingest(compress(v2_body), START + SECOND, WireProtocol.V2)
    assert engine.stats().cached_series == 1
    assert engine.stats().views[0].inputs == 1


def test_histograms_and_exemplars_are_counted_and_skipped() -> None:
    engine = engine_with_table()
    message = pb.Request(symbols=["", "__name__", "jobs_total", "pod", "a", "trace_id", "x"])
    message.timeseries.append(
        pb.TimeSeries(
            labels_refs=[1, 2, 3, 4],
            samples=[pb.Sample(value=1.0, timestamp=START)],
            exemplars=[pb.Exemplar(labels_refs=[5, 6], value=1.0, timestamp=START)] * 2,
        )
    )
    message.timeseries.append(
        pb.TimeSeries(
            labels_refs=[1, 2, 3, 4],
            histograms=[pb.Histogram(count_int=1, sum=1.0, timestamp=START)] * 3,
        )
    )
    result = engine.ingest(compress(message.SerializeToString()), START, WireProtocol.V2)
    assert result.samples == 1
    assert result.exemplars_skipped == 2
    assert result.dropped[pipeline.DROP_NATIVE_HISTOGRAM] == 3
