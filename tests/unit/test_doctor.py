"""runner.doctor with a fake engine: every check's ok / warn / fail, the renderings, the exit codes."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner import __version__
from runner.doctor import (
    FAIL,
    IMAGE_ADVICE,
    NAME_CGROUP,
    NAME_DAEMON,
    NAME_IMAGE,
    NAME_MEMORY,
    NAME_PREPROCESSED,
    NAME_PROBE,
    NAME_RAW,
    OK,
    SCHEMA_VERSION,
    SWAP_ADVICE,
    WARN,
    Check,
    DoctorReport,
    ProbeResult,
    doctor_json,
    evaluate_probe,
    read_meminfo,
    render_doctor,
    run_checks,
)
from runner.engines.base import EngineInfo, ImageInfo
from runner.errors import InfraError, Outcome, exit_code_for
from runner.image import lock_digest
from runner.units import GIB, MIB

IMAGE = f"nnrun:{__version__}"
INFRA = exit_code_for(Outcome.INFRA)
ALL_NAMES = [NAME_DAEMON, NAME_CGROUP, NAME_MEMORY, NAME_IMAGE, NAME_PROBE, NAME_RAW, NAME_PREPROCESSED]

MEMINFO_NO_SWAP = """MemTotal:       24684084 kB
MemFree:        20964648 kB
MemAvailable:   24044636 kB
SwapCached:            0 kB
SwapTotal:             0 kB
SwapFree:              0 kB
HugePages_Total:       0
"""
MEMINFO_SWAP = MEMINFO_NO_SWAP.replace("SwapTotal:             0 kB", "SwapTotal:       2097148 kB")

V1_KILLED = "child_exit_status 137\noom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
V2_KILLED = "child_exit_status 137\nlow 0\nhigh 0\nmax 12\noom 1\noom_kill 1\noom_group_kill 0\n"


class FakeEngine:
    """Implements the three engine calls doctor makes."""

    def __init__(self, *, info_exc=None, cgroup_version=1, image_labels=None, image_missing=False,
                 probe_stdout=V1_KILLED, probe_exit=137, probe_timed_out=False, probe_exc=None,
                 base_url="unix:///var/run/docker.sock"):
        self.info_exc = info_exc
        self.cgroup_version = cgroup_version
        self.image_labels = image_labels if image_labels is not None else {
            "io.nnrun.version": __version__, "io.nnrun.nnunetv2-version": "2.8.1",
            "io.nnrun.torch-version": "2.13.0", "io.nnrun.lock-digest": lock_digest()}
        self.image_missing = image_missing
        self.probe_stdout = probe_stdout
        self.probe_exit = probe_exit
        self.probe_timed_out = probe_timed_out
        self.probe_exc = probe_exc
        self.base_url = base_url
        self.probes: list[tuple] = []

    def info(self) -> EngineInfo:
        if self.info_exc is not None:
            raise self.info_exc
        return EngineInfo(name="docker", server_version="20.10.24", mem_total_bytes=24 * GIB,
                          cgroup_version=self.cgroup_version, cgroup_driver="cgroupfs",
                          kernel_version="6.1.0", base_url=self.base_url)

    def image(self, ref: str) -> ImageInfo:
        if self.image_missing:
            raise InfraError(f"image {ref} not found", hint="the engine's own hint")
        return ImageInfo(ref=ref, image_id="sha256:" + "ab" * 32, labels=dict(self.image_labels), repo_digests=[])

    def oom_probe(self, image: str, mem_bytes: int, timeout_s: float = 60) -> dict:
        self.probes.append((image, mem_bytes, timeout_s))
        if self.probe_exc is not None:
            raise self.probe_exc
        return {"run_id": "doctor-abc", "container_exit_code": None if self.probe_timed_out else self.probe_exit,
                "timed_out": self.probe_timed_out, "stdout": self.probe_stdout, "stderr": "Killed\n",
                "engine_oom_killed": self.probe_exit == 137, "mem_bytes": mem_bytes, "alloc_bytes": 256 * MIB}


@pytest.fixture
def machine(tmp_path):
    """A healthy machine: /proc/meminfo without swap, a v1 cgroup root, raw and preprocessed folders."""
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "meminfo").write_text(MEMINFO_NO_SWAP)
    cgroup = tmp_path / "cgroup"
    (cgroup / "memory").mkdir(parents=True)
    raw = tmp_path / "raw"
    (raw / "Dataset501_Demo").mkdir(parents=True)
    pre = tmp_path / "pre"
    pre.mkdir()
    return {"proc_root": proc, "cgroup_root": cgroup, "raw": raw, "preprocessed": pre}


def doctor(machine, engine=None, env=None, **kw):
    engine = engine or FakeEngine()
    args = {**machine, **kw}
    return run_checks(lambda: engine, IMAGE, args.pop("raw"), args.pop("preprocessed"), env=env or {}, **args)


def statuses(report: DoctorReport) -> dict[str, str]:
    return {c.name: c.status for c in report.checks}


# --------------------------------------------------------------------------
# all ok


def test_all_ok(machine):
    engine = FakeEngine()
    report = doctor(machine, engine)
    assert [c.name for c in report.checks] == ALL_NAMES
    assert statuses(report) == {name: OK for name in ALL_NAMES}, render_doctor(report)
    assert report.ok and report.exit_code == 0
    assert all(c.advice is None for c in report.checks)
    assert engine.probes == [(IMAGE, 64 * MIB, 60.0)]
    probe = report.check(NAME_PROBE)
    assert probe.data["enforced"] is True and probe.data["oom_kill"] == 1 and probe.data["child_exit_status"] == 137
    image = report.check(NAME_IMAGE)
    assert image.data["versions"] == {"nnrun": __version__, "nnunetv2": "2.8.1", "torch": "2.13.0"}
    assert "nnunetv2 2.8.1" in image.detail and "torch 2.13.0" in image.detail
    assert report.check(NAME_CGROUP).data["host_cgroup_version"] == 1
    assert report.check(NAME_MEMORY).data == {"mem_total_bytes": 24684084 * 1024, "swap_total_bytes": 0,
                                              "mem_available_bytes": 24044636 * 1024}
    assert report.check(NAME_RAW).data["datasets"] == ["Dataset501_Demo"]


def test_folders_from_environment(machine):
    env = {"nnUNet_raw": str(machine["raw"]), "nnUNet_preprocessed": str(machine["preprocessed"])}
    report = doctor({**machine, "raw": None, "preprocessed": None}, env=env)
    assert report.check(NAME_RAW).status == OK and report.check(NAME_PREPROCESSED).status == OK
    assert report.check(NAME_RAW).data["path"] == str(machine["raw"].resolve())


def test_arguments_override_environment(machine, tmp_path):
    env = {"nnUNet_raw": str(tmp_path / "nowhere"), "nnUNet_preprocessed": str(tmp_path / "nowhere2")}
    report = doctor(machine, env=env)
    assert report.check(NAME_RAW).status == OK and report.check(NAME_PREPROCESSED).status == OK


def test_default_env_is_os_environ(machine, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(machine["raw"]))
    monkeypatch.delenv("nnUNet_preprocessed", raising=False)
    engine = FakeEngine()
    report = run_checks(lambda: engine, IMAGE, None, None, machine["proc_root"], machine["cgroup_root"])
    assert report.check(NAME_RAW).status == OK
    assert report.check(NAME_PREPROCESSED).status == WARN


def test_cgroup_v2_engine_and_host(machine, tmp_path):
    v2 = tmp_path / "v2"
    v2.mkdir()
    (v2 / "cgroup.controllers").write_text("cpu memory pids\n")
    report = doctor({**machine, "cgroup_root": v2}, FakeEngine(cgroup_version=2, probe_stdout=V2_KILLED))
    assert statuses(report) == {name: OK for name in ALL_NAMES}, render_doctor(report)
    assert report.check(NAME_CGROUP).detail.startswith("v2, driver cgroupfs")
    assert report.check(NAME_PROBE).data["counters"]["oom"] == 1


# --------------------------------------------------------------------------
# daemon down


def test_daemon_down(machine):
    hint = "is dockerd running and is unix:///nonexistent.sock the right address?"
    err = InfraError("Docker daemon not reachable at unix:///nonexistent.sock", hint=hint)
    engine = FakeEngine(info_exc=err, base_url="unix:///nonexistent.sock")
    report = doctor(machine, engine)
    daemon = report.check(NAME_DAEMON)
    assert daemon.status == FAIL
    assert daemon.detail == "Docker daemon not reachable at unix:///nonexistent.sock"
    assert daemon.advice == hint
    assert daemon.data["base_url"] == "unix:///nonexistent.sock"
    s = statuses(report)
    assert s[NAME_IMAGE] == FAIL and s[NAME_PROBE] == FAIL      # cannot run nnrun without them
    assert s[NAME_CGROUP] == WARN and "host: v1" in report.check(NAME_CGROUP).detail
    assert s[NAME_MEMORY] == OK and s[NAME_RAW] == OK and s[NAME_PREPROCESSED] == OK
    assert engine.probes == []
    assert not report.ok and report.exit_code == INFRA == 6


def test_engine_factory_raising_is_a_daemon_failure(machine):
    def factory():
        raise InfraError("cannot build a client", hint="fix DOCKER_HOST")
    report = run_checks(factory, IMAGE, machine["raw"], machine["preprocessed"], machine["proc_root"],
                        machine["cgroup_root"], env={})
    assert report.check(NAME_DAEMON).status == FAIL and report.check(NAME_DAEMON).advice == "fix DOCKER_HOST"
    assert report.exit_code == INFRA


# --------------------------------------------------------------------------
# image


def test_image_missing(machine):
    engine = FakeEngine(image_missing=True)
    report = doctor(machine, engine)
    image = report.check(NAME_IMAGE)
    assert image.status == FAIL
    assert image.detail == f"image {IMAGE} not found"
    assert image.advice == IMAGE_ADVICE
    assert "--image" in IMAGE_ADVICE and "`nnrun image build`" in IMAGE_ADVICE and "scripts/" not in IMAGE_ADVICE
    assert report.check(NAME_PROBE).status == FAIL and "not checked" in report.check(NAME_PROBE).detail
    assert engine.probes == []
    assert report.exit_code == INFRA


def test_image_of_another_nnrun_version_warns(machine):
    labels = {"io.nnrun.version": "0.0.9", "io.nnrun.nnunetv2-version": "2.8.1", "io.nnrun.torch-version": "2.13.0",
              "io.nnrun.lock-digest": lock_digest()}
    report = doctor(machine, FakeEngine(image_labels=labels))
    image = report.check(NAME_IMAGE)
    assert image.status == WARN and "nnrun 0.0.9" in image.detail and __version__ in image.detail
    assert "`nnrun image build`" in image.advice and "scripts/" not in image.advice
    assert report.ok and report.exit_code == 0


def test_image_without_labels_warns(machine):
    report = doctor(machine, FakeEngine(image_labels={}))
    assert report.check(NAME_IMAGE).status == WARN
    assert report.check(NAME_IMAGE).data["versions"] == {"nnrun": None, "nnunetv2": None, "torch": None}


# --------------------------------------------------------------------------
# the probe


def test_probe_not_enforced(machine):
    report = doctor(machine, FakeEngine(probe_stdout="child_exit_status 0\noom_kill_disable 0\nunder_oom 0\n"
                                        "oom_kill 0\n", probe_exit=0))
    probe = report.check(NAME_PROBE)
    assert probe.status == FAIL
    assert "not enforced" in probe.detail and "exit 0" in probe.detail and "oom_kill 0" in probe.detail
    assert "cgroup_enable=memory" in probe.advice
    assert probe.data["enforced"] is False
    assert report.exit_code == INFRA


def test_probe_sigkill_without_counted_oom_kill_fails(machine):
    report = doctor(machine, FakeEngine(probe_stdout="child_exit_status 137\noom_kill_disable 0\nunder_oom 0\n"
                                        "oom_kill 0\n"))
    assert report.check(NAME_PROBE).status == FAIL
    assert report.check(NAME_PROBE).data["enforced"] is False


def test_probe_old_kernel_without_counter_warns(machine):
    report = doctor(machine, FakeEngine(probe_stdout="child_exit_status 137\noom_kill_disable 0\nunder_oom 0\n"))
    probe = report.check(NAME_PROBE)
    assert probe.status == WARN and "oom_kill unreadable" in probe.detail
    assert report.exit_code == 0


def test_probe_timeout_fails(machine):
    report = doctor(machine, FakeEngine(probe_stdout="", probe_timed_out=True))
    assert report.check(NAME_PROBE).status == FAIL and "timeout" in report.check(NAME_PROBE).detail


def test_probe_garbled_output_fails(machine):
    report = doctor(machine, FakeEngine(probe_stdout="Traceback (most recent call last):\n"))
    probe = report.check(NAME_PROBE)
    assert probe.status == FAIL and "unexpected probe output" in probe.detail


def test_probe_without_python_fails(machine):
    report = doctor(machine, FakeEngine(probe_stdout="child_exit_status 127\noom_kill 0\n", probe_exit=127))
    assert report.check(NAME_PROBE).status == FAIL and "python3 not found" in report.check(NAME_PROBE).detail


def test_probe_disabled_warns_and_runs_nothing(machine):
    engine = FakeEngine()
    report = doctor(machine, engine, probe=False)
    assert report.check(NAME_PROBE).status == WARN and engine.probes == []
    assert report.exit_code == 0


def test_probe_infra_error_fails_with_its_hint(machine):
    report = doctor(machine, FakeEngine(probe_exc=InfraError("probe container could not start: boom", hint="hm")))
    probe = report.check(NAME_PROBE)
    assert (probe.status, probe.detail, probe.advice) == (FAIL, "probe container could not start: boom", "hm")


def test_probe_result_parsing():
    r = ProbeResult.from_engine({"stdout": V1_KILLED, "container_exit_code": 137, "mem_bytes": 64 * MIB}, 64 * MIB)
    assert (r.child_exit_status, r.oom_kill, r.enforced) == (137, 1, True)
    assert r.counters == {"oom_kill_disable": 0, "under_oom": 0, "oom_kill": 1}
    # no status line: the container's exit code is the child's (the script exits with it)
    r = ProbeResult.from_engine({"stdout": "oom_kill 2\n", "container_exit_code": 137}, 64 * MIB)
    assert (r.child_exit_status, r.oom_kill, r.enforced) == (137, 2, True)
    r = ProbeResult.from_engine({"stdout": "child_exit_status 137\n", "container_exit_code": 137}, 64 * MIB)
    assert r.oom_kill is None and not r.enforced
    assert evaluate_probe(r).status == WARN


# --------------------------------------------------------------------------
# host memory


def test_swap_on_warns(machine):
    (machine["proc_root"] / "meminfo").write_text(MEMINFO_SWAP)
    report = doctor(machine)
    mem = report.check(NAME_MEMORY)
    assert mem.status == WARN
    assert mem.advice == SWAP_ADVICE
    assert "swap is on: nnrun sets memory == memory+swap for its containers, but other processes may swap" in mem.advice
    assert mem.data["swap_total_bytes"] == 2097148 * 1024
    assert "2 GiB swap" in mem.detail
    assert report.ok and report.exit_code == 0


def test_meminfo_missing_warns(machine, tmp_path):
    report = doctor({**machine, "proc_root": tmp_path / "noproc"})
    assert report.check(NAME_MEMORY).status == WARN


def test_read_meminfo_units(tmp_path):
    (tmp_path / "meminfo").write_text(MEMINFO_NO_SWAP)
    values = read_meminfo(tmp_path)
    assert values["MemTotal"] == 24684084 * 1024 and values["SwapTotal"] == 0
    assert values["HugePages_Total"] == 0          # no unit: kept as is


# --------------------------------------------------------------------------
# cgroup


def test_cgroup_engine_host_mismatch_warns(machine):
    report = doctor(machine, FakeEngine(cgroup_version=2, probe_stdout=V2_KILLED))
    cg = report.check(NAME_CGROUP)
    assert cg.status == WARN and "disagree" in cg.detail and cg.advice


def test_cgroup_version_unknown_warns(machine):
    report = doctor(machine, FakeEngine(cgroup_version=None))
    assert report.check(NAME_CGROUP).status == WARN


def test_cgroup_remote_engine_skips_host(machine, tmp_path):
    report = doctor({**machine, "cgroup_root": tmp_path / "none"},
                    FakeEngine(base_url="tcp://10.0.0.5:2375"))
    cg = report.check(NAME_CGROUP)
    assert cg.status == OK and "remote engine" in cg.detail and cg.data["host_cgroup_version"] is None


def test_cgroup_root_missing_on_local_engine_warns(machine, tmp_path):
    report = doctor({**machine, "cgroup_root": tmp_path / "none"})
    assert report.check(NAME_CGROUP).status == WARN


# --------------------------------------------------------------------------
# folders


def test_folders_unset_warn(machine):
    report = doctor({**machine, "raw": None, "preprocessed": None})
    raw, pre = report.check(NAME_RAW), report.check(NAME_PREPROCESSED)
    assert (raw.status, pre.status) == (WARN, WARN)
    assert "nnUNet_raw" in raw.advice and "--raw" in raw.advice
    assert "nnUNet_preprocessed" in pre.advice and "--preprocessed" in pre.advice
    assert report.exit_code == 0


def test_folders_missing(machine, tmp_path):
    report = doctor({**machine, "raw": tmp_path / "no_raw", "preprocessed": tmp_path / "no_pre" / "sub"})
    assert report.check(NAME_RAW).status == FAIL and "does not exist" in report.check(NAME_RAW).detail
    pre = report.check(NAME_PREPROCESSED)
    assert pre.status == WARN and "nnrun will create it" in pre.detail     # its parent is writable
    assert report.exit_code == INFRA


def test_folders_not_folders(machine, tmp_path):
    (tmp_path / "a_file").write_text("x")
    report = doctor({**machine, "raw": tmp_path / "a_file", "preprocessed": tmp_path / "a_file"})
    assert report.check(NAME_RAW).status == FAIL
    assert report.check(NAME_PREPROCESSED).status == FAIL


def test_raw_and_preprocessed_same_folder_fails(machine):
    report = doctor({**machine, "preprocessed": machine["raw"]})
    assert report.check(NAME_PREPROCESSED).status == FAIL and "must differ" in report.check(NAME_PREPROCESSED).advice


def test_raw_without_datasets_warns(machine, tmp_path):
    empty = tmp_path / "empty_raw"
    empty.mkdir()
    assert doctor({**machine, "raw": empty}).check(NAME_RAW).status == WARN


def _deny(monkeypatch, denied: Path, mode_bit: int):
    real = os.access

    def access(path, mode, *a, **kw):
        if Path(path) == denied and mode & mode_bit:
            return False
        return real(path, mode, *a, **kw)
    monkeypatch.setattr(os, "access", access)


def test_preprocessed_unwritable_fails(machine, monkeypatch):
    _deny(monkeypatch, machine["preprocessed"].resolve(), os.W_OK)
    report = doctor(machine)
    pre = report.check(NAME_PREPROCESSED)
    assert pre.status == FAIL and "not writable" in pre.detail and pre.data["writable"] is False
    assert report.check(NAME_RAW).status == OK
    assert report.exit_code == INFRA


def test_raw_unreadable_fails(machine, monkeypatch):
    _deny(monkeypatch, machine["raw"].resolve(), os.R_OK)
    report = doctor(machine)
    assert report.check(NAME_RAW).status == FAIL and "not readable" in report.check(NAME_RAW).detail


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write anywhere: os.access says yes")
def test_preprocessed_unwritable_for_real(machine):
    machine["preprocessed"].chmod(0o555)
    try:
        assert doctor(machine).check(NAME_PREPROCESSED).status == FAIL
    finally:
        machine["preprocessed"].chmod(0o755)


def test_preprocessed_uncreatable_fails(machine, monkeypatch, tmp_path):
    _deny(monkeypatch, tmp_path.resolve(), os.W_OK)
    report = doctor({**machine, "preprocessed": tmp_path / "new_pre"})
    assert report.check(NAME_PREPROCESSED).status == FAIL
    assert "cannot be created" in report.check(NAME_PREPROCESSED).detail


# --------------------------------------------------------------------------
# never crash


def test_unexpected_exception_in_a_check_becomes_fail(machine):
    engine = FakeEngine(probe_exc=ZeroDivisionError("division by zero\nsecond line"))
    report = doctor(machine, engine)
    probe = report.check(NAME_PROBE)
    assert probe.status == FAIL
    assert probe.detail == "unexpected error: ZeroDivisionError: division by zero second line"
    assert "\n" not in probe.detail and probe.advice
    assert [c.name for c in report.checks] == ALL_NAMES          # the other checks still ran
    assert statuses(report)[NAME_PREPROCESSED] == OK
    assert report.exit_code == INFRA


def test_engine_returning_junk_becomes_fail(machine):
    class Junk(FakeEngine):
        def info(self):
            return None
    report = doctor(machine, Junk())
    assert report.check(NAME_DAEMON).status == FAIL
    assert report.check(NAME_DAEMON).detail.startswith("unexpected error: AttributeError")
    render_doctor(report)
    json.dumps(doctor_json(report))


def test_unreadable_meminfo_becomes_fail(machine):
    (machine["proc_root"] / "meminfo").unlink()
    (machine["proc_root"] / "meminfo").mkdir()          # read_text -> IsADirectoryError
    report = doctor(machine)
    assert report.check(NAME_MEMORY).status == FAIL
    assert "IsADirectoryError" in report.check(NAME_MEMORY).detail


# --------------------------------------------------------------------------
# renderings


def test_json_shape(machine):
    (machine["proc_root"] / "meminfo").write_text(MEMINFO_SWAP)
    report = doctor(machine, FakeEngine(image_missing=True))
    data = doctor_json(report)
    assert json.loads(json.dumps(data)) == data
    assert set(data) == {"schema_version", "nnrun_version", "ok", "exit_code", "checks"}
    assert data["schema_version"] == SCHEMA_VERSION == 1
    assert data["ok"] is False and data["exit_code"] == 6
    assert [c["name"] for c in data["checks"]] == ALL_NAMES
    for c in data["checks"]:
        assert set(c) == {"name", "status", "detail", "advice", "data"}
        assert c["status"] in (OK, WARN, FAIL)
        assert isinstance(c["detail"], str) and "\n" not in c["detail"]
        assert isinstance(c["data"], dict)
        assert (c["advice"] is None) == (c["status"] == OK)


def test_json_ok_report(machine):
    data = doctor_json(doctor(machine))
    assert data["ok"] is True and data["exit_code"] == 0
    assert all(c["advice"] is None for c in data["checks"])


def test_human_rendering_aligned(machine):
    report = doctor({**machine, "raw": None})
    text = render_doctor(report)
    lines = text.splitlines()
    check_lines = [ln for ln in lines if ln.startswith("  ") and not ln.strip().startswith("advice:")]
    assert len(check_lines) == len(ALL_NAMES)
    detail_cols = {ln.index(c.detail) for ln, c in zip(check_lines, report.checks)}
    assert len(detail_cols) == 1                         # details start in one column
    col = detail_cols.pop()
    raw_line = next(i for i, ln in enumerate(lines) if NAME_RAW in ln)
    assert lines[raw_line].split()[0] == WARN
    assert lines[raw_line + 1].index("advice:") == col    # advice indented under the detail
    assert sum("advice:" in ln for ln in lines) == 1     # only under the non-ok check
    assert lines[-1].startswith("nnrun doctor:") and "exit code 0" in lines[-1]


def test_human_rendering_failure_summary(machine):
    text = render_doctor(doctor(machine, FakeEngine(image_missing=True)))
    assert "fail  image" in text and f"advice: {IMAGE_ADVICE}" in text
    assert text.splitlines()[-1].endswith("exit code 6")


def test_report_exit_codes():
    assert DoctorReport([]).exit_code == 0
    assert DoctorReport([Check("a", WARN, "w", "x")]).exit_code == 0
    assert DoctorReport([Check("a", OK, "o"), Check("b", FAIL, "f", "x")]).exit_code == INFRA == 6
