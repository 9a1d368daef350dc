"""`nnrun preprocess` against a real Docker engine, real nnU-Net 2.8.1 and real kernel OOM kills.

Caps were chosen from measurements on this kind of machine (2 cores, cgroup
v1) with the demo dataset: a whole run with -npfp 1 peaks at about 1.4 GiB of
anonymous memory (the main process gathers the fingerprint), preprocessing
3d_fullres with -np 4 needs more than 1.4 GiB.  The test-only hook
NNRUN_TEST_OOM_VICTIM gives the intended victim oom_score_adj 1000 and the
others 0, so the kernel's choice is certain rather than likely.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import jsonschema
import pytest

from runner.demo import CaseSpec, make_dataset
from runner.diagnosis.report import load_schema
from runner.diagnosis.wording import EARLY_SUFFIX
from tests.integration.conftest import (
    IMAGE,
    REPO,
    nnrun_cmd,
    nnrun_containers,
    nnrun_stderr_lines,
    parse_single_json,
    run_nnrun,
)
from tests.integration.treecompare import compare_trees

pytestmark = pytest.mark.docker
SCHEMA = load_schema()
FAST = ["-c", "3d_fullres"]


def _assert_report(result, outcome: str, exit_code: int) -> dict:
    assert result.report is not None, f"no JSON on stdout; stderr:\n{result.stderr[-3000:]}"
    jsonschema.validate(result.report, SCHEMA)
    assert result.report["outcome"] == outcome, (result.report["message"], result.stderr[-3000:])
    assert result.returncode == exit_code == result.report["exit_code"]
    assert "Traceback" not in "\n".join(nnrun_stderr_lines(result.stderr))
    return result.report


def _early_lines(stderr: str) -> list[str]:
    """The early diagnosis lines (runner.diagnosis.early): printed before nnU-Net has ended."""
    return [ln for ln in stderr.splitlines() if ln.endswith(EARLY_SUFFIX)]


def _assert_one_line_report(stderr: str, outcome: str) -> None:
    """The diagnosis of a run that started nothing is one line, the last one on stderr."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert lines[-1].startswith(f"nnrun: {outcome}: ")
    assert sum(ln.startswith(f"nnrun: {outcome}") for ln in lines) == 1


def _native_run(raw: Path, preprocessed: Path, *nnunet_args: str) -> None:
    """nnUNetv2_plan_and_preprocess itself, in the same image, same data, same options."""
    dataset = next(raw.glob("Dataset501_*"))
    (preprocessed / dataset.name).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["docker", "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "--memory", "8g",
         "-v", f"{dataset}:/data/raw/{dataset.name}:ro",
         "-v", f"{preprocessed / dataset.name}:/data/preprocessed/{dataset.name}",
         "--entrypoint", "nnUNetv2_plan_and_preprocess", IMAGE, "-d", "501", *nnunet_args],
        check=True, capture_output=True, timeout=600)


def test_ok_run_is_identical_to_native_nnunet(docker_ready, demo_raw, tmp_path):
    pre = tmp_path / "pre"
    result = run_nnrun("preprocess", "-d", "501", "--mem", "4g", "--raw", str(demo_raw), "--preprocessed", str(pre),
                       *FAST, "-np", "2", "-npfp", "2")
    report = _assert_report(result, "ok", 0)
    assert report["phase"] is None and report["oom_kills"] == 0 and report["oom_source"] == "cgroup"
    assert 0 < report["peak_anon_bytes"] < report["limit_bytes"] == 4 * 2**30
    out = pre / "Dataset501_Demo"
    for rel in ("dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json", "gt_segmentations/case000.nii.gz",
                "nnUNetPlans_3d_fullres/case005.pkl", "nnUNetPlans_3d_fullres/case005.b2nd",
                "nnUNetPlans_3d_fullres/case005_seg.b2nd"):
        assert (out / rel).is_file(), rel
    # nnrun's own files live in one hidden folder, and the outputs belong to the caller.
    run_dir = Path(report["run_dir"])
    assert run_dir.parent.parent == out / ".nnrun"
    assert json.loads((run_dir / "report.json").read_text())["outcome"] == "ok"
    assert (out / "nnUNetPlans.json").stat().st_uid == os.getuid()

    native = tmp_path / "native"
    _native_run(demo_raw, native, *FAST, "-np", "2", "-npfp", "2")
    assert compare_trees(out, native / "Dataset501_Demo") == []


