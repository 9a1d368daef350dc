"""Smoke test of the benchmark (bench/run.py): its quick mode on tiny datasets, every section present.

The benchmark itself is not part of the test command; this only checks that it runs end to end
against the real engine and image and writes a JSON file with numbers in every section.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from tests.integration.conftest import REPO

pytestmark = pytest.mark.docker


def _num(x) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool)


def test_bench_quick_tiny(docker_ready, tmp_path):
    out = tmp_path / "results"
    proc = subprocess.run([sys.executable, str(REPO / "bench" / "run.py"), "--quick", "--tiny", "--out", str(out),
                           "--work", str(tmp_path / "work"), "--docs", str(tmp_path / "benchmarks.md")],
                          capture_output=True, text=True, cwd=REPO, timeout=900,
                          env={**os.environ, "NNRUN_IMAGE": docker_ready})
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(out.glob("*.json"))
    assert len(files) == 1
    res = json.loads(files[0].read_text())

    m = res["machine"]
    assert m["cores"] >= 1 and m["mem_total_bytes"] > 0 and m["cgroup_version"] in ("1", "2") and m["date"]

    o = res["overhead"]
    for key in ("median_wall_s_native", "median_wall_s_nnrun_no_plot", "median_wall_s_nnrun_plot",
                "ratio_nnrun_no_plot", "ratio_nnrun_plot", "startup_delta_s_nnrun_no_plot"):
        assert _num(o[key]), key
    assert 0.3 < o["ratio_nnrun_no_plot"] < 3

    lat = res["latency"]
    if os.getuid() == 0:          # /dev/kmsg needs root
        for victim in ("worker", "main"):
            nn = lat[victim]["nnrun"]
            assert nn["outcome"] == "oom" and nn["victim"] == victim, nn
            assert nn["kernel_kills"] >= 1 and _num(nn["latency_s"]) and 0 <= nn["latency_s"] < 60, nn
            assert lat[victim]["native"]["kernel_kills"] >= 1
            assert _num(lat[victim]["native"]["exit_after_kill_s"])
    else:
        assert "error" in lat

    t = res["throughput"]
    assert "error" not in t, t.get("error")
    assert _num(t["physical_limit_s"]) and _num(t["cap_bytes"]) and t["best_fixed_np"]
    for name in ("nnrun_default", "nnrun_np_auto"):
        assert t["runs"][name]["ok"], t["runs"][name]
        assert _num(t[f"speedup_{name}"]) and _num(t[f"limit_over_{name}"])

    acc = res["accuracy"]
    for phase in ("preprocessing", "fingerprint"):
        assert acc[phase]["n"] > 0 and _num(acc[phase]["median_abs_error"]) and _num(acc[phase]["max_abs_error"])

    mon = res["monitor"]
    assert mon["runs"] > 0 and _num(mon["median_cpu_percent_of_one_core"])

    adv = res["advice"]
    assert adv["of"] == 1 and adv["reached_ok"] == 1, adv     # tiny: one start (the refusal, then its command)
    assert all(r["runs"] for r in adv["starts"]) and _num(adv["mean_runs_to_ok"])
    assert "runs to ok when following the advice" in res["table_markdown"]

    assert "| # | measure |" in res["table_markdown"]
    assert (tmp_path / "benchmarks.md").read_text().startswith("# Benchmarks")
