"""runner.run.preprocess without Docker: build_spec, the Docker arguments, gather_facts, pre-flight, and
Preprocess(...).run() end to end against a fake Engine that plays the container.

The fake engine's wait() does what the container would: it writes the
supervisor's status.json into the run folder (the host side of the mount at
/nnrun/run) and, for failed runs, half-written nnU-Net outputs into the
preprocessed dataset folder.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import sys
import time
from dataclasses import fields, replace
from pathlib import Path

import jsonschema
import pytest

import runner.run.preprocess as run_module
from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.diagnosis.classify import classify
from runner.diagnosis.facts import gather_facts
from runner.diagnosis.report import dumps, load_schema
from runner.engines.base import ContainerState, EngineInfo, ImageInfo
from runner.engines.docker import host_config_kwargs
from runner.errors import BadInputError, InfraError, Outcome, RunInterrupted
from runner.incontainer import supervisor as supervisor_module
from runner.options import PreprocessOptions, nnrun_argv, nnunet_argv
from runner.run.contract import CONTAINER_PREPROCESSED, CONTAINER_RAW, CONTAINER_RUN_DIR, build_spec
from runner.run.monitor import CgroupMonitor, MonitorSummary
from runner.run.preflight import preflight, shape_mismatches
from runner.run.preprocess import Preprocess
from runner.run.settings import NullSink, RunSettings
from runner.rundir import STATUS_FILE, SupervisorStatus
from runner.units import GIB, MIB, parse_mem

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
LOGS = FIXTURES / "nnunet_logs"
CGROUP_V1_GOOD_RUN = (FIXTURES / "cgroup" / "v1_docker_cgroupfs" / "memory" / "docker" /
                      "84bca4f66f4082176cb69ff0d567ec71faa24e03a70d9de551f84a0f2539eebc")
CID = "c0ffee" * 10 + "c0ff"                        # a full 64-hex container id
DATASET = "Dataset501_Tiny"                          # tests/conftest.py: tiny_raw
SIX_FEET = "RuntimeError: Some background worker is 6 feet under. Yuck."
BROADCAST = "ValueError: operands could not be broadcast together with shapes (1,5,10,12) (1,6,10,12)"
OPTS = PreprocessOptions(501, configurations=("3d_fullres",), np=(4,), npfp=1)


def facts_of(status_dict, summary, exit_code, engine_oom_killed, engine_oom_events, interrupt, records=None):
    """gather_facts over a status.json dict and a MonitorSummary, as the orchestrator calls it."""
    st = SupervisorStatus.from_json(status_dict) if status_dict is not None else None
    return gather_facts(st, host_oom_first=summary.oom_kill_first, host_oom_last=summary.oom_kill_last,
                        exit_code=exit_code, engine_oom_killed=engine_oom_killed,
                        engine_oom_events=engine_oom_events, interrupt_signal=interrupt,
                        open_case_pids=frozenset(r.pid for r in records or [] if r.status == "unfinished"))


def summary(**kw) -> MonitorSummary:
    """A MonitorSummary of a host that could not read the cgroup, with overrides."""
    base = {f.name: None for f in fields(MonitorSummary)}
    base.update(readable=False, samples=0, final_reading=False)
    base.update(kw)
    return MonitorSummary(**{k: v for k, v in base.items() if k in {f.name for f in fields(MonitorSummary)}})


def status(**kw) -> dict:
    """A supervisor status.json (runner/incontainer/supervisor.py write_status) of an ok run; override what matters."""
    base = {
        "schema": 1, "command": nnunet_argv(OPTS), "started": time.time() - 5, "ended": time.time(),
        "main_pid": 7, "returncode": 0, "start_error": None, "terminated_by_signal": None,
        "watchdog_fired": False, "phase": "done", "configuration": None,
        "completed_phases": ["fingerprint", "planning", "preprocessing"], "completed_configurations": ["3d_fullres"],
        "progress": {"Extracting dataset fingerprint": [3, 3], "Preprocessing cases": [3, 3]},
        "last_exception_line": None, "cgroup_version": 1, "cgroup_error": None, "limit_bytes": 1200 * MIB,
        "oom_kill_start": 0, "oom_kill_end": 0, "peak_anon_bytes": 700 * MIB, "peak_usage_bytes": 1100 * MIB,
        "workers_seen": [33, 68, 69], "worker_exits": [],
    }
    base.update(kw)
    return base


def worker_exit(pid, t, before, after, main_alive=True, phase="preprocessing", configuration="3d_fullres"):
    return {"pid": pid, "t": t, "main_alive": main_alive, "phase": phase, "configuration": configuration,
            "oom_kill_before": before, "oom_kill_after": after}


class FakeEngine:
    """The runner.engines.base.Engine protocol, played in memory.

    ``on_wait(engine)`` runs inside the first wait() (the container's life) and
    returns the container's exit code.
    """

    def __init__(self, on_wait=None, exit_code: int = 0, mem_total: int = 24 * GIB, engine_oom_killed=False,
                 oom_events: int = 0, start_error: str | None = None, interrupt: int | None = None):
        self.on_wait = on_wait
        self.exit_code = exit_code
        self.mem_total = mem_total
        self.engine_oom_killed = engine_oom_killed
        self.oom_events = oom_events
        self.start_error = start_error
        self.interrupt = interrupt
        self.spec = None
        self.specs = []
        self.calls: list[str] = []
        self.removed: list[str] = []
        self.waits = 0

    # the container's folders, host side
    def host_path(self, target: str) -> Path:
        return Path(next(m.source for m in self.spec.mounts if m.target == target))

    @property
    def run_dir(self) -> Path:
        return self.host_path(CONTAINER_RUN_DIR)

    @property
    def preprocessed(self) -> Path:
        return self.host_path(f"{CONTAINER_PREPROCESSED}/{DATASET}")

    def write_status(self, data: dict) -> None:
        (self.run_dir / STATUS_FILE).write_text(json.dumps(data))

    # -- Engine protocol
    def info(self) -> EngineInfo:
        self.calls.append("info")
        return EngineInfo("docker", "20.10.24", self.mem_total, 1, "cgroupfs", "6.1.0", "unix:///fake.sock")

    def image(self, ref: str) -> ImageInfo:
        self.calls.append("image")
        return ImageInfo(ref, "sha256:" + "ab" * 32, {}, [])

    def create(self, spec) -> str:
        self.calls.append("create")
        self.spec = spec
        self.specs.append(spec)
        return CID

    def start(self, container_id: str) -> None:
        self.calls.append("start")
        if self.start_error:
            raise InfraError(self.start_error)

    def state(self, container_id: str) -> ContainerState:
        self.calls.append("state")
        return ContainerState(container_id, "exited", False, self.exit_code, self.engine_oom_killed, None, None)

    def wait(self, container_id: str, timeout_s: float | None = None) -> int:
        self.calls.append("wait")
        self.waits += 1
        if self.interrupt is not None and self.waits == 1:
            raise RunInterrupted(self.interrupt)          # as the CLI's signal handler would, mid-wait
        if self.on_wait is not None:
            code = self.on_wait(self)
            self.exit_code = self.exit_code if code is None else code
        return self.exit_code

    def logs(self, container_id: str):
        self.calls.append("logs")
        return iter([b"Fingerprint extraction...\n"])

    def stop(self, container_id: str, timeout_s: int = 10) -> None:
        self.calls.append("stop")

    def remove(self, container_id: str) -> None:
        self.calls.append("remove")
        self.removed.append(container_id)

    def oom_event_count(self, container_id: str, since: float, until: float) -> int:
        self.calls.append("oom_event_count")
        return self.oom_events

    def list_containers(self, label: str) -> list[str]:
        return []


def settings_for(raw: Path, tmp_path: Path, mem: str = "1200m", **kw) -> RunSettings:
    base = dict(mem=mem, raw_root=str(raw), preprocessed_root=str(tmp_path / "pre"),
                cgroup_root=tmp_path / "no-cgroup-here", check_workers=1, retries=0,
                passthrough_argv=["--raw", str(raw), "--preprocessed", str(tmp_path / "pre")])
    base.update(kw)
    return RunSettings(**base)


def run_fake(raw, tmp_path, engine, opts=OPTS, **settings_kw):
    settings = settings_for(raw, tmp_path, **settings_kw)
    report = Preprocess(opts, settings, lambda: engine).run()
    return report, settings


def assert_report_json_matches(report):
    path = Path(report.run_dir) / "report.json"
    data = json.loads(path.read_text())
    assert data == json.loads(dumps(report))
    jsonschema.Draft202012Validator(load_schema()).validate(data)
    return data


# -- build_spec and the Docker arguments ------------------------------------------

@pytest.fixture
def spec_parts(tiny_raw, tmp_path):
    dataset = load_raw_dataset(tiny_raw, 501)
    pre = tmp_path / "pre" / dataset.name
    run_dir = tmp_path / "pre" / dataset.name / ".nnrun" / "runs" / "r1"
    run_dir.mkdir(parents=True)
    return dataset, pre, run_dir


def test_build_spec_caps_memory_and_mounts_raw_read_only(spec_parts, tmp_path):
    dataset, pre, run_dir = spec_parts
    opts = replace(OPTS, extra_args=("--no_pbar",))
    spec = build_spec(opts, settings_for(Path(dataset.path).parent, tmp_path, mem="2.5g"), dataset, pre, run_dir,
                      parse_mem("2.5g"), "r1")
    assert spec.mem_limit_bytes == int(2.5 * GIB)
    mounts = {m.target: m for m in spec.mounts}
    raw = mounts[f"{CONTAINER_RAW}/{DATASET}"]
    assert raw.read_only and Path(raw.source) == Path(dataset.path).resolve()
    assert not mounts[f"{CONTAINER_PREPROCESSED}/{DATASET}"].read_only
    assert Path(mounts[f"{CONTAINER_PREPROCESSED}/{DATASET}"].source) == pre
    assert not mounts[CONTAINER_RUN_DIR].read_only and Path(mounts[CONTAINER_RUN_DIR].source) == run_dir
    assert spec.user == f"{os.getuid()}:{os.getgid()}"
    assert spec.environment["nnUNet_raw"] == CONTAINER_RAW
    assert spec.environment["nnUNet_preprocessed"] == CONTAINER_PREPROCESSED
    assert spec.environment["PYTHONUNBUFFERED"] == "1"
    assert spec.shm_size_bytes == 256 * MIB
    assert spec.labels[run_module.RUN_LABEL] == "r1"


@pytest.mark.parametrize("verify", [False, True])
def test_build_spec_supervisor_command_ends_with_the_nnunet_argv(spec_parts, tmp_path, verify):
    dataset, pre, run_dir = spec_parts
    opts = replace(OPTS, verify_dataset_integrity=verify, extra_args=("--", "-x"))
    spec = build_spec(opts, settings_for(Path(dataset.path).parent, tmp_path), dataset, pre, run_dir, GIB, "r1")
    # nnU-Net's own entry point through the agent: the same arguments as the native command.
    argv = ["python3", "-m", "runner.incontainer.agent", *nnunet_argv(opts)[1:]]
    assert spec.command[-len(argv):] == argv
    assert spec.command[-len(argv) - 1] == "--"
    head = spec.command[:-len(argv) - 1]
    assert head[:2] == ["--run-dir", CONTAINER_RUN_DIR]
    assert ("--verify" in head) == verify


def test_build_spec_passes_the_test_victim_hook_only_when_set(spec_parts, tmp_path, monkeypatch):
    dataset, pre, run_dir = spec_parts
    monkeypatch.delenv("NNRUN_TEST_OOM_VICTIM", raising=False)
    spec = build_spec(OPTS, settings_for(tmp_path, tmp_path), dataset, pre, run_dir, GIB, "r1")
    assert "NNRUN_TEST_OOM_VICTIM" not in spec.environment
    monkeypatch.setenv("NNRUN_TEST_OOM_VICTIM", "worker")
    spec = build_spec(OPTS, settings_for(tmp_path, tmp_path), dataset, pre, run_dir, GIB, "r1")
    assert spec.environment["NNRUN_TEST_OOM_VICTIM"] == "worker"


def test_the_supervisor_reads_build_specs_command_back(spec_parts, tmp_path, monkeypatch):
    dataset, pre, run_dir = spec_parts
    seen = {}

    class RecordingSupervisor:
        def __init__(self, run_dir_arg, command, verify, test_oom_victim, *rest, **kw):
            seen.update(run_dir=run_dir_arg, command=command, verify=verify)

        def run(self):
            return 0

    monkeypatch.setattr(supervisor_module, "Supervisor", RecordingSupervisor)
    opts = replace(OPTS, verify_dataset_integrity=True, extra_args=("--no_pbar", "--", "-d"))
    spec = build_spec(opts, settings_for(tmp_path, tmp_path), dataset, pre, run_dir, GIB, "r1")
    local_run_dir = tmp_path / "container-run-dir"
    argv = [str(local_run_dir) if a == CONTAINER_RUN_DIR else a for a in spec.command]
    assert supervisor_module.main(argv) == 0
    assert seen["command"] == ["python3", "-m", "runner.incontainer.agent", *nnunet_argv(opts)[1:]]
    assert seen["verify"] is True
    assert Path(seen["run_dir"]) == local_run_dir


def test_docker_arguments_have_no_swap_no_network_and_no_privileges(spec_parts, tmp_path):
    dataset, pre, run_dir = spec_parts
    spec = build_spec(OPTS, settings_for(tmp_path, tmp_path), dataset, pre, run_dir, 1200 * MIB, "r1")
    kw = host_config_kwargs(spec)
    assert kw["mem_limit"] == 1200 * MIB
    assert kw["memswap_limit"] == kw["mem_limit"]                 # memory == memory+swap: no swap
    assert kw["network_mode"] == "none"
    assert kw["cap_drop"] == ["ALL"]
    assert kw["read_only"] is True
    assert "no-new-privileges" in kw["security_opt"]
    assert kw["user"] == spec.user
    assert kw["init"] is False                                    # the supervisor is PID 1
    volumes = kw["volumes"]
    assert volumes[str(Path(dataset.path).resolve())]["mode"] == "ro"
    assert volumes[str(pre)]["mode"] == "rw"
    assert volumes[str(run_dir)] == {"bind": CONTAINER_RUN_DIR, "mode": "rw"}


# -- gather_facts ------------------------------------------------------------------

def test_gather_facts_takes_the_highest_counter_of_monitor_and_supervisor():
    f = facts_of(status(oom_kill_start=0, oom_kill_end=1), summary(readable=True, oom_kill_first=0,
                                                                       oom_kill_last=2), 1, False, 0, None)
    assert (f.oom_kill_before, f.oom_kill_after) == (0, 2)
    f = facts_of(status(oom_kill_start=0, oom_kill_end=3), summary(readable=True, oom_kill_first=1,
                                                                       oom_kill_last=1), 1, False, 0, None)
    assert (f.oom_kill_before, f.oom_kill_after) == (0, 3)


def test_gather_facts_uses_the_supervisor_alone_when_the_host_cannot_read():
    f = facts_of(status(oom_kill_start=2, oom_kill_end=3), summary(), 1, False, 0, None)
    assert (f.oom_kill_before, f.oom_kill_after) == (2, 3)


def test_gather_facts_uses_the_monitor_alone_without_status():
    f = facts_of(None, summary(readable=True, oom_kill_first=0, oom_kill_last=1), 137, True, 0, None)
    assert not f.supervisor_ran
    assert f.nnunet_returncode is None and f.phase is None
    assert (f.oom_kill_before, f.oom_kill_after) == (0, 1)
    assert f.container_exit_code == 137 and f.engine_oom_killed


def test_gather_facts_without_any_reading_has_no_counter():
    f = facts_of(status(oom_kill_start=None, oom_kill_end=None, cgroup_error="no memory.oom_control"),
                     summary(), 1, True, 4, signal.SIGTERM)
    assert f.oom_kill_before is None and f.oom_kill_after is None
    assert f.engine_oom_events == 4 and f.interrupt_signal == signal.SIGTERM


def test_gather_facts_counts_a_start_error_as_a_supervisor_run():
    f = facts_of(status(returncode=None, start_error="exec failed", phase="startup"), summary(), 127, False, 0,
                     None)
    assert f.supervisor_ran and f.start_error == "exec failed"
    assert classify(f).outcome is Outcome.INFRA


def test_real_status_of_a_worker_oom_classifies_as_a_worker_victim():
    st = json.loads((LOGS / "worker_oom_preprocessing.status.json").read_text())
    f = facts_of(st, summary(), 1, True, 0, None)
    assert f.phase == "preprocessing" and f.configuration == "3d_fullres"
    assert len(f.worker_exits) == 6 and f.exception_line == SIX_FEET
    v = classify(f)
    assert v.outcome is Outcome.OOM and v.oom_source == "cgroup"
    assert [(x.role, x.pid) for x in v.victims] == [("worker", 69)]


def test_real_status_of_a_main_oom_classifies_as_a_main_victim():
    st = json.loads((LOGS / "main_oom_fingerprint.status.json").read_text())
    v = classify(facts_of(st, summary(), 137, True, 0, None))
    assert v.outcome is Outcome.OOM
    assert [(x.role, x.pid) for x in v.victims] == [("main", 7)]


# -- pre-flight and shape checks -------------------------------------------------------

def test_preflight_checks_mem_before_looking_for_data(tmp_path):
    with pytest.raises(BadInputError, match="--mem"):
        preflight(OPTS, RunSettings(mem="abc", raw_root=str(tmp_path / "missing")), NullSink())


def test_preflight_validates_the_options_first(tmp_path):
    with pytest.raises(BadInputError, match="-np"):
        preflight(replace(OPTS, np=(0,)), RunSettings(mem="abc"), NullSink())


def test_preflight_rejects_the_same_raw_and_preprocessed_folder(tiny_raw):
    with pytest.raises(BadInputError, match="differ"):
        preflight(OPTS, RunSettings(mem="1g", raw_root=str(tiny_raw), preprocessed_root=str(tiny_raw)), NullSink())


def test_preflight_finds_a_truncated_image(tiny_raw, tmp_path):
    image = tiny_raw / DATASET / "imagesTr" / "case001_0000.nii.gz"
    image.write_bytes(image.read_bytes()[: image.stat().st_size // 2])
    settings = RunSettings(mem="1g", raw_root=str(tiny_raw), preprocessed_root=str(tmp_path / "pre"))
    with pytest.raises(BadInputError) as info:
        preflight(OPTS, settings, NullSink())
    assert "case001_0000" in info.value.one_line() and "truncated" in info.value.one_line()
    settings.skip_file_check = True
    mem, dataset, pre_root = preflight(OPTS, settings, NullSink())
    assert mem == GIB and dataset.name == DATASET and pre_root == (tmp_path / "pre").resolve()


@pytest.fixture
def shapes_raw(tmp_path) -> Path:
    raw = tmp_path / "raw"
    make_dataset(raw, 501, "Tiny", [CaseSpec((12, 10, 6), (0.8, 0.8, 3.0)),
                                    CaseSpec((12, 10, 5), (0.8, 0.8, 3.0), label_shape=(12, 10, 6))])
    return raw


def test_shape_mismatches_names_the_case_from_headers(shapes_raw):
    found = shape_mismatches(load_raw_dataset(shapes_raw, 501))
    assert len(found) == 1 and found[0].startswith("case001")
    assert "12x10x5" in found[0] and "12x10x6" in found[0]


def test_shape_mismatches_of_good_data_is_empty(tiny_raw):
    assert shape_mismatches(load_raw_dataset(tiny_raw, 501)) == []


# -- Preprocess(...).run() with a fake engine ---------------------------------------------

def test_ok_run(tiny_raw, tmp_path):
    engine = FakeEngine(lambda e: e.write_status(status()), exit_code=0)
    report, _ = run_fake(tiny_raw, tmp_path, engine)
    assert report.outcome is Outcome.OK and report.exit_code == 0
    assert report.phase is None and report.victim is None and report.recommendation is None
    assert report.oom_kills == 0 and report.oom_source == "cgroup"
    assert DATASET in report.message
    assert report.removed_outputs == [] and report.cases_in_flight == []
    assert report.nnunet_argv == nnunet_argv(OPTS)
    assert engine.spec.command[-len(nnunet_argv(OPTS)) + 1:] == nnunet_argv(OPTS)[1:]
    assert engine.removed == [CID]                               # never left behind
    assert "oom_event_count" not in engine.calls                  # the counter was readable
    assert Path(report.log_path).parent == Path(report.run_dir) == engine.run_dir
    assert report.workers == {"npfp": 1, "np": {"3d_fullres": 4}, "schedule": "fixed"}
    assert_report_json_matches(report)


def plans_written(configurations: dict, no_pp: bool = False):
    """A container that plans ``configurations`` (nnU-Net's planner writes nnUNetPlans.json) and ends ok."""
    def on_wait(engine: FakeEngine) -> int:
        (engine.preprocessed / "nnUNetPlans.json").write_text(json.dumps(
            {"experiment_planner_used": "ExperimentPlanner", "configurations": configurations}))
        engine.write_status(status(completed_configurations=[] if no_pp else list(configurations)))
        return 0
    return on_wait


FULLRES_ONLY = {"2d": {"data_identifier": "nnUNetPlans_2d"},
                "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [24, 80, 80],
                               "median_image_size_in_voxels": [24, 72, 72]}}


def test_an_ok_run_lists_what_nnunet_skipped_from_the_plans_it_wrote(tiny_raw, tmp_path):
    opts = PreprocessOptions(501, np=(1,), npfp=1)                  # nnU-Net's default -c: 2d 3d_fullres 3d_lowres
    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(plans_written(FULLRES_ONLY)), opts=opts)
    assert report.outcome is Outcome.OK
    assert report.configurations == ["2d", "3d_fullres"]
    assert [s["configuration"] for s in report.configurations_skipped] == ["3d_lowres"]
    assert "24x80x80 holds 123 % of the median image 24x72x72" in report.configurations_skipped[0]["reason"]
    assert f"{DATASET} preprocessed (2d 3d_fullres; 3d_lowres skipped: not in the plans)" in report.message
    data = assert_report_json_matches(report)
    assert data["configurations_skipped"] == report.configurations_skipped


