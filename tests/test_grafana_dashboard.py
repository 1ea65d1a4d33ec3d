"""docs/grafana/durable-dashboard.json asks only for metrics the engine serves, grouped by
labels they have: renaming a metric or a label without the dashboard fails here."""

from __future__ import annotations

import json
import re
from pathlib import Path

from durable._metrics import METRICS

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana" / "durable-dashboard.json"
_SUFFIXES = ("_bucket", "_count", "_sum", "_total")


def _served() -> dict[str, set[str]]:
    """Every metric of the process's registry (counters without ``_total``), with its
    labels."""
    out: dict[str, set[str]] = {}
    for metric in vars(METRICS).values():
        names = getattr(metric, "_labelnames", None)
        if names is not None:
            out[metric._name] = set(names)
    return out


def test_every_panel_asks_for_served_metrics_and_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    served = _served()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert len(exprs) >= 15
    used: set[str] = set()
    for expr in exprs:
        for name in re.findall(r"\bdurable_[a-z_]+", expr):
            base = name
            for suffix in _SUFFIXES:
                base = base.removesuffix(suffix)
            assert base in served, f"{name} in {expr!r} is not a metric the engine serves"
            used.add(base)
            groups = re.findall(r"by \(([^)]*)\)", expr)
            selectors = re.findall(r"\{([^}]*)\}", expr)
            labels = {g.strip() for group in groups for g in group.split(",")} - {"le"}
            labels |= {s.split("=")[0].strip() for sel in selectors for s in sel.split(",") if s}
            labels -= {"$__rate_interval"}
            if len(re.findall(r"\bdurable_[a-z_]+", expr)) == 1:
                assert labels <= served[base], (expr, labels - served[base])
    # Every kind of figure the issue names has a panel.
    for wanted in (
        "durable_invocations_started",
        "durable_invocations_ended",
        "durable_invocation_duration_seconds",
        "durable_step_duration_seconds",
        "durable_journal_append_seconds",
        "durable_retries",
        "durable_attempts",
        "durable_invocations",
        "durable_queue_backlog",
        "durable_consumer_pending",
        "durable_worker_slots_in_use",
        "durable_rpc_requests",
        "durable_rpc_duration_seconds",
        "durable_nats_reconnects",
    ):
        assert wanted in used, wanted
