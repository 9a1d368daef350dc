"""The in-container supervisor: PID 1 of every nnrun container.

Why it exists: when nnU-Net's main process is PID 1 and the kernel OOM-kills
it, the container stops and its memory cgroup vanishes within moments, taking
the evidence with it.  This supervisor starts nnU-Net as a child, survives the
child's death, and writes what it saw to ``status.json`` in the run folder
before it exits:

* the child's exit status (a negative return code is the killing signal),
* the phase nnU-Net was in (parsed from its own progress lines),
* the cgroup ``oom_kill`` counter at start and at the end, read from inside
  the container (v1: ``memory.oom_control``; v2: ``memory.events``),
* the peak of anonymous memory it sampled, and the worker processes it saw
  vanish while the main process was still alive (with the ``oom_kill``
  counter before and after), so that the host can tell which process the
  kernel picked.

It decides nothing: classification happens on the host, over this data.

Standard library only: the image runs it as ``python3 -m runner.incontainer.supervisor``.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from runner.cgroup import MemoryCounters, read_memory_counters
from runner.errors import CgroupReadError
from runner.incontainer.thrash import WINDOW_S, Reading, ThrashWatch
from runner.rundir import (
    AGENT_EVENTS_ENV,
    AGENT_EVENTS_FILE,
    EV_THRASHING,
    EV_WORKER_EXIT,
    EVENTS_FILE,
    HOST_ACK_FILE,
    NNUNET_LOG,
    STATUS_FILE,
    STATUS_ON_STDOUT,
    SUPERVISOR_SCHEMA,
    TEST_OOM_VICTIM_ENV,
    THRASH_WINDOW_ENV,
    SupervisorStatus,
    Thrashing,
    WorkerExitRecord,
    run_cgroup_dir,
    write_json_atomic,
)

HOST_ACK_TIMEOUT_S = 10.0

# nnU-Net raises its own processes' oom_score_adj so that the kernel picks one
# of them, never this supervisor (an unprivileged process may raise its score).
NNUNET_OOM_SCORE_ADJ = 500
POLL_INTERVAL_S = 0.05
# After an OOM kill nnU-Net notices a dead pool worker within 0.1 s, except in
# dataset verification, whose blocking Pool.starmap waits forever for the lost
# task.  If the main process is still alive this long after a kill, it hangs:
# end it so the run reports the OOM instead of hanging.
WATCHDOG_GRACE_S = {"verify": 3.0}
WATCHDOG_GRACE_DEFAULT_S = 30.0

# Progress lines of nnUNetv2_plan_and_preprocess 2.8.1 (plan_and_preprocess_api.py
# and the entry point) that mark phase transitions.
_CONFIG_LINE = re.compile(r"^Configuration: (\S+?)\.\.\.$")
_TQDM_COUNT = re.compile(r"(Extracting dataset fingerprint|Preprocessing cases):\s+\d+%\|.*?\|\s*(\d+)/(\d+)")
_EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Interrupt|Exit)|AssertionError|KeyError)(:.*)?$")


class PhaseTracker:
    """Follows nnU-Net's stdout lines and knows the phase it is in."""

    def __init__(self, verify: bool) -> None:
        self.verify = verify
        self.phase = "startup"
        self.configuration: str | None = None
        self.completed_configurations: list[str] = []
        self.completed_phases: list[str] = []
        self.progress: dict[str, tuple[int, int]] = {}
        self.last_exception_line: str | None = None

    def _enter(self, phase: str, configuration: str | None = None) -> bool:
        if (phase, configuration) == (self.phase, self.configuration):
            return False
        if self.phase == "preprocessing" and self.configuration and self.configuration != configuration:
            self.completed_configurations.append(self.configuration)
        if phase != self.phase and self.phase != "startup":
            self.completed_phases.append(self.phase)
        self.phase, self.configuration = phase, configuration
        return True

    def feed(self, line: str) -> bool:
        """Feed one output line; return True when the phase changed."""
        text = line.strip()
        if not text:
            return False
        m = _TQDM_COUNT.search(text)
        if m:
            self.progress[m.group(1)] = (int(m.group(2)), int(m.group(3)))
            return False
        if _EXCEPTION_LINE.match(text):
            self.last_exception_line = text
        if text == "Fingerprint extraction...":
            return self._enter("verify" if self.verify else "fingerprint")
        if text.startswith("verify_dataset_integrity Done"):
            return self._enter("fingerprint")
        if text == "Experiment planning...":
            return self._enter("planning")
        if text == "Preprocessing...":
            return self._enter("preprocessing")
        m = _CONFIG_LINE.match(text)
        if m:
            return self._enter("preprocessing", m.group(1))
        return False

    def finish(self) -> None:
        """The child exited 0: the phase it was in completed too."""
        self._enter("done")