def test_the_ok_line_of_2d_images_lists_no_3d_configuration(tiny_raw, tmp_path):
    opts = PreprocessOptions(501, np=(1,), npfp=1)
    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(plans_written({"2d": {"data_identifier": "nnUNetPlans_2d"}})),
                         opts=opts)
    assert report.configurations == ["2d"]
    assert report.message.startswith(f"{DATASET} preprocessed (2d; 3d_fullres 3d_lowres skipped")
    assert all("2D" in s["reason"] for s in report.configurations_skipped)


def test_a_no_pp_run_preprocessed_no_configuration(tiny_raw, tmp_path):
    opts = PreprocessOptions(501, np=(1,), npfp=1, no_pp=True)
    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(plans_written(FULLRES_ONLY, no_pp=True)), opts=opts)
    assert report.outcome is Outcome.OK and report.configurations == [] and report.configurations_skipped == []
    assert "--no_pp" in report.message


def worker_oom_in_3d_fullres(engine: FakeEngine) -> int:
    pre = engine.preprocessed
    # completed phases wrote these during the run: they must survive
    (pre / "dataset_fingerprint.json").write_text("{}")
    (pre / "nnUNetPlans.json").write_text(json.dumps(
        {"configurations": {"3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"}}}))
    # the failed phase: the agent's staging folder (kept: the next run resumes from it) and a
    # temporary file outside it (removed: nothing half-written may keep a name a later run reads)
    folder = pre / ".nnrun" / "staging" / "nnUNetPlans_3d_fullres"
    folder.mkdir(parents=True)
    (folder / ".nnrun-tmp.case000.b2nd").write_bytes(b"truncated")
    (pre / "gt_segmentations").mkdir()
    (pre / "gt_segmentations" / "case000.nii.gz.nnrun-tmp").write_bytes(b"half")
    engine.write_status(status(
        returncode=1, phase="preprocessing", configuration="3d_fullres", completed_phases=["fingerprint", "planning"],
        completed_configurations=[], progress={"Preprocessing cases": [0, 3]}, last_exception_line=SIX_FEET,
        oom_kill_start=0, oom_kill_end=1, peak_anon_bytes=1190 * MIB, peak_usage_bytes=1200 * MIB,
        worker_exits=[worker_exit(69, 100.0, 0, 1), worker_exit(68, 100.05, 1, 1)]))
    return 1


