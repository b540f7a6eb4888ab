"""The one interface between the server and the data path: ``Engine``, and the plain values it
hands back.

The server (request handler, flusher, checkpoints, input-log replay, reload, ``/metrics``,
``/debug/explain``) sees an engine through this Protocol and nothing else, so any engine that
implements it can run the proxy: the Python reference (``engine.pipeline.Pipeline``) or a native
one. Every value crossing it is a plain dataclass of built-in types and labels; none exposes an
engine's internal state.

Pure, as the whole engine: callers pass ``now_ms``, and results are returned, never written to
metrics.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

from enrichproxy.config.schema import Config
from enrichproxy.engine.enrich import Lookup
from enrichproxy.engine.planner import Planner
from enrichproxy.metadata.table import MetadataTable
from enrichproxy.model import Labels, OutputSample
from enrichproxy.wire.v2 import TypeOf, WireProtocol


@dataclass
class IngestResult:
    """What one request did: the counts the server turns into metrics."""

    series: int = 0
    samples: int = 0
    lookups: Counter[tuple[str, Lookup]] = field(default_factory=Counter)
    """(rule name, result) → series looked up."""
    dropped: Counter[str] = field(default_factory=Counter)
    label_conflicts: int = 0
    metadata: int = 0
    exemplars_skipped: int = 0
    view_dropped: Counter[tuple[str, str]] = field(default_factory=Counter)
    """(view, reason) → samples a view left out: late, out_of_order or cardinality_limit."""


@dataclass
class ViewOutput:
    view: str
    samples: list[OutputSample]


@dataclass
class Reconfiguration:
    """What ``Engine.reconfigure`` did: the engine to use now, and what to forward first."""

    engine: Engine
    outputs: list[ViewOutput] = field(default_factory=list)
    """The last windows of every view that changed or went away."""
    kept: list[str] = field(default_factory=list)
    """Views that continue with their aggregation state."""
    restarted: list[str] = field(default_factory=list)
    """Views whose definition changed: flushed, then started empty."""
    removed: list[str] = field(default_factory=list)
    added: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class ViewStats:
    name: str
    output_series: int
    inputs: int
    """Input series the view's aggregation tracks."""
    open_windows: int
    """Windows with samples not emitted yet."""
    max_timestamp_ms: int
    """The newest sample time the view has seen (not positive before its first)."""


@dataclass(frozen=True)
class EngineStats:
    """The engine's size now, for the gauges of ``/metrics``."""

    cached_series: int
    """Distinct input series whose enrichment and routing are cached."""
    views: tuple[ViewStats, ...]


@dataclass(frozen=True)
class GroupState:
    """An output series' aggregation state now, including windows not emitted yet."""

    labels: Labels
    value: float
    """Sum of every input's current contribution plus what ended inputs left behind."""
    inputs: int
    live_inputs: int
    retired: float
    """The part of ``value`` from counter inputs that ended or moved to another group."""


@dataclass(frozen=True)
class InputState:
    """One input series' part in one view now."""

    feeds: Labels
    """The output labels of the group it feeds."""
    contribution: float
    """What it adds to that group now."""


IngestSteps = Generator[None, None, IngestResult]
"""An ingest done in steps of bounded work (``Engine.ingest_steps``): each ``next`` does one
step; the last one's StopIteration carries the result."""


FlushSteps = Generator[None, None, "list[ViewOutput]"]
"""A flush done in steps of bounded work (``Engine.flush_steps``); the last step's
StopIteration carries the outputs."""

Done = TypeVar("Done")


def one_step(work: Callable[[], Done]) -> Generator[None, None, Done]:
    """Work done in one step (run at the first ``next``)."""
    yield from ()
    return work()


def run_steps(steps: Generator[None, None, Done]) -> Done:
    """Every step of ``steps`` at once: for callers with nothing else to do meanwhile."""
    while True:
        try:
            next(steps)
        except StopIteration as done:
            result: Done = done.value
            return result


