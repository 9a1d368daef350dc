"""Sharding with real containers: N shard runs side by side, a killed shard, `nnrun merge`.

The planning step runs once (``--no_pp``), then every shard preprocesses its
cases from the shared map into the same staging folder; the folder must end
up identical to one native ``nnUNetv2_plan_and_preprocess`` run.
"""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import REPO, nnrun_cmd, parse_single_json, run_nnrun
from tests.integration.test_preprocess_real import FAST, _assert_report, _native_run
from tests.integration.treecompare import compare_trees

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def native_tree(docker_ready, demo_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("native")
    _native_run(demo_raw, out, *FAST, "-np", "2", "-npfp", "2")
    return out / "Dataset501_Demo"


def _common(demo_raw, pre) -> list[str]:
    return ["-d", "501", "--mem", "3g", "--raw", str(demo_raw), "--preprocessed", str(pre), "--no-plot", *FAST]


def _plan(demo_raw, pre) -> None:
    _assert_report(run_nnrun("preprocess", *_common(demo_raw, pre), "--no_pp", "-npfp", "2"), "ok", 0)


def _shard(demo_raw, pre, k: int, n: int, env=None):
    return run_nnrun("preprocess", *_common(demo_raw, pre), "--shard", f"{k}/{n}", "-np", "1", env=env)


def _merge(demo_raw, pre) -> tuple[int, dict]:
    proc = subprocess.run(nnrun_cmd("merge", "-d", "501", "--raw", str(demo_raw), "--preprocessed", str(pre),
                                    "-c", "3d_fullres", "--mem", "3g", "--json"),
                          capture_output=True, text=True, cwd=REPO, timeout=120)
    return proc.returncode, parse_single_json(proc.stdout)


def test_parallel_shards_add_up_to_one_native_run(demo_raw, tmp_path, native_tree):
    pre = tmp_path / "pre"
    out = pre / "Dataset501_Demo"
    _plan(demo_raw, pre)
    procs = [subprocess.Popen(nnrun_cmd("preprocess", *_common(demo_raw, pre), "--shard", f"{k}/3", "-np", "1",
                                        "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              cwd=REPO) for k in range(3)]
    reports = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr[-2000:]
        reports.append(parse_single_json(stdout))
    shard_map = json.loads((out / ".nnrun" / "shards.nnUNetPlans.json").read_text())
    assert shard_map["shards"] == 3 and shard_map["balanced_by"] == "predicted_memory"
    # Every case in exactly one shard, and each run preprocessed exactly its shard's cases.
    assert sorted(shard_map["assignment"]) == [f"case{i:03d}" for i in range(6)]
    for k, report in enumerate(reports):
        assert report["shard"] == f"{k}/3"
        assert report["shard_cases"] == sorted(c for c, s in shard_map["assignment"].items() if s == k)
        done = sorted({c["case"] for c in report["cases"] if c["phase"] == "preprocessing"})
        assert done == report["shard_cases"]
    assert any(r["dataset_complete"] for r in reports)
    code, merged = _merge(demo_raw, pre)
    assert code == 0 and merged["complete"] is True, merged
    assert not (out / ".nnrun" / "staging" / "nnUNetPlans_3d_fullres").exists()
    assert compare_trees(out, native_tree) == []


def test_a_killed_shard_is_named_by_merge_and_its_rerun_completes(demo_raw, tmp_path, native_tree):
    pre = tmp_path / "pre"
    out = pre / "Dataset501_Demo"
    _plan(demo_raw, pre)
    killed = _shard(demo_raw, pre, 0, 2, env={"NNRUN_TEST_KILL_AT": "between_cases"})
    report = _assert_report(killed, "killed", 5)
    assert report["shard"] == "0/2" and len(report["shard_cases"]) >= 2
    other = _assert_report(_shard(demo_raw, pre, 1, 2), "ok", 0)
    assert other["dataset_complete"] is False            # shard 0's cases are missing
    code, merged = _merge(demo_raw, pre)
    assert code == 2 and merged["complete"] is False
    assert list(merged["incomplete_by_shard"]) == ["0"]   # only the killed shard is named
    assert set(merged["incomplete_by_shard"]["0"]) <= set(report["shard_cases"])
    assert "--shard 0/2" in merged["next"] and "--shard 1/2" not in merged["next"]
    rerun = _assert_report(_shard(demo_raw, pre, 0, 2), "ok", 0)
    assert rerun["dataset_complete"] is True
    code, merged = _merge(demo_raw, pre)
    assert code == 0, merged
    assert compare_trees(out, native_tree) == []


def test_a_shard_without_plans_is_refused_before_any_container(demo_raw, tmp_path):
    result = _shard(demo_raw, tmp_path / "pre", 0, 2)
    report = _assert_report(result, "bad_input", 2)
    assert "fingerprint and plans" in report["message"] and "--no_pp" in report["message"]
    assert report["run_dir"] is None


def test_a_different_shard_count_is_refused(demo_raw, tmp_path):
    pre = tmp_path / "pre"
    _plan(demo_raw, pre)
    _assert_report(_shard(demo_raw, pre, 1, 2), "ok", 0)
    report = _assert_report(_shard(demo_raw, pre, 0, 3), "bad_input", 2)
    assert "2 shards, not 3" in report["message"]