def test_worker_oom_run_reports_oom_recommends_fewer_workers_and_removes_half_written_outputs(tiny_raw, tmp_path):
    engine = FakeEngine(worker_oom_in_3d_fullres, engine_oom_killed=True)
    report, settings = run_fake(tiny_raw, tmp_path, engine)
    assert report.outcome is Outcome.OOM and report.exit_code == 3
    assert report.oom_kills == 1 and report.oom_source == "cgroup"
    assert report.phase == "preprocessing" and report.configuration == "3d_fullres"
    assert report.victim == "worker" and report.victims == [{"role": "worker", "pid": 69, "case": None, "last_case": None}]
    assert report.container_exit_code == 1
    assert "worker" in report.message
    # the next command: the same cap, half the workers for 3d_fullres
    expected = nnrun_argv(OPTS.with_workers(configuration="3d_fullres", np=2), "1200m", settings.passthrough_argv)
    assert report.recommendation_argv == expected
    assert report.recommendation == " ".join(expected)
    assert "-np 2" in report.recommendation_text
    # inferred cases in flight: the first -np sorted ids without a .pkl
    assert report.cases_in_flight == ["case000", "case001", "case002"] and report.cases_exact is False
    # only the failed phase's outputs are removed
    pre = engine.preprocessed
    assert report.removed_outputs == [str(pre / "gt_segmentations" / "case000.nii.gz.nnrun-tmp")]
    assert not (pre / "nnUNetPlans_3d_fullres").exists()
    assert (pre / ".nnrun" / "staging" / "nnUNetPlans_3d_fullres").is_dir()
    assert (pre / "nnUNetPlans.json").exists() and (pre / "dataset_fingerprint.json").exists()
    assert engine.removed == [CID]
    data = assert_report_json_matches(report)
    assert data["outcome"] == "oom" and data["exit_code"] == 3


