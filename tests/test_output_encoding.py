"""Output encoding: the native engine's encoder writes exactly the reference's bytes.

The forwarder encodes every batch with ``Engine.encode_output``; under the native engine that is
C (``_native.encode_samples``), under the Python engine codec.encode_samples. Both must give
the same WriteRequest for any batch: series grouped in order of first appearance, samples in
order, values by their bits (stale markers and NaNs included), any int64 timestamp.
"""

from __future__ import annotations

import math
import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from enrichproxy.engine import _native
from enrichproxy.model import STALE_NAN, OutputSample
from enrichproxy.wire.codec import decode_write_request, encode_labels, encode_samples

label_sets = st.sampled_from(
    [
        encode_labels((("__name__", "a_total"), ("view", "ops"))),
        encode_labels((("__name__", "b"), ("service", "é" * 100), ("view", "biz"))),
        b"",
        encode_labels((("__name__", "c"), ("x", "y" * 300))),
    ]
)
values = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.just(STALE_NAN),
    st.integers(min_value=-(2**53), max_value=2**53).map(float),
)
timestamps = st.integers(min_value=-(2**63), max_value=2**63 - 1)
batches = st.lists(st.builds(OutputSample, label_sets, timestamps, values), max_size=40)


@settings(max_examples=400, deadline=None)
@given(batches)
def test_native_encoding_is_the_reference(batch: list[OutputSample]) -> None:
    assert _native.encode_samples(batch) == encode_samples(batch)


def test_a_batch_reads_back_grouped_in_order() -> None:
    ops, biz = (encode_labels((("__name__", "x"), ("view", v))) for v in ("ops", "biz"))
    batch = [
        OutputSample(ops, 1_000, 1.0),
        OutputSample(biz, 1_000, 2.0),
        OutputSample(ops, 2_000, STALE_NAN),
        OutputSample(biz, -5, math.inf),
    ]
    request = decode_write_request(_native.encode_samples(batch))
    read = [
        (raw.label_bytes, [(t, struct.pack("<d", v)) for t, v in raw.samples])
        for raw in request.series
    ]
    assert read == [
        (ops, [(1_000, struct.pack("<d", 1.0)), (2_000, struct.pack("<d", STALE_NAN))]),
        (biz, [(1_000, struct.pack("<d", 2.0)), (-5, struct.pack("<d", math.inf))]),
    ]


def test_an_empty_batch_is_an_empty_request() -> None:
    assert _native.encode_samples([]) == b"" == encode_samples([])
