"""The estimate at work on real runs: a case too large reported up front, `-np auto` first-try success
where nnU-Net's default pool is OOM-killed, memory-aware admission, and --retry after a real OOM.

The dataset is the mixed-size one of the benchmark scenarios: five small cases
and one large case (case002) that nnU-Net resamples to 1.5 mm; measured here,
the large case's worker peaks at about 1.9 GiB, the small ones at 0.4 GiB.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from runner.demo import CaseSpec, make_dataset
from tests.integration.conftest import IMAGE, nnrun_containers, run_nnrun
from tests.integration.test_preprocess_real import _assert_report
from tests.integration.treecompare import compare_trees

pytestmark = pytest.mark.docker
SMALL = CaseSpec((96, 96, 40), (0.8, 0.8, 1.5))
BIG = CaseSpec((288, 288, 120), (0.8, 0.8, 3.0))
TIGHT = "2600m"      # the large case fits alone; nnU-Net's default -np 4 for 3d_fullres does not


@pytest.fixture(scope="module")
def mixed_raw(tmp_path_factory):
    raw = tmp_path_factory.mktemp("mixed")
    make_dataset(raw, 502, "Mixed", [SMALL, SMALL, BIG, SMALL, SMALL, SMALL])
    return raw


def _run(raw, pre, mem, *extra, env=None):
    return run_nnrun("preprocess", "-d", "502", "--mem", mem, "--raw", str(raw), "--preprocessed", str(pre),
                     "-c", "3d_fullres", "--skip-file-check", "--no-plot", *extra, env=env)


def test_a_case_too_large_for_the_cap_is_reported_before_the_run(docker_ready, mixed_raw, tmp_path):
    before = set(nnrun_containers())
    report = _assert_report(_run(mixed_raw, tmp_path / "pre", "2g"), "bad_input", 2)
    assert "case002" in report["message"] and "even with one worker" in report["message"]
    assert "--mem" in report["hint"]
    assert set(nnrun_containers()) == before           # nothing started


def test_np_auto_finishes_first_try_where_the_default_pool_is_oom_killed(docker_ready, mixed_raw, tmp_path):
    default_pool = _assert_report(_run(mixed_raw, tmp_path / "fixed", TIGHT, "-np", "4", "-npfp", "2"), "oom", 3)
    assert default_pool["victim"] in ("worker", "main") and len(default_pool["attempts"]) == 1   # pinned: no retry
    auto = _assert_report(_run(mixed_raw, tmp_path / "auto", TIGHT, "-np", "auto", "-npfp", "auto"), "ok", 0)
    assert auto["oom_kills"] == 0 and len(auto["attempts"]) == 1
    assert 1 <= auto["workers"]["np"]["3d_fullres"] < 4


def test_memory_aware_admission_is_the_default_and_runs_the_large_case_first(docker_ready, mixed_raw, tmp_path):
    report = _assert_report(_run(mixed_raw, tmp_path / "pre", "3g"), "ok", 0)
    assert report["workers"]["schedule"] == "memory" and report["oom_kills"] == 0
    pre_cases = [c for c in report["cases"] if c["phase"] == "preprocessing"]
    # Largest first: admitted first, as the first task of the first worker.  (A second worker started at
    # the same moment for a small case may finish importing nnU-Net first: start times race.)
    events = [json.loads(line) for line in (Path(report["run_dir"]) / "agent.jsonl").read_text().splitlines()]
    schedule = [e for e in events if e["event"] == "schedule"]
    assert len(schedule) == 1 and schedule[0]["order"][0] == "case002"
    big = next(c for c in pre_cases if c["case"] == "case002")
    assert min((c for c in pre_cases if c["pid"] == big["pid"]), key=lambda c: c["start"])["case"] == "case002"
    assert len(pre_cases) == 6 and all(c["status"] == "done" for c in pre_cases)


def test_retry_after_a_real_oom_finishes_with_fewer_workers(docker_ready, mixed_raw, tmp_path):
    # nnrun chose the worker counts (nnU-Net's defaults, --schedule fixed): two retries by default.
    report = _assert_report(_run(mixed_raw, tmp_path / "pre", TIGHT, "--schedule", "fixed", "-npfp", "auto"), "ok", 0)
    outcomes = [a["outcome"] for a in report["attempts"]]
    assert outcomes[0] == "oom" and outcomes[-1] == "ok" and len(outcomes) <= 3
    workers = [a["workers"]["np"]["3d_fullres"] for a in report["attempts"]]
    assert workers == sorted(workers, reverse=True) and workers[-1] < workers[0]
    assert all(a["workers"] for a in report["attempts"])
    # the retry redid only unfinished cases: each case was completed exactly once across attempts
    assert report["limit_bytes"] == 2600 * 2**20


def test_warm_worker_and_memory_aware_admission_write_what_native_nnunet_writes(docker_ready, mixed_raw, tmp_path):
    """Fingerprint and plans exist: nnrun starts its first worker with nnU-Net's main process (warm.json),
    admits cases by memory on up to two workers, and the folder is the one nnU-Net writes on its own."""
    pre = tmp_path / "pre"
    _assert_report(_run(mixed_raw, pre, "8g", "--no_pp"), "ok", 0)
    report = _assert_report(_run(mixed_raw, pre, "3g"), "ok", 0)
    run_dir = Path(report["run_dir"])
    assert json.loads((run_dir / "warm.json").read_text()) == {"configuration": "3d_fullres", "kind": "memory",
                                                               "workers": 1}
    events = [json.loads(line) for line in (run_dir / "agent.jsonl").read_text().splitlines()]
    warm = [e for e in events if e["event"] == "warm_workers"]
    assert len(warm) == 1 and len(warm[0]["worker_pids"]) == 1
    pre_cases = sorted((c for c in report["cases"] if c["phase"] == "preprocessing"), key=lambda c: c["start"])
    assert pre_cases[0]["pid"] == warm[0]["worker_pids"][0]         # the warm worker ran the first case
    assert len(pre_cases) == 6 and all(c["status"] == "done" and c["configuration"] == "3d_fullres"
                                       for c in pre_cases)
    assert report["workers"]["np"]["3d_fullres"] <= 2 and len({c["pid"] for c in pre_cases}) <= 2

    native = tmp_path / "native" / "Dataset502_Mixed"
    native.mkdir(parents=True)
    subprocess.run(["docker", "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "--memory", "8g",
                    "-v", f"{mixed_raw / 'Dataset502_Mixed'}:/data/raw/Dataset502_Mixed:ro",
                    "-v", f"{native}:/data/preprocessed/Dataset502_Mixed", "--entrypoint",
                    "nnUNetv2_plan_and_preprocess", IMAGE, "-d", "502", "-c", "3d_fullres", "-np", "2", "-npfp", "2"],
                   check=True, capture_output=True, timeout=600)
    assert compare_trees(pre / "Dataset502_Mixed", native) == []