def test_the_advice_after_an_oom_leaves_out_a_configuration_the_plans_lack(tiny_raw, tmp_path):
    # -c 3d_fullres 3d_lowres on data whose plans (written during the run) have no 3d_lowres: the next
    # command must not name 3d_lowres, which `nnrun preprocess` would now refuse
    opts = PreprocessOptions(501, configurations=("3d_fullres", "3d_lowres"), np=(4, 6), npfp=1)
    engine = FakeEngine(worker_oom_in_3d_fullres, engine_oom_killed=True)
    report, settings = run_fake(tiny_raw, tmp_path, engine, opts=opts)
    assert report.outcome is Outcome.OOM
    assert report.configurations == ["3d_fullres"]
    assert [s["configuration"] for s in report.configurations_skipped] == ["3d_lowres"]
    expected = nnrun_argv(PreprocessOptions(501, configurations=("3d_fullres",), np=(2,), npfp=1), "1200m",
                          settings.passthrough_argv)
    assert report.recommendation_argv == expected and "3d_lowres" not in report.recommendation


def test_worker_oom_in_fingerprint_with_one_worker_recommends_more_memory(tiny_raw, tmp_path):
    def oom(engine):
        (engine.preprocessed / "dataset_fingerprint.json.nnrun-tmp").write_text('{"foreground_intensity')  # half
        engine.write_status(status(returncode=1, phase="fingerprint", completed_phases=[],
                                   progress={"Extracting dataset fingerprint": [1, 3]}, last_exception_line=SIX_FEET,
                                   oom_kill_start=0, oom_kill_end=1,
                                   worker_exits=[worker_exit(33, 50.0, 0, 1, phase="fingerprint", configuration=None)]))
        return 1

    engine = FakeEngine(oom)
    report, settings = run_fake(tiny_raw, tmp_path, engine)                # OPTS has -npfp 1
    assert report.outcome is Outcome.OOM and report.phase == "fingerprint" and report.configuration is None
    assert report.cases_in_flight == ["case001"]                        # after the progress bar's count
    assert report.recommendation_argv == nnrun_argv(OPTS, "1856m", settings.passthrough_argv)   # 1.5 x 1200m
    assert report.removed_outputs == [str(engine.preprocessed / "dataset_fingerprint.json.nnrun-tmp")]
    assert_report_json_matches(report)


