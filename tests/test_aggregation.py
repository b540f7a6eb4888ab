"""Streaming aggregation, as tables in the style of vmagent's stream-aggregation tests.

Each case is a script run through a real Pipeline (codec, enrichment, one view ``ops`` keeping
``service``, aggregation) on a fake clock:

* a string is one remote-write request of sample lines (``promtext``), ingested at the wall
  time of its newest sample unless ``Push(..., at=)`` says otherwise;
* ``Flush(at, emits)`` flushes at wall time ``at`` and must emit exactly the ``emits`` lines;
* ``Table`` installs a metadata table (pod → service), ``Types`` sends a metadata request.

Windows are 15 s by default: a sample at ``@1000`` lands in the window emitted ``@15000``.
Besides each case's expectations, every run checks that an output series gets at most one
sample per window, in strictly increasing time, and that a ``_total`` output never decreases.
"""

from __future__ import annotations

import math
import random
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field

import pytest
from engines import new_engine
from promtext import decoded_request, format_output, format_sample, normalise, parse_lines

from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine.aggregation import (
    EXPIRY_SWEEP_MS,
    AggregationSettings,
    Observed,
    ViewAggregator,
)
from enrichproxy.metadata.table import build_table
from enrichproxy.model import (
    METRIC_NAME_LABEL,
    STALE_NAN,
    MetricMetadata,
    MetricType,
    OutputSample,
    is_stale_marker,
)
from enrichproxy.wire import codec

INTERVAL = 15_000
OPS = 'service="s",view="ops"'


@dataclass(frozen=True)
class Push:
    lines: str
    at: int | None = None


@dataclass(frozen=True)
class Flush:
    at: int
    emits: str = ""
    final: bool = False


@dataclass(frozen=True)
class Table:
    services: Mapping[str, str]
    """pod → service."""


@dataclass(frozen=True)
class Types:
    family: str
    type: MetricType


Step = str | Push | Flush | Table | Types


@dataclass(frozen=True)
class Case:
    steps: list[Step]
    late: int = 0
    out_of_order: int = 0
    dropped: Mapping[str, int] = field(default_factory=dict)
    aggregation: Mapping[str, str] = field(default_factory=dict)
    """Overrides of the ``aggregation`` YAML section."""


TABLE_LATENESS = "30s"
"""The cases below are written for a 30 s lateness (longer than the default, so that a window
can wait while later samples arrive); a case may set its own."""


def make_config(aggregation: Mapping[str, str]) -> Config:
    return parse_config(
        {
            "metadata": {"fields": ["service"]},
            "views": [{"name": "ops", "keep": ["service"]}],
            "aggregation": {"lateness": TABLE_LATENESS, **aggregation},
            "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
        }
    )


def check_output_invariants(
    emitted: list[OutputSample], interval_ms: int, across_markers: bool = True
) -> None:
    """At most one sample per output series and window, in strictly increasing time, at window
    ends; a counter output (``_total``) never goes down (with ``across_markers=False`` it may
    start lower after a staleness marker: a group forgotten after retention starts over)."""
    by_series: dict[bytes, list[OutputSample]] = defaultdict(list)
    for sample in emitted:
        by_series[sample.label_bytes].append(sample)
    for label_bytes, samples in by_series.items():
        name = dict(codec.decode_labels(label_bytes))[METRIC_NAME_LABEL]
        times = [s.timestamp_ms for s in samples]
        assert times == sorted(set(times)), f"{name}: timestamps not strictly increasing"
        assert all(t % interval_ms == 0 for t in times), f"{name}: not at window ends"
        values = [s.value for s in samples if not is_stale_marker(s.value)]
        assert not any(math.isnan(v) for v in values), f"{name}: a NaN that is no marker"
        if not name.endswith("_total"):
            continue
        runs: list[list[float]] = [[]]
        for s in samples:
            if is_stale_marker(s.value) and not across_markers:
                runs.append([])
            elif not is_stale_marker(s.value):
                runs[-1].append(s.value)
        for run_values in runs:
            assert run_values == sorted(run_values), f"{name}: counter went down: {run_values}"


