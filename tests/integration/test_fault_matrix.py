"""Fault matrix: the failures test_preprocess_real.py does not cover, against real Docker and real nnU-Net.

Every row checks the outcome, the exit code and nnrun's one-line message (for
runs that start nothing: the last stderr line ``nnrun: <outcome>: ...``;
otherwise the headline ``nnrun: <outcome>...: <message>``), that no container
is left (the autouse registry in conftest.py, plus explicit before/after
comparisons for runs that must start nothing), and that nothing a later run
would trust is left half-written (:func:`_assert_nothing_half_written`).

Every run passes ``--image`` with the suite's image (``NNRUN_IMAGE`` or
``nnrun:<version>``), the one ``docker_ready`` checked.

The OOM rows give ``-np`` (``FIXED_POOL``), so that the run is nnU-Net's own
fixed worker pool, once.  Caps measured on this machine (2 cores, cgroup v1,
Dataset501_Demo, ``-c 3d_fullres -np 4``, NNRUN_TEST_OOM_VICTIM=worker):

* fingerprint, ``-npfp 2`` under 1g: a worker is killed while it holds a case
  (5 of 5 runs, after about 5 s; the agent's log names the case).
* fingerprint, ``-npfp 4`` under 1g: the four workers do not even finish
  importing torch and nnU-Net; one is killed before it takes a case (3 of 3
  runs, about 5 s; the agent's log has no case_start at all).  Under 1200m-1400m
  they reach their cases, but which pid the kill is pinned on depends on 50 ms
  poll timing (a worker that exited normally earlier was named once): not a row.
* ``--verify_dataset_integrity`` (8 verification workers) under 1g: workers are
  killed while they start; native nnU-Net then hangs, nnrun ends in 10-15 s.
* a 3 MiB tmpfs as the preprocessed folder: fingerprint (1.4 KB), plans (10 KB)
  and nnrun's run folder (~150 KB) fit, 3d_fullres case files (5.8 MB for the six
  demo cases, 0.4-1.5 MB per case) do not.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from runner.demo import CaseSpec, make_dataset
from runner.formats.nifti import check_file_complete
from runner.units import parse_mem
from tests.integration.conftest import IMAGE, REPO, nnrun_cmd, nnrun_containers, parse_single_json, run_nnrun
from tests.integration.test_preprocess_real import FAST, _assert_one_line_report, _assert_report, _wait_for_container

pytestmark = pytest.mark.docker
DEMO = "Dataset501_Demo"
DEMO_CASES = [f"case{i:03d}" for i in range(6)]
SMALL = CaseSpec((48, 48, 16), (1.0, 1.0, 3.0))
TMP_MARK = ".nnrun-tmp"           # nnrun's agent writes under such names, then renames
# nnU-Net's own fixed pool (4 is nnU-Net's default -np for 3d_fullres): with -np given, nnrun neither
# admits cases by its memory estimate nor retries after an OOM kill, so the OOM rows see one plain run.
FIXED_POOL = [*FAST, "-np", "4"]


# --------------------------------------------------------------------------- helpers

def _preprocess_args(raw: Path, pre: Path, *extra: str, dataset: str = "501", mem: str = "4g") -> list[str]:
    return ["preprocess", "-d", dataset, "--mem", mem, "--raw", str(raw), "--preprocessed", str(pre),
            "--image", IMAGE, *extra]


def _start(args: list[str], env: dict | None = None) -> subprocess.Popen:
    """nnrun in the background (its JSON on stdout), like test_preprocess_real's _start_background."""
    return subprocess.Popen(nnrun_cmd(*args, "--json"), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            cwd=REPO, env={**os.environ, **(env or {})})


def _finish(proc: subprocess.Popen, timeout: float = 300) -> tuple[dict | None, str]:
    stdout, stderr = proc.communicate(timeout=timeout)
    return parse_single_json(stdout), stderr


def _assert_advises_more_memory(report: dict, limit: str) -> list[str]:
    """The advice after a kill where one worker does not fit the cap: the ``--mem`` of the report's
    ``memory_needed`` (above the old cap), no pinned worker counts; returns the advised argv."""
    need = report["memory_needed"]
    assert need is not None and need["mem_bytes"] > parse_mem(limit)
    argv = report["recommendation_argv"]
    assert argv[argv.index("--mem") + 1] == need["mem"]
    assert "-np" not in argv and "-npfp" not in argv, argv
    assert f"--mem {need['mem']}" in report["recommendation"]
    return argv