def _read_text(path: str) -> str | None:
    try:
        with open(path, "rb") as fh:
            return fh.read().decode("utf-8", "replace")
    except OSError:
        return None


def _process_table() -> dict[int, tuple[int, str, str]]:
    """pid -> (ppid, state, cmdline) for every process visible in /proc."""
    table: dict[int, tuple[int, str, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _read_text(f"/proc/{entry}/stat")
        if not stat:
            continue
        # comm may contain spaces and parentheses: split after the last ')'.
        rest = stat[stat.rfind(")") + 2:].split()
        if len(rest) < 2:
            continue
        cmdline = (_read_text(f"/proc/{entry}/cmdline") or "").replace("\0", " ").strip()
        table[int(entry)] = (int(rest[1]), rest[0], cmdline)
    return table


def _descendants(table: dict[int, tuple[int, str, str]], root: int) -> set[int]:
    found, frontier = set(), [root]
    while frontier:
        parent = frontier.pop()
        for pid, (ppid, _, _) in table.items():
            if ppid == parent and pid not in found:
                found.add(pid)
                frontier.append(pid)
    return found


def _role(cmdline: str) -> str:
    if "--multiprocessing-fork" in cmdline or "spawn_main" in cmdline:
        return "worker"
    if "resource_tracker" in cmdline or "semaphore_tracker" in cmdline:
        return "helper"
    return "child"


_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss_bytes(pid: int) -> int | None:
    text = _read_text(f"/proc/{pid}/statm")
    try:
        return int(text.split()[1]) * _PAGE if text else None
    except (IndexError, ValueError):
        return None


def _shm_used_bytes() -> int:
    """How much of /dev/shm is in use (it counts against the memory cap)."""
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return 0
    return (st.f_blocks - st.f_bfree) * st.f_frsize


def _shm_size_bytes() -> int | None:
    try:
        st = os.statvfs("/dev/shm")
    except OSError:
        return None
    return st.f_blocks * st.f_frsize


def _set_oom_score_adj(pid: int, value: int) -> bool:
    try:
        with open(f"/proc/{pid}/oom_score_adj", "w") as fh:
            fh.write(str(value))
        return True
    except OSError:
        return False


class Supervisor:
    def __init__(self, run_dir: Path, command: list[str], verify: bool, test_oom_victim: str | None,
                 wait_for_host: bool = False) -> None:
        self.run_dir = run_dir
        self.wait_for_host = wait_for_host
        self.command = command
        self.tracker = PhaseTracker(verify)
        self.test_oom_victim = test_oom_victim
        self.started = time.time()
        self.child: subprocess.Popen | None = None
        self.lock = threading.Lock()
        self.events = open(run_dir / EVENTS_FILE, "a", buffering=1)
        self.cgroup_dir = None
        self.cgroup_version: int | None = None
        self.cgroup_error: str | None = None
        self.oom_kill_start: int | None = None
        self.oom_kill_last: int | None = None
        self.peak_anon = 0
        self.peak_usage = 0
        self.peak_shm = 0
        self.limit_bytes: int | None = None
        self.workers_seen: dict[int, dict] = {}
        self.worker_exits: list[WorkerExitRecord] = []
        self.terminated_by: int | None = None
        self.first_oom_at: float | None = None
        self.watchdog_fired = False
        # Thrashing at the cap ends nnU-Net after this long (0: never); see runner.incontainer.thrash.
        window = float(os.environ.get(THRASH_WINDOW_ENV) or WINDOW_S)
        self.thrash_watch = ThrashWatch(window_s=window) if window > 0 else None
        self.thrashing: Thrashing | None = None
        self.stop_polling = threading.Event()

    # -- events -------------------------------------------------------------
    def emit(self, kind: str, **fields) -> None:
        record = {"t": round(time.time(), 3), "event": kind, **fields}
        with self.lock:
            try:
                self.events.write(json.dumps(record) + "\n")
            except OSError:
                pass    # a full disk must not take the supervisor down

    # -- cgroup -------------------------------------------------------------
    def read_counters(self) -> MemoryCounters | None:
        try:
            if self.cgroup_dir is None:
                self.cgroup_dir = run_cgroup_dir()
            counters = read_memory_counters(self.cgroup_dir)
        except CgroupReadError as err:
            self.cgroup_error = str(err)
            return None
        self.cgroup_version = counters.version
        self.limit_bytes = counters.limit_bytes
        if counters.anon_bytes is not None:
            self.peak_anon = max(self.peak_anon, counters.anon_bytes)
        for value in (counters.usage_bytes, counters.peak_usage_bytes):
            if value is not None:
                self.peak_usage = max(self.peak_usage, value)
        return counters

    # -- process watching ---------------------------------------------------
    def poll_once(self) -> None:
        counters = self.read_counters()
        self.peak_shm = max(self.peak_shm, _shm_used_bytes())
        oom_before = self.oom_kill_last
        oom_now = counters.oom_kill if counters else None
        if oom_now is not None:
            if self.oom_kill_start is None:
                self.oom_kill_start = oom_now
            if oom_before is not None and oom_now > oom_before:
                self.emit("oom_kill", count=oom_now, phase=self.tracker.phase,
                          configuration=self.tracker.configuration)
                if self.first_oom_at is None:
                    self.first_oom_at = time.time()
            self.oom_kill_last = oom_now
        child = self.child
        if child is None:
            return
        table = _process_table()
        main_alive = child.pid in table and table[child.pid][1] != "Z"
        if main_alive and self.first_oom_at is not None and not self.watchdog_fired:
            grace = WATCHDOG_GRACE_S.get(self.tracker.phase, WATCHDOG_GRACE_DEFAULT_S)
            if time.time() - self.first_oom_at > grace:
                self.watchdog_fired = True
                self.emit("watchdog", message=f"nnU-Net still running {grace:.0f} s after an OOM kill "
                                              f"in {self.tracker.phase}: ending it (it would hang)")
                threading.Thread(target=self._end_child, daemon=True).start()
        if main_alive and counters is not None and self.thrash_watch is not None and self.thrashing is None:
            self.watch_thrashing(counters)
        tree = _descendants(table, child.pid)
        for pid in tree:
            ppid, state, cmdline = table[pid]
            role = _role(cmdline)
            if role != "worker":
                continue
            rss = _rss_bytes(pid)
            if pid in self.workers_seen and rss:
                self.workers_seen[pid]["rss"] = rss
            if pid not in self.workers_seen:
                self.workers_seen[pid] = {"pid": pid, "rss": rss, "phase": self.tracker.phase,
                                          "configuration": self.tracker.configuration,
                                          "first_seen": round(time.time(), 3)}
                self.emit("worker_start", pid=pid, phase=self.tracker.phase,
                          configuration=self.tracker.configuration)
                if self.test_oom_victim == "worker":
                    _set_oom_score_adj(pid, 1000)
                elif self.test_oom_victim == "main":
                    _set_oom_score_adj(pid, 0)
        gone = [pid for pid, info in self.workers_seen.items()
                if "exited" not in info and (pid not in table or table[pid][1] == "Z")]
        for pid in gone:
            info = self.workers_seen[pid]
            info["exited"] = round(time.time(), 3)
            record = WorkerExitRecord(pid=pid, t=info["exited"], main_alive=main_alive, last_rss_bytes=info.get("rss"),
                                      phase=self.tracker.phase, configuration=self.tracker.configuration,
                                      oom_kill_before=oom_before, oom_kill_after=oom_now)
            self.worker_exits.append(record)
            self.emit(EV_WORKER_EXIT, **record.to_json())

    def watch_thrashing(self, counters: MemoryCounters) -> None:
        """End nnU-Net when the cgroup thrashes at the cap: it would crawl for minutes, or forever."""
        assert self.thrash_watch is not None
        found = self.thrash_watch.observe(Reading(time.time(), counters.usage_bytes, counters.limit_bytes,
                                                  counters.refaults if counters.refaults is not None
                                                  else counters.major_faults, counters.pressure_full_us))
        if found is None:
            return
        self.thrashing = found
        self.emit(EV_THRASHING, seconds=found.seconds, reread_rate=found.reread_rate, stall_share=found.stall_share,
                  limit_bytes=found.limit_bytes, phase=self.tracker.phase, configuration=self.tracker.configuration,
                  message=f"nnU-Net thrashed at the cap for {found.seconds:.0f} s: ending it (an OOM kill "
                          f"could take minutes)")
        threading.Thread(target=self._end_child, daemon=True).start()

    def poll_loop(self) -> None:
        while not self.stop_polling.is_set():
            try:
                self.poll_once()
            except Exception as err:  # the watcher must never take the run down
                self.emit("supervisor_warning", message=f"poll failed: {err!r}")
            self.stop_polling.wait(POLL_INTERVAL_S)

    # -- output -------------------------------------------------------------
    def pump_output(self, stream, log) -> None:
        """Copy nnU-Net's combined output to the log and to our stdout, line-aware."""
        pending = b""
        out = sys.stdout.buffer
        while True:
            chunk = os.read(stream.fileno(), 65536)
            if not chunk:
                break
            try:
                log.write(chunk)
                log.flush()
            except OSError:
                pass    # e.g. the output disk is full: keep watching, nnU-Net will fail on its own
            try:
                out.write(chunk)
                out.flush()
            except OSError:
                pass
            pending += chunk
            parts = re.split(rb"[\r\n]", pending)
            pending = parts.pop()
            for raw in parts:
                self._handle_line(raw.decode("utf-8", "replace"))
        if pending:
            self._handle_line(pending.decode("utf-8", "replace"))

    def _handle_line(self, line: str) -> None:
        if self.tracker.feed(line):
            self.emit("phase", phase=self.tracker.phase, configuration=self.tracker.configuration)

    # -- signals ------------------------------------------------------------
    def forward_signal(self, signum, _frame) -> None:
        self.terminated_by = signum
        child = self.child
        if child is not None and child.poll() is None:
            try:
                os.killpg(child.pid, signum)
            except OSError:
                pass

    def _end_child(self) -> None:
        child = self.child
        for signum, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 0.0)):
            try:
                os.killpg(child.pid, signum)
            except OSError:
                return
            try:
                child.wait(timeout=wait_s or None)
                return
            except subprocess.TimeoutExpired:
                continue

    def reap_orphans(self) -> None:
        # As PID 1 we inherit orphaned workers; reap them so none stay zombies.
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return

    # -- main ---------------------------------------------------------------
    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.forward_signal)
        signal.signal(signal.SIGINT, self.forward_signal)
        counters = self.read_counters()
        self.oom_kill_start = self.oom_kill_last = counters.oom_kill if counters else None
        self.emit("supervisor_start", command=self.command, cgroup_version=self.cgroup_version,
                  limit_bytes=self.limit_bytes, oom_kill=self.oom_kill_start, cgroup_error=self.cgroup_error)

        # With the test hook, the intended victim gets the maximum score and
        # everything else 0, which makes the kernel's choice certain: a process
        # at 1000 scores its rss plus the whole cap, more than any other can.
        main_adj = {"main": 1000, "worker": 0}.get(self.test_oom_victim or "", NNUNET_OOM_SCORE_ADJ)

        def _prepare_child() -> None:
            _set_oom_score_adj(os.getpid(), main_adj)

        log = open(self.run_dir / NNUNET_LOG, "ab")
        poller = threading.Thread(target=self.poll_loop, name="poll", daemon=True)
        try:
            env = {**os.environ, AGENT_EVENTS_ENV: str(self.run_dir / AGENT_EVENTS_FILE)}
            self.child = subprocess.Popen(self.command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                          process_group=0, preexec_fn=_prepare_child, env=env)
        except OSError as err:
            self.emit("start_failed", message=str(err))
            self.write_status(returncode=None, start_error=str(err))
            return 127
        self.emit("child_start", pid=self.child.pid, oom_score_adj=main_adj)
        poller.start()
        self.pump_output(self.child.stdout, log)
        returncode = self.child.wait()
        ended = time.time()
        # One more look after the exit: a kill in the last poll interval counts.
        self.poll_once()
        self.stop_polling.set()
        poller.join(timeout=2)
        # Take down what is left of nnU-Net (orphaned workers after a main kill).
        try:
            os.killpg(self.child.pid, signal.SIGKILL)
        except OSError:
            pass
        time.sleep(0.05)
        self.reap_orphans()
        final = self.read_counters()
        if final is not None and final.oom_kill is not None:
            self.oom_kill_last = final.oom_kill
        if returncode == 0:
            self.tracker.finish()
        try:
            log.close()
        except OSError:
            pass        # a full disk: the verdict matters more than the last bytes of the log
        self.emit("child_exit", returncode=returncode, phase=self.tracker.phase,
                  configuration=self.tracker.configuration)
        self.write_status(returncode=returncode, ended=ended)
        self.await_host_ack()
        if returncode < 0:
            return 128 + (-returncode)
        return returncode

    def await_host_ack(self) -> None:
        """Keep the container (and so its cgroup) alive until the host has read the final counters.

        The host writes HOST_ACK_FILE once it has taken its last reading; if it
        never does (no nnrun on the host, or it died), go on after a timeout.
        """
        if not self.wait_for_host:
            return
        deadline = time.time() + HOST_ACK_TIMEOUT_S
        while time.time() < deadline:
            if (self.run_dir / HOST_ACK_FILE).exists():
                return
            time.sleep(0.02)
        self.emit("supervisor_warning", message="no acknowledgement from the host; exiting anyway")

    def write_status(self, returncode: int | None, ended: float | None = None, start_error: str | None = None) -> None:
        status = SupervisorStatus(
            schema=SUPERVISOR_SCHEMA,
            command=self.command,
            started=self.started,
            ended=ended or time.time(),
            main_pid=self.child.pid if self.child else None,
            returncode=returncode,
            start_error=start_error,
            terminated_by_signal=self.terminated_by,
            watchdog_fired=self.watchdog_fired,
            thrashing=self.thrashing,
            thrash_watch=self.thrash_watch.summary() if self.thrash_watch else None,
            phase=self.tracker.phase,
            configuration=self.tracker.configuration,
            completed_phases=self.tracker.completed_phases,
            completed_configurations=self.tracker.completed_configurations,
            progress={k: list(v) for k, v in self.tracker.progress.items()},
            last_exception_line=self.tracker.last_exception_line,
            cgroup_version=self.cgroup_version,
            cgroup_error=self.cgroup_error,
            limit_bytes=self.limit_bytes,
            oom_kill_start=self.oom_kill_start,
            oom_kill_end=self.oom_kill_last,
            peak_anon_bytes=self.peak_anon or None,
            peak_usage_bytes=self.peak_usage or None,
            peak_shm_bytes=self.peak_shm,
            shm_size_bytes=_shm_size_bytes(),
            workers_seen=sorted(self.workers_seen),
            worker_exits=list(self.worker_exits),
        ).to_json()
        try:
            write_json_atomic(self.run_dir / STATUS_FILE, status)
        except OSError as err:
            # No room for status.json (a full disk): say it on stdout, which the host keeps in the logs.
            print(f"{STATUS_ON_STDOUT.decode()}: {err}; status: {json.dumps(status)}", flush=True)