class RecordingMonitor(CgroupMonitor):
    """The real host monitor; the test keeps a handle on it to know when it has sampled."""
    instances: list = []

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        RecordingMonitor.instances.append(self)


def test_main_oom_seen_only_by_the_host_monitor(tiny_raw, tmp_path, monkeypatch):
    # No status.json (the container ended without the supervisor's word), exit 137:
    # the host monitor read the container's cgroup v1 files, and saw oom_kill go 0 -> 1.
    cgroup_root = tmp_path / "cgroup"
    cgroup_dir = cgroup_root / "memory" / "docker" / CID
    shutil.copytree(CGROUP_V1_GOOD_RUN, cgroup_dir)
    RecordingMonitor.instances = []
    monkeypatch.setattr(run_module, "CgroupMonitor", RecordingMonitor)

    def main_killed(engine):
        monitor = RecordingMonitor.instances[-1]
        deadline = time.time() + 5
        while monitor.samples == 0 and time.time() < deadline:
            time.sleep(0.01)
        assert monitor.samples > 0, "the monitor never read the fixture cgroup"
        (cgroup_dir / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 1\n")
        return 137

    engine = FakeEngine(main_killed, engine_oom_killed=True)
    report, _ = run_fake(tiny_raw, tmp_path, engine, cgroup_root=cgroup_root)
    assert report.outcome is Outcome.OOM and report.exit_code == 3
    assert report.oom_source == "cgroup" and report.oom_kills == 1
    assert report.victim == "main"
    assert report.cgroup_reader == "host"
    assert report.peak_anon_bytes and report.limit_bytes
    assert "oom_event_count" not in engine.calls
    assert engine.removed == [CID]
    assert_report_json_matches(report)


def test_sigkill_without_counter_rise_is_killed_even_with_dockers_oomkilled_flag(tiny_raw, tmp_path):
    engine = FakeEngine(lambda e: e.write_status(status(returncode=-9, phase="fingerprint",
                                                        completed_phases=[], oom_kill_start=0, oom_kill_end=0)),
                        exit_code=137, engine_oom_killed=True)
    report, _ = run_fake(tiny_raw, tmp_path, engine)
    assert report.outcome is Outcome.KILLED and report.exit_code == 5
    assert report.oom_kills == 0 and report.engine_oom_killed is True
    assert report.recommendation is None
    assert "SIGKILL" in report.message and report.signal == 9 and report.signal_name == "SIGKILL"
    assert_report_json_matches(report)


def test_unreadable_counters_fall_back_to_the_engine(tiny_raw, tmp_path):
    def no_counter(engine):
        engine.write_status(status(returncode=1, phase="preprocessing", configuration="3d_fullres",
                                   oom_kill_start=None, oom_kill_end=None, cgroup_version=None,
                                   cgroup_error="memory.oom_control: not found"))
        return 1

    engine = FakeEngine(no_counter, engine_oom_killed=True, oom_events=2)
    report, _ = run_fake(tiny_raw, tmp_path, engine)
    assert "oom_event_count" in engine.calls                      # consulted because the counter was unreadable
    assert report.outcome is Outcome.OOM
    assert report.oom_source == "engine" and report.engine_oom_events == 2
    assert report.victim == "worker"
    assert_report_json_matches(report)


def test_shape_mismatch_is_bad_input_before_any_container(shapes_raw, tmp_path):
    """nnU-Net would fail mid-run (broadcast error); the headers show it up front, naming the case and shapes."""
    engine = FakeEngine(lambda e: pytest.fail("no container for a shape mismatch"))
    with pytest.raises(BadInputError) as info:
        run_fake(shapes_raw, tmp_path, engine, skip_file_check=True)
    message = info.value.one_line()
    assert "case001" in message and "12x10x5" in message and "12x10x6" in message
    assert not any(c.startswith("start") for c in engine.calls)


def test_container_exit_1_without_supervisor_status_is_infra(tiny_raw, tmp_path):
    engine = FakeEngine(lambda e: 1)
    report, _ = run_fake(tiny_raw, tmp_path, engine)
    assert report.outcome is Outcome.INFRA and report.exit_code == 6
    assert report.phase == "startup"
    assert "oom_event_count" in engine.calls
    assert engine.removed == [CID]
    assert_report_json_matches(report)


def test_container_that_cannot_start_is_infra_and_removed(tiny_raw, tmp_path):
    engine = FakeEngine(start_error="OCI runtime create failed")
    report, _ = run_fake(tiny_raw, tmp_path, engine)
    assert report.outcome is Outcome.INFRA and report.exit_code == 6
    assert "OCI runtime create failed" in report.message
    assert "wait" not in engine.calls
    assert engine.removed == [CID]


def test_mem_above_the_host_memory_is_bad_input_before_any_container(tiny_raw, tmp_path):
    engine = FakeEngine(mem_total=2 * GIB)
    with pytest.raises(BadInputError, match="host"):
        run_fake(tiny_raw, tmp_path, engine, mem="3g")
    assert "create" not in engine.calls


def test_interrupt_stops_the_container_and_removes_the_failed_phase_outputs(tiny_raw, tmp_path):
    def stopped(engine):
        (engine.preprocessed / "nnUNetPlans.json.nnrun-tmp").write_bytes(b"half")
        engine.write_status(status(returncode=-15, phase="preprocessing", configuration="3d_fullres",
                                   terminated_by_signal=15))
        return 143

    engine = FakeEngine(stopped, interrupt=signal.SIGTERM)
    report, _ = run_fake(tiny_raw, tmp_path, engine)
    assert "stop" in engine.calls and engine.calls.index("stop") < engine.calls.index("remove")
    assert report.outcome is Outcome.INTERRUPTED and report.exit_code == 143
    assert "SIGTERM" in report.message
    assert report.removed_outputs == [str(engine.preprocessed / "nnUNetPlans.json.nnrun-tmp")]
    assert engine.removed == [CID]
    assert_report_json_matches(report)


# -- bugs ---------------------------------------------------------------------------------

def test_fewer_workers_advice_keeps_the_users_mem_when_the_kernel_rounds_the_limit(tiny_raw, tmp_path):
    mem = "1.3g"                                                  # 1395864371 bytes: not a page multiple
    page_rounded = parse_mem(mem) // 4096 * 4096                   # what memory.limit_in_bytes reads back

    def oom(engine):
        engine.write_status(status(returncode=1, phase="preprocessing", configuration="3d_fullres",
                                   last_exception_line=SIX_FEET, oom_kill_start=0, oom_kill_end=1,
                                   limit_bytes=page_rounded, worker_exits=[worker_exit(69, 100.0, 0, 1)]))
        return 1

    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(oom), mem=mem)
    assert report.outcome is Outcome.OOM
    assert "-np" in report.recommendation_argv
    argv = report.recommendation_argv
    assert argv[argv.index("--mem") + 1] == mem


