"""The Grafana dashboard queries only metrics filterd actually exposes."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from filterd.changes.feed import ChangeFeed
from filterd.changes.metrics import ChangeMetrics
from filterd.changes.overlay import Overlay
from filterd.changes.replies import Replies
from filterd.config import load_config
from filterd.http import Health, ReadinessCollector
from filterd.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parent.parent / "deploy" / "grafana" / "filterd.json"

#: Series Prometheus itself adds to every target.
PROMETHEUS_SERIES = {"up"}

_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "offset", "bool"}
_KEYWORDS |= {"and", "or", "unless", "inf", "nan"}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    e = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)  # string literals
    e = re.sub(r"\{[^}]*\}", " ", e)  # label matchers
    e = re.sub(r"\[[^\]]*\]", " ", e)  # ranges and subqueries
    e = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", e)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[a-zA-Z_:][a-zA-Z0-9_:]*", e):
        if e[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group(0).lower() not in _KEYWORDS:
            names.add(match.group(0))
    return names


def walk_panels(panels: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
    for panel in panels:
        yield panel
        nested = panel.get("panels")
        if isinstance(nested, list):
            yield from walk_panels(nested)


def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text())
    assert isinstance(loaded, dict)
    return loaded


def dashboard_queries() -> list[str]:
    queries = []
    for panel in walk_panels(dashboard()["panels"]):
        for target in panel.get("targets", []):
            queries.append(target["expr"])
    return queries


def template_metrics() -> set[str]:
    names = set()
    for var in dashboard()["templating"]["list"]:
        if var["type"] == "query":
            names |= set(re.findall(r"label_values\(\s*([a-zA-Z_:][\w:]*)", var["definition"]))
    return names


def exposed_series() -> set[str]:
    """Every sample name a fully exercised filterd exposes."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    registry.register(ReadinessCollector(Health()))
    metrics.record_batch({("deliver", "consent"): 1}, 1, 0.001)
    metrics.observe_latencies([0.01])
    metrics.set_lag("in", 0, 1)
    metrics.snapshot_loaded("v1", 1, time.time(), 0.1)
    feed = ChangeFeed(load_config(None, env={}), Overlay(()), {})
    registry.register(ChangeMetrics(feed, Replies(feed.config, lambda: 1)))
    metrics.record_limits({"frequency-cap": 1}, 1, 1)
    metrics.record_capped_senders({"1069000001": 1})
    # The window ends: the top senders are published.
    metrics.top_capped.add({}, now=time.time() + metrics.top_capped.window_s)
    text = generate_latest(registry).decode()
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def test_extractor() -> None:
    expr = (
        'histogram_quantile(0.99, sum by (le) (rate(a_bucket{job="$job", x=~"y(z)"}[5m])))'
        " / on (job) group_left (version) b_info offset 1h > bool 1e3 and c"
    )
    assert metric_names(expr) == {"a_bucket", "b_info", "c"}
    assert metric_names('label_replace(up, "a", "$1", "b", "(.*)")') == {"up"}


def test_every_queried_metric_is_exposed() -> None:
    queries = dashboard_queries()
    assert len(queries) >= 10
    exposed = exposed_series() | PROMETHEUS_SERIES
    queried = set().union(*(metric_names(q) for q in queries)) | template_metrics()
    assert queried - exposed == set()
    # The list: throughput by route and reason, lag, latency, snapshot, loop lag.
    for needed in (
        "filterd_events_total",
        "filterd_consumer_lag_records",
        "filterd_end_to_end_latency_seconds_bucket",
        "filterd_snapshot_age_seconds",
        "filterd_snapshot_info",
        "filterd_event_loop_lag_seconds",
    ):
        assert needed in queried, needed


def test_a_misspelt_metric_would_be_caught() -> None:
    exposed = exposed_series()
    assert metric_names("rate(filterd_event_total[5m])") - exposed == {"filterd_event_total"}


def test_panels_are_well_formed() -> None:
    panels = list(walk_panels(dashboard()["panels"]))
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"])
        if panel["type"] == "row":
            continue
        targets = panel["targets"]
        assert targets, panel["title"]
        for target in targets:
            assert target["datasource"]["uid"] == "${datasource}"
            # Every query follows the job and worker selectors.
            assert 'job="$job"' in target["expr"], target["expr"]
            assert 'instance=~"$instance"' in target["expr"], target["expr"]


@pytest.mark.parametrize("name", ["datasource", "job", "instance"])
def test_template_variables(name: str) -> None:
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    assert name in variables