def _safe_run(sup: Supervisor) -> int:
    """Whatever goes wrong in the supervisor itself, pass on nnU-Net's exit status if it has one."""
    try:
        return sup.run()
    except Exception as err:  # noqa: BLE001 - the supervisor must not hide nnU-Net's outcome
        print(f"nnrun-supervisor: internal error: {type(err).__name__}: {err}", flush=True)
        child = sup.child
        if child is not None and child.returncode is not None:
            sup.write_status(returncode=child.returncode)
            return 128 - child.returncode if child.returncode < 0 else child.returncode
        return 125


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m runner.incontainer.supervisor",
                                     description="nnrun's in-container supervisor (PID 1)")
    parser.add_argument("--run-dir", required=True, type=Path)
    parser.add_argument("--verify", action="store_true",
                        help="nnU-Net was given --verify_dataset_integrity (a phase of its own)")
    parser.add_argument("--wait-for-host", action="store_true",
                        help="after nnU-Net ends, wait for the host to read the cgroup before exiting")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("no command given after --")
    args.run_dir.mkdir(parents=True, exist_ok=True)
    # Test-only hook: make the intended OOM victim the likeliest one, so that
    # the integration tests can assert the victim (the kernel's choice among
    # equal candidates is not deterministic).
    test_victim = os.environ.get(TEST_OOM_VICTIM_ENV) or None
    return _safe_run(Supervisor(args.run_dir, command, args.verify, test_victim, args.wait_for_host))


if __name__ == "__main__":
    sys.exit(main())