def test_without_status_the_phase_comes_from_the_supervisors_events(tiny_raw, tmp_path):
    def docker_kill(engine):
        (engine.preprocessed / "nnUNetPlans.json.nnrun-tmp").write_bytes(b"half")
        now = round(time.time(), 3)
        events = [{"t": now, "event": "supervisor_start", "oom_kill": 0},
                  {"t": now, "event": "child_start", "pid": 7},
                  {"t": now, "event": "phase", "phase": "fingerprint", "configuration": None},
                  {"t": now, "event": "phase", "phase": "planning", "configuration": None},
                  {"t": now, "event": "phase", "phase": "preprocessing", "configuration": None},
                  {"t": now, "event": "phase", "phase": "preprocessing", "configuration": "3d_fullres"}]
        (engine.run_dir / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
        return 137

    engine = FakeEngine(docker_kill)
    report, _ = run_fake(tiny_raw, tmp_path, engine)
    assert report.outcome is Outcome.KILLED
    assert report.phase == "preprocessing" and report.configuration == "3d_fullres"
    assert "before nnU-Net started" not in report.message
    assert not (engine.preprocessed / "nnUNetPlans.json.nnrun-tmp").exists()


def test_killed_before_nnunet_started_reads_as_english(tiny_raw, tmp_path):
    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(lambda e: 137))
    assert report.outcome is Outcome.KILLED
    assert "during before" not in report.message