class Engine(Protocol):
    """The data path as the server drives it. Not thread-safe: one caller at a time."""

    name: str
    """``python`` or ``native``: logged at start and exported as ``enrichproxy_engine_info``."""
    planner: Planner
    """The configuration-derived cold path (views, rules, tables in use, metric types learnt),
    shared by every engine; explain reads the enrichment part from it."""

    def ingest(
        self, body: bytes, now_ms: int, protocol: WireProtocol = WireProtocol.V1
    ) -> IngestResult:
        """Apply the remote-write request ``body``, exactly as received (snappy-compressed
        protobuf of the message ``protocol`` names), to every view. PayloadTooLarge past
        ``max_decoded_bytes``, DecodeError or LimitExceeded leave no sample of the request
        applied."""
        ...

    def prepare(self, body: bytes, protocol: WireProtocol = WireProtocol.V1) -> object:
        """The first part of ``ingest``: decompress (and decode, as far as that reads no state
        of the engine). Safe to call from another thread while the engine is in use; raises
        what ``ingest`` raises for a body it refuses."""
        ...

    def ingest_steps(self, prepared: object, now_ms: int) -> IngestSteps:
        """The rest of ``ingest`` for ``prepare``'s result, in steps of bounded work, so that a
        huge request does not hold up the others. Between two steps the caller may ingest other
        requests and change tables, but must not flush, reconfigure, export or restore state:
        a request is applied as a whole before any of those. Errors come from the first step
        and leave no sample of the request applied."""
        ...

    def flush(self, now_ms: int, final: bool = False) -> list[ViewOutput]:
        """Close complete windows (all of them with ``final``) and return their samples."""
        ...

    def flush_steps(self, now_ms: int, final: bool = False) -> FlushSteps:
        """``flush`` in steps of bounded work, so that closing the windows of a million series
        does not hold up the writes that arrive meanwhile. The first step decides which windows
        close and must come between whole requests (no ingest under way), as a flush; from then
        on their samples are late. Between two later steps the caller may ingest requests (in
        steps too) and change tables: a group they touch is summed first for every window this
        flush closes, so outputs and state are those of the whole flush followed by them.
        Nothing else may run between two steps (no other flush, reconfigure, export or restore
        of state). A flush whose steps were left unfinished is finished by the next ``flush``
        or ``flush_steps``, whose outputs then include its samples: none is lost."""
        ...

    def encode_output(self, samples: Sequence[OutputSample]) -> bytes:
        """``samples`` as one WriteRequest (uncompressed), as codec.encode_samples makes it.
        Stateless and thread-safe: the forwarder encodes its batches with it."""
        ...

    def encode_output_v2(self, samples: Sequence[OutputSample], type_of: TypeOf) -> bytes:
        """``samples`` as one remote write 2.0 Request (uncompressed), as
        wire.v2.encode_v2_samples makes it, each series typed by ``type_of(metric name)``.
        Stateless and thread-safe, as ``encode_output``."""
        ...

    def set_table(self, table: MetadataTable, rule_index: int = 0) -> bool:
        """Use ``table`` for rule ``rule_index`` from now on; True when its content changed."""
        ...

    def reconfigure(self, config: Config, now_ms: int) -> Reconfiguration:
        """An engine for ``config`` continuing this one wherever the view definitions allow;
        this engine must not be used afterwards."""
        ...

    def export_state(self) -> dict[str, Any]:
        """Every view's aggregation state, JSON-ready, keyed by view name."""
        ...

    def restore_state(self, states: dict[str, Any]) -> dict[str, str]:
        """Load ``export_state``'s output into this fresh engine; view → why it starts empty."""
        ...

    def emitted_through_ms(self) -> dict[str, int]:
        """Per view that emitted anything, the end (ms) of the last window it emitted."""
        ...

    def mark_emitted_through(self, emitted: dict[str, int]) -> None:
        """Never emit again a window ending at or before ``emitted[view]`` (from
        ``emitted_through_ms`` of an earlier run)."""
        ...

    def stats(self) -> EngineStats: ...

    def received(self, input_key: bytes) -> bool:
        """The engine holds state for the input series of these encoded labels."""
        ...

    def view_group(self, view_index: int, output_labels: Labels) -> GroupState | None:
        """The output series ``output_labels`` of view ``view_index``; None when no input has
        fed it (read-only: nothing is created)."""
        ...

    def view_input(self, view_index: int, input_key: bytes) -> InputState | None:
        """The input series ``input_key`` in view ``view_index``; None when it feeds none."""
        ...
