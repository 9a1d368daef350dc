"""Thrashing at the cap, for real: a real kernel reclaiming and re-reading pages under a real cgroup cap,
around a real nnU-Net run in the image, ends as ``oom`` within 30 s of the cap, not minutes of silence.

The test hook ``NNRUN_TEST_THRASH`` (runner/incontainer/events.py ``thrash_hook``) makes the first
fingerprint worker write a 128 MiB file of its own, fill anonymous memory to 64 MiB below the cap and
then read that file page by page, over and over: what a cap just above a run's working set does to
nnU-Net's own code pages.  (A first version read torch's largest library: once its pages were cached
for another cgroup by earlier runs, reading them charged nothing and faulted nothing, and the worker
spun at the cap without thrashing.)  Without the supervisor's watch such a run crawls until the kernel gives up (measured in
issue 13: 284 s before an OOM kill) or forever.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from runner.incontainer.thrash import WINDOW_S, Reading, near_cap
from runner.rundir import EVENTS_FILE, STATUS_FILE, TIMELINE_FILE
from runner.units import parse_mem
from tests.integration.conftest import run_nnrun

pytestmark = pytest.mark.docker
CAP = "1856m"       # what the estimate advises for the demo with one worker: the run itself fits
FAST = ["-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no-plot"]


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_a_run_thrashing_at_the_cap_ends_as_oom_within_30_s_with_advice(docker_ready, demo_raw, tmp_path):
    pre = tmp_path / "pre"
    started = time.monotonic()
    result = run_nnrun("preprocess", "-d", "501", "--mem", CAP, "--raw", str(demo_raw), "--preprocessed", str(pre),
                       *FAST, env={"NNRUN_TEST_THRASH": str(64 << 20)}, timeout=300)
    wall = time.monotonic() - started
    report = result.report
    assert result.returncode == 3 and report is not None, result.stderr[-3000:]
    assert report["outcome"] == "oom" and report["exit_code"] == 3
    assert report["oom_source"] == "thrashing" and report["oom_kills"] == 0 and report["victims"] == []
    thrash = report["thrashing"]
    assert thrash["seconds"] >= WINDOW_S - 0.5 and thrash["limit_bytes"] == parse_mem(CAP)
    assert thrash["reread_rate"] is not None and thrash["reread_rate"] >= 1000
    assert report["phase"] == "fingerprint"
    assert report["message"].startswith("nnU-Net thrashed at the 1.8 GiB cap for ")
    assert "nnrun ended it" in report["message"]
    # From the cap first reached (the host's timeline) to nnU-Net's end (the supervisor's status): < 30 s.
    run_dir = Path(report["run_dir"])
    timeline = _jsonl(run_dir / TIMELINE_FILE)
    at_cap = [s["t"] for s in timeline if near_cap(Reading(s["t"], s["usage"], s["limit"], None))]
    ended = json.loads((run_dir / STATUS_FILE).read_text())["ended"]
    assert at_cap, "the timeline never reached the cap"
    print(f"\n{report['message']}\n  first at the cap -> nnU-Net ended: {ended - at_cap[0]:.1f} s; "
          f"thrashing {thrash['seconds']} s at {thrash['reread_rate']} pages read back/s; wall {wall:.1f} s\n"
          f"  next: {report['recommendation']}")
    assert ended - at_cap[0] < 30
    events = [e for e in _jsonl(run_dir / EVENTS_FILE) if e.get("event") == "thrashing"]
    assert len(events) == 1
    # The human report says it, and the early progress line too.
    assert "thrashing:" in result.stderr and "thrashed at the cap" in result.stderr
    assert "6 feet under" not in report["message"]
    # Advice: one worker already, so memory: at least the cap (it thrashed there), plus the margin.
    need = report["memory_needed"]
    assert need["source"] in ("thrashed at the cap", "estimate", "measured")
    argv = report["recommendation_argv"]
    assert parse_mem(argv[argv.index("--mem") + 1]) > parse_mem(CAP) and argv[argv.index("--mem") + 1] == need["mem"]
    # Nothing a later run would trust: nnU-Net skips the fingerprint when its file exists.
    out = pre / "Dataset501_Demo"
    assert not (out / "dataset_fingerprint.json").exists()