def test_the_recommended_command_line_splits_back_to_its_argv(tmp_path):
    raw = tmp_path / "my raw data"
    make_dataset(raw, 501, "Tiny", [CaseSpec((12, 10, 6), (0.8, 0.8, 3.0))])
    engine = FakeEngine(worker_oom_in_3d_fullres)
    report, _ = run_fake(raw, tmp_path, engine, opts=replace(OPTS, extra_args=("--note", "two words")))
    assert report.outcome is Outcome.OOM and report.recommendation_argv
    assert "my raw data" in report.recommendation_argv[report.recommendation_argv.index("--raw") + 1]
    assert shlex.split(report.recommendation) == report.recommendation_argv


# -- --retry ------------------------------------------------------------------------------

def test_retry_after_an_oom_halves_the_workers_and_keeps_the_cap(tiny_raw, tmp_path):
    seen = []

    def oom_then_ok(engine):
        seen.append(list(engine.spec.command))
        if len(seen) == 1:
            return worker_oom_in_3d_fullres(engine)
        engine.write_status(status())
        return 0

    engine = FakeEngine(oom_then_ok)
    report, _ = run_fake(tiny_raw, tmp_path, engine, retries=2)
    assert report.outcome is Outcome.OK and report.exit_code == 0
    assert [a["outcome"] for a in report.attempts] == ["oom", "ok"]
    assert report.attempts[0]["run_id"] != report.attempts[1]["run_id"]
    first, second = seen
    assert first[first.index("-np") + 1] == "4" and second[second.index("-np") + 1] == "2"
    assert all(spec_mem == engine.specs[0].mem_limit_bytes for spec_mem in [s.mem_limit_bytes for s in engine.specs])