def run(case: Case) -> None:
    config = make_config(case.aggregation)
    pipeline = new_engine(config)
    dropped: Counter[str] = Counter()
    late = out_of_order = 0
    emitted: list[OutputSample] = []
    for number, given in enumerate(case.steps):
        step = Push(given) if isinstance(given, str) else given
        if isinstance(step, Push):
            newest = max(sample.timestamp_ms for sample in parse_lines(step.lines))
            result = pipeline.apply(decoded_request(step.lines), step.at or newest)
            dropped.update(result.dropped)
            late += result.view_dropped["ops", "late"]
            out_of_order += result.view_dropped["ops", "out_of_order"]
        elif isinstance(step, Table):
            documents = [{"pod": pod, "service": svc} for pod, svc in step.services.items()]
            assert pipeline.set_table(
                build_table(documents, config.metadata.enrich_rules[0], number, 0.0).table
            )
        elif isinstance(step, Types):
            metadata = [MetricMetadata(step.family, step.type, "", "")]
            pipeline.apply(decoded_request("", metadata), 0)
        else:
            (output,) = pipeline.flush(step.at, final=step.final)
            assert output.view == "ops"
            emitted.extend(output.samples)
            got = sorted(format_output(sample) for sample in output.samples)
            assert got == normalise(step.emits), f"step {number}: {step}"
    assert (late, out_of_order) == (
        case.late,
        case.out_of_order,
    )
    assert dropped == Counter(case.dropped)
    check_output_invariants(emitted, config.aggregation.interval_ms)


def out(name: str, *points: str) -> str:
    """Output lines of ``name`` in group ``service="s"``: ``out("x_total", "10 @15000")``."""
    return "\n".join(f"{name}{{{OPS}}} {point}" for point in points)


