"""Kill + resume with real SIGKILLs, injected deterministically (test-only hook NNRUN_TEST_KILL_AT).

The agent SIGKILLs nnU-Net's whole process group at a chosen point:
``fingerprint_written`` (the fingerprint is in its temporary file, not yet
renamed), ``between_cases`` (after the first case of a configuration is
complete), ``mid_case_write`` (a case's .b2nd files have their final names,
its .pkl not yet).  Each test checks that the partial state really existed,
that a later run resumes from what was complete, and that the final folder is
identical to a clean native nnU-Net run.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.integration.conftest import run_nnrun
from tests.integration.test_preprocess_real import FAST, _assert_report, _native_run
from tests.integration.treecompare import compare_trees

pytestmark = pytest.mark.docker
ARGS = (*FAST, "-np", "2", "-npfp", "2")


@pytest.fixture(scope="module")
def native_tree(docker_ready, demo_raw, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("native")
    _native_run(demo_raw, out, *ARGS)
    return out / "Dataset501_Demo"


def _nnrun(demo_raw, pre, *extra, env=None):
    return run_nnrun("preprocess", "-d", "501", "--mem", "4g", "--raw", str(demo_raw), "--preprocessed", str(pre),
                     "--skip-file-check", "--no-plot", *ARGS, *extra, env=env)


def _agent_events(report: dict, kind: str) -> list[dict]:
    path = Path(report["run_dir"]) / "agent.jsonl"
    return [e for e in map(json.loads, path.read_text().splitlines()) if e.get("event") == kind]


def test_kill_while_the_fingerprint_is_written(demo_raw, tmp_path, native_tree):
    pre = tmp_path / "pre"
    out = pre / "Dataset501_Demo"
    killed = _nnrun(demo_raw, pre, env={"NNRUN_TEST_KILL_AT": "fingerprint_written"})
    report = _assert_report(killed, "killed", 5)
    assert report["phase"] == "fingerprint"
    # The fingerprint existed only under its temporary name, and nnrun removed it.
    assert str(out / "dataset_fingerprint.json.nnrun-tmp") in report["removed_outputs"]
    assert not (out / "dataset_fingerprint.json").exists()
    resumed = _assert_report(_nnrun(demo_raw, pre), "ok", 0)
    assert compare_trees(out, native_tree) == []
    assert resumed["removed_outputs"] == []


@pytest.mark.parametrize("point", ["between_cases", "mid_case_write"])
def test_kill_in_preprocessing_then_resume(demo_raw, tmp_path, native_tree, point):
    pre = tmp_path / "pre"
    out = pre / "Dataset501_Demo"
    staging = out / ".nnrun" / "staging" / "nnUNetPlans_3d_fullres"
    killed = _nnrun(demo_raw, pre, env={"NNRUN_TEST_KILL_AT": point})
    report = _assert_report(killed, "killed", 5)
    assert report["phase"] == "preprocessing" and report["configuration"] == "3d_fullres"
    # A trainer never sees a half-filled configuration folder: it is still in staging.
    assert not (out / "nnUNetPlans_3d_fullres").exists()
    complete = sorted(p.stem for p in staging.glob("case*.pkl"))
    partial = sorted(p.name.removesuffix(".b2nd") for p in staging.glob("case???.b2nd")
                     if not (staging / (p.name.removesuffix(".b2nd") + ".pkl")).exists())
    if point == "between_cases":
        assert complete, "the first case was complete when the kill came"
    else:
        assert partial, "a case's data was written but not its .pkl: the partial file really existed"
    resumed = _assert_report(_nnrun(demo_raw, pre), "ok", 0)
    resume = _agent_events(resumed, "resume")[0]
    assert resume["complete"] == len(complete) and resume["pending"] == 6 - len(complete)
    done_again = {e["case"] for e in _agent_events(resumed, "case_end") if e.get("phase") == "preprocessing"}
    assert done_again.isdisjoint(complete)                    # finished cases were kept, not redone
    assert set(partial) <= done_again                         # the partial case was redone
    assert not staging.exists()
    assert compare_trees(out, native_tree) == []


def test_clean_starts_over(demo_raw, tmp_path):
    pre = tmp_path / "pre"
    _assert_report(_nnrun(demo_raw, pre, env={"NNRUN_TEST_KILL_AT": "between_cases"}), "killed", 5)
    again = _assert_report(_nnrun(demo_raw, pre, "--clean"), "ok", 0)
    assert _agent_events(again, "resume")[0]["complete"] == 0