def _headline(report: dict, stderr: str) -> str:
    """The human report's first line, which carries the JSON's message, is on stderr."""
    head = "nnrun: oom (out of memory)" if report["outcome"] == "oom" else f"nnrun: {report['outcome']}"
    line = f"{head}: {report['message']}"
    assert line in stderr.splitlines(), f"headline {line!r} not on stderr:\n{stderr[-2000:]}"
    return line


def _label(container_id: str, label: str) -> str:
    return subprocess.run(["docker", "inspect", "-f", f'{{{{index .Config.Labels "{label}"}}}}', container_id],
                          capture_output=True, text=True, check=True).stdout.strip()


def _tree(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*")) if folder.exists() else []


def _assert_nothing_half_written(out: Path, cases: list[str]) -> None:
    """What a later nnU-Net run or trainer would trust is complete, or absent.

    * no temporary file outside ``.nnrun/``;
    * dataset.json, the fingerprint and the plans parse as JSON when present;
    * a configuration folder with a final name holds every case complete (``.pkl``,
      ``.b2nd``, ``_seg.b2nd``): nnU-Net's trainer reads whatever is there;
    * every ground-truth copy is a complete NIfTI file.
    """
    if not out.exists():
        return
    stray = [p for p in out.rglob(f"*{TMP_MARK}*") if ".nnrun" not in p.relative_to(out).parts]
    assert not stray, f"temporary files left: {stray}"
    for name in ("dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json"):
        if (out / name).exists():
            json.loads((out / name).read_text())
    for folder in out.glob("nnUNetPlans_*"):
        for case in cases:
            for suffix in (".pkl", ".b2nd", "_seg.b2nd"):
                assert (folder / f"{case}{suffix}").is_file(), f"{folder.name} is incomplete: no {case}{suffix}"
    for gt in (out / "gt_segmentations").glob("*") if (out / "gt_segmentations").is_dir() else []:
        check_file_complete(gt)


def _remove_my_leftovers(before: set[str]) -> list[str]:
    """Containers of this test (its label) still there: removed here, so that a strict xfail row fails
    in its body rather than in the registry's teardown.  Returns what was left."""
    left = sorted(set(nnrun_containers()) - before)
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True, check=False)
    return left


# --------------------------------------------------------------------------- 1. worker OOM in fingerprinting

def test_worker_oom_in_fingerprint_names_the_case_it_held(docker_ready, demo_raw, tmp_path):
    pre = tmp_path / "pre"
    result = run_nnrun(*_preprocess_args(demo_raw, pre, *FIXED_POOL, "-npfp", "2", mem="1g"),
                       env={"NNRUN_TEST_OOM_VICTIM": "worker"})
    report = _assert_report(result, "oom", 3)
    line = _headline(report, result.stderr)
    print(f"\n{line}\n  duration {report['duration_s']} s")
    assert report["victim"] == "worker" and report["phase"] == "fingerprint" and report["configuration"] is None
    assert report["oom_source"] == "cgroup" and report["oom_kills"] >= 1
    assert report["limit_bytes"] == 2**30
    # The agent's log says exactly which cases were in flight and which one the victim held.
    assert report["cases_exact"] is True
    victim = report["victims"][0]
    assert victim["role"] == "worker" and isinstance(victim["pid"], int)
    assert set(report["cases_in_flight"]) <= set(DEMO_CASES) and len(report["cases_in_flight"]) <= 2
    mine = [c for c in report["cases"] if c["phase"] == "fingerprint" and c["pid"] == victim["pid"]]
    held = [c["case"] for c in mine if c["status"] == "unfinished"]
    if held:
        # Killed holding a case (most runs): that case, in flight, named in the headline.
        assert report["victim_case"] in DEMO_CASES and victim["case"] == report["victim_case"]
        assert held == [report["victim_case"]] and report["victim_case"] in report["cases_in_flight"]
        assert f"while extracting the fingerprint of {report['victim_case']}" in report["message"]
    else:
        # Killed between two cases (1 run in 4 here: the worker had just ended case000, its memory still
        # resident): it held none, and the report names the case it had just finished, not a case of another.
        assert report["victim_case"] is None and victim["case"] is None
        finished = max((c for c in mine if c["end"] is not None), key=lambda c: c["end"])
        assert victim["last_case"] == finished["case"] in DEMO_CASES
        assert f"between two cases (it had just finished {finished['case']}" in report["message"]
    # Advice: 1g cannot hold the demo's fingerprint even with one worker (the main process gathers
    # 1e8 samples per channel at its end: -npfp 1 at 1g was measured to end in an OOM kill of the main
    # process), so the advice is the --mem that memory_needed gives, and the pinned pool goes back to nnrun.
    _assert_advises_more_memory(report, limit="1g")
    # nnU-Net skips fingerprinting when dataset_fingerprint.json exists: none may be left.
    out = pre / DEMO
    assert not (out / "dataset_fingerprint.json").exists()
    assert not (out / "nnUNetPlans.json").exists()
    _assert_nothing_half_written(out, DEMO_CASES)


