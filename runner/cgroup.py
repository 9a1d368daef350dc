"""Read a memory cgroup's counters, for cgroup v1 and v2.

Pure readers over a folder path, standard library only: the host-side monitor
reads a container's cgroup from outside, the in-container supervisor reads its
own.  Every failure -- a folder that vanished because the container just died,
a garbled file -- is raised as :class:`CgroupReadError` and nothing else, so
callers handle one exception type.

Why these counters (see shared/notes/oom-on-this-machine.md):

* usage and peak usage count page cache, so they reach the cap even in good
  runs; the anonymous memory (v1 ``rss``, v2 ``anon``) is read apart because
  that is what the OOM killer cannot reclaim.
* the number of processes OOM-killed is the only reliable sign of an OOM kill:
  v1 ``memory.oom_control`` ``oom_kill`` (kernel >= 4.13), v2
  ``memory.events`` ``oom_kill``.  Docker's ``oom`` event on v1 only says the
  cgroup hit its limit, and Podman's OOMKilled flag misses child kills.
"""
from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

from runner.errors import CgroupReadError

DEFAULT_ROOT = Path("/sys/fs/cgroup")

# cgroup v1 has no "max": an unlimited limit reads as PAGE_COUNTER_MAX pages in
# bytes, 9223372036854771712 on x86-64 with 4 KiB pages.  Anything this large
# is not a real limit on any machine.
V1_UNLIMITED_FROM = 2 ** 60

# Strict ASCII on purpose: int() would accept " 5", "+5", "5_0" and non-ASCII
# digits, none of which the kernel writes.
_KEY_VALUE_RE = re.compile(r"([A-Za-z_][A-Za-z0-9_]*)[ \t]+([0-9]+)[ \t]*")
_INTEGER_RE = re.compile(r"[0-9]+")
_FULL_CONTAINER_ID_RE = re.compile(r"[0-9a-f]{64}")

_MAX_SHOWN = 60


@dataclass(frozen=True)
class MemoryCounters:
    """One reading of a memory cgroup.  ``None`` means "not available here"
    (file or key absent on this kernel/version), never "zero"."""

    version: int
    usage_bytes: int | None
    # v1 memory.max_usage_in_bytes; v2 memory.peak (kernel >= 5.19).
    peak_usage_bytes: int | None
    # None = unlimited (v2 "max", v1 >= 2**60).
    limit_bytes: int | None
    # Anonymous memory: what a capped run really needs (usage includes cache).
    anon_bytes: int | None
    file_bytes: int | None
    shmem_bytes: int | None
    # v2 memory.events "oom": times the cgroup hit the limit with allocation
    # about to fail.  v1 has no such counter.
    oom_events: int | None
    # Processes killed by the OOM killer: v1 oom_control, v2 memory.events.
    oom_kill: int | None
    # v1 oom_control "under_oom"; v2 has no equivalent.
    under_oom: bool | None
    # Major page faults so far (memory.stat pgmajfault): a page read in from disk.  Defaults keep older
    # callers and fixtures working.
    major_faults: int | None = None
    # Refaults so far (memory.stat workingset_refault_file + _anon, or workingset_refault before 5.9): a
    # page read back soon after it was evicted.  A steady stream of them under a cap with no swap means
    # the cgroup is thrashing (runner.incontainer.thrash).
    refaults: int | None = None
    # v2 memory.pressure "full total": microseconds in which every task of the cgroup stalled on memory
    # (None: v1, or a kernel without PSI).
    pressure_full_us: int | None = None

    def to_dict(self) -> dict[str, int | bool | None]:
        return asdict(self)


# --------------------------------------------------------------------------
# Parsers over text


def _shown(text: str) -> str:
    """A short, printable, one-line rendering of junk for an error message."""
    rendered = repr(text)
    return rendered if len(rendered) <= _MAX_SHOWN else rendered[: _MAX_SHOWN - 3] + "..."


