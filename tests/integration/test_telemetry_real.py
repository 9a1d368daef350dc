"""The run folder and the per-case telemetry of real runs: real Docker, real nnU-Net, real OOM kills.

What each run writes to ``<preprocessed>/DatasetXXX_Name/.nnrun/runs/<run id>/``
(report.json, timeline.jsonl, memory.png, manifest.json, agent.jsonl, ...),
and what the in-container agent's per-case log adds to the diagnosis: which
case the killed worker was holding.

Caps were measured on this machine (2 cores, cgroup v1):

* Dataset502_Mixed (five small cases and one big one, case002, resampled from
  3 mm to 1.5 mm slices): a preprocessing worker peaks at about 1.9 GiB on
  case002 and 0.4 GiB on the others; with -np 1 the whole run peaks at about
  1.93 GiB anonymous memory, with -np 2 at about 2.2 GiB.  Under 2000m with
  -np 2 the run ended oom with the worker holding case002 killed in 17 of 17
  runs (2100m: 5/5, 2200m: 2/2; 2400m finishes).  In 2 of the 17 another
  worker-like process vanished no later than the killed one (the idle worker
  the pool tore down in the same 50 ms poll, or a short-lived child of a
  worker seconds before): nnrun must still name case002 (replayed from
  recorded runs in tests/unit/test_telemetry.py).
* Dataset501_Demo (the bundled demo): fingerprint extraction with -npfp 1
  under 1200m kills the main process when NNRUN_TEST_OOM_VICTIM=main; eight
  verification workers under 1g are OOM-killed while they start.

The ok demo run (``-c 3d_fullres -np 2 -npfp 2 --mem 4g``, 15-30 s) runs
once per module and several tests read its run folder.
"""
from __future__ import annotations

import json
import os
import platform
import struct
import subprocess
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path

import jsonschema
import pytest

from runner import __version__
from runner.demo import CaseSpec, make_dataset
from runner.diagnosis.report import load_schema
from runner.run.telemetry import case_records
from runner.rundir import read_jsonl
from tests.integration.conftest import REPO, nnrun_cmd, run_nnrun
from tests.integration.test_preprocess_real import _assert_report

pytestmark = pytest.mark.docker
SCHEMA = load_schema()
MANIFEST_SCHEMA = json.loads((REPO / "tests" / "fixtures" / "manifest.schema.json").read_text())
MIB = 2**20
GIB = 2**30
DEMO_CASES = [f"case{i:03d}" for i in range(6)]
RUN_FILES = ("report.json", "timeline.jsonl", "memory.png", "manifest.json", "agent.jsonl", "events.jsonl",
             "status.json", "nnunet.log")

SMALL = CaseSpec((96, 96, 40), (0.8, 0.8, 1.5))
BIG = CaseSpec((288, 288, 120), (0.8, 0.8, 3.0))
MIXED_CAP = "2000m"


def _run_dir(report: dict) -> Path:
    run_dir = Path(report["run_dir"])
    assert run_dir.is_dir() and run_dir.parent.name == "runs" and run_dir.parent.parent.name == ".nnrun"
    assert run_dir.name == report["run_id"]
    return run_dir


def _report_json(run_dir: Path) -> dict:
    return json.loads((run_dir / "report.json").read_text())


def _headline_block(stderr: str, outcome: str) -> list[str]:
    """The human report at the end of stderr: from its headline 'nnrun: <outcome>...' to the end."""
    lines = stderr.rstrip("\n").splitlines()
    starts = [i for i, ln in enumerate(lines) if ln.startswith(f"nnrun: {outcome}")]
    assert starts, f"no 'nnrun: {outcome}' headline on stderr:\n{stderr[-2000:]}"
    return lines[starts[-1]:]