def test_worker_oom_before_any_case_claims_no_case_in_flight(docker_ready, demo_raw, tmp_path):
    """Four fingerprint workers under 1g are killed while they start (see the module docstring)."""
    pre = tmp_path / "pre"
    result = run_nnrun(*_preprocess_args(demo_raw, pre, *FIXED_POOL, "-npfp", "4", mem="1g"),
                       env={"NNRUN_TEST_OOM_VICTIM": "worker"})
    report = _assert_report(result, "oom", 3)
    line = _headline(report, result.stderr)
    print(f"\n{line}\n  duration {report['duration_s']} s")
    assert report["victim"] == "worker" and report["phase"] == "fingerprint"
    out = pre / DEMO
    assert not (out / "dataset_fingerprint.json").exists()
    _assert_nothing_half_written(out, DEMO_CASES)
    if any(c["phase"] == "fingerprint" for c in report["cases"]):
        pytest.skip("a worker took a case before the kill: this row needs a kill before any case")
    assert report["victim_case"] is None
    # The agent's log ran (it records the phase) and holds no case: nothing was in flight.
    assert report["cases_in_flight"] == [] and report["cases_exact"] is True, report["message"]
    assert "in flight" not in report["message"]


# --------------------------------------------------------------------------- 2. worker killed in verification

def test_worker_oom_in_dataset_verification_ends_in_bounded_time(docker_ready, demo_raw, tmp_path):
    pre = tmp_path / "pre"
    started = time.monotonic()
    result = run_nnrun(*_preprocess_args(demo_raw, pre, *FIXED_POOL, "--verify_dataset_integrity", "-npfp", "8",
                                         mem="1g"),
                       env={"NNRUN_TEST_OOM_VICTIM": "worker"}, timeout=180)
    wall = time.monotonic() - started
    report = _assert_report(result, "oom", 3)
    line = _headline(report, result.stderr)
    print(f"\n{line}\n  wall {wall:.1f} s")
    assert wall < 60, f"took {wall:.0f} s: native nnU-Net hangs in verification after a worker dies"
    assert len(report.get("attempts") or [None]) == 1
    assert report["phase"] == "verify" and report["victim"] == "worker"
    assert report["oom_source"] == "cgroup" and report["oom_kills"] >= 1
    assert "during dataset verification" in report["message"]
    argv = _assert_advises_more_memory(report, limit="1g")   # as in the fingerprint row above
    assert "--verify_dataset_integrity" in argv
    out = pre / DEMO
    assert not (out / "dataset_fingerprint.json").exists()
    _assert_nothing_half_written(out, DEMO_CASES)


# --------------------------------------------------------------------------- 3./4. bad raw data, pre-flight

def _assert_refused_before_anything(result, pre: Path, before: set[str], *words: str) -> dict:
    report = _assert_report(result, "bad_input", 2)
    _assert_one_line_report(result.stderr, "bad_input")
    print(f"\n{result.stderr.strip().splitlines()[-1]}")
    for word in words:
        assert word in report["message"], (word, report["message"])
    assert report["run_id"] is None and report["log_path"] is None
    assert set(nnrun_containers()) == before, "a container was started"
    assert _tree(pre) == [], f"written under the preprocessed folder: {_tree(pre)}"
    return report


