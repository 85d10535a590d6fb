"""bench/run's plumbing (issue 9): one cheap section end to end, and the targets' arithmetic.

The whole harness needs bench/.venv (LiteLLM, the comparison clients) and minutes; here it runs with
``--no-install`` (this interpreter, no downloads) on the policy section only, which is pure Python.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from bench import harness

ROOT = Path(__file__).resolve().parent.parent


def test_a_quick_section_writes_the_summary_files(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "bench", "--no-install", "--quick", "--only", "policy", "--output", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["sections"] == ["policy"]
    assert summary["git_rev"]
    assert summary["machine"]["cpus"]
    figures = summary["figures"]
    assert any(f["name"].startswith("resolve_route, rule hit") and f["unit"] == "µs per call" for f in figures)
    assert all(f["unit"] and isinstance(f["value"], float) for f in figures)
    assert "## Every figure" in (tmp_path / "summary.md").read_text()


def _row(system: str, latency: float, in_flight: int, rps: float, p50_ms: float, overhead: float | None = None) -> Any:
    return {
        "system": system,
        "label": harness.SYSTEMS[system][0],
        "latency_ms": latency,
        "in_flight": in_flight,
        "ideal_rps": in_flight / (latency / 1000) if latency else None,
        "rps": rps,
        "p50_ms": p50_ms,
        "p99_ms": p50_ms * 2,
        "overhead_us_p50": overhead,
        "errors": 0,
        "rounds_rps": [rps],
        "rounds_p50_ms": [p50_ms],
        "per_round": [{"round": 0, "rps": rps, "p50_ms": p50_ms, "overhead_us_p50": overhead}],
        "failed": [],
    }


def test_targets_are_ratios_within_the_run_and_a_null_overhead_is_not_reported() -> None:
    results = {
        "gateway": [
            _row("floor", 0.0, 1, 2000, 0.500),
            _row("litellm", 0.0, 1, 120, 8.500),
            _row("stdio", 0.0, 1, 1500, 0.600, overhead=None),
            _row("tcp", 0.0, 1, 1500, 0.600, overhead=90.0),
            _row("floor", 0.0, 64, 3000, 20.0),
            _row("aiohttp", 0.0, 64, 4000, 15.0),
            _row("litellm", 0.0, 64, 100, 600.0),
            _row("stdio", 0.0, 64, 3500, 18.0),
            _row("tcp", 200.0, 256, 1100, 230.0),
        ]
    }
    by_target = {t["target"]: t for t in harness.targets(results)}
    added = by_target["adds ≤ 150 µs per call at p50 over the direct client, 1 in flight (execute over stdio)"]
    assert added["met"] is True
    assert added["ratio"] == pytest.approx(100 / 150, abs=0.001)
    assert by_target["≥ 40x less overhead than LiteLLM Router, 1 in flight (execute over stdio)"][
        "ratio"
    ] == pytest.approx(80.0, rel=0.001)
    assert by_target["64 in flight, 0 ms: ≥ 5x LiteLLM Router's throughput (stdio)"]["met"] is True
    best = by_target["64 in flight, 0 ms: ≥ 80% of the best direct client (stdio)"]
    assert (best["ratio"], best["met"]) == (pytest.approx(0.875), True)
    slow = by_target["256 in flight, 200 ms, asyncio: ≥ 80% of the ideal (tcp)"]
    assert (slow["ratio"], slow["met"]) == (pytest.approx(0.859), True)
    silent = by_target[
        "reported overhead_us agrees with the outside clock within 20% (execute over stdio, 1 in flight)"
    ]
    assert silent["met"] is None
    assert silent["llm_rpc"].startswith("not reported")
    reported = by_target[
        "reported overhead_us agrees with the outside clock within 20% (execute over TCP, 1 in flight)"
    ]
    assert (reported["ratio"], reported["met"]) == (pytest.approx(0.9, abs=0.001), True)
    # The markdown and the chart's inputs take a partial run without failing.
    text = harness.markdown(
        {
            "command": "bench/run",
            "date": "today",
            "git_rev": "abc",
            "rounds": 1,
            "seconds": 1.0,
            "machine": {"cpus": 2, "loadavg_before": [], "loadavg_after": [], "python": "3.11"},
            "targets": harness.targets(results),
            "issue_table": harness.issue_table(results),
            "figures": harness.figures(results),
            "results": results,
        }
    )
    assert "| met |" in text
    assert "not reported" in text


def test_a_ratio_is_taken_within_each_round_then_the_median() -> None:
    def two_rounds(system: str, rps: tuple[float, float]) -> Any:
        row = _row(system, 0.0, 64, statistics.median(rps), 10.0)
        row["per_round"] = [{"round": i, "rps": v, "p50_ms": 10.0, "overhead_us_p50": None} for i, v in enumerate(rps)]
        return row

    # The machine was three times busier in round 0: the ratio within each round is 10x, then 5x.
    results = {"gateway": [two_rounds("stdio", (1000, 3000)), two_rounds("litellm", (100, 600))]}
    (ratio,) = [t for t in harness.targets(results) if t["target"].startswith("64 in flight, 0 ms: ≥ 5x")]
    assert ratio["ratio"] == pytest.approx(7.5)  # not 2000 / 350, the ratio of the medians


def test_wire_spans_run_from_a_request_to_the_last_segment_of_its_reply() -> None:
    from bench.wire_clock import Packet, server_spans_us

    server, other, client = 7000, 7001, 50000
    packets = [
        Packet(1_000_000, client, server, 90),  # call 1: request
        Packet(1_050_000, client, other, 90),  # another server's traffic in between: ignored
        Packet(1_120_000, server, client, 4000),
        Packet(1_150_000, server, client, 300),  # the reply's last segment
        Packet(2_000_000, client, server, 60000),  # call 2: a request in two segments
        Packet(2_010_000, client, server, 500),
        Packet(2_200_000, server, client, 100),
        Packet(3_000_000, client, server, 90),  # call 3: no reply seen yet, not counted
    ]
    assert server_spans_us(list(reversed(packets)), server) == [150.0, 200.0]


def test_the_paired_overhead_run_decides_item_3() -> None:
    paired: dict[str, dict[str, Any]] = {
        "in_process": {"overhead_us_p50": 58.0, "outside_us": 64.0, "agreement": 0.906},
        "tcp": {"overhead_us_p50": 150.0, "outside_us": 90.0, "agreement": 1.7},
        "mock": {"overhead_us_p50": 48.0, "outside_us": 60.0, "agreement": 0.8},
        "wire": {
            "overhead_us_p50": 48.9,
            "mock_wire_us_p50": 202.9,
            "echo_wire_us_p50": 140.8,
            "outside_us": 55.0,
            "agreement": 0.947,
        },
    }
    results = {
        "overhead": paired,
        "gateway": [_row("floor", 0.0, 1, 3000, 0.33), _row("inprocess", 0.0, 1, 2900, 0.40, 120.0)],
    }
    rows = {t["target"]: t for t in harness.targets(results)}
    in_process = rows[
        "reported overhead_us agrees with the outside clock within 20% (in-process Router, paired call by call)"
    ]
    assert in_process["met"] is True
    assert in_process["ratio"] == 0.906
    wire = rows[
        "reported overhead_us agrees with the outside clock within 20% (the mock over TCP, the wire's timestamps)"
    ]
    assert wire["met"] is True
    assert "+55.0 µs" in wire["comparison"]
    # The cross-cell comparison (120 reported against +70 outside) is kept, as a rough check only.
    rough = [t for t in rows.values() if t["target"].endswith("(across cells: a rough check)")]
    assert rough
    assert all(t["met"] is None for t in rough)
    paired["wire"] = {"skipped": "no raw socket on lo here (needs root or CAP_NET_RAW)"}
    skipped = {t["target"]: t for t in harness.targets(results)}
    assert (
        skipped[
            "reported overhead_us agrees with the outside clock within 20% (the mock over TCP, the wire's timestamps)"
        ]["met"]
        is None
    )