CASES = [
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 1 @1000',
                # A sender whose clock is 9 minutes ahead (inside the 10-minute cutoff).
                Push('order_total{pod="b",service="s"} 5 @541000', at=16000),
                Flush(16000),  # closes nothing: the proxy's clock says 16 s
                Push('order_total{pod="a",service="s"} 2 @16000', at=16000),
                Push('order_total{pod="a",service="s"} 3 @31000', at=31000),
                Push('order_total{pod="a",service="s"} 4 @46000', at=46000),
                Flush(46000, out("order_total", "1 @15000")),
                Flush(
                    46000,
                    out("order_total", "2 @30000", "3 @45000", "4 @60000", "9 @555000"),
                    final=True,
                ),
            ],
            late=0,
        ),
        id="a sample from a clock ahead cannot close the windows of the others",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000',
                'order_total{pod="a",service="s"} +Inf @16000',
                'order_total{pod="a",service="s"} 12 @31000',
                'order_total{pod="a",service="s"} -Inf @46000',
                'order_total{pod="a",service="s"} 13 @47000',
                Flush(
                    47000,
                    out("order_total", "10 @15000", "12 @45000", "13 @60000"),
                    final=True,
                ),
            ],
            dropped={"infinite_counter": 2},
        ),
        id="an infinite counter sample is left out: no window after it is poisoned or reset",
    ),
    pytest.param(
        Case(
            [
                'temperature{pod="a",service="s"} 10 @1000',
                'temperature{pod="a",service="s"} +Inf @16000',
                'temperature{pod="a",service="s"} 12 @31000',
                Flush(
                    31000, out("temperature", "10 @15000", "+Inf @30000", "12 @45000"), final=True
                ),
            ]
        ),
        id="a gauge keeps an infinite value in its window only",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000',
                Flush(1000, out("order_total", "10 @15000"), final=True),
            ]
        ),
        id="one input alone gives its own value",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 0.1 @1000',
                'order_total{pod="a",service="s"} 0.7 @16000',
                Flush(16000, out("order_total", "0.1 @15000", "0.7 @30000"), final=True),
            ]
        ),
        id="one input alone keeps its exact float value",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000\n'
                'order_total{pod="b",service="s"} 5 @2000',
                Flush(2000, out("order_total", "15 @15000"), final=True),
            ]
        ),
        id="sum of two pods",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 1 @1000\n'
                'order_total{pod="a",service="s"} 2 @5000\n'
                'order_total{pod="a",service="s"} 3 @14000',
                'order_total{pod="b",service="s"} 5 @15000',  # a window includes its end
                'order_total{pod="b",service="s"} 6 @15001',
                Flush(15001, out("order_total", "8 @15000", "9 @30000"), final=True),
            ]
        ),
        id="one sample per window: the last of each input counts",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000\n'
                'order_total{pod="b",service="s"} 5 @1000',
                'order_total{pod="a",service="s"} 2 @16000\n'
                'order_total{pod="b",service="s"} 6 @16000',
                'order_total{pod="a",service="s"} 4 @31000',
                Flush(31000, out("order_total", "15 @15000", "18 @30000", "20 @45000"), final=True),
            ]
        ),
        id="counter reset never makes the output go down",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000',
                'order_total{pod="a",service="s"} 3 @16000',
                'order_total{pod="a",service="s"} 1 @31000',
                Flush(31000, out("order_total", "10 @15000", "13 @30000", "14 @45000"), final=True),
            ]
        ),
        id="a single input through two resets",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000\n'
                'order_total{pod="b",service="s"} 5 @1000',
                'order_total{pod="a",service="s"} stale @16000\n'
                'order_total{pod="b",service="s"} 7 @16000',
                'order_total{pod="c",service="s"} 3 @31000\n'
                'order_total{pod="b",service="s"} 8 @31000',
                Flush(31000, out("order_total", "15 @15000", "17 @30000", "21 @45000"), final=True),
            ]
        ),
        id="pod churn: an ended pod keeps its part, a new pod adds its value",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} 10 @1000\ninflight{pod="b",service="s"} 5 @1000',
                'inflight{pod="a",service="s"} stale @16000',
                Flush(16000, out("inflight", "15 @15000", "5 @30000"), final=True),
            ]
        ),
        id="a staleness marker ends a gauge input and is never summed",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000',
                'order_total{pod="a",service="s"} stale @16000',
                'order_total{pod="a",service="s"} 3 @31000',
                Flush(
                    31000, out("order_total", "10 @15000", "stale @30000", "13 @45000"), final=True
                ),
            ]
        ),
        id="a group whose inputs all ended emits a marker; a restarted pod continues the total",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} 4 @1000\ninflight{pod="b",service="s"} 1 @1000',
                'inflight{pod="a",service="s"} stale @16000',
                'inflight{pod="b",service="s"} stale @17000',
                Flush(17000, out("inflight", "5 @15000", "stale @30000"), final=True),
            ]
        ),
        id="a gauge group emits one marker once its last input ended",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} stale @1000',
                Flush(1000, "", final=True),
            ]
        ),
        id="no marker for a group that never emitted a value",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} 10 @1000\ninflight{pod="b",service="s"} 1 @1000',
                'inflight{pod="b",service="s"} 2 @31000',
                'inflight{pod="b",service="s"} 3 @62000',
                Flush(
                    62000,
                    out("inflight", "11 @15000", "12 @45000", "3 @75000"),
                    final=True,
                ),
            ],
            aggregation={"stale_after": "1m"},
        ),
        id="a gauge input unseen for stale_after ends and leaves the sum",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000\n'
                'order_total{pod="b",service="t"} 1 @1000',
                'order_total{pod="b",service="t"} 2 @62000',
                Flush(
                    62000,
                    out("order_total", "10 @15000", "stale @75000")
                    + '\norder_total{service="t",view="ops"} 1 @15000'
                    + '\norder_total{service="t",view="ops"} 2 @75000',
                    final=True,
                ),
            ],
            aggregation={"stale_after": "1m"},
        ),
        id="a group whose only input went unseen for stale_after emits a marker",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} 10 @1000\ninflight{pod="b",service="t"} 1 @1000',
                'inflight{pod="b",service="t"} 2 @62000',
                # Watermark 62 s: windows up to 30 s close, pod a (last seen at 1 s) expires.
                Flush(
                    62000,
                    out("inflight", "10 @15000") + '\ninflight{service="t",view="ops"} 1 @15000',
                ),
                # Pod a was alive after all: its sample at 50 s arrives behind the watermark.
                'inflight{pod="a",service="s"} 11 @50000',
                Flush(
                    62000,
                    out("inflight", "11 @60000", "11 @75000")
                    + '\ninflight{service="t",view="ops"} 2 @75000',
                    final=True,
                ),
            ],
            aggregation={"stale_after": "1m"},
        ),
        id="an input expired too early takes effect in its own window",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000',
                'order_total{pod="a",service="s"} 20 @50000',
                # Watermark 50 s minus 30 s lateness: the first window closes.
                Flush(50000, out("order_total", "10 @15000")),
                'order_total{pod="b",service="s"} 5 @2000',  # late: its window was emitted
                'order_total{pod="a",service="s"} 15 @14000',  # late, and older than a's last
                'order_total{pod="b",service="s"} 7 @51000',  # carries b's increase
                Flush(51000, out("order_total", "27 @60000"), final=True),
            ],
            late=2,
        ),
        id="late samples are counted, not emitted; a counter's next sample carries them",
    ),
    pytest.param(
        Case(
            [
                Push('order_total{pod="a",service="s"} 10 @1000', at=1000),
                Flush(1000),
                Flush(61000, out("order_total", "10 @15000")),  # idle: the window is out
                Push('order_total{pod="a",service="s"} 11 @14000', at=61100),  # late
                Push('order_total{pod="a",service="s"} 2 @16000', at=61200),  # a reset
                # 11 before the reset stays counted: 11 + 2, not 10 + 2.
                Flush(61300, out("order_total", "13 @30000"), final=True),
            ],
            late=1,
        ),
        id="a late sample still moves its input: a reset after it loses nothing",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} 1 @1000\ninflight{pod="b",service="s"} 1 @1000',
                'inflight{pod="a",service="s"} 2 @50000',
                # 50 s - 30 s lateness is past the first window, but b has sent nothing newer
                # than 1 s yet (its next samples are in another request, still on the way).
                Flush(50000),
                'inflight{pod="b",service="s"} 3 @14000',
                'inflight{pod="b",service="s"} 4 @50000',
                Flush(50000, out("inflight", "4 @15000")),
                Flush(50000, out("inflight", "6 @60000"), final=True),
            ]
        ),
        id="a window waits until every input that still sends has passed it",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} 1 @1000\ninflight{pod="b",service="s"} 1 @1000',
                'inflight{pod="a",service="s"} 2 @80000',
                # b has been silent for more than idle_flush (1 m) of sample time: not waited for.
                Flush(80000, out("inflight", "2 @15000")),
                'inflight{pod="b",service="s"} 3 @14000',  # late
                Flush(80000, out("inflight", "5 @90000"), final=True),
            ],
            late=1,
        ),
        id="an input silent for idle_flush of sample time holds no window back",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000\n'
                'order_total{pod="b",service="s"} 5 @1000',
                'order_total{pod="a",service="s"} 12 @16000',
                # The first request again (a retry): older than what a has seen.
                'order_total{pod="a",service="s"} 10 @1000\n'
                'order_total{pod="b",service="s"} 5 @1000',
                'order_total{pod="a",service="s"} 11 @15500',  # out of order inside a window
                Flush(16000, out("order_total", "15 @15000", "17 @30000"), final=True),
            ],
            out_of_order=3,
        ),
        id="retried and out-of-order samples are not double-counted",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} 10 @1000\ninflight{pod="b",service="s"} 5 @1000',
                'inflight{pod="a",service="s"} 4 @16000',
                'inflight{pod="b",service="s"} 1 @31000',
                Flush(31000, out("inflight", "15 @15000", "9 @30000", "5 @45000"), final=True),
            ]
        ),
        id="a gauge is the sum of the latest value of each live input, down as well as up",
    ),
    pytest.param(
        Case(
            [
                Push('order_total{pod="a",service="s"} 10 @1000', at=1000),
                Flush(1000),
                Flush(60999),  # 59.999 s without a newer sample: not idle yet
                Flush(61000, out("order_total", "10 @15000")),
                Push('order_total{pod="a",service="s"} 11 @14000', at=61100),  # window emitted
                Push('order_total{pod="a",service="s"} 12 @16000', at=61200),
                Flush(61200),
                Flush(61300, out("order_total", "12 @30000"), final=True),
            ],
            late=1,
        ),
        id="idle flush emits open windows once no newer sample arrives",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000',
                'order_total{pod="a",service="s"} 11 @44999',
                Flush(44999),  # 44.999 s - 30 s lateness is still inside the first window
                'order_total{pod="a",service="s"} 12 @45000',
                Flush(45000, out("order_total", "10 @15000")),
                Flush(45000, out("order_total", "12 @45000"), final=True),
            ]
        ),
        id="the watermark closes a window once it passes its end plus lateness",
    ),
    pytest.param(
        Case(
            [
                'order_total{pod="a",service="s"} 10 @1000',
                'order_total{pod="a",service="s"} 11 @16000',
                'order_total{pod="a",service="s"} 12 @31000',
                Flush(31000),
                Flush(31000, out("order_total", "11 @30000", "12 @45000", "10 @15000"), final=True),
            ]
        ),
        id="final flush emits every open window",
    ),
    pytest.param(
        Case(
            [
                'http_seconds_bucket{le="0.1",pod="a",service="s"} 3 @1000\n'
                'http_seconds_bucket{le="0.1",pod="b",service="s"} 2 @1000\n'
                'http_seconds_bucket{le="+Inf",pod="a",service="s"} 5 @1000\n'
                'http_seconds_bucket{le="+Inf",pod="b",service="s"} 4 @1000\n'
                'http_seconds_count{pod="a",service="s"} 5 @1000\n'
                'http_seconds_count{pod="b",service="s"} 4 @1000\n'
                'http_seconds_sum{pod="a",service="s"} 0.5 @1000\n'
                'http_seconds_sum{pod="b",service="s"} 0.25 @1000',
                Flush(
                    1000,
                    'http_seconds_bucket{le="0.1",service="s",view="ops"} 5 @15000\n'
                    'http_seconds_bucket{le="+Inf",service="s",view="ops"} 9 @15000\n'
                    'http_seconds_count{service="s",view="ops"} 9 @15000\n'
                    'http_seconds_sum{service="s",view="ops"} 0.75 @15000',
                    final=True,
                ),
            ]
        ),
        id="histogram buckets keep le apart",
    ),
    pytest.param(
        Case(
            [
                'payment_amount{pod="a",quantile="0.5",service="s"} 12 @1000\n'
                'payment_amount{pod="a",quantile="0.99",service="s"} 40 @1000\n'
                'payment_amount_sum{pod="a",service="s"} 100 @1000\n'
                'payment_amount_sum{pod="b",service="s"} 50 @1000\n'
                'payment_amount_count{pod="a",service="s"} 3 @1000\n'
                'payment_amount_count{pod="b",service="s"} 2 @1000',
                Flush(
                    1000,
                    out("payment_amount_sum", "150 @15000")
                    + "\n"
                    + out("payment_amount_count", "5 @15000"),
                    final=True,
                ),
            ],
            dropped={"unsummable_quantile": 2},
        ),
        id="summary quantiles are dropped with their reason, _sum and _count add up",
    ),
    pytest.param(
        Case(
            [
                'requests{pod="a",service="s"} 10 @1000\nrequests{pod="b",service="s"} 5 @1000',
                # Without metadata "requests" looks like a gauge: a decrease shows.
                'requests{pod="a",service="s"} 4 @16000\nrequests{pod="b",service="s"} 6 @16000',
                Types("requests", MetricType.COUNTER),
                # Now it is a counter: a's drop to 2 is a reset, the output does not go down.
                'requests{pod="a",service="s"} 2 @31000\nrequests{pod="b",service="s"} 7 @31000',
                'requests{pod="a",service="s"} 3 @46000\nrequests{pod="b",service="s"} 8 @46000',
                Flush(
                    46000,
                    out("requests", "15 @15000", "10 @30000", "13 @45000", "15 @60000"),
                    final=True,
                ),
            ]
        ),
        id="metadata turns a suffix-less metric into a counter",
    ),
    pytest.param(
        Case(
            [
                Table({"a": "s1", "b": "s1", "c": "s2"}),
                'order_total{pod="a"} 10 @1000\norder_total{pod="b"} 5 @1000\n'
                'order_total{pod="c"} 1 @1000',
                Table({"a": "s2", "b": "s1", "c": "s2"}),  # pod a moves to service s2
                'order_total{pod="a"} 12 @16000\norder_total{pod="b"} 6 @16000\n'
                'order_total{pod="c"} 2 @16000',
                'order_total{pod="a"} 15 @31000\norder_total{pod="b"} 7 @31000\n'
                'order_total{pod="c"} 3 @31000',
                Flush(
                    31000,
                    'order_total{service="s1",view="ops"} 15 @15000\n'
                    'order_total{service="s1",view="ops"} 16 @30000\n'
                    'order_total{service="s1",view="ops"} 17 @45000\n'
                    'order_total{service="s2",view="ops"} 1 @15000\n'
                    'order_total{service="s2",view="ops"} 4 @30000\n'
                    'order_total{service="s2",view="ops"} 8 @45000',
                    final=True,
                ),
            ]
        ),
        id="a pod moved to another service: old group keeps its total, new counts increases",
    ),
    pytest.param(
        Case(
            [
                Table({"a": "s1", "b": "s1", "c": "s2"}),
                'inflight{pod="a"} 10 @1000\ninflight{pod="b"} 5 @1000\ninflight{pod="c"} 1 @1000',
                Table({"a": "s2", "b": "s1", "c": "s2"}),
                'inflight{pod="a"} 12 @16000\ninflight{pod="b"} 6 @16000\n'
                'inflight{pod="c"} 2 @16000',
                Flush(
                    16000,
                    'inflight{service="s1",view="ops"} 15 @15000\n'
                    'inflight{service="s1",view="ops"} 6 @30000\n'
                    'inflight{service="s2",view="ops"} 1 @15000\n'
                    'inflight{service="s2",view="ops"} 14 @30000',
                    final=True,
                ),
            ]
        ),
        id="a gauge pod moved to another service counts in its old group until it moved",
    ),
    pytest.param(
        Case(
            [
                Table({"a": "s1", "b": "s1", "c": "s2"}),
                'inflight{pod="a"} 10 @1000\ninflight{pod="b"} 5 @1000\ninflight{pod="c"} 1 @1000',
                Table({"a": "s2", "b": "s1", "c": "s2"}),
                # The next scrape, one second later, is in the same window.
                'inflight{pod="a"} 12 @2000\ninflight{pod="b"} 6 @2000\ninflight{pod="c"} 2 @2000',
                Flush(
                    2000,
                    'inflight{service="s1",view="ops"} 6 @15000\n'
                    'inflight{service="s2",view="ops"} 14 @15000\n'
                    # The move was first placed after the watermark's window: both groups
                    # emit their (unchanged) values there too.
                    'inflight{service="s1",view="ops"} 6 @30000\n'
                    'inflight{service="s2",view="ops"} 14 @30000',
                    final=True,
                ),
            ]
        ),
        id="a gauge pod moved inside a window counts in its new group only",
    ),
    pytest.param(
        Case(
            [
                Table({"a": "s1", "b": "s1", "c": "s2"}),
                'order_total{pod="a"} 10 @1000\norder_total{pod="b"} 5 @1000\n'
                'order_total{pod="c"} 1 @1000',
                Table({"a": "s2", "b": "s1", "c": "s2"}),
                'order_total{pod="a"} 12 @2000\norder_total{pod="b"} 6 @2000\n'
                'order_total{pod="c"} 2 @2000',
                Flush(
                    2000,
                    'order_total{service="s1",view="ops"} 16 @15000\n'
                    'order_total{service="s2",view="ops"} 4 @15000\n'
                    'order_total{service="s1",view="ops"} 16 @30000\n'
                    'order_total{service="s2",view="ops"} 4 @30000',
                    final=True,
                ),
            ]
        ),
        id="a counter pod moved inside a window: its total so far stays behind",
    ),
    pytest.param(
        Case(
            [
                Table({"a": "s1", "b": "s1", "c": "s2"}),
                'inflight{pod="a"} 10 @1000\ninflight{pod="b"} 5 @1000\ninflight{pod="c"} 1 @1000',
                Table({"a": "s2", "b": "s1", "c": "s2"}),
                # Pod a is not scraped until 46 s: the move is applied when it is next seen,
                # placed after the window of the newest sample then (16 s).
                'inflight{pod="b"} 6 @16000\ninflight{pod="c"} 2 @16000',
                'inflight{pod="a"} 12 @46000\ninflight{pod="b"} 7 @46000\n'
                'inflight{pod="c"} 3 @46000',
                Flush(
                    46000,
                    'inflight{service="s1",view="ops"} 15 @15000\n'
                    'inflight{service="s1",view="ops"} 16 @30000\n'
                    'inflight{service="s1",view="ops"} 6 @45000\n'
                    'inflight{service="s1",view="ops"} 7 @60000\n'
                    'inflight{service="s2",view="ops"} 1 @15000\n'
                    'inflight{service="s2",view="ops"} 2 @30000\n'
                    'inflight{service="s2",view="ops"} 12 @45000\n'
                    'inflight{service="s2",view="ops"} 15 @60000',
                    final=True,
                ),
            ]
        ),
        id="a gauge pod moved between its samples is in exactly one group in every window",
    ),
    pytest.param(
        Case(
            [
                Table({"a": "s1"}),
                'order_total{pod="a"} 10 @1000',
                Flush(1000, 'order_total{service="s1",view="ops"} 10 @15000', final=True),
                Table({"a": "s2"}),
                'order_total{pod="a"} 12 @16000',
                Flush(
                    16000,
                    'order_total{service="s1",view="ops"} stale @30000\n'
                    'order_total{service="s2",view="ops"} 2 @30000',
                    final=True,
                ),
            ]
        ),
        id="a group left by its only pod emits a marker",
    ),
    pytest.param(
        Case(
            [
                # Prometheus replays a backlog after an outage: old samples, arriving now.
                Push(
                    'order_total{pod="a",service="s"} 1 @1000\n'
                    'order_total{pod="a",service="s"} 2 @16000\n'
                    'order_total{pod="a",service="s"} 3 @31000\n'
                    'order_total{pod="a",service="s"} 4 @46000\n'
                    'order_total{pod="b",service="s"} 10 @2000\n'
                    'order_total{pod="b",service="s"} 20 @47000',
                    at=600_000,
                ),
                Flush(600_000, out("order_total", "11 @15000")),
                Flush(660_000, out("order_total", "12 @30000", "13 @45000", "24 @60000")),
            ]
        ),
        id="windows follow sample time: a replayed backlog gives one output per old window",
    ),
    pytest.param(
        Case(
            [
                'inflight{pod="a",service="s"} 3 @-29000',
                'inflight{pod="a",service="s"} 4 @-1',
                'inflight{pod="a",service="s"} 5 @0',
                'inflight{pod="a",service="s"} 6 @1',
                Flush(1, out("inflight", "3 @-15000", "5 @0", "6 @15000"), final=True),
            ]
        ),
        id="negative sample times fall into windows (end - interval, end] as well",
    ),
]


