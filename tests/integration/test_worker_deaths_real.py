"""Every worker death explained, with real nnU-Net in the image, real processes and real signals.

A signal is sent from outside the worker (``docker exec ... kill``) to the nnU-Net worker that holds a case,
as soon as the agent's log says that the case started: SIGSEGV, SIGBUS and SIGABRT to a preprocessing
worker (nnrun's pool) and to a fingerprint worker (nnU-Net's own pool), SIGKILL from outside; a too small
/dev/shm filled by a worker (a real SIGBUS); a worker exception from a damaged label.  Each run asserts
the outcome, the exit code, the signal's name, the case, and that "6 feet under" appears only as quoted
nnU-Net output, never as the headline.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from runner.demo import CaseSpec, make_dataset
from runner.rundir import AGENT_EVENTS_FILE
from tests.integration.conftest import IMAGE, REPO, TEST_LABEL, nnrun_cmd, parse_single_json

DATASET_ID = 531
# Cases large enough, and with spacings different enough that each is resampled (order-3 splines), that
# one takes seconds on this machine: the signal lands mid-case.
CASES = [CaseSpec((224, 224, 144), (0.9, 0.9, 1.0)), CaseSpec((208, 224, 136), (0.7, 0.7, 1.2)),
         CaseSpec((216, 208, 140), (1.1, 1.1, 0.8))]
FAST = ["-c", "3d_fullres", "-np", "1", "-npfp", "1", "--no-plot"]


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("deaths-raw")
    make_dataset(root, DATASET_ID, "Deaths", CASES, seed=3)
    return root


def _start(raw: Path, pre: Path, *extra: str, env: dict | None = None) -> subprocess.Popen:
    args = ["preprocess", "-d", str(DATASET_ID), "--mem", "6g", "--raw", str(raw), "--preprocessed", str(pre),
            "--image", IMAGE, *FAST, *extra, "--json"]
    return subprocess.Popen(nnrun_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
                            env={**os.environ, **(env or {})})


def _container() -> str | None:
    out = subprocess.run(["docker", "ps", "-q", "--no-trunc", "--filter",
                          f"label={TEST_LABEL}={os.environ['NNRUN_TEST_ID']}"], capture_output=True, text=True).stdout
    return out.split()[0] if out.split() else None


def _first_case_start(pre: Path, phase: str, timeout: float = 240, dataset_id: int = DATASET_ID) -> dict:
    """The agent's first case_start event of ``phase`` (the worker's pid in the container, its case)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        for log in pre.glob(f"Dataset{dataset_id}_*/.nnrun/runs/*/{AGENT_EVENTS_FILE}"):
            for line in log.read_text(errors="replace").splitlines():
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") == "case_start" and event.get("phase") == phase:
                    return event
        time.sleep(0.05)
    raise AssertionError(f"no case started in {phase} within {timeout} s")


def _host_pid(cid: str, container_pid: int) -> int:
    """The host's pid of a process of container ``cid`` (the agent logs pids as the container sees them)."""
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            nspid = next(ln.split()[1:] for ln in status.read_text().splitlines() if ln.startswith("NSpid:"))
            if int(nspid[-1]) == container_pid and len(nspid) > 1 and cid in (status.parent / "cgroup").read_text():
                return int(nspid[0])
        except (OSError, StopIteration, ValueError):
            continue
    raise AssertionError(f"pid {container_pid} of container {cid[:12]} not found")


def _signal_worker(pre: Path, phase: str, sig: str) -> dict:
    event = _first_case_start(pre, phase)
    cid = _container()
    assert cid, "the run's container is not running"
    # From outside the worker, as a crash, an admin or a scheduler would: a real signal to the real process.
    os.kill(_host_pid(cid, event["pid"]), getattr(signal, sig))
    return event