def parse_flat_keyed(text: str, source: str = "flat-keyed file") -> dict[str, int]:
    """Parse the "key value" per line format of memory.stat, memory.events and
    memory.oom_control into a dict.

    Blank lines and the trailing newline are fine; anything else that is not
    ``<identifier> <non-negative integer>`` raises CgroupReadError, as does a
    key seen twice (a file read across a concurrent rewrite, or not a cgroup
    file at all).  ``source`` names the file in error messages.
    """
    counters: dict[str, int] = {}
    # split("\n"), not splitlines(): the kernel ends lines with \n only, and
    # splitlines() would also split on \x1c, \x85, \u2028 ... in junk.
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(" \t"):
            continue
        match = _KEY_VALUE_RE.fullmatch(line)
        if match is None:
            raise CgroupReadError(f"cannot parse {source} line {line_number}: {_shown(line)}")
        key, value = match.group(1), match.group(2)
        if key in counters:
            raise CgroupReadError(f"cannot parse {source}: key {key!r} appears twice")
        counters[key] = _to_int(value, source)
    return counters


def parse_single_value(text: str, source: str = "single-value file") -> int | None:
    """Parse a single-value file: a non-negative integer, or ``max`` (None =
    unlimited).  Empty, several values or anything else raises CgroupReadError."""
    value = text.strip(" \t\n")
    if value == "max":
        return None
    if not value:
        raise CgroupReadError(f"cannot parse {source}: empty, a value was expected")
    if _INTEGER_RE.fullmatch(value) is None:
        raise CgroupReadError(f"cannot parse {source}: expected an integer or 'max', got {_shown(value)}")
    return _to_int(value, source)


def parse_pressure(text: str, source: str = "memory.pressure") -> dict[str, int]:
    """Parse a PSI file (``some avg10=0.00 avg60=0.00 avg300=0.00 total=0`` lines) into
    ``{"some": total_us, "full": total_us}``; anything else raises CgroupReadError."""
    totals: dict[str, int] = {}
    for line_number, line in enumerate(text.split("\n"), start=1):
        if not line.strip(" \t"):
            continue
        kind, _, rest = line.partition(" ")
        fields = dict(f.partition("=")[::2] for f in rest.split())
        total = fields.get("total", "")
        if kind not in ("some", "full") or _INTEGER_RE.fullmatch(total) is None:
            raise CgroupReadError(f"cannot parse {source} line {line_number}: {_shown(line)}")
        totals[kind] = _to_int(total, source)
    return totals


def parse_pid_list(text: str, source: str = "cgroup.procs") -> list[int]:
    """Parse cgroup.procs: one PID a line, in no order.

    The same PID may show up twice (the kernel documents this for processes
    that moved back and forth): duplicates are dropped, first order kept.  PID
    0 is a process outside the reader's PID namespace (v2): skipped.
    """
    pids: dict[int, None] = {}
    for line_number, line in enumerate(text.split("\n"), start=1):
        value = line.strip(" \t")
        if not value:
            continue
        if _INTEGER_RE.fullmatch(value) is None:
            raise CgroupReadError(f"cannot parse {source} line {line_number}: {_shown(line)}")
        pid = _to_int(value, source)
        if pid > 0:
            pids[pid] = None
    return list(pids)


def _to_int(digits: str, source: str) -> int:
    try:
        return int(digits)
    except ValueError:  # more digits than int() converts (Python's 4300 limit)
        raise CgroupReadError(f"cannot parse {source}: number too long ({len(digits)} digits)") from None


def v1_limit_to_bytes(value: int | None) -> int | None:
    """A v1 limit with the "unlimited" sentinel turned into None."""
    if value is None or value >= V1_UNLIMITED_FROM:
        return None
    return value


# --------------------------------------------------------------------------
# Reading files


