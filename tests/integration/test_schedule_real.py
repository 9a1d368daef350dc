"""The estimate at work on real runs: a case too large reported up front, `-np auto` first-try success
where nnU-Net's default pool is OOM-killed, memory-aware admission, and --retry after a real OOM.

The dataset is the mixed-size one of the benchmark scenarios: five small cases
and one large case (case002) that nnU-Net resamples to 1.5 mm; measured here,
the large case's worker peaks at about 1.9 GiB, the small ones at 0.4 GiB.
"""
from __future__ import annotations

import pytest

from runner.demo import CaseSpec, make_dataset
from tests.integration.conftest import nnrun_containers, run_nnrun
from tests.integration.test_preprocess_real import _assert_report

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
    assert "case002" in report["message"] and "even alone" in report["message"]
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
    first = min(pre_cases, key=lambda c: c["start"])
    assert first["case"] == "case002"                    # largest first; the small ones fill the gaps
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