def _report_command(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(nnrun_cmd("report", *args), capture_output=True, text=True, cwd=REPO, timeout=60)


# --------------------------------------------------------------------------- 1. victim_case

def test_victim_case_names_the_big_case_the_killed_worker_held(docker_ready, tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    make_dataset(raw, 502, "Mixed", [SMALL, SMALL, BIG, SMALL, SMALL, SMALL])
    common = ["preprocess", "-d", "502", "--raw", str(raw), "--preprocessed", str(pre), "-c", "3d_fullres"]
    # Fingerprint and plans first, with room.
    _assert_report(run_nnrun(*common, "--mem", "8g", "-npfp", "1", "--no_pp"), "ok", 0)
    # case002 (~1.9 GiB) plus a second worker and the main process do not fit under 2000m.
    result = run_nnrun(*common, "--mem", MIXED_CAP, "-np", "2", "-npfp", "1",
                       env={"NNRUN_TEST_OOM_VICTIM": "worker"})
    report = _assert_report(result, "oom", 3)
    run_dir = _run_dir(report)
    assert report["phase"] == "preprocessing" and report["configuration"] == "3d_fullres"
    assert report["victim"] == "worker"
    assert report["cases_exact"] is True and "case002" in report["cases_in_flight"]
    # The agent's records: one worker never finished case002 (the kernel's pick: the largest RSS
    # among workers of equal oom_score_adj), every small case was done.
    pre_cases = {c["case"]: c for c in report["cases"] if c["phase"] == "preprocessing"}
    assert pre_cases["case002"]["status"] == "unfinished"
    for case in ("case000", "case001", "case003", "case004", "case005"):
        assert pre_cases[case]["status"] == "done" and pre_cases[case]["peak_rss_bytes"] < GIB
    holder = pre_cases["case002"]["pid"]
    exits = json.loads((run_dir / "status.json").read_text()).get("worker_exits", [])
    assert report["victim_case"] == "case002", (report["victims"], report["message"], exits)
    assert report["victims"][0] == {"role": "worker", "pid": holder, "case": "case002", "last_case": None}
    assert len(report["victims"]) <= report["oom_kills"]          # one victim per kill, not per exit
    # The human report says it in words.
    print(f"\nvictim message: {report['message']}")
    assert "while preprocessing case002 (3d_fullres)" in result.stderr
    assert "while preprocessing case002 (3d_fullres)" in report["message"]
    assert "case case002" in result.stderr                                    # the 'killed:' line
    assert _report_json(run_dir) == report


# --------------------------------------------------------------------------- 2. main-process OOM

def test_main_process_oom_run_folder(docker_ready, demo_raw, tmp_path):
    # -np 1 given: nnU-Net's fixed pool, no up-front memory estimate (which would refuse 1200m as bad_input).
    result = run_nnrun("preprocess", "-d", "501", "--mem", "1200m", "--raw", str(demo_raw), "--preprocessed",
                       str(tmp_path / "pre"), "-c", "3d_fullres", "-npfp", "1", "-np", "1",
                       env={"NNRUN_TEST_OOM_VICTIM": "main"})
    report = _assert_report(result, "oom", 3)
    run_dir = _run_dir(report)
    for name in RUN_FILES:
        assert (run_dir / name).is_file(), name
    saved = _report_json(run_dir)
    assert saved == report
    jsonschema.validate(saved, SCHEMA)
    assert saved["victim"] == "main" and saved["phase"] == "fingerprint"
    assert saved["victim_case"] is None
    assert saved["victims"] == [{"role": "main", "pid": saved["victims"][0]["pid"], "case": None, "last_case": None}]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert (manifest["outcome"], manifest["exit_code"]) == ("oom", 3)


# --------------------------------------------------------------------------- 3. verification

def test_worker_kill_in_verification_ends_in_bounded_time(docker_ready, demo_raw, tmp_path):
    # One attempt (--retry 0): the bound is on one run whose verification pool lost a worker.  -np 1:
    # nnU-Net's fixed pool, no up-front memory estimate (which would refuse 1g as bad_input).
    started = time.monotonic()
    result = run_nnrun("preprocess", "-d", "501", "--mem", "1g", "--raw", str(demo_raw), "--preprocessed",
                       str(tmp_path / "pre"), "-c", "3d_fullres", "-npfp", "8", "-np", "1",
                       "--verify_dataset_integrity", "--retry", "0",
                       env={"NNRUN_TEST_OOM_VICTIM": "worker"}, timeout=180)
    wall = time.monotonic() - started
    report = _assert_report(result, "oom", 3)
    print(f"\nverification OOM: {wall:.1f} s wall; {report['message']}")
    assert report["phase"] == "verify" and report["victim"] == "worker"
    assert wall < 60, f"took {wall:.0f} s (native nnU-Net hangs here)"
    events = read_jsonl(_run_dir(report) / "events.jsonl")
    assert any(e.get("event") == "oom_kill" and e.get("phase") == "verify" for e in events)


def test_an_explicit_npfp_pins_the_workers_whatever_its_value(fake_preprocess, tiny_raw, tmp_path):
    """Pure (the CLI with a fake Preprocess, no container)."""
    from runner.cli.app import main
    from runner.run.preprocess import Preprocess

    retries = {}
    for npfp in ("4", "8"):
        code = main(["preprocess", "-d", "501", "--mem", "1g", "--raw", str(tiny_raw), "--preprocessed",
                     str(tmp_path / "pre"), "-c", "3d_fullres", "-npfp", npfp, "--verify_dataset_integrity"])
        assert code == 0
        retries[npfp] = Preprocess(fake_preprocess.opts, fake_preprocess.settings, None).retries
    assert retries["8"] == retries["4"]


# --------------------------------------------------------------------------- 4./5. the ok run

@pytest.fixture(scope="module")
def ok_run(docker_ready, demo_raw, tmp_path_factory):
    """One ok demo run for the module.  It carries its own test id and checks its own cleanup
    (the per-test registry fixture runs inside each test, after this one started)."""
    test_id = "ok-run-" + uuid.uuid4().hex[:12]
    pre = tmp_path_factory.mktemp("ok") / "pre"
    before = datetime.now().astimezone()
    result = run_nnrun("preprocess", "-d", "501", "--mem", "4g", "--raw", str(demo_raw), "--preprocessed", str(pre),
                       "-c", "3d_fullres", "-np", "2", "-npfp", "2", env={"NNRUN_TEST_ID": test_id})
    after = datetime.now().astimezone()
    deadline = time.time() + 15
    while True:                               # removal may still be under way, as in conftest's registry
        left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=io.nnrun.test-id={test_id}"],
                              capture_output=True, text=True).stdout.split()
        if not left or time.time() > deadline:
            break
        time.sleep(0.5)
    if left:
        subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
    assert not left, f"the ok run left container(s) behind: {left}"
    report = _assert_report(result, "ok", 0)
    return {"result": result, "report": report, "run_dir": _run_dir(report), "before": before, "after": after}


def test_ok_run_report_json_validates_and_equals_stdout(ok_run):
    run_dir = ok_run["run_dir"]
    assert sorted(p.name for p in run_dir.iterdir() if p.name in RUN_FILES) == sorted(RUN_FILES)
    saved = _report_json(run_dir)
    jsonschema.validate(saved, SCHEMA)
    assert saved == ok_run["report"]                 # the --json stdout object
    assert saved["plot_path"] == str(run_dir / "memory.png") and saved["plot_error"] is None


def test_ok_run_has_per_case_records_for_both_phases(ok_run):
    report, run_dir = ok_run["report"], ok_run["run_dir"]
    cases = report["cases"]
    by_phase = {}
    for c in cases:
        by_phase.setdefault((c["phase"], c["configuration"]), []).append(c)
    assert set(by_phase) == {("fingerprint", None), ("preprocessing", "3d_fullres")}
    for (phase, _), records in by_phase.items():
        assert sorted(c["case"] for c in records) == DEMO_CASES, phase
        for c in records:
            assert c["status"] == "done" and c["error"] is None
            assert isinstance(c["pid"], int) and c["pid"] > 1
            assert isinstance(c["peak_rss_bytes"], int) and c["peak_rss_bytes"] > 50 * MIB
            assert isinstance(c["duration_s"], (int, float)) and c["duration_s"] >= 0
            assert c["end"] >= c["start"]
            assert c["duration_s"] == pytest.approx(c["end"] - c["start"], abs=0.05)
        # -npfp 2 and -np 2: at most two workers per phase.
        assert 1 <= len({c["pid"] for c in records}) <= 2
    # The report's records are the agent's log, paired.
    assert [r.to_dict() for r in case_records(read_jsonl(run_dir / "agent.jsonl"))] == cases


def test_ok_run_timeline_is_sampled_at_about_10_hz(ok_run):
    report, run_dir = ok_run["report"], ok_run["run_dir"]
    lines = (run_dir / "timeline.jsonl").read_text().splitlines()
    samples = [json.loads(line) for line in lines]
    span = samples[-1]["t"] - samples[0]["t"]
    rate = len(samples) / report["duration_s"]
    print(f"\ntimeline: {len(samples)} samples over {span:.1f} s of a {report['duration_s']:.1f} s run "
          f"({rate:.1f} per second of run)")
    assert rate >= 5
    assert span >= 0.8 * report["duration_s"] - 2
    assert all(b["t"] >= a["t"] for a, b in zip(samples, samples[1:]))
    for s in samples:
        for key in ("anon", "file", "usage", "oom_kill"):
            assert isinstance(s[key], int) and s[key] >= 0, (key, s)
        assert s["limit"] == 4 * GIB
        assert s["oom_kill"] == samples[0]["oom_kill"]             # no kill in an ok run
        assert isinstance(s["procs"], dict)
        for proc in s["procs"].values():
            # 0 only for a process caught between its exit and its reaping (a zombie has no RSS).
            assert isinstance(proc["rss"], int) and proc["rss"] >= 0
            assert proc["ns_pid"] is None or isinstance(proc["ns_pid"], int)
    # The container's processes, with their pids inside the container: the supervisor is pid 1,
    # and at some point nnU-Net's main process and both workers were sampled together.
    assert any("1" in {str(p["ns_pid"]) for p in s["procs"].values()} for s in samples)
    assert max(len(s["procs"]) for s in samples) >= 4
    # Every worker that processed a case was sampled with its RSS while it worked.
    worker_pids = {c["pid"] for c in report["cases"]}
    peak_seen = {}
    for s in samples:
        for p in s["procs"].values():
            peak_seen[p["ns_pid"]] = max(peak_seen.get(p["ns_pid"], 0), p["rss"])
    assert all(peak_seen.get(pid, 0) > 100 * MIB for pid in worker_pids), (worker_pids, peak_seen)
    assert 0 < max(s["anon"] for s in samples) <= report["peak_anon_bytes"]


def test_ok_run_memory_png(ok_run):
    png = ok_run["run_dir"] / "memory.png"
    data = png.read_bytes()
    print(f"\nmemory.png: {len(data)} bytes")
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    length, kind = struct.unpack(">I4s", data[8:16])
    assert (length, kind) == (13, b"IHDR")
    width, height = struct.unpack(">II", data[16:24])
    assert (width, height) == (1400, 800)
    assert len(data) > 20_000
    assert data.endswith(b"\x00\x00\x00\x00IEND\xaeB`\x82")          # complete: ends with IEND


def test_ok_run_memory_png_is_as_readable_as_the_other_run_files(ok_run):
    run_dir = ok_run["run_dir"]
    mode = lambda name: (run_dir / name).stat().st_mode & 0o777   # noqa: E731
    assert mode("memory.png") == mode("report.json") == mode("manifest.json")


def test_ok_run_manifest(ok_run):
    report, run_dir = ok_run["report"], ok_run["run_dir"]
    manifest = json.loads((run_dir / "manifest.json").read_text())
    jsonschema.Draft202012Validator.check_schema(MANIFEST_SCHEMA)
    jsonschema.validate(manifest, MANIFEST_SCHEMA)
    assert manifest["run_id"] == report["run_id"] == run_dir.name
    # Image: id and labels, and the versions inside it.
    assert manifest["image"]["ref"] == report["image"]
    assert manifest["image"]["id"] == report["image_id"]
    labels = manifest["image"]["labels"]
    assert manifest["versions"] == {"nnrun": __version__, "nnunetv2": labels["io.nnrun.nnunetv2-version"],
                                    "torch": labels["io.nnrun.torch-version"],
                                    "image_nnrun": labels["io.nnrun.version"]}
    assert manifest["versions"]["nnunetv2"] == "2.8.1"
    assert manifest["versions"]["torch"].split("+")[0].count(".") == 2
    # The full command and the resolved options.
    command = manifest["command"]
    for part in (["preprocess"], ["-d", "501"], ["--mem", "4g"], ["-np", "2"], ["-npfp", "2"], ["--json"]):
        assert any(command[i:i + len(part)] == part for i in range(len(command))), part
    assert manifest["nnunet_argv"] == report["nnunet_argv"]
    assert manifest["nnunet_argv"][:3] == ["nnUNetv2_plan_and_preprocess", "-d", "501"]
    assert manifest["container_command"][-len(manifest["nnunet_argv"]) + 1:] == manifest["nnunet_argv"][1:]
    opts = manifest["options"]
    assert (opts["dataset_id"], opts["configurations"], opts["np"], opts["npfp"]) == (501, ["3d_fullres"], [2], 2)
    assert manifest["settings"]["mem"] == "4g" and manifest["settings"]["plot"] is True
    # Host, cgroup, cap, times.
    assert manifest["host"]["kernel"] == platform.release()
    assert manifest["host"]["cpus"] == os.cpu_count()
    assert manifest["cgroup"]["version"] in (1, 2)
    assert manifest["cgroup"]["version"] == manifest["engine"]["cgroup_version"]
    assert manifest["limit_bytes"] == report["limit_bytes"] == 4 * GIB
    started = datetime.fromisoformat(manifest["started"])
    ended = datetime.fromisoformat(manifest["ended"])
    slack = timedelta(seconds=2)
    assert ok_run["before"] - slack <= started <= ended <= ok_run["after"] + slack
    assert (ended - started).total_seconds() == pytest.approx(report["duration_s"], abs=3)
    assert (manifest["outcome"], manifest["exit_code"]) == ("ok", 0)
    assert manifest["dataset"] == {"name": "Dataset501_Demo", "path": manifest["dataset"]["path"], "cases": 6,
                                   "file_ending": ".nii.gz"}


def test_sampler_overhead_is_recorded(ok_run):
    monitor = ok_run["report"]["monitor"]
    overhead = monitor["cpu_percent_of_one_core"]
    print(f"\nhost sampler: {monitor['samples']} samples, {monitor['cpu_s']} s CPU over {monitor['wall_s']} s "
          f"= {overhead} % of one core")
    assert isinstance(overhead, (int, float)) and not isinstance(overhead, bool) and overhead >= 0
    assert isinstance(monitor["samples"], int) and monitor["samples"] > 0
    assert monitor["interval_s"] == 0.1


def test_report_command_reprints_the_run(ok_run):
    run_dir, result = ok_run["run_dir"], ok_run["result"]
    human = _report_command(str(run_dir))
    assert human.returncode == 0, human.stderr
    assert human.stderr == ""                        # the report is the result: stdout
    run_block = _headline_block(result.stderr, "ok")   # (the run had --json: its human report went to stderr)
    again = human.stdout.rstrip("\n").splitlines()
    assert again[0] == run_block[0]                  # the same headline
    assert again[:len(run_block)] == run_block       # the same report, then where the files are
    for name in ("manifest.json", "timeline.jsonl", "memory.png"):
        assert any(ln.strip() == f"{name + ':':<13} {run_dir / name}".strip() for ln in again), name
    as_json = _report_command(str(run_dir), "--json")
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == ok_run["report"] == _report_json(run_dir)
    assert as_json.stdout.count("\n") == 1


@pytest.mark.parametrize("where", ["empty folder", "missing folder"])
def test_report_command_without_report_json_is_bad_input(tmp_path, where):
    folder = tmp_path / "runs" / "20260101-000000-abcdef"
    if where == "empty folder":
        folder.mkdir(parents=True)
    for extra in ([], ["--json"]):
        proc = _report_command(str(folder), *extra)
        assert proc.returncode == 2
        lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("nnrun: bad_input: no report.json in "), proc.stderr
        assert "Traceback" not in proc.stderr
        assert proc.stdout == ""


def test_no_plot_writes_no_png(docker_ready, tmp_path):
    raw = tmp_path / "raw"
    make_dataset(raw, 503, "Small", [CaseSpec((64, 64, 24), (1.0, 1.0, 3.0))] * 3)
    result = run_nnrun("preprocess", "-d", "503", "--mem", "2g", "--raw", str(raw), "--preprocessed",
                       str(tmp_path / "pre"), "-c", "3d_fullres", "-npfp", "1", "-np", "1", "--no_pp", "--no-plot")
    report = _assert_report(result, "ok", 0)
    run_dir = _run_dir(report)
    assert report["plot_path"] is None and report["plot_error"] is None
    assert not (run_dir / "memory.png").exists()
    assert not [p for p in run_dir.iterdir() if "memory.png" in p.name]       # no temporary left either
    assert _report_json(run_dir)["plot_path"] is None
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["settings"]["plot"] is False
    human = _report_command(str(run_dir))
    assert human.returncode == 0 and "memory.png" not in human.stderr