def _read_text(path: Path) -> str | None:
    """A file's text, or None if it does not exist.  Other OS errors (EACCES,
    ENODEV of a cgroup being removed, ...) and non-ASCII content raise."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise CgroupReadError(f"cannot read {path}: {err.strerror or err}") from None
    try:
        return raw.decode("ascii")
    except UnicodeDecodeError:
        raise CgroupReadError(f"cannot parse {path}: not ASCII text") from None


def _read_single(path: Path) -> int | None:
    """Single-value file; a missing file gives None (and so does ``max``)."""
    text = _read_text(path)
    return None if text is None else parse_single_value(text, str(path))


def _read_flat_keyed(path: Path) -> dict[str, int] | None:
    """Flat-keyed file; a missing file gives None.  An existing but empty one
    raises: the kernel always writes at least one key into these files."""
    text = _read_text(path)
    if text is None:
        return None
    counters = parse_flat_keyed(text, str(path))
    if not counters:
        raise CgroupReadError(f"cannot parse {path}: empty, counters were expected")
    return counters


def _first_key(counters: dict[str, int] | None, *keys: str) -> int | None:
    if counters is None:
        return None
    for key in keys:
        if key in counters:
            return counters[key]
    return None


def _v1_marker(cgroup_dir: Path) -> Path:
    return cgroup_dir / "memory.usage_in_bytes"


def _v2_markers(cgroup_dir: Path) -> tuple[Path, Path]:
    return cgroup_dir / "memory.events", cgroup_dir / "memory.current"


def _layout_version(cgroup_dir: Path) -> int | None:
    """1 or 2 from the files present in a memory cgroup folder, else None."""
    try:
        if _v1_marker(cgroup_dir).exists():
            return 1
        if any(marker.exists() for marker in _v2_markers(cgroup_dir)):
            return 2
    except OSError as err:  # e.g. EACCES on a parent folder
        raise CgroupReadError(f"cannot read {cgroup_dir}: {err.strerror or err}") from None
    return None


def read_memory_counters(cgroup_dir: Path) -> MemoryCounters:
    """Read one memory cgroup folder (v1 or v2, told apart by its files).

    Optional files absent on this kernel give None fields.  A folder that does
    not exist, has neither layout, or vanishes while being read (the container
    just died and was cleaned up) raises CgroupReadError.
    """
    cgroup_dir = Path(cgroup_dir)
    version = _layout_version(cgroup_dir)
    if version is None:
        if not cgroup_dir.is_dir():
            raise CgroupReadError(f"cgroup folder {cgroup_dir} does not exist (the container may have exited)")
        raise CgroupReadError(
            f"{cgroup_dir} is not a memory cgroup: neither memory.usage_in_bytes (v1) "
            "nor memory.events/memory.current (v2) is there"
        )
    counters = _read_v1(cgroup_dir) if version == 1 else _read_v2(cgroup_dir)
    # A missing file reads as "not on this kernel"; make sure it was not the
    # whole folder disappearing half-way through instead.
    if _layout_version(cgroup_dir) != version:
        raise CgroupReadError(f"cgroup folder {cgroup_dir} vanished while being read (the container exited)")
    return counters


def _read_v1(cgroup_dir: Path) -> MemoryCounters:
    usage_path = _v1_marker(cgroup_dir)
    usage_text = _read_text(usage_path)
    if usage_text is None:
        raise CgroupReadError(f"cgroup folder {cgroup_dir} vanished while being read (the container exited)")
    usage = parse_single_value(usage_text, str(usage_path))
    if usage is None:
        raise CgroupReadError(f"cannot parse {usage_path}: 'max' where v1 writes a number")
    stat = _read_flat_keyed(cgroup_dir / "memory.stat")
    oom_control = _read_flat_keyed(cgroup_dir / "memory.oom_control")
    under_oom = _first_key(oom_control, "under_oom")
    # total_* include descendant cgroups; prefer them, a container may nest.
    return MemoryCounters(
        version=1,
        usage_bytes=usage,
        peak_usage_bytes=_read_single(cgroup_dir / "memory.max_usage_in_bytes"),
        # A limit set on a parent (a Slurm job's cgroup) applies too: memory.stat has the effective one.
        limit_bytes=_min_limit(v1_limit_to_bytes(_read_single(cgroup_dir / "memory.limit_in_bytes")),
                               v1_limit_to_bytes(_first_key(stat, "hierarchical_memory_limit"))),
        anon_bytes=_first_key(stat, "total_rss", "rss"),
        file_bytes=_first_key(stat, "total_cache", "cache"),
        shmem_bytes=_first_key(stat, "total_shmem", "shmem"),
        oom_events=None,
        # Absent before kernel 4.13: None, not 0, so nobody reads "no kill".
        oom_kill=_first_key(oom_control, "oom_kill"),
        under_oom=None if under_oom is None else under_oom != 0,
        major_faults=_first_key(stat, "total_pgmajfault", "pgmajfault"),
        refaults=_refaults(stat, "total_"),
    )


def _read_v2(cgroup_dir: Path) -> MemoryCounters:
    stat = _read_flat_keyed(cgroup_dir / "memory.stat")
    events = _read_flat_keyed(cgroup_dir / "memory.events")
    return MemoryCounters(
        version=2,
        usage_bytes=_read_single(cgroup_dir / "memory.current"),
        # memory.peak exists from kernel 5.19 on.
        peak_usage_bytes=_read_single(cgroup_dir / "memory.peak"),
        # "max" and an absent memory.max (the root cgroup) both mean unlimited.
        limit_bytes=_v2_effective_limit(cgroup_dir),
        anon_bytes=_first_key(stat, "anon"),
        file_bytes=_first_key(stat, "file"),
        shmem_bytes=_first_key(stat, "shmem"),
        oom_events=_first_key(events, "oom"),
        oom_kill=_first_key(events, "oom_kill"),
        under_oom=None,
        major_faults=_first_key(stat, "pgmajfault"),
        refaults=_refaults(stat, ""),
        pressure_full_us=_read_pressure_full(cgroup_dir / "memory.pressure"),
    )


def _refaults(stat: dict[str, int] | None, prefix: str) -> int | None:
    """Refaults from memory.stat: file + anon (kernel >= 5.9), else the one counter of older kernels; v1
    prefers the ``total_`` keys, which include nested cgroups."""
    if stat is None:
        return None
    for p in dict.fromkeys((prefix, "")):
        if f"{p}workingset_refault_file" in stat:
            return stat[f"{p}workingset_refault_file"] + stat.get(f"{p}workingset_refault_anon", 0)
        if f"{p}workingset_refault" in stat:
            return stat[f"{p}workingset_refault"]
    return None


def _read_pressure_full(path: Path) -> int | None:
    """memory.pressure's "full" total; None when the kernel has no PSI (the file is absent, or reading it
    fails with EOPNOTSUPP when PSI is compiled in but switched off)."""
    try:
        text = _read_text(path)
    except CgroupReadError:
        return None
    return None if text is None else parse_pressure(text, str(path)).get("full")


def _min_limit(*limits: int | None) -> int | None:
    present = [v for v in limits if v is not None]
    return min(present) if present else None


def _v2_effective_limit(cgroup_dir: Path) -> int | None:
    """memory.max of the folder and of every parent that has one: the lowest applies.

    Walks up while the parent is a memory cgroup folder too (it stops at the
    root of the hierarchy, or of a container's cgroup namespace).
    """
    limit = _read_single(cgroup_dir / "memory.max")
    parent = cgroup_dir.parent
    for _ in range(32):
        if parent == parent.parent or not (parent / "memory.max").is_file():
            break
        limit = _min_limit(limit, _read_single(parent / "memory.max"))
        parent = parent.parent
    return limit


def process_memory_cgroup(proc_cgroup_text: str, root: Path = DEFAULT_ROOT) -> Path:
    """The memory cgroup folder of a process, from its ``/proc/PID/cgroup`` text.

    v1 lines are ``ID:memory[,...]:/path``; v2 has one ``0::/path`` line.  Used
    by ``--runtime host``, where nnU-Net runs in the cgroup of the surrounding
    job (a Slurm task) instead of a container's.
    """
    root = Path(root)
    v1_path = v2_path = None
    for line in proc_cgroup_text.splitlines():
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if "memory" in controllers.split(","):
            v1_path = path
        elif parts[0] == "0" and controllers == "":
            v2_path = path
    if detect_cgroup_version(root) == 2:
        if v2_path is None:
            raise CgroupReadError("no cgroup v2 line (0::/path) in /proc/self/cgroup")
        return root / v2_path.lstrip("/")
    if v1_path is None:
        raise CgroupReadError("no memory controller line in /proc/self/cgroup")
    return root / "memory" / v1_path.lstrip("/")


def list_cgroup_pids(cgroup_dir: Path) -> list[int]:
    """The PIDs in a cgroup (its cgroup.procs; not those of child cgroups)."""
    path = Path(cgroup_dir) / "cgroup.procs"
    text = _read_text(path)
    if text is None:
        raise CgroupReadError(f"{path} does not exist (the container may have exited)")
    return parse_pid_list(text, str(path))


# --------------------------------------------------------------------------
# Where the cgroups are


def detect_cgroup_version(root: Path = DEFAULT_ROOT) -> int:
    """2 if ``root`` is the unified hierarchy (it has cgroup.controllers),
    else 1 (v1 and hybrid hosts, where memory is a v1 controller)."""
    return 2 if (Path(root) / "cgroup.controllers").exists() else 1


def container_cgroup_candidates(root: Path, container_id: str) -> list[Path]:
    """Every folder a container's memory cgroup can be in, most common first.

    Docker (cgroupfs and systemd drivers) and Podman, cgroup v1 and v2.  Paths
    of the other version simply do not exist on a host, so one list serves
    both.  For Podman on v2 the scope comes before its ``container`` child:
    the limit is set on the scope and memory.events/current there are
    hierarchical, so they include the child.

    ``container_id`` must be the full 64-hex id: the cgroup folders are named
    with it, and a short id would never match (ValueError, a caller bug).
    """
    if not isinstance(container_id, str) or _FULL_CONTAINER_ID_RE.fullmatch(container_id) is None:
        raise ValueError(f"need the full 64-hex container id, got {container_id!r}")
    root = Path(root)
    cid = container_id
    return [
        root / "memory" / "docker" / cid,                                    # v1 docker cgroupfs
        root / "memory" / "system.slice" / f"docker-{cid}.scope",            # v1 docker systemd
        root / "system.slice" / f"docker-{cid}.scope",                       # v2 docker systemd
        root / "docker" / cid,                                               # v2 docker cgroupfs
        root / "memory" / "libpod_parent" / f"libpod-{cid}",                 # v1 podman cgroupfs
        root / "memory" / "machine.slice" / f"libpod-{cid}.scope",           # v1 podman systemd
        root / "machine.slice" / f"libpod-{cid}.scope",                      # v2 podman systemd
        root / "machine.slice" / f"libpod-{cid}.scope" / "container",        # v2 podman, split
        root / "libpod_parent" / f"libpod-{cid}",                            # v2 podman cgroupfs
    ]


def find_container_cgroup(root: Path, container_id: str) -> Path | None:
    """The first candidate folder that exists, or None (not started yet, or
    already removed, or an unknown layout)."""
    for candidate in container_cgroup_candidates(root, container_id):
        try:
            if candidate.is_dir():
                return candidate
        except OSError:
            continue
    return None


def own_cgroup_dir(root: Path = DEFAULT_ROOT) -> Path:
    """The memory cgroup of the calling process, from inside a container.

    On v1 the container's own memory cgroup is mounted at ``root/memory``; on
    v2 with a private cgroup namespace (Docker's default there) it is ``root``.
    """
    root = Path(root)
    return root if detect_cgroup_version(root) == 2 else root / "memory"
