"""Reload, the pure part: what a new configuration keeps, flushes and starts over.

Pipeline.reconfigure on a fake clock (views in, output text out), and the plan that says which
keys apply live and which wait for a restart.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from engines import EngineUnderTest, new_engine
from promtext import decoded_request, format_output, normalise

from enrichproxy.config.reload import plan_reload
from enrichproxy.config.schema import Config, parse_config
from enrichproxy.engine.interface import Reconfiguration, ViewOutput
from enrichproxy.engine.native import NativeEngine
from enrichproxy.engine.pipeline import Pipeline
from enrichproxy.metadata.table import EMPTY_TABLE, build_table
from enrichproxy.model import MetricMetadata, MetricType

OPS = {"name": "ops", "keep": ["service"]}
ALL = {"name": "all", "keep": []}
# A counter with a reset (7 → 2) before the reload: a view that kept its state goes on from 9.
BEFORE = """
x_total{pod="a",service="s"} 5 @1000
x_total{pod="a",service="s"} 7 @2000
x_total{pod="a",service="s"} 2 @2500
"""
AFTER = 'x_total{pod="a",service="s"} 4 @3500'


def make_config(views: list[dict[str, Any]], **sections: Any) -> Config:
    document: dict[str, Any] = {
        "views": views,
        "aggregation": {"interval": "1s", "lateness": "0s"},
        "remote_write": [{"url": "http://127.0.0.1:1/api/v1/write"}],
    }
    document.update(sections)
    return parse_config(document)


def lines(outputs: list[ViewOutput]) -> dict[str, list[str]]:
    return {o.view: sorted(format_output(s) for s in o.samples) for o in outputs if o.samples}


def successor_of(result: Reconfiguration) -> EngineUnderTest:
    assert isinstance(result.engine, (Pipeline, NativeEngine))
    return result.engine


def fed(config: Config, text: str = BEFORE) -> EngineUnderTest:
    """A pipeline that saw ``text`` and emitted every window up to its newest sample's."""
    flow = new_engine(config)
    flow.apply(decoded_request(text), 2500)
    flow.flush(2500)
    return flow


# --- Pipeline.reconfigure -----------------------------------------------------------------------


def test_an_unchanged_view_continues_its_sums_exactly() -> None:
    reference = fed(make_config([OPS]))
    reloaded = fed(make_config([OPS]))
    state = reloaded.export_state()["ops"]
    result = reloaded.reconfigure(make_config([OPS, ALL]), 2600)
    assert result.kept == ["ops"]
    assert result.outputs == []  # nothing of an unchanged view leaves early
    flow = successor_of(result)
    assert flow.export_state()["ops"] == state
    for pipeline in (reference, flow):
        pipeline.apply(decoded_request(AFTER), 3500)
    expected = normalise(
        """
        x_total{service="s",view="ops"} 9 @3000
        x_total{service="s",view="ops"} 11 @4000
        """
    )
    assert lines(reference.flush(3500, final=True))["ops"] == expected
    assert lines(flow.flush(3500, final=True))["ops"] == expected


def test_a_changed_view_emits_its_open_windows_and_starts_empty() -> None:
    flow = fed(make_config([OPS]))
    changed = {"name": "ops", "keep": ["service", "tier"]}
    result = flow.reconfigure(make_config([changed]), 2600)
    assert (result.kept, result.restarted) == ([], ["ops"])
    assert lines(result.outputs) == {"ops": normalise('x_total{service="s",view="ops"} 9 @3000')}
    successor = successor_of(result)
    assert successor.stats().views[0].output_series == 0
    # A window its predecessor emitted stays emitted: a second value would be refused. The
    # late sample still moves its input, from the next window on (b counts 1 there).
    late = successor.apply(decoded_request('x_total{pod="b",service="s"} 1 @2900'), 3500)
    assert late.view_dropped == {("ops", "late"): 1}
    successor.apply(decoded_request(AFTER), 3500)
    # Started empty: the counter counts from its current value, the reset before is forgotten.
    assert lines(successor.flush(3500, final=True)) == {
        "ops": normalise('x_total{service="s",view="ops"} 5 @4000')
    }


def test_a_longer_interval_never_emits_at_or_before_what_was_emitted() -> None:
    flow = fed(make_config([OPS]))
    result = flow.reconfigure(make_config([{**OPS, "interval": "2s"}]), 2600)
    assert result.restarted == ["ops"]
    successor = successor_of(result)
    # The predecessor emitted through 3000 (its last window, at the reload): the 2 s window
    # (2000, 4000] is still open, and it leaves at 4000.
    result_after = successor.apply(decoded_request('x_total{pod="a",service="s"} 3 @2900'), 3500)
    assert result_after.view_dropped == {}
    assert lines(successor.flush(3500, final=True)) == {
        "ops": normalise('x_total{service="s",view="ops"} 3 @4000')
    }