def test_worker_oom_in_preprocessing(docker_ready, demo_raw, tmp_path):
    pre = tmp_path / "pre"
    common = ["preprocess", "-d", "501", "--raw", str(demo_raw), "--preprocessed", str(pre), *FAST, "-npfp", "1"]
    # Fingerprint and plans first, with room; the capped run then fails in preprocessing.
    _assert_report(run_nnrun(*common, "--mem", "4g", "--no_pp"), "ok", 0)
    result = run_nnrun(*common, "--mem", "1200m", "-np", "4", env={"NNRUN_TEST_OOM_VICTIM": "worker"})
    report = _assert_report(result, "oom", 3)
    assert report["victim"] == "worker"
    assert report["phase"] == "preprocessing" and report["configuration"] == "3d_fullres"
    assert report["oom_source"] == "cgroup" and report["oom_kills"] >= 1
    assert report["victims"][0]["role"] == "worker" and isinstance(report["victims"][0]["pid"], int)
    assert report["limit_bytes"] == 1200 * 2**20
    assert report["peak_anon_bytes"] > 0.8 * report["limit_bytes"]
    # From the agent's log: exact, possibly empty when the kill came while workers were still
    # importing (test_telemetry_real.py pins the victim case on a dataset built for it).
    assert report["cases_exact"] is True
    if report["victim_case"] is not None:
        assert report["victim_case"] in report["cases_in_flight"]
    assert report["recommendation_argv"][:2] == ["nnrun", "preprocess"]
    argv = report["recommendation_argv"]
    # Fewer workers, same cap: at most half of 4, fewer when the estimate fits fewer side by side.
    assert 1 <= int(argv[argv.index("-np") + 1]) <= 2
    assert argv[argv.index("--mem") + 1] == "1200m"
    # The human report replaces "6 feet under" with the diagnosis.
    assert "worker process" in result.stderr and "preprocessing 3d_fullres" in result.stderr
    # The diagnosis came first as one early line, as soon as the killed worker was known; it names the
    # report's victim.
    early = _early_lines(result.stderr)
    assert len(early) == 1, result.stderr[-3000:]
    assert early[0].startswith("nnrun: oom (out of memory): the kernel OOM-killed a worker")
    assert f"(pid {report['victims'][0]['pid']})" in early[0] and "3d_fullres" in early[0]
    if " while " in early[0]:       # it named the case the worker held: the report's
        assert report["victim_case"] is not None and f" {report['victim_case']} " in early[0]
    assert "next:" in result.stderr
    # No half-written output that a later run would trust: the case folder is gone,
    # the fingerprint and plans of the earlier complete run stay.
    out = pre / "Dataset501_Demo"
    assert not (out / "nnUNetPlans_3d_fullres").exists()
    assert (out / "dataset_fingerprint.json").is_file() and (out / "nnUNetPlans.json").is_file()


def test_main_process_oom_in_fingerprint(docker_ready, demo_raw, tmp_path):
    pre = tmp_path / "pre"
    # Pinned workers (fixed schedule): the estimate would otherwise refuse the cap up front.
    result = run_nnrun("preprocess", "-d", "501", "--mem", "1200m", "--raw", str(demo_raw), "--preprocessed",
                       str(pre), *FAST, "-np", "1", "-npfp", "1", env={"NNRUN_TEST_OOM_VICTIM": "main"})
    report = _assert_report(result, "oom", 3)
    assert report["victim"] == "main" and report["phase"] == "fingerprint"
    assert report["victims"][0]["role"] == "main"
    assert _early_lines(result.stderr) == ["nnrun: oom (out of memory): the kernel OOM-killed nnU-Net's main process "
                                           f"during fingerprint extraction {EARLY_SUFFIX}"]
    assert report["container_exit_code"] == 137     # the supervisor passes on the SIGKILL
    assert "main process" in report["message"]
    assert report["recommendation"] is not None and "--mem" in report["recommendation_argv"]
    assert not (pre / "Dataset501_Demo" / "dataset_fingerprint.json").exists()


