"""Host-side sampler of a container's memory cgroup.

Reads the container's cgroup files (under a root path it is given, so tests
can point it at a fixture tree) about ten times a second while the container
runs, and keeps what the diagnosis needs: the peak of anonymous memory (page
cache is reported apart: the cgroup's total usage reaches the cap even in good
runs), the ``oom_kill`` counter, and the cap.

When the host cannot read the cgroup (a remote or rootless daemon) the
summary says so, and the in-container supervisor's readings stand alone.
"""
from __future__ import annotations

import json
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from runner.cgroup import find_container_cgroup, list_cgroup_pids, read_memory_counters
from runner.errors import CgroupReadError

DEFAULT_CGROUP_ROOT = Path("/sys/fs/cgroup")
_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _ns_pid(status_path: Path) -> int | None:
    """The process's pid in its innermost pid namespace (the container's), from NSpid."""
    for line in status_path.read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    return None


@dataclass(frozen=True, kw_only=True)
class MonitorSummary:
    readable: bool
    cgroup_dir: str | None
    cgroup_version: int | None
    samples: int
    limit_bytes: int | None
    peak_anon_bytes: int | None
    peak_usage_bytes: int | None
    oom_kill_first: int | None
    oom_kill_last: int | None
    error: str | None
    final_reading: bool = False
    cpu_s: float = 0.0              # CPU time the sampler thread used
    wall_s: float = 0.0             # how long it ran


class CgroupMonitor:
    def __init__(self, container_id: str, cgroup_root: Path = DEFAULT_CGROUP_ROOT,
                 interval_s: float = 0.1, locate_timeout_s: float = 5.0, timeline_path: Path | None = None,
                 proc_root: Path = Path("/proc"), on_sample: Callable[[dict], None] | None = None,
                 cgroup_dir: Path | None = None) -> None:
        self.container_id = container_id
        self.cgroup_root = Path(cgroup_root)
        self.interval_s = interval_s
        self.locate_timeout_s = locate_timeout_s
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.final_reading = False
        self.timeline_path = timeline_path
        self.proc_root = Path(proc_root)
        self.on_sample = on_sample
        self._timeline = None
        self._ns_pids: dict[int, int | None] = {}
        self.cpu_s = 0.0
        self.wall_s = 0.0
        self._thread: threading.Thread | None = None
        self.cgroup_dir: Path | None = cgroup_dir      # None: found from the container id
        self.version: int | None = None
        self.samples = 0
        self.limit: int | None = None
        self.peak_anon: int | None = None
        self.peak_usage: int | None = None
        self.oom_first: int | None = None
        self.oom_last: int | None = None
        self.error: str | None = None

    def sample(self) -> bool:
        """Take one reading; False when the cgroup cannot be read (yet, or any more)."""
        with self._lock:
            return self._sample()

    def final_sample(self) -> bool:
        """The reading taken after nnU-Net ended, while the supervisor keeps the cgroup alive."""
        ok = self.sample()
        self.final_reading = self.final_reading or ok
        return ok

    def _sample(self) -> bool:
        if self.cgroup_dir is None:
            self.cgroup_dir = find_container_cgroup(self.cgroup_root, self.container_id)
            if self.cgroup_dir is None:
                return False
        try:
            c = read_memory_counters(self.cgroup_dir)
        except CgroupReadError as err:
            self.error = str(err)
            return False
        self.samples += 1
        self._record(c)
        self.version = c.version
        self.limit = c.limit_bytes
        if c.anon_bytes is not None:
            self.peak_anon = max(self.peak_anon or 0, c.anon_bytes)
        for value in (c.usage_bytes, c.peak_usage_bytes):
            if value is not None:
                self.peak_usage = max(self.peak_usage or 0, value)
        if c.oom_kill is not None:
            if self.oom_first is None:
                self.oom_first = c.oom_kill
            self.oom_last = max(self.oom_last or 0, c.oom_kill)
        return True

    def _record(self, c) -> None:
        """Append the reading to timeline.jsonl, with each process's RSS, and pass it on."""
        if self.timeline_path is None and self.on_sample is None:
            return
        sample = {"t": round(time.time(), 3), "anon": c.anon_bytes, "file": c.file_bytes, "usage": c.usage_bytes,
                  "oom_kill": c.oom_kill, "limit": c.limit_bytes}
        if self.timeline_path is not None:
            sample["procs"] = self._process_rss()
            try:
                if self._timeline is None:
                    self._timeline = open(self.timeline_path, "a", buffering=1)
                self._timeline.write(json.dumps(sample) + "\n")
            except OSError:
                # A full disk: stop recording the timeline, keep sampling for the verdict.
                self.timeline_path = None
                self._close_timeline()
        if self.on_sample is not None:
            self.on_sample(sample)

    def _close_timeline(self) -> None:
        if self._timeline is not None:
            try:
                self._timeline.close()
            except OSError:
                pass
            self._timeline = None

    def _process_rss(self) -> dict:
        """host pid -> {rss, ns_pid} for the processes in the container's cgroup.

        RSS comes from the short /proc/PID/statm; the pid inside the container
        (NSpid) is read from /proc/PID/status once per process and cached, to
        keep the sampler's cost well under 1 % of a core at 10 Hz.
        """
        procs = {}
        try:
            pids = list_cgroup_pids(self.cgroup_dir)
        except CgroupReadError:
            return procs
        for pid in pids:
            try:
                rss = int((self.proc_root / str(pid) / "statm").read_text().split()[1]) * _PAGE_SIZE
                if pid not in self._ns_pids:
                    self._ns_pids[pid] = _ns_pid(self.proc_root / str(pid) / "status")
            except (OSError, ValueError, IndexError):
                continue            # it just exited
            procs[str(pid)] = {"rss": rss, "ns_pid": self._ns_pids[pid]}
        return procs

    def _loop(self) -> None:
        started = time.monotonic()
        cpu0 = time.thread_time()
        try:
            self._run_loop(started)
        finally:
            self.cpu_s = time.thread_time() - cpu0
            self.wall_s = time.monotonic() - started

    def _run_loop(self, started: float) -> None:
        while not self._stop.is_set():
            ok = self.sample()
            if not ok and self.samples == 0 and time.monotonic() - started > self.locate_timeout_s:
                self.error = self.error or f"no memory cgroup for container {self.container_id[:12]} under {self.cgroup_root}"
                return
            self._stop.wait(self.interval_s)

    def start(self) -> CgroupMonitor:
        self._thread = threading.Thread(target=self._loop, name="cgroup-monitor", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> MonitorSummary:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        self.sample()  # one last reading if the cgroup is still there
        self._close_timeline()
        return MonitorSummary(
            readable=self.samples > 0,
            cgroup_dir=str(self.cgroup_dir) if self.cgroup_dir else None,
            cgroup_version=self.version,
            samples=self.samples,
            limit_bytes=self.limit,
            peak_anon_bytes=self.peak_anon,
            peak_usage_bytes=self.peak_usage,
            oom_kill_first=self.oom_first,
            oom_kill_last=self.oom_last,
            error=None if self.samples else self.error,
            final_reading=self.final_reading,
            cpu_s=round(self.cpu_s, 4),
            wall_s=round(self.wall_s, 3),
        )