@pytest.mark.parametrize("case", CASES)
def test_aggregation_table(case: Case) -> None:
    run(case)


# --- the aggregator on its own ------------------------------------------------------------------

SETTINGS = AggregationSettings(
    interval_ms=INTERVAL,
    lateness_ms=30_000,
    stale_after_ms=300_000,
    retention_ms=3_600_000,
    idle_flush_ms=60_000,
)
GROUP = (("__name__", "order_total"), ("service", "s"), ("view", "ops"))


def test_observe_reports_what_became_of_each_sample() -> None:
    aggregator = ViewAggregator(SETTINGS, codec.encode_labels)
    series = aggregator.attach(b"a", GROUP, is_counter=True)
    assert series.observe(1000, 1.0) is Observed.ACCEPTED
    assert series.observe(1000, 1.0) is Observed.OUT_OF_ORDER
    assert series.end(500) is Observed.OUT_OF_ORDER
    assert series.observe(50_000, 2.0) is Observed.ACCEPTED
    assert [format_output(s) for s in aggregator.flush(50_000)] == [
        'order_total{service="s",view="ops"} 1 @15000'
    ]
    assert series.observe(14_000, 5.0) is Observed.LATE
    assert series.end(2_000) is Observed.LATE
    assert (aggregator.late_samples, aggregator.out_of_order_samples) == (2, 2)


