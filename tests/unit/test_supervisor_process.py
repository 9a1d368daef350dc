"""The supervisor as a real process on the host (it needs only the standard library).

A stand-in for nnU-Net prints nnU-Net's phase lines and starts spawn workers;
the supervisor must record the phase, the exit status, worker deaths, and
survive a SIGKILL of its child.  No Docker: the cgroup it reads is the host's
own memory cgroup, which is enough to check the plumbing (OOM kills themselves
are exercised in tests/integration).
"""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

FAKE_NNUNET = textwrap.dedent("""
    import multiprocessing, os, signal, sys, time

    def work(x):
        time.sleep(30)

    if __name__ == "__main__":
        print("Fingerprint extraction...", flush=True)
        print("Experiment planning...", flush=True)
        print("Preprocessing...", flush=True)
        print("Configuration: 3d_fullres...", flush=True)
        mode = sys.argv[1]
        if mode == "error":
            raise ValueError("operands could not be broadcast together with shapes (1,20) (1,24)")
        if mode == "selfkill":
            os.kill(os.getpid(), signal.SIGKILL)
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            pool.map_async(work, range(2))
            time.sleep(2.5)                     # workers are up and seen
            victim = pool._pool[0].pid
            os.kill(victim, signal.SIGKILL)     # what the OOM killer does to a worker
            time.sleep(0.5)
            raise RuntimeError("Some background worker is 6 feet under. Yuck.")
""")


def run_supervisor(tmp_path: Path, mode: str, timeout: float = 60) -> tuple[int, dict, list[dict]]:
    script = tmp_path / "fake_nnunet.py"
    script.write_text(FAKE_NNUNET)
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "runner.incontainer.supervisor", "--run-dir", str(run_dir), "--",
                           sys.executable, str(script), mode],
                          capture_output=True, text=True, timeout=timeout)
    status = json.loads((run_dir / "status.json").read_text())
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    assert "Configuration: 3d_fullres..." in (run_dir / "nnunet.log").read_text()
    return proc.returncode, status, events


def test_error_exit_status_phase_and_exception_line(tmp_path):
    code, status, events = run_supervisor(tmp_path, "error")
    assert code == 1 and status["returncode"] == 1
    assert status["phase"] == "preprocessing" and status["configuration"] == "3d_fullres"
    assert status["completed_phases"] == ["fingerprint", "planning"]
    assert status["last_exception_line"].startswith("ValueError: operands could not be broadcast")
    assert [e["phase"] for e in events if e["event"] == "phase"] == ["fingerprint", "planning", "preprocessing",
                                                                     "preprocessing"]


def test_survives_sigkill_of_its_child_and_reports_it(tmp_path):
    code, status, _ = run_supervisor(tmp_path, "selfkill")
    assert status["returncode"] == -9
    assert code == 137                     # passed on like a shell would
    assert status["phase"] == "preprocessing"


def test_sees_a_worker_die_while_the_main_process_lives(tmp_path):
    started = time.time()
    code, status, events = run_supervisor(tmp_path, "workerkill")
    assert code == 1
    assert len(status["workers_seen"]) >= 2
    alive_exits = [w for w in status["worker_exits"] if w["main_alive"]]
    assert alive_exits, status["worker_exits"]
    assert alive_exits[0]["phase"] == "preprocessing" and alive_exits[0]["configuration"] == "3d_fullres"
    assert alive_exits[0]["pid"] in status["workers_seen"]
    assert status["last_exception_line"].startswith("RuntimeError: Some background worker is 6 feet under")
    assert time.time() - started < 30
    # The host's cgroup is readable here: the supervisor read the counter at both ends.
    if Path("/sys/fs/cgroup/memory/memory.oom_control").exists():
        assert status["cgroup_version"] == 1 and status["oom_kill_start"] is not None


def test_waits_for_the_host_acknowledgement_then_gives_up(tmp_path, monkeypatch):
    from runner.incontainer import supervisor
    monkeypatch.setattr(supervisor, "HOST_ACK_TIMEOUT_S", 0.3)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    sup = supervisor.Supervisor(run_dir, [sys.executable, "-c", "print('hi')"], verify=False,
                                test_oom_victim=None, wait_for_host=True)
    t0 = time.time()
    assert sup.run() == 0
    assert 0.3 <= time.time() - t0 < 10
    assert "no acknowledgement" in (run_dir / "events.jsonl").read_text()


@pytest.mark.parametrize("argv", [[], ["--run-dir"]])
def test_bad_supervisor_arguments_exit_2(argv, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "runner.incontainer.supervisor", *argv], capture_output=True, text=True)
    assert proc.returncode == 2
