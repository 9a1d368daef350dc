"""runner.engines.host (``--runtime host``): paths, the spec's rewrite, the cap from the job's cgroup, and a
real process cycle through nnrun's supervisor (no Docker, no nnU-Net).

The cgroup fixtures are trees under tmp_path with a fake ``/proc/self/cgroup``
text; the process tests use the real ``/proc/self/cgroup`` (the supervisor
only samples it, it needs no limit).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from runner.engines import host as host_engine
from runner.engines.base import ContainerSpec, Mount
from runner.engines.host import RUNNER_PARENT, HostEngine, _exit_status, map_container_path
from runner.errors import InfraError
from runner.rundir import CGROUP_DIR_ENV, STATUS_FILE

GIB = 1024 ** 3
V1_UNLIMITED = 9223372036854771712


# -- map_container_path --------------------------------------------------------------------------------

ROOT = Path("/private/root")
TARGETS = {
    "/data/raw/Dataset501_X": ROOT / "data/raw/Dataset501_X",
    "/data/preprocessed/Dataset501_X": ROOT / "data/preprocessed/Dataset501_X",
    "/nnrun/run": ROOT / "nnrun/run",
    "/tmp": ROOT / "tmp",
}


@pytest.mark.parametrize("value,expected", [
    ("/nnrun/run", "/private/root/nnrun/run"),                                        # a mount itself
    ("/nnrun/run/schedule.json", "/private/root/nnrun/run/schedule.json"),            # under a mount
    ("/data/raw/Dataset501_X/imagesTr/a.nii.gz", "/private/root/data/raw/Dataset501_X/imagesTr/a.nii.gz"),
    ("/tmp/nnUNet_results", "/private/root/tmp/nnUNet_results"),
    ("/tmp", "/private/root/tmp"),
    ("/data/raw", "/private/root/data/raw"),                      # a parent of a mount (nnUNet_raw)
    ("/data/preprocessed/", "/private/root/data/preprocessed"),
    ("/data", "/private/root/data"),
])
def test_map_container_path_maps_mounted_paths(value: str, expected: str) -> None:
    assert map_container_path(value, TARGETS, ROOT) == expected


@pytest.mark.parametrize("value", [
    "relative/path", "1", "", "-m", "runner.incontainer.agent", "--run-dir",   # not absolute: as they are
    "/usr/bin/python3", "/etc/passwd",                          # absolute but not mounted
    "/nnrun/running",                                           # a sibling sharing a prefix, not a child
    "/data/raw/Dataset501_XY", "/tmpfoo", "/data/rawer",
])
def test_map_container_path_leaves_other_values(value: str) -> None:
    assert map_container_path(value, TARGETS, ROOT) == value


def test_map_container_path_prefers_the_longest_mount() -> None:
    targets = {"/data": Path("/r/data"), "/data/raw/DS": Path("/r/data/raw/DS")}
    root = Path("/r")
    assert map_container_path("/data/raw/DS/x", targets, root) == "/r/data/raw/DS/x"
    assert map_container_path("/data/other", targets, root) == "/r/data/other"


def test_map_container_path_follows_the_root() -> None:
    targets = {"/nnrun/run": Path("/a/nnrun/run")}
    assert map_container_path("/nnrun/run/x", targets, Path("/a")) == "/a/nnrun/run/x"
    assert map_container_path("/nnrun/run/x", targets, Path("/b/c")) == "/b/c/nnrun/run/x"


# -- _exit_status -------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 2, 3, 125, 255])
def test_exit_status_keeps_exit_codes(code: int) -> None:
    assert _exit_status(code) == code


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT, signal.SIGSEGV])
def test_exit_status_signal_is_128_plus_n(sig: int) -> None:
    assert _exit_status(-int(sig)) == 128 + int(sig)


# -- cgroup fixtures --------------------------------------------------------------------------------------


def v1_tree(tmp_path: Path, own: int, hierarchical: int, rel: str = "slurm/uid_0/job_9/step_0/task_0"):
    root = tmp_path / "cg1"
    d = root / "memory" / rel
    d.mkdir(parents=True)
    (d / "memory.usage_in_bytes").write_text("4096\n")
    (d / "memory.limit_in_bytes").write_text(f"{own}\n")
    (d / "memory.stat").write_text(f"total_rss 100\ntotal_cache 200\nhierarchical_memory_limit {hierarchical}\n")
    (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"11:pids:/{rel}\n4:memory:/{rel}\n1:name=systemd:/x\n")
    return root, proc, d


def v2_tree(tmp_path: Path, limits: dict[str, str], rel: str = "system.slice/slurmstepd.scope/job_9/step_0/user/task_0"):
    root = tmp_path / "cg2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu io memory pids\n")
    parts = Path(rel).parts
    for depth in range(1, len(parts) + 1):
        sub = "/".join(parts[:depth])
        d = root / sub
        d.mkdir()
        (d / "memory.max").write_text(limits.get(sub, "max") + "\n")
        (d / "memory.current").write_text("8192\n")
        (d / "memory.events").write_text("low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n")
        (d / "memory.stat").write_text("anon 1\nfile 2\nshmem 0\n")
    proc = tmp_path / "proc_cgroup"
    proc.write_text(f"0::/{rel}\n")
    return root, proc, root / rel


def test_info_v1_reports_the_jobs_limit(tmp_path: Path) -> None:
    root, proc, leaf = v1_tree(tmp_path, own=6 * GIB, hierarchical=V1_UNLIMITED)
    engine = HostEngine(python=sys.executable, cgroup_root=root, proc_cgroup=proc)
    info = engine.info()
    assert info.name == "host"
    assert info.mem_total_bytes == 6 * GIB
    assert info.cgroup_version == 1
    assert str(leaf) in info.base_url
    assert engine.cgroup_dir("any id") == leaf


def test_info_v1_limit_only_on_a_parent(tmp_path: Path) -> None:
    root, proc, _ = v1_tree(tmp_path, own=V1_UNLIMITED, hierarchical=3 * GIB)
    assert HostEngine(cgroup_root=root, proc_cgroup=proc).info().mem_total_bytes == 3 * GIB


def test_info_v2_limit_only_on_a_parent(tmp_path: Path) -> None:
    root, proc, leaf = v2_tree(tmp_path, {"system.slice/slurmstepd.scope/job_9": str(5 * GIB)})
    engine = HostEngine(cgroup_root=root, proc_cgroup=proc)
    info = engine.info()
    assert info.mem_total_bytes == 5 * GIB
    assert info.cgroup_version == 2
    assert engine.own_cgroup_dir() == leaf


def test_info_v2_limit_on_the_leaf_below_the_jobs(tmp_path: Path) -> None:
    rel = "system.slice/slurmstepd.scope/job_9/step_0/user/task_0"
    root, proc, _ = v2_tree(tmp_path, {"system.slice/slurmstepd.scope/job_9": str(5 * GIB), rel: str(GIB)}, rel)
    assert HostEngine(cgroup_root=root, proc_cgroup=proc).info().mem_total_bytes == GIB


def _assert_one_line_infra(err: InfraError) -> str:
    text = err.one_line()
    assert "\n" not in text and "\n" not in str(err)
    assert err.outcome.value == "infra"
    return text


def test_info_v1_refuses_without_a_limit(tmp_path: Path) -> None:
    root, proc, leaf = v1_tree(tmp_path, own=V1_UNLIMITED, hierarchical=V1_UNLIMITED)
    with pytest.raises(InfraError) as info:
        HostEngine(cgroup_root=root, proc_cgroup=proc).info()
    text = _assert_one_line_infra(info.value)
    assert "no memory limit" in text and str(leaf) in text


def test_info_v2_refuses_without_a_limit(tmp_path: Path) -> None:
    root, proc, leaf = v2_tree(tmp_path, {})
    with pytest.raises(InfraError) as info:
        HostEngine(cgroup_root=root, proc_cgroup=proc).info()
    text = _assert_one_line_infra(info.value)
    assert "no memory limit" in text and str(leaf) in text


def test_info_refuses_when_the_cgroup_folder_is_missing(tmp_path: Path) -> None:
    root, proc, _ = v2_tree(tmp_path, {"system.slice": str(GIB)})
    proc.write_text("0::/system.slice/gone.scope\n")
    with pytest.raises(InfraError) as info:
        HostEngine(cgroup_root=root, proc_cgroup=proc).info()
    assert "memory cgroup" in _assert_one_line_infra(info.value)


def test_info_refuses_when_proc_cgroup_has_no_memory_line(tmp_path: Path) -> None:
    root, proc, _ = v1_tree(tmp_path, own=GIB, hierarchical=GIB)
    proc.write_text("11:pids:/x\n0::/x\n")
    with pytest.raises(InfraError) as info:
        HostEngine(cgroup_root=root, proc_cgroup=proc).info()
    _assert_one_line_infra(info.value)


def test_info_refuses_when_proc_cgroup_is_unreadable(tmp_path: Path) -> None:
    root, _, _ = v1_tree(tmp_path, own=GIB, hierarchical=GIB)
    with pytest.raises(InfraError) as info:
        HostEngine(cgroup_root=root, proc_cgroup=tmp_path / "no_such_proc_file").info()
    assert "no_such_proc_file" in _assert_one_line_infra(info.value)


# -- create(): the private root ----------------------------------------------------------------------------


@pytest.fixture
def engine_v2(tmp_path: Path):
    root, proc, _ = v2_tree(tmp_path, {"system.slice": str(GIB)})
    engine = HostEngine(python="/opt/hostpy/bin/python", cgroup_root=root, proc_cgroup=proc)
    yield engine
    for cid in list(engine._processes):
        engine.remove(cid)


@pytest.fixture
def folders(tmp_path: Path):
    raw = tmp_path / "raw" / "Dataset501_X"
    pre = tmp_path / "pre" / "Dataset501_X"
    run = pre / ".nnrun" / "runs" / "r1"
    for d in (raw / "imagesTr", run):
        d.mkdir(parents=True)
    (raw / "imagesTr" / "case000_0000.nii.gz").write_bytes(b"img")
    (pre / "keep.txt").write_text("precious")
    return raw, pre, run


def _spec(raw: Path, pre: Path, run: Path, command=None, env=None) -> ContainerSpec:
    return ContainerSpec(
        image="nnrun:test",
        command=command or ["--run-dir", "/nnrun/run", "--", "python3", "-m", "runner.incontainer.agent", "-d", "501",
                            "--out=/data/x"],
        mem_limit_bytes=GIB,
        environment=env if env is not None else {
            "nnUNet_raw": "/data/raw", "nnUNet_preprocessed": "/data/preprocessed",
            "nnUNet_results": "/tmp/nnUNet_results", "HOME": "/tmp", "PYTHONUNBUFFERED": "1",
            "NNRUN_SCHEDULE_FILE": "/nnrun/run/schedule.json", "NNRUN_SCHEDULE": "memory",
            "NNRUN_SHARD_MAP": "/data/preprocessed/Dataset501_X/.nnrun/shards.nnUNetPlans.json",
        },
        mounts=[Mount(str(raw), "/data/raw/Dataset501_X", read_only=True),
                Mount(str(pre), "/data/preprocessed/Dataset501_X"),
                Mount(str(run), "/nnrun/run")],
    )


def test_create_links_every_mount_to_its_source(engine_v2, folders) -> None:
    raw, pre, run = folders
    cid = engine_v2.create(_spec(raw, pre, run))
    proc = engine_v2._processes[cid]
    root = proc.root
    assert root.is_dir()
    for source, target in ((raw, "/data/raw/Dataset501_X"), (pre, "/data/preprocessed/Dataset501_X"),
                           (run, "/nnrun/run")):
        link = root / target.lstrip("/")
        assert link.is_symlink()
        assert Path(os.readlink(link)) == source
    # Through the links nnU-Net sees the real files.
    assert (root / "data/raw/Dataset501_X/imagesTr/case000_0000.nii.gz").read_bytes() == b"img"
    # /tmp is a private folder, and the process starts there.
    assert (root / "tmp").is_dir() and not (root / "tmp").is_symlink()
    assert proc.cwd == str(root / "tmp")


def test_create_rewrites_environment_paths(engine_v2, folders) -> None:
    raw, pre, run = folders
    cid = engine_v2.create(_spec(raw, pre, run))
    proc = engine_v2._processes[cid]
    env, root = proc.env, proc.root
    # Container paths now point into the private root, and resolve to the real folders.
    assert Path(env["nnUNet_raw"]) == root / "data/raw"
    assert (Path(env["nnUNet_raw"]) / "Dataset501_X").resolve() == raw.resolve()
    assert (Path(env["nnUNet_preprocessed"]) / "Dataset501_X").resolve() == pre.resolve()
    assert Path(env["NNRUN_SCHEDULE_FILE"]).parent.resolve() == run.resolve()
    assert Path(env["NNRUN_SHARD_MAP"]).parent.parent.resolve() == pre.resolve()
    assert env["HOME"] == str(root / "tmp") and env["nnUNet_results"] == str(root / "tmp/nnUNet_results")
    # Values that are not paths are kept.
    assert env["PYTHONUNBUFFERED"] == "1" and env["NNRUN_SCHEDULE"] == "memory"
    # runner/ importable, and the supervisor reads the job's cgroup.
    assert env["PYTHONPATH"].split(os.pathsep)[0] == RUNNER_PARENT
    assert (Path(RUNNER_PARENT) / "runner" / "incontainer" / "supervisor.py").is_file()
    assert env[CGROUP_DIR_ENV] == str(engine_v2.own_cgroup_dir())


def test_create_rewrites_the_command(engine_v2, folders) -> None:
    raw, pre, run = folders
    cid = engine_v2.create(_spec(raw, pre, run))
    proc = engine_v2._processes[cid]
    argv, root = proc.argv, proc.root
    assert argv[:3] == ["/opt/hostpy/bin/python", "-m", "runner.incontainer.supervisor"]
    rest = argv[3:]
    assert rest[:2] == ["--run-dir", str(root / "nnrun/run")]
    assert Path(rest[1]).resolve() == run.resolve()
    # python3 of the image is the host Python; other arguments are left as they are.
    assert rest[2:] == ["--", "/opt/hostpy/bin/python", "-m", "runner.incontainer.agent", "-d", "501", "--out=/data/x"]


def test_create_passes_only_known_variables_of_the_caller(engine_v2, folders, monkeypatch) -> None:
    monkeypatch.setenv("SLURM_JOB_ID", "4242")
    monkeypatch.setenv("NNRUN_UNRELATED_SECRET", "do-not-pass")
    monkeypatch.setenv("PYTHONPATH", "/some/where")
    raw, pre, run = folders
    env = engine_v2._processes[engine_v2.create(_spec(raw, pre, run))].env
    assert env["SLURM_JOB_ID"] == "4242"
    assert env["PATH"] == os.environ["PATH"]
    assert "NNRUN_UNRELATED_SECRET" not in env
    assert env["PYTHONPATH"].split(os.pathsep) == [RUNNER_PARENT, "/some/where"]


def test_create_makes_relative_mount_sources_absolute(engine_v2, folders, tmp_path, monkeypatch) -> None:
    raw, pre, run = folders
    monkeypatch.chdir(tmp_path)
    spec = ContainerSpec(image="x", command=["--run-dir", "/nnrun/run", "--", "true"], mem_limit_bytes=GIB,
                         mounts=[Mount(os.path.relpath(run, tmp_path), "/nnrun/run")])
    proc = engine_v2._processes[engine_v2.create(spec)]
    link = proc.root / "nnrun/run"
    assert os.path.isabs(os.readlink(link))
    monkeypatch.chdir("/")
    assert link.resolve() == run.resolve()          # still right from another working directory


def test_create_gives_each_container_its_own_root(engine_v2, folders) -> None:
    raw, pre, run = folders
    a, b = engine_v2.create(_spec(raw, pre, run)), engine_v2.create(_spec(raw, pre, run))
    assert a != b and len(a) == 64
    assert engine_v2._processes[a].root != engine_v2._processes[b].root


def test_unknown_container_and_unstarted_process(engine_v2, folders) -> None:
    with pytest.raises(InfraError):
        engine_v2.state("f" * 64)
    raw, pre, run = folders
    cid = engine_v2.create(_spec(raw, pre, run))
    state = engine_v2.state(cid)
    assert not state.running and state.exit_code is None and state.pid is None
    with pytest.raises(InfraError, match="never started"):
        engine_v2.wait(cid, 1)
    assert list(engine_v2.logs(cid)) == []
    engine_v2.stop(cid)                             # nothing to stop: no error
    engine_v2.remove("0" * 64)                      # unknown: no error


def test_remove_deletes_the_root_but_not_the_data(engine_v2, folders) -> None:
    raw, pre, run = folders
    cid = engine_v2.create(_spec(raw, pre, run))
    root = engine_v2._processes[cid].root
    engine_v2.remove(cid)
    assert not root.exists()
    assert (pre / "keep.txt").read_text() == "precious"
    assert (raw / "imagesTr" / "case000_0000.nii.gz").read_bytes() == b"img"
    assert run.is_dir()
    with pytest.raises(InfraError):
        engine_v2.state(cid)


def test_engine_protocol_extras(engine_v2) -> None:
    assert engine_v2.oom_event_count("x", 0.0, time.time()) == 0
    assert engine_v2.list_containers("io.nnrun.run-id") == []


def test_default_python_from_the_environment(monkeypatch) -> None:
    monkeypatch.setenv(host_engine.HOST_PYTHON_ENV, "/env/python")
    assert HostEngine().python == "/env/python"
    assert HostEngine(python="/given/python").python == "/given/python"
    monkeypatch.delenv(host_engine.HOST_PYTHON_ENV)
    assert HostEngine().python == sys.executable


# -- a real process cycle through the supervisor ----------------------------------------------------------


@pytest.fixture
def real_engine():
    engine = HostEngine(python=sys.executable)          # the real /proc/self/cgroup
    yield engine
    for cid in list(engine._processes):
        engine.remove(cid)


def _payload_spec(run: Path, code: str, extra_mounts=()) -> ContainerSpec:
    return ContainerSpec(image="host", command=["--run-dir", "/nnrun/run", "--", "python3", "-c", code],
                         mem_limit_bytes=GIB, environment={"PYTHONUNBUFFERED": "1", "HOME": "/tmp"},
                         mounts=[Mount(str(run), "/nnrun/run"), *extra_mounts])


def test_cycle_runs_the_payload_under_the_supervisor(real_engine, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    data = tmp_path / "data"
    data.mkdir()
    (data / "input.txt").write_text("from the host")
    code = ("import os; print('hi'); print('cwd', os.getcwd()); "
            "print('read', open('/data/in/input.txt'.replace('/data/in', os.environ['IN'])).read())")
    spec = ContainerSpec(image="host", command=["--run-dir", "/nnrun/run", "--", "python3", "-c", code],
                         mem_limit_bytes=GIB, environment={"IN": "/data/in", "PYTHONUNBUFFERED": "1"},
                         mounts=[Mount(str(run), "/nnrun/run"), Mount(str(data), "/data/in")])
    cid = real_engine.create(spec)
    root = real_engine._processes[cid].root
    real_engine.start(cid)
    out = b"".join(real_engine.logs(cid)).decode()
    assert real_engine.wait(cid, timeout_s=60) == 0
    assert "hi" in out.splitlines()
    assert f"cwd {root / 'tmp'}" in out
    assert "read from the host" in out
    state = real_engine.state(cid)
    assert not state.running and state.exit_code == 0 and state.status == "exited"
    # The supervisor wrote its status file into the real run folder (through the link).
    status = json.loads((run / STATUS_FILE).read_text())
    assert status["returncode"] == 0
    assert status["command"][0] == sys.executable          # python3 -> the host Python
    real_engine.remove(cid)
    assert not root.exists()
    assert (data / "input.txt").read_text() == "from the host"
    assert (run / STATUS_FILE).is_file()


def test_cycle_reports_the_payloads_exit_code(real_engine, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    cid = real_engine.create(_payload_spec(run, "import sys; print('failing'); sys.exit(7)"))
    real_engine.start(cid)
    out = b"".join(real_engine.logs(cid))
    assert real_engine.wait(cid, timeout_s=60) == 7
    assert b"failing" in out
    assert real_engine.state(cid).exit_code == 7
    assert json.loads((run / STATUS_FILE).read_text())["returncode"] == 7


def _wait_running(engine: HostEngine, cid: str, run: Path, marker: str = "ready") -> None:
    deadline = time.time() + 30
    while time.time() < deadline:
        if (run / marker).exists():
            return
        assert engine.state(cid).running, "the payload ended early"
        time.sleep(0.05)
    pytest.fail("the payload never started")


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group, from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()       # after "pid (comm) "
        state, pgrp = fields[0], int(fields[2])
        if pgrp == pgid and state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def _assert_group_ends(pgid: int, within_s: float = 10.0) -> None:
    deadline = time.time() + within_s
    while _group_members(pgid):
        if time.time() > deadline:
            pytest.fail(f"process group {pgid} still has live processes {_group_members(pgid)}")
        time.sleep(0.05)


def test_wait_times_out_on_a_running_payload(real_engine, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    cid = real_engine.create(_payload_spec(run, "import time; time.sleep(60)"))
    real_engine.start(cid)
    with pytest.raises(TimeoutError):
        real_engine.wait(cid, timeout_s=0.5)
    assert real_engine.state(cid).running


def test_stop_ends_a_sleeping_payload(real_engine, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    code = "import time; open('/nnrun/run/ready', 'w').close(); time.sleep(120)"
    cid = real_engine.create(_payload_spec(run, code.replace("/nnrun/run", str(run))))
    real_engine.start(cid)
    _wait_running(real_engine, cid, run)
    pid = real_engine.state(cid).pid
    started = time.time()
    real_engine.stop(cid, timeout_s=10)
    code = real_engine.wait(cid, timeout_s=30)
    assert time.time() - started < 10                    # SIGTERM did it, not the SIGKILL timer
    assert code != 0
    assert not real_engine.state(cid).running
    status = json.loads((run / STATUS_FILE).read_text())
    assert status["terminated_by_signal"] == signal.SIGTERM
    _assert_group_ends(pid, within_s=2)                  # the whole group is gone, payload included


def test_stop_kills_a_payload_that_ignores_sigterm(real_engine, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    code = (f"import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            f"open({str(run / 'ready')!r}, 'w').close(); time.sleep(120)")
    cid = real_engine.create(_payload_spec(run, code))
    real_engine.start(cid)
    _wait_running(real_engine, cid, run)
    pid = real_engine.state(cid).pid
    real_engine.stop(cid, timeout_s=1)
    assert _group_members(pid)                          # it ignored SIGTERM (so far)...
    real_engine.wait(cid, timeout_s=30)
    _assert_group_ends(pid, within_s=10)                # ...until the SIGKILL to the group after 1 s


def test_remove_kills_a_running_payload(real_engine, tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    code = f"import time; open({str(run / 'ready')!r}, 'w').close(); time.sleep(120)"
    cid = real_engine.create(_payload_spec(run, code))
    root = real_engine._processes[cid].root
    real_engine.start(cid)
    _wait_running(real_engine, cid, run)
    pid = real_engine.state(cid).pid
    assert _group_members(pid)
    real_engine.remove(cid)
    _assert_group_ends(pid, within_s=5)
    assert not root.exists() and run.is_dir()


def test_start_with_a_missing_python_is_infra(tmp_path: Path) -> None:
    engine = HostEngine(python=str(tmp_path / "no" / "python"))
    run = tmp_path / "run"
    run.mkdir()
    cid = engine.create(_payload_spec(run, "print(1)"))
    try:
        with pytest.raises(InfraError, match="cannot start"):
            engine.start(cid)
    finally:
        engine.remove(cid)


def test_run_throwaway_maps_tmp_and_cleans_up(tmp_path: Path) -> None:
    engine = HostEngine(python=sys.executable)
    code = "import os, sys; open('/tmp/probe.txt', 'w').write('x'); print(os.getcwd()); sys.exit(3)"
    result = engine.run_throwaway("img", ["python3", "-c"], [code], mem_bytes=GIB, timeout_s=60,
                                  run_id_prefix="probe")
    assert result["container_exit_code"] == 3 and not result["timed_out"]
    cwd = result["stdout"].strip()
    assert cwd != "/tmp" and "nnrun-probe-" in cwd
    assert not Path(cwd).exists()                       # the private /tmp is gone afterwards
    assert result["run_id"].startswith("probe-") and result["mem_bytes"] == GIB


def test_run_throwaway_times_out(tmp_path: Path) -> None:
    engine = HostEngine(python=sys.executable)
    result = engine.run_throwaway("img", ["python3", "-c"], ["import time; time.sleep(30)"], mem_bytes=GIB,
                                  timeout_s=0.5, run_id_prefix="probe")
    assert result["timed_out"] and result["container_exit_code"] is None


def test_image_refuses_a_python_without_nnunetv2(tmp_path: Path) -> None:
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'ModuleNotFoundError: No module named nnunetv2' >&2\nexit 1\n")
    fake.chmod(0o755)
    with pytest.raises(InfraError, match="cannot import nnunetv2") as info:
        HostEngine(python=str(fake)).image("host")
    assert "\n" not in info.value.one_line()
    with pytest.raises(InfraError, match="does not exist"):
        HostEngine(python=str(tmp_path / "missing")).image("host")