def test_attach_returns_the_same_state_for_the_same_group() -> None:
    aggregator = ViewAggregator(SETTINGS, codec.encode_labels)
    first = aggregator.attach(b"a", GROUP, is_counter=False)
    again = aggregator.attach(b"a", GROUP, is_counter=True)
    assert again is first
    assert again.is_counter
    assert len(aggregator.groups) == 1
    assert aggregator.groups[GROUP].label_bytes == codec.encode_labels(GROUP)


def test_forgotten_inputs_leave_their_total_with_the_group() -> None:
    settings = AggregationSettings(INTERVAL, 0, 60_000, 120_000, 60_000)
    aggregator = ViewAggregator(settings, codec.encode_labels)
    a = aggregator.attach(b"a", GROUP, is_counter=True)
    b = aggregator.attach(b"b", GROUP, is_counter=True)
    a.observe(1000, 10.0)
    b.observe(1000, 1.0)
    a.end(2000)
    b.observe(200_000, 2.0)
    aggregator.flush(200_000)
    # Ends and forgetting are swept for every EXPIRY_SWEEP_MS of wall time.
    aggregator.flush(200_000 + EXPIRY_SWEEP_MS)  # a's marker is settled: now it is forgotten
    assert aggregator.forgotten_inputs == 1
    assert set(aggregator.inputs) == {b"b"}
    again = aggregator.attach(b"a", GROUP, is_counter=True)  # back after retention: new input
    again.observe(216_000, 3.0)
    emitted = aggregator.flush(216_000, final=True)
    assert sorted(format_output(s) for s in emitted) == [
        'order_total{service="s",view="ops"} 12 @210000',
        'order_total{service="s",view="ops"} 15 @225000',
    ]


