"""Event lines from nnU-Net's processes to the run folder, and what every process of the pool shares
(standard library only).

Used by :mod:`runner.incontainer.agent`, :mod:`runner.incontainer.preprocess` and
:mod:`runner.incontainer.schedule` in the main process and in every spawned worker.
"""
from __future__ import annotations

import json
import os
import signal
import time

from runner.rundir import (
    AGENT_EVENTS_ENV,
    CONFIGURATION_ENV,
    FAULTS_DIR,
    PHASE_ENV,
    TEST_KILL_AT_ENV,
    TEST_SHM_FILL_ENV,
    TEST_THRASH_ENV,
    run_cgroup_dir,
)

# nnU-Net's own words when a pool worker is gone (its DefaultPreprocessor raises this RuntimeError):
# the pools nnrun runs raise the same RuntimeError, so that nnU-Net's callers behave as they do natively.
DEAD_WORKER_MESSAGE = ('Some background worker is 6 feet under. Yuck. \n'
                       'OK jokes aside.\n'
                       'One of your background processes is missing. This could be because of '
                       'an error (look for an error message) or because it was killed '
                       'by your OS due to running out of RAM. If you don\'t see '
                       'an error message, out of RAM is likely the problem. In that case '
                       'reducing the number of workers might help')

_fd: int | None = None


def emit(kind: str, **fields) -> None:
    """Append one event line.  O_APPEND keeps lines from different workers whole."""
    global _fd
    path = os.environ.get(AGENT_EVENTS_ENV)
    if not path:
        return
    try:
        if _fd is None:
            _fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        record = {"t": round(time.time(), 3), "event": kind, "pid": os.getpid(), **fields}
        os.write(_fd, (json.dumps(record) + "\n").encode())
    except OSError:
        pass  # telemetry must never break the run


def reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")          # "5": reset the peak RSS (VmHWM) to the current RSS
    except OSError:
        pass


def peak_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def current_phase() -> tuple[str | None, str | None]:
    """(phase, configuration) of this process, as the agent set them in its environment."""
    return os.environ.get(PHASE_ENV) or None, os.environ.get(CONFIGURATION_ENV) or None


def kill_hook(point: str) -> None:
    """Test-only: SIGKILL nnU-Net (its whole process group) at a chosen point, once."""
    if os.environ.get(TEST_KILL_AT_ENV) == point:
        emit("test_kill", point=point)
        os.killpg(0, signal.SIGKILL)


_fault_file = None


def enable_faulthandler() -> None:
    """Dump this process's Python stack to ``faults/<pid>.log`` in the run folder on SIGSEGV, SIGBUS,
    SIGABRT, SIGFPE or SIGILL: the host then names the signal and the frame that crashed (a native
    crash in blosc2, numpy or SimpleITK shows the Python call that entered the library)."""
    global _fault_file
    import faulthandler
    events = os.environ.get(AGENT_EVENTS_ENV)
    if not events or _fault_file is not None:
        return
    folder = os.path.join(os.path.dirname(events), FAULTS_DIR)
    try:
        os.makedirs(folder, exist_ok=True)
        _fault_file = open(os.path.join(folder, f"{os.getpid()}.log"), "w")   # kept open: the handler writes to its fd
        faulthandler.enable(file=_fault_file, all_threads=False)
    except OSError:
        _fault_file = None          # no dump, no harm: the run goes on


def shm_fill_hook() -> None:
    """Test-only: map and touch NNRUN_TEST_SHM_FILL bytes of /dev/shm, as shared-memory tensors do.

    Past the size of /dev/shm the kernel cannot back a page and the process dies of SIGBUS, the real
    failure of a too small ``--shm-size``.  The file stays, as a crashed process's segment does.
    """
    size = os.environ.get(TEST_SHM_FILL_ENV)
    if not size:
        return
    import mmap
    path = f"/dev/shm/nnrun-test-fill-{os.getpid()}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        os.ftruncate(fd, int(size))
        area = mmap.mmap(fd, int(size))
        for offset in range(0, int(size), mmap.PAGESIZE):
            area[offset] = 1
    finally:
        os.close(fd)


def thrash_hook() -> None:
    """Test-only: make the cgroup thrash, as a cap just above a run's working set does.

    Write a 128 MiB file of this cgroup's own into the run folder and drop it from the page cache, fill
    anonymous memory up to NNRUN_TEST_THRASH bytes below the cap, then read the file page by page, over
    and over: a page cache that small cannot hold it (nor the code nnU-Net runs), so the kernel evicts and
    re-reads pages without end.  (A shared library would not do: pages already cached for another cgroup
    are read without a fault.)  The room must stay large enough for reclaim always to find clean pages:
    with 16 MiB of room and a 64 MiB file, the kernel OOM-killed the worker after 9 s of thrashing in
    1 run of 4; with the cache squeezed only until the file stopped fitting, it fitted again (~75 MiB)
    and the run sat at the cap without thrashing.  The test gives 64 MiB, half the file.  The process
    never returns from here.
    """
    room = os.environ.get(TEST_THRASH_ENV)
    events = os.environ.get(AGENT_EVENTS_ENV)
    if not room or not events:
        return
    import mmap

    from runner.cgroup import read_memory_counters
    emit("test_thrash", room_bytes=int(room))
    path = os.path.join(os.path.dirname(events), f"thrash-test-{os.getpid()}.bin")
    size, chunk = 128 << 20, 4 << 20
    with open(path, "wb") as fh:
        for _ in range(size // (1 << 20)):
            fh.write(os.urandom(1 << 20))
        fh.flush()
        os.fsync(fh.fileno())
        os.posix_fadvise(fh.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)     # every later read is this cgroup's
    cgroup = run_cgroup_dir()
    held = []
    while True:
        c = read_memory_counters(cgroup)
        if c.limit_bytes is None or (c.anon_bytes or 0) + chunk >= c.limit_bytes - int(room):
            break
        held.append(b"\x01" * chunk)            # written: really resident, not lazily zero pages
    with open(path, "rb") as fh:
        area = mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ)
        while True:
            for offset in range(0, len(area), mmap.PAGESIZE):
                area[offset]