def test_no_retry_when_the_user_pinned_the_workers(tiny_raw, tmp_path):
    engine = FakeEngine(worker_oom_in_3d_fullres)
    report, _ = run_fake(tiny_raw, tmp_path, engine, retries=None, workers_pinned=True)
    assert report.outcome is Outcome.OOM and len(report.attempts) == 1


def test_retry_never_raises_the_memory(tiny_raw, tmp_path):
    def oom_with_one_worker(engine):
        engine.write_status(status(returncode=-9, phase="planning", oom_kill_start=0, oom_kill_end=1))
        return 137

    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(oom_with_one_worker), retries=2)
    assert report.outcome is Outcome.OOM and len(report.attempts) == 1     # only more memory would help


# -- manifest.json: the command as the user typed it ---------------------------------------------

def test_manifest_records_the_command_as_typed_with_nnrun_as_program(tiny_raw, tmp_path, monkeypatch, capsys):
    from runner.cli import app as cli
    engine = FakeEngine(lambda e: e.write_status(status()), exit_code=0)
    monkeypatch.setattr("runner.cli.preprocess.engine_factory_for", lambda runtime, host_python=None: lambda: engine)
    # What sys.argv holds under `python -m runner.cli` or the entry point script: not what the user typed.
    monkeypatch.setattr(sys, "argv", [str(Path(cli.__file__)), "something", "else"])
    argv = ["preprocess", "-d", "501", "--mem", "1200m", "-c", "3d_fullres", "-np", "4", "-npfp", "1",
            "--raw", str(tiny_raw), "--preprocessed", str(tmp_path / "pre"), "--skip-file-check", "--no-plot",
            "--json", "-q", "--", "--verbose"]
    code = cli.main(argv)
    out, err = capsys.readouterr()
    assert code == 0, err
    run_dir = Path(json.loads(out)["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["command"] == ["nnrun", *argv]
    assert "command" not in manifest["settings"]


def test_manifest_command_without_the_cli_replaces_the_program_name(monkeypatch):
    from runner.run.manifest import command_line
    monkeypatch.setattr(sys, "argv", ["/opt/venv/lib/python3.11/site-packages/runner/cli/__main__.py", "preprocess",
                                      "-d", "501"])
    assert command_line() == ["nnrun", "preprocess", "-d", "501"]