def _finish(proc: subprocess.Popen, timeout: float = 400) -> tuple[dict, str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    report = parse_single_json(stdout)
    assert report is not None, stderr[-3000:]
    return report, stderr


def _assert_six_feet_only_quoted(report: dict, stderr: str) -> None:
    assert "6 feet under" not in report["message"]
    heads = [ln for ln in stderr.splitlines() if ln.startswith("nnrun:")]
    assert heads and not any("6 feet under" in ln for ln in heads), heads
    for line in stderr.splitlines():
        if "6 feet under" in line and not line.startswith(("nnU-Net", "RuntimeError", "Traceback", " ")):
            pytest.fail(f"'6 feet under' outside nnU-Net's quoted words: {line!r}")
        if "6 feet under" in line and line.startswith("  ") and "nnU-Net said:" not in line:
            pytest.fail(f"'6 feet under' outside nnU-Net's quoted words: {line!r}")


@pytest.mark.parametrize("phase", ["preprocessing", "fingerprint"])
@pytest.mark.parametrize("sig,words", [("SIGSEGV", "segmentation fault"), ("SIGBUS", "bus error"),
                                       ("SIGABRT", "abort")])
def test_a_fatal_signal_to_a_busy_worker_is_a_named_crash(docker_ready, raw, tmp_path, phase, sig, words):
    pre = tmp_path / "pre"
    proc = _start(raw, pre)
    event = _signal_worker(pre, phase, sig)
    report, stderr = _finish(proc)
    print(stderr[-1500:])
    assert (report["outcome"], report["exit_code"]) == ("error", 4), report["message"]
    assert report["reason"] == "crash" and report["signal_name"] == sig
    assert report["victim"] == "worker" and report["victim_case"] == event["case"]
    assert report["victims"][0]["pid"] == event["pid"]
    assert report["phase"] == phase
    assert f"{sig} ({words})" in report["message"] and event["case"] in report["message"]
    assert report["crash_frame"], "faulthandler's frame"
    assert "--retry" in (report.get("hint") or "") + (stderr or "")
    _assert_six_feet_only_quoted(report, stderr)


def test_sigkill_from_outside_is_killed_naming_the_worker_and_case(docker_ready, raw, tmp_path):
    pre = tmp_path / "pre"
    proc = _start(raw, pre)
    event = _signal_worker(pre, "preprocessing", "SIGKILL")
    report, stderr = _finish(proc)
    print(stderr[-1500:])
    assert (report["outcome"], report["exit_code"]) == ("killed", 5), report["message"]
    assert report["reason"] == "killed" and report["signal_name"] == "SIGKILL" and report["oom_kills"] == 0
    assert report["victim_case"] == event["case"] and f"(pid {event['pid']})" in report["message"]
    assert "from outside" in report["message"]
    _assert_six_feet_only_quoted(report, stderr)


def test_a_full_dev_shm_is_named_with_the_shm_size_to_use(docker_ready, raw, tmp_path):
    pre = tmp_path / "pre"
    # A worker maps 32 MiB of a 8 MiB /dev/shm (as shared-memory tensors do): the kernel's SIGBUS.
    proc = _start(raw, pre, "--shm-size", "8m", env={"NNRUN_TEST_SHM_FILL": str(32 << 20)})
    report, stderr = _finish(proc)
    print(stderr[-1500:])
    assert (report["outcome"], report["exit_code"]) == ("error", 4), report["message"]
    assert report["reason"] == "shm" and report["signal_name"] == "SIGBUS"
    assert report["victim_case"] and "/dev/shm" in report["message"]
    assert report["peak_shm_bytes"] >= 7 << 20 and report["shm_size_bytes"] == 8 << 20
    argv = report["recommendation_argv"]
    assert int(argv[argv.index("--shm-size") + 1].rstrip("m")) >= 16
    _assert_six_feet_only_quoted(report, stderr)


def test_a_worker_exception_names_the_case_and_its_last_line(docker_ready, tmp_path):
    raw = tmp_path / "raw"
    good = make_dataset(raw, DATASET_ID + 1, "BadLabel", CASES[:2], seed=4)
    # A label smaller than its image is refused by nnrun's pre-flight check, before any container starts
    # (tests/unit/test_formats.py).  To reach nnU-Net's own exception the damage happens after that check,
    # as a copy still being written would: once the fingerprint's first case starts, case001's label is
    # swapped for one 8 voxels shorter.  nnU-Net's fingerprint worker raises on that case.
    bad = make_dataset(tmp_path / "bad", DATASET_ID + 1, "BadLabel",
                       [CASES[0], CaseSpec(CASES[1].shape, CASES[1].spacing, label_shape=(200, 224, 136))], seed=4)
    bad_label = next((bad / "labelsTr").glob("case001.*"))
    target = good / "labelsTr" / bad_label.name
    pre = tmp_path / "pre"
    proc = subprocess.Popen(nnrun_cmd("preprocess", "-d", str(DATASET_ID + 1), "--mem", "6g", "--raw", str(raw),
                                      "--preprocessed", str(pre), "--image", IMAGE, *FAST, "--json"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    first = _first_case_start(pre, "fingerprint", dataset_id=DATASET_ID + 1)
    assert first["case"] == "case000", first
    swap = target.with_name(target.name + ".swap")
    swap.write_bytes(bad_label.read_bytes())
    os.replace(swap, target)
    report, stderr = _finish(proc)
    print(stderr[-1500:])
    assert (report["outcome"], report["exit_code"]) == ("error", 4), report["message"]
    assert report["reason"] == "exception" and report["victim_case"] == "case001"
    assert "raised " in report["message"] and "case001" in report["message"]
    assert "label and image shapes differ" in report["message"]
    _assert_six_feet_only_quoted(report, stderr)


def test_retry_after_a_crash_reruns_with_one_worker_and_says_flaky(docker_ready, raw, tmp_path):
    pre = tmp_path / "pre"
    proc = _start(raw, pre, "--retry", "1")
    _signal_worker(pre, "preprocessing", "SIGSEGV")
    report, stderr = _finish(proc, timeout=600)
    print(stderr[-1500:])
    assert (report["outcome"], report["exit_code"]) == ("ok", 0), report["message"]
    assert report["crash_retry"] == "flaky" and "flaky" in report["message"]
    assert [a["outcome"] for a in report["attempts"]] == ["error", "ok"]
