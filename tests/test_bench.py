"""`make bench` end to end with tiny numbers: the report's shape, not the figures."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow  # real processes or long waits: not in make test-fast

ROOT = Path(__file__).resolve().parents[1]


def test_bench_prints_json_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "durable_server.bench",
            "--sync",
            "2m",
            "--runs",
            "1",
            "--sequential",
            "5",
            "--throughput",
            "20",
            "--in-flight",
            "5",
            "--warmup",
            "3",
            "--floor-publishes",
            "50",
            "--floor-pipelined",
            "500",
            "--out",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    lines = proc.stdout.strip().splitlines()
    assert lines, proc.stderr[-4000:]
    report = json.loads(lines[-1])

    assert report["sync"] == "2m"
    assert report["runs"] == 1
    workflow = report["workflow"]
    for field in ("p50_ms", "p99_ms", "mean_ms", "workflows_per_s", "steps_per_s"):
        assert isinstance(workflow[field], int | float), field
        assert math.isfinite(workflow[field]) and workflow[field] > 0, field
    assert workflow["p99_ms"] >= workflow["p50_ms"]
    assert math.isclose(workflow["steps_per_s"], 3 * workflow["workflows_per_s"], rel_tol=1e-3)
    assert (workflow["sequential_n"], workflow["throughput_n"], workflow["in_flight"]) == (5, 20, 5)
    floor = report["floor"]
    for field in ("publish_p50_ms", "publish_p99_ms", "pipelined_msgs_per_s"):
        assert math.isfinite(floor[field]) and floor[field] > 0, field
    for variant in ("metrics", "tracing"):  # measured in the same run, as ratios
        measured = report["variants"][variant]
        assert measured["workflows_per_s"] > 0 and measured["p50_ms"] > 0, variant
        assert measured["p50_vs_default"] == round(measured["p50_ms"] / workflow["p50_ms"], 3)
    assert len(report["per_run"]) == 1
    assert report["per_run"][0]["workflow"]["p50_ms"] == workflow["p50_ms"]
    machine = report["machine"]
    assert machine["cpus"] >= 1
    assert machine["python"].count(".") == 2
    assert machine["nats_server_version"]

    assert json.loads(out.read_text()) == report
    assert "run 1/1" in proc.stderr