def test_garbage_nii_gz_is_bad_input_naming_the_file(docker_ready, tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    folder = make_dataset(raw, 501, "Garbage", [SMALL] * 3)
    victim = folder / "imagesTr" / "case001_0000.nii.gz"
    rng = random.Random(501)
    noise = bytes([0x5A]) + bytes(rng.randrange(256) for _ in range(20000))   # never the gzip magic 1f 8b
    victim.write_bytes(noise)
    pre.mkdir()
    before = set(nnrun_containers())
    result = run_nnrun(*_preprocess_args(raw, pre, mem="2g"))
    _assert_refused_before_anything(result, pre, before, str(victim), "not a gzip file")
    assert victim.read_bytes() == noise


@pytest.mark.parametrize("damage, words", [
    ("missing", ("Dataset501_Json", "dataset.json not found")),
    ("malformed", ("Dataset501_Json", "dataset.json is not valid JSON", "line 1")),
])
def test_dataset_json_missing_or_malformed_is_bad_input(docker_ready, tmp_path, damage, words):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    folder = make_dataset(raw, 501, "Json", [SMALL] * 2)
    if damage == "missing":
        (folder / "dataset.json").unlink()
    else:
        (folder / "dataset.json").write_text('{"channel_names": {"0": "CT"}, "labels": {"background": 0,}')
    pre.mkdir()
    before = set(nnrun_containers())
    result = run_nnrun(*_preprocess_args(raw, pre, mem="2g"))
    _assert_refused_before_anything(result, pre, before, *words)


# --------------------------------------------------------------------------- 5. output disk full

@pytest.fixture
def small_disk(tmp_path):
    """A 3 MiB tmpfs (root only): its pages are charged to the writer's memory cgroup, so keep it small."""
    if os.getuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "small-disk"
    mnt.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m,mode=0755", "tmpfs", str(mnt)], check=True,
                   capture_output=True)
    yield mnt
    if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_output_disk_full_is_error_enospc_not_oom(docker_ready, demo_raw, small_disk):
    pre = small_disk
    before = set(nnrun_containers())
    result = run_nnrun(*_preprocess_args(demo_raw, pre, *FAST, "-np", "1", "-npfp", "1", mem="4g"))
    left = _remove_my_leftovers(before)
    out = pre / DEMO
    print(f"\n{[ln for ln in result.stderr.splitlines() if ln.startswith('nnrun: ')][-1:]}"
          f"\n  disk: {shutil.disk_usage(pre)}")
    assert not left, f"nnrun left its container behind: {left}"
    report = _assert_report(result, "error", 4)
    line = _headline(report, result.stderr)
    print(line)
    assert report["reason"] == "ENOSPC"
    assert report["oom_kills"] == 0 and report["victim"] is None
    assert report["phase"] == "preprocessing" and report["configuration"] == "3d_fullres"
    assert "disk is full" in report["message"] and "No space left on device" in report["message"]
    # Fingerprint and plans completed and stay; no half-filled configuration folder under its final name.
    assert (out / "dataset_fingerprint.json").is_file() and (out / "nnUNetPlans.json").is_file()
    assert not (out / "nnUNetPlans_3d_fullres").exists()
    _assert_nothing_half_written(out, DEMO_CASES)


# --------------------------------------------------------------------------- 6. two runs at once

def test_second_run_on_the_same_outputs_is_refused_naming_the_first(docker_ready, demo_raw, tmp_path):
    pre = tmp_path / "pre"
    args = _preprocess_args(demo_raw, pre, *FAST, "-np", "1", "-npfp", "1")
    before = set(nnrun_containers())
    first = _start(args)
    try:
        cid = _wait_for_container(before)
        first_run_id = _label(cid, "io.nnrun.run-id")
        second = run_nnrun(*args)                     # the identical command
        during = set(nnrun_containers()) - before
    finally:
        first_report, first_stderr = _finish(first)
    report = _assert_report(second, "bad_input", 2)
    _assert_one_line_report(second.stderr, "bad_input")
    print(f"\n{second.stderr.strip().splitlines()[-1]}")
    assert "is being written by another nnrun run" in report["message"]
    assert first_run_id in report["message"] and f"pid {first.pid}" in report["message"]
    assert DEMO in report["message"]
    assert during == {cid}, "the refused run started a container"
    # The first run was not disturbed.
    assert first_report is not None, first_stderr[-2000:]
    assert (first_report["outcome"], first.returncode) == ("ok", 0), (first_report["message"], first_stderr[-2000:])
    assert first_report["run_id"] == first_run_id
    out = pre / DEMO
    assert sorted(p.name for p in (out / ".nnrun" / "runs").iterdir()) == [first_run_id]
    assert (out / "nnUNetPlans_3d_fullres").is_dir()
    _assert_nothing_half_written(out, DEMO_CASES)