def test_an_empty_group_is_forgotten_after_its_marker() -> None:
    settings = AggregationSettings(INTERVAL, 0, 60_000, 120_000, 60_000)
    aggregator = ViewAggregator(settings, codec.encode_labels)
    a = aggregator.attach(b"a", GROUP, is_counter=False)
    other = aggregator.attach(b"b", (("__name__", "x"), ("view", "ops")), is_counter=False)
    a.observe(1000, 1.0)
    a.end(16_000)
    other.observe(400_000, 1.0)
    for sweep in range(3):
        aggregator.flush(400_000 + sweep * EXPIRY_SWEEP_MS)
    assert GROUP not in aggregator.groups
    assert list(aggregator.inputs) == [b"b"]


def test_random_streams_keep_the_output_rules() -> None:
    """Many pods, resets, markers, retries, late and out-of-order samples, flushes at random
    wall times: outputs stay one per window, in order, never a decreasing counter."""
    rng = random.Random(7)
    for _ in range(30):
        settings = AggregationSettings(
            interval_ms=rng.choice([1000, 5000, 15_000]),
            lateness_ms=rng.choice([0, 2000, 30_000]),
            stale_after_ms=rng.choice([5000, 60_000]),
            retention_ms=rng.choice([10_000, 600_000]),
            idle_flush_ms=rng.choice([1000, 60_000]),
        )
        aggregator = ViewAggregator(settings, codec.encode_labels)
        groups = [(("__name__", "x_total"), ("service", name), ("view", "v")) for name in "st"]
        counters = {f"pod{i}".encode(): 0.0 for i in range(6)}
        clock = 0
        emitted: list[OutputSample] = []
        for _ in range(400):
            key = rng.choice(list(counters))
            series = aggregator.attach(key, rng.choice(groups), is_counter=True)
            clock += rng.randrange(0, 3000)
            timestamp = clock - rng.choice([0, 0, 0, 500, 20_000])
            roll = rng.random()
            if roll < 0.05:
                series.end(timestamp)
            else:
                counters[key] = 0.0 if roll < 0.1 else counters[key] + rng.randrange(0, 5)
                series.observe(timestamp, counters[key])
            if rng.random() < 0.2:
                emitted.extend(aggregator.flush(clock + rng.randrange(0, 2000)))
        emitted.extend(aggregator.flush(clock, final=True))
        check_output_invariants(emitted, settings.interval_ms, across_markers=False)


def test_output_lines_use_the_text_format() -> None:
    sample = OutputSample(codec.encode_labels(GROUP), 15_000, STALE_NAN)
    assert format_output(sample) == 'order_total{service="s",view="ops"} stale @15000'
    assert format_sample(GROUP, 2.5, 30_000) == 'order_total{service="s",view="ops"} 2.5 @30000'