def test_truncated_image_is_bad_input_before_any_container(docker_ready, tmp_path):
    raw = tmp_path / "raw"
    make_dataset(raw, 501, "Cut", [CaseSpec((64, 64, 24), (1.0, 1.0, 3.0))] * 3)
    victim = raw / "Dataset501_Cut" / "imagesTr" / "case001_0000.nii.gz"
    data = victim.read_bytes()
    victim.write_bytes(data[: len(data) // 3])
    before = set(nnrun_containers())
    result = run_nnrun("preprocess", "-d", "501", "--mem", "2g", "--raw", str(raw), "--preprocessed",
                       str(tmp_path / "pre"))
    report = _assert_report(result, "bad_input", 2)
    assert "case001_0000.nii.gz" in report["message"] and "truncated" in report["message"]
    assert set(nnrun_containers()) == before
    assert not (tmp_path / "pre").exists()
    _assert_one_line_report(result.stderr, "bad_input")


def test_label_with_other_shape_is_bad_input_naming_the_case(docker_ready, tmp_path):
    """Native nnU-Net fails mid-fingerprint (a broadcast ValueError naming no case); nnrun refuses up front."""
    raw = tmp_path / "raw"
    specs = [CaseSpec((64, 64, 24), (1.0, 1.0, 3.0)), CaseSpec((64, 64, 24), (1.0, 1.0, 3.0), label_shape=(64, 64, 20)),
             CaseSpec((64, 64, 24), (1.0, 1.0, 3.0))]
    make_dataset(raw, 501, "Shapes", specs)
    before = set(nnrun_containers())
    result = run_nnrun("preprocess", "-d", "501", "--mem", "3g", "--raw", str(raw), "--preprocessed",
                       str(tmp_path / "pre"), *FAST, "-npfp", "2", "-np", "2")
    report = _assert_report(result, "bad_input", 2)
    assert "case001" in report["message"] and "64x64x24" in report["message"] and "64x64x20" in report["message"]
    assert set(nnrun_containers()) == before
    assert not (tmp_path / "pre").exists()
    _assert_one_line_report(result.stderr, "bad_input")


def _start_background(demo_raw: Path, pre: Path, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(nnrun_cmd("preprocess", "-d", "501", "--mem", "4g", "--raw", str(demo_raw),
                                      "--preprocessed", str(pre), *FAST, "-np", "1", "-npfp", "1", "--json", *extra),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _wait_for_container(before: set[str], timeout: float = 60) -> str:
    deadline = time.time() + timeout
    while time.time() < deadline:
        new = set(nnrun_containers()) - before
        if new:
            cid = new.pop()
            state = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", cid],
                                   capture_output=True, text=True).stdout.strip()
            if state == "true":
                return cid
        time.sleep(0.2)
    raise AssertionError("nnrun's container did not start")


def test_docker_kill_is_killed_not_oom(docker_ready, demo_raw, tmp_path):
    before = set(nnrun_containers())
    proc = _start_background(demo_raw, tmp_path / "pre")
    cid = _wait_for_container(before)
    time.sleep(3)   # let nnU-Net get going
    subprocess.run(["docker", "kill", cid], check=True, capture_output=True)
    stdout, stderr = proc.communicate(timeout=120)
    report = parse_single_json(stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["outcome"] == "killed" and proc.returncode == 5, (report["message"], stderr[-2000:])
    assert report["container_exit_code"] == 137 and report["oom_kills"] == 0


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_signal_to_nnrun_stops_and_removes_the_container(docker_ready, demo_raw, tmp_path, signum, code):
    before = set(nnrun_containers())
    proc = _start_background(demo_raw, tmp_path / "pre")
    _wait_for_container(before)
    time.sleep(2)
    proc.send_signal(signum)
    stdout, stderr = proc.communicate(timeout=120)
    report = parse_single_json(stdout)
    jsonschema.validate(report, SCHEMA)
    assert report["outcome"] == "interrupted" and proc.returncode == code, (report["message"], stderr[-2000:])
    assert set(nnrun_containers()) == before


@pytest.mark.parametrize("mem, words", [("abc", "invalid --mem"), ("0", "--mem"), ("-1g", "--mem"),
                                        ("100000g", "more than the Docker host")])
def test_bad_mem_is_bad_input_before_any_container(docker_ready, demo_raw, tmp_path, mem, words):
    before = set(nnrun_containers())
    result = run_nnrun("preprocess", "-d", "501", "--mem", mem, "--raw", str(demo_raw),
                       "--preprocessed", str(tmp_path / "pre"), "--skip-file-check")
    report = _assert_report(result, "bad_input", 2)
    assert words in report["message"]
    assert set(nnrun_containers()) == before
    _assert_one_line_report(result.stderr, "bad_input")


def test_wrong_dataset_id_is_bad_input(docker_ready, demo_raw, tmp_path):
    result = run_nnrun("preprocess", "-d", "502", "--mem", "4g", "--raw", str(demo_raw),
                       "--preprocessed", str(tmp_path / "pre"))
    report = _assert_report(result, "bad_input", 2)
    assert "502" in report["message"] and "501" in report["message"]


def test_daemon_unreachable_is_infra(demo_raw, tmp_path):
    result = run_nnrun("preprocess", "-d", "501", "--mem", "4g", "--raw", str(demo_raw),
                       "--preprocessed", str(tmp_path / "pre"), "--skip-file-check",
                       env={"DOCKER_HOST": f"unix://{tmp_path}/no-such-docker.sock"})
    report = _assert_report(result, "infra", 6)
    assert "not reachable" in report["message"]


def test_missing_image_is_infra_with_setup_advice(docker_ready, demo_raw, tmp_path):
    result = run_nnrun("preprocess", "-d", "501", "--mem", "4g", "--raw", str(demo_raw),
                       "--preprocessed", str(tmp_path / "pre"), "--skip-file-check",
                       "--image", "nnrun:no-such-tag")
    report = _assert_report(result, "infra", 6)
    assert "nnrun:no-such-tag" in report["message"] and "--image" in report["hint"]
    assert "`nnrun image build --tag nnrun:no-such-tag`" in report["hint"]


def test_option_nnunet_rejects_after_dashdash_is_error(docker_ready, demo_raw, tmp_path):
    result = run_nnrun("preprocess", "-d", "501", "--mem", "2g", "--raw", str(demo_raw), "--preprocessed",
                       str(tmp_path / "pre"), "--skip-file-check", "--", "--no-such-nnunet-flag")
    report = _assert_report(result, "error", 4)
    assert "unrecognized arguments: --no-such-nnunet-flag" in report["message"]
    assert report["nnunet_argv"][-1] == "--no-such-nnunet-flag"


def test_a_killed_nnrun_is_cleaned_up_by_the_next_run(docker_ready, demo_raw, tmp_path):
    """nnrun itself SIGKILLed mid-run: its container is refused while it runs; once it is gone, the next
    run removes what the dead run's phase left half-written and runs normally."""
    pre = tmp_path / "pre"
    before = set(nnrun_containers())
    proc = _start_background(demo_raw, pre)
    cid = _wait_for_container(before)
    time.sleep(3)
    proc.kill()                                   # nnrun dies; its container keeps running
    proc.communicate(timeout=30)
    active = pre / "Dataset501_Demo" / ".nnrun" / "active.json"
    assert active.is_file()
    args = ("preprocess", "-d", "501", "--mem", "4g", "--raw", str(demo_raw), "--preprocessed", str(pre), *FAST,
            "-np", "1", "-npfp", "1", "--skip-file-check")
    refused = run_nnrun(*args)
    report = _assert_report(refused, "bad_input", 2)
    assert "still writing" in report["message"] and cid[:12] in report["hint"]
    subprocess.run(["docker", "rm", "-f", cid], check=True, capture_output=True)
    ok = run_nnrun(*args)
    _assert_report(ok, "ok", 0)
    assert not active.exists()