def test_two_runs_on_different_datasets_at_once_both_succeed(docker_ready, tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    make_dataset(raw, 502, "Left", [SMALL] * 3)
    make_dataset(raw, 503, "Right", [SMALL] * 3, seed=1)
    before = set(nnrun_containers())
    procs = [_start(_preprocess_args(raw, pre, *FAST, "-np", "1", "-npfp", "1", dataset=d, mem="2g"))
             for d in ("502", "503")]
    try:
        # Both containers run at the same moment.
        deadline, overlap = time.time() + 90, False
        while time.time() < deadline and not overlap and all(p.poll() is None for p in procs):
            running = [c for c in set(nnrun_containers()) - before
                       if subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", c], capture_output=True,
                                         text=True).stdout.strip() == "true"]
            overlap = len(running) == 2
            time.sleep(0.2)
    finally:
        results = [_finish(p) for p in procs]
    assert overlap, "the two runs never ran at the same time"
    for proc, (report, stderr), name in zip(procs, results, ("Dataset502_Left", "Dataset503_Right")):
        assert report is not None, stderr[-2000:]
        assert (report["outcome"], proc.returncode) == ("ok", 0), (report["message"], stderr[-2000:])
        line = _headline(report, stderr)
        print(f"\n{line}")
        assert report["dataset"] == name
        _assert_nothing_half_written(pre / name, ["case000", "case001", "case002"])
        assert (pre / name / "nnUNetPlans_3d_fullres" / "case002.pkl").is_file()


# --------------------------------------------------------------------------- 7. output folder of another user

NOBODY = 65534


@pytest.fixture
def world_readable_tmp():
    """A 0755 folder in /tmp (pytest's tmp_path may sit under 0700 parents that nobody cannot enter)."""
    base = Path(tempfile.mkdtemp(prefix="nnrun-other-user-", dir="/tmp"))
    base.chmod(0o755)
    yield base
    shutil.rmtree(base, ignore_errors=True)


def test_output_folder_of_another_user_is_bad_input_not_writable_by_you(docker_ready, world_readable_tmp):
    if os.getuid() != 0:
        pytest.skip("running nnrun as another user needs root")
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is missing")
    base = world_readable_tmp
    raw, pre, home = base / "raw", base / "pre", base / "home"
    make_dataset(raw, 501, "Theirs", [SMALL] * 2)
    pre.mkdir(mode=0o755)                     # root's, 0755: not writable by nobody
    home.mkdir(mode=0o777)                    # nnrun's crash log would go to $HOME/.cache
    assert pre.stat().st_uid == 0 and (pre.stat().st_mode & 0o777) == 0o755
    before = set(nnrun_containers())
    # nobody, no groups (so not in the docker group either).  The interpreter may live under /root
    # (0700): CAP_DAC_READ_SEARCH lets nobody read it and nothing else -- it grants no write access,
    # no access to the Docker socket (connecting needs write permission), and access(2), which
    # nnrun's check uses, ignores capabilities for a non-root real uid.
    cmd = ["setpriv", "--reuid", str(NOBODY), "--regid", str(NOBODY), "--clear-groups",
           "--inh-caps", "+dac_read_search", "--ambient-caps", "+dac_read_search", "--",
           *nnrun_cmd(*_preprocess_args(raw, pre, mem="2g"), "--json")]
    env = {**os.environ, "HOME": str(home), "PYTHONDONTWRITEBYTECODE": "1"}   # DOCKER_HOST unchanged
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    print(f"\n{[ln for ln in proc.stderr.splitlines() if ln.strip()][-1:]}")
    report = parse_single_json(proc.stdout)
    assert report is not None, proc.stderr[-2000:]
    assert (report["outcome"], proc.returncode, report["exit_code"]) == ("bad_input", 2, 2), report["message"]
    _assert_one_line_report(proc.stderr, "bad_input")
    assert "not writable by you" in report["message"] and str(pre) in report["message"]
    assert set(nnrun_containers()) == before
    assert _tree(pre) == [], f"written into the other user's folder: {_tree(pre)}"


# --------------------------------------------------------------------------- 8. --preprocessed is a file

@pytest.mark.parametrize("where", [
    "the file itself",
    "a path inside the file",
])
def test_preprocessed_pointing_into_a_file_is_bad_input(docker_ready, demo_raw, tmp_path, where):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the preprocessed folder should be\n")
    pre = blocker if where == "the file itself" else blocker / "nnUNet_preprocessed"
    before = set(nnrun_containers())
    result = run_nnrun(*_preprocess_args(demo_raw, pre, mem="2g"))
    report = _assert_report(result, "bad_input", 2)
    _assert_one_line_report(result.stderr, "bad_input")
    print(f"\n{result.stderr.strip().splitlines()[-1]}")
    assert str(blocker) in report["message"]
    assert "not a folder" in report["message"] or "not a directory" in report["message"]
    assert "not writable" not in report["message"]
    assert set(nnrun_containers()) == before
    assert blocker.read_text() == "a file where the preprocessed folder should be\n"