def test_a_changed_aggregation_setting_restarts_every_view_it_applies_to() -> None:
    flow = fed(make_config([OPS, {**ALL, "interval": "1s"}]))
    config = make_config(
        [OPS, {**ALL, "interval": "1s"}], aggregation={"interval": "5s", "lateness": "0s"}
    )
    result = flow.reconfigure(config, 2600)
    # ops took the default interval, which changed; all has its own and kept it.
    assert (result.kept, result.restarted) == (["all"], ["ops"])


def test_a_removed_view_emits_its_open_windows() -> None:
    flow = fed(make_config([OPS, ALL]))
    result = flow.reconfigure(make_config([OPS]), 2600)
    assert (result.kept, result.removed) == (["ops"], ["all"])
    assert lines(result.outputs) == {"all": normalise('x_total{view="all"} 9 @3000')}
    assert [view.name for view in successor_of(result).stats().views] == ["ops"]


def test_an_added_view_starts_empty() -> None:
    flow = fed(make_config([OPS]))
    result = flow.reconfigure(make_config([ALL, OPS]), 2600)
    assert (result.kept, result.added) == (["ops"], ["all"])
    successor = successor_of(result)
    assert [view.name for view in successor.stats().views] == ["all", "ops"]
    successor.apply(decoded_request(AFTER), 3500)
    assert lines(successor.flush(3500, final=True)) == {
        "all": normalise('x_total{view="all"} 4 @4000'),
        "ops": normalise(
            """
            x_total{service="s",view="ops"} 9 @3000
            x_total{service="s",view="ops"} 11 @4000
            """
        ),
    }


def test_tables_of_unchanged_rules_and_the_metric_types_carry_over() -> None:
    pods = {"name": "pods", "collection": "pods", "key_label": "pod", "fields": ["service"]}
    owners = {
        "name": "owners",
        "collection": "owners",
        "key_label": "service",
        "fields": ["owner"],
        "drop_key_labels": False,
    }
    config = make_config([OPS], metadata={"rules": [pods, owners]})
    flow = new_engine(config)
    for index, rule in enumerate(config.metadata.enrich_rules):
        flow.set_table(build_table([], rule, version=1, loaded_at=0.0).table, index)
    flow.learn_types([MetricMetadata("x", MetricType.GAUGE, "", "")])
    changed_owners = {**owners, "fields": ["owner", "slack"]}
    # The first rule is now the changed one, the second the unchanged one: found by content.
    result = flow.reconfigure(make_config([OPS], metadata={"rules": [changed_owners, pods]}), 2600)
    successor = successor_of(result)
    assert successor.planner.tables[0] is EMPTY_TABLE
    assert successor.planner.tables[1] is flow.planner.tables[0]
    assert successor.planner.types is flow.planner.types
    assert successor.cached_series == 0


# --- plan_reload ----------------------------------------------------------------------------------


def test_the_same_file_changes_nothing() -> None:
    config = make_config([OPS])
    plan = plan_reload(config, make_config([OPS]))
    assert plan.config == config
    assert (plan.changed, plan.restart_needed, plan.metadata_changed) == ((), (), False)


def test_keys_bound_at_start_keep_their_running_value_and_are_named() -> None:
    running = make_config([OPS], aggregation={"interval": "1s", "state_path": "/a"})
    loaded = replace(
        make_config([OPS], aggregation={"interval": "2s", "state_path": "/b"}),
        listen="0.0.0.0:1",
        max_decoded_bytes=1024,
    )
    plan = plan_reload(running, loaded)
    assert plan.restart_needed == ("listen", "max_decoded_bytes", "aggregation.state_path")
    assert plan.config.listen == running.listen
    assert plan.config.max_decoded_bytes == running.max_decoded_bytes
    assert plan.config.aggregation.state_path == "/a"
    assert plan.config.aggregation.interval_ms == 2000  # the rest of it applies
    assert plan.changed == ("aggregation",)


def test_only_what_the_metadata_store_uses_restarts_it() -> None:
    running = make_config([OPS])
    on_conflict = plan_reload(running, make_config([OPS], metadata={"on_conflict": "keep"}))
    assert (on_conflict.changed, on_conflict.metadata_changed) == (("metadata",), False)
    refresh = plan_reload(running, make_config([OPS], metadata={"refresh_interval": "5s"}))
    assert refresh.metadata_changed


def test_a_destination_change_is_a_remote_write_change() -> None:
    running = make_config([OPS])
    loaded = make_config(
        [OPS], remote_write=[{"url": "http://127.0.0.1:1/api/v1/write", "views": ["ops"]}]
    )
    plan = plan_reload(running, loaded)
    assert plan.remote_write_changed
    assert plan.changed == ("remote_write",)
