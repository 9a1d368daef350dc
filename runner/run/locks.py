"""Per-dataset locks: two nnrun runs that would write the same outputs never both proceed.

The lock files live in ``<preprocessed>/DatasetXXX_Name/.nnrun/locks/``:

* ``global.lock``: the dataset-wide steps (fingerprint, plans, ``dataset.json``,
  ``gt_segmentations``).  A run that does them takes it exclusively; a run that
  only preprocesses configurations takes it **shared**, because it reads the
  plans and ``dataset.json`` that a global run would rewrite under its feet.
* ``config-<name>.lock``: one configuration's case folder.  A run that
  preprocesses the whole configuration takes it exclusively; a shard run takes
  it shared, plus
* ``config-<name>.shard-<K>-of-<N>.lock`` exclusively (its own cases).
* ``acquire.lock``: a short mutex around the taking of the locks above (held
  for milliseconds, never for the run), so that a conflict can be explained
  (see below) and so that shards with different ``N`` are refused.

The resulting conflict matrix (X = the second run is refused)::

                         global   whole cfg A   shard K/N of A   whole cfg B (no global)
    global (any cfgs)      X          X              X                 X
    whole cfg A            X          X              X                 -
    shard K/N of A         X          X        X if same K/N, or       -
                                                 a different N
    whole cfg B            X          -              -                 X

Why ``flock`` and not ``O_CREAT | O_EXCL`` lock files: an ``flock`` lock belongs
to the open file description, so the kernel drops it when the process dies in
any way, SIGKILL and the OOM killer included (nnrun's own business): there is
never a stale lock to detect or clean up, and no pid-alive guessing (which fails
across hosts and with pid reuse).  ``flock`` also has shared locks, which the
shard scheme needs.  Why not POSIX record locks (``fcntl(F_SETLK)`` /
``lockf``): they belong to the *process*, and closing *any* descriptor of the
file in that process drops them, which the probing below would do.

Network file systems: on Linux NFS clients (since 2.6.12) ``flock`` is
emulated with whole-file ``fcntl`` locks and does work across clients (but
then conflicts with ``fcntl`` locks on the same file); on some other systems
and older kernels, and on file systems mounted with ``local_lock=flock`` (NFS)
or without ``flock`` (Lustre), the locks are local to one machine only, so two
nnrun runs on *different* hosts writing the same NFS folder are not stopped
there.  ``fcntl``/``lockf`` locks are the portable NFS alternative (via lockd),
with the per-process caveat above.  A file system that refuses locks outright
(``ENOLCK``) gives a ``BadInputError``.

Messages: every exclusively held lock file contains its holder's owner info as
JSON (pid, host, run id, start time, command line, what it holds), written while
the writer holds both that lock and the ``acquire.lock`` mutex; a refused run
reads it (also under the mutex, so it is never half-written or stale) and names
the holder in a one-line ``BadInputError``.  A shared lock has no single owner:
its holders are found through the exclusive locks they also hold (a shard
run's shard lock, a configuration run's configuration lock).

Descriptors are opened close-on-exec (Python's default), so ``docker`` and
other children started with ``subprocess`` do not inherit the locks.  A child
made with ``os.fork`` (multiprocessing's "fork") shares them: the lock then
lives until both processes have closed it, and ``release()`` in either process
releases it for both.
"""
from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import re
import socket
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from runner.errors import BadInputError
from runner.rundir import NNRUN_DIR

LOCKS_DIR = "locks"
GLOBAL_LOCK = "global.lock"
MUTEX_LOCK = "acquire.lock"
MUTEX_TIMEOUT_S = 10.0          # acquire() holds the mutex for milliseconds; longer means a stopped process
_SAFE_NAME = re.compile(r"[A-Za-z0-9_+-][A-Za-z0-9_.+-]{0,80}")


@dataclass(frozen=True)
class LockScope:
    """What a run will write.

    ``global_steps``: fingerprint, plans, ``dataset.json``, ``gt_segmentations``.
    ``configurations``: the configurations whose cases it preprocesses.
    ``shard``: ``(K, N)``, 1 <= K <= N: only the K-th of N shards of each
    configuration's cases; ``None``: all of them.
    """

    global_steps: bool
    configurations: tuple[str, ...] = ()
    shard: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        configs = tuple(self.configurations)
        if any(not isinstance(c, str) or not c for c in configs):
            raise ValueError(f"configuration names must be non-empty strings: {configs!r}")
        object.__setattr__(self, "configurations", tuple(sorted(set(configs))))
        if self.shard is not None:
            k, n = self.shard
            if not (isinstance(k, int) and isinstance(n, int) and 1 <= k <= n):
                raise ValueError(f"shard must be (K, N) with 1 <= K <= N, got {self.shard!r}")
            object.__setattr__(self, "shard", (k, n))
            if not self.configurations:
                raise ValueError("a shard scope needs at least one configuration")

    def describe(self) -> str:
        parts = ["fingerprint and plans"] if self.global_steps else []
        for c in self.configurations:
            parts.append(_describe_config(c, self.shard))
        return ", ".join(parts) or "nothing"


def scope_for_run(configurations: Iterable[str], no_pp: bool,
                  shard: tuple[int, int] | None = None) -> LockScope:
    """The scope of one ``nnUNetv2_plan_and_preprocess`` run.

    A full run does the global steps and preprocesses every configuration in
    ``configurations`` (pass the resolved list: nnU-Net's defaults when ``-c``
    was not given); ``--no_pp`` preprocesses none.  A shard run only
    preprocesses its share of the configurations' cases: it cannot also run the
    global steps (every shard would then exclude every other one), which must
    be done once before the shards start (e.g. by a ``--no_pp`` run).
    """
    if shard is not None:
        if no_pp:
            raise ValueError("a shard run preprocesses cases: it cannot be --no_pp")
        return LockScope(global_steps=False, configurations=tuple(configurations), shard=shard)
    return LockScope(global_steps=True, configurations=() if no_pp else tuple(configurations))


def owner_info(run_id: str, argv: Sequence[str] | None = None, started: float | None = None) -> dict:
    """The owner record for :func:`acquire`: who is writing (pid and host are this process's)."""
    return {
        "run_id": run_id,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "started": datetime.fromtimestamp(time.time() if started is None else started).astimezone()
                           .isoformat(timespec="seconds"),
        "argv": list(sys.argv if argv is None else argv),
    }


class HeldLocks:
    """The locks one run holds.  A context manager; :meth:`release` may be called any number of times."""

    def __init__(self, preprocessed_dataset: Path, scope: LockScope) -> None:
        self.preprocessed_dataset = Path(preprocessed_dataset)
        self.scope = scope
        self._held: list[tuple[int, Path, bool]] = []     # (fd, path, exclusive), in taking order

    @property
    def paths(self) -> list[Path]:
        return [path for _, path, _ in self._held]

    @property
    def released(self) -> bool:
        return not self._held

    def release(self) -> None:
        while self._held:
            fd, _, _ = self._held.pop()
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)   # also for a forked child sharing the descriptor
            except OSError:
                pass
            try:
                os.close(fd)
            except OSError:
                pass

    def __enter__(self) -> HeldLocks:
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()

    def __repr__(self) -> str:
        names = ", ".join(p.name for p in self.paths) or "released"
        return f"HeldLocks({self.preprocessed_dataset.name}: {names})"


@dataclass(frozen=True)
class _Request:
    filename: str
    exclusive: bool
    holds: str                      # what the holder of this file holds, for messages
    config: str | None = None       # the configuration's file token
    shard: tuple[int, int] | None = None


def _describe_config(config: str, shard: tuple[int, int] | None) -> str:
    if shard is None:
        return f"configuration {config}"
    return f"configuration {config} shard {shard[0]} of {shard[1]}"


def _token(config: str) -> str:
    """A file-name-safe, collision-free token for a configuration name."""
    if _SAFE_NAME.fullmatch(config) and ".shard-" not in config:
        return config
    return "x" + hashlib.sha256(config.encode()).hexdigest()[:16]


def _config_file(token: str) -> str:
    return f"config-{token}.lock"


def _shard_file(token: str, k: int, n: int) -> str:
    return f"config-{token}.shard-{k}-of-{n}.lock"


def _plan(scope: LockScope) -> list[_Request]:
    requests: list[_Request] = []
    if scope.global_steps:
        requests.append(_Request(GLOBAL_LOCK, True, "fingerprint and plans"))
    elif scope.configurations:
        # A reader of the plans and dataset.json: shared, so that a run that rewrites them waits.
        requests.append(_Request(GLOBAL_LOCK, False, "plans (reading)"))
    for config in scope.configurations:
        token = _token(config)
        if scope.shard is None:
            requests.append(_Request(_config_file(token), True, _describe_config(config, None), token))
        else:
            requests.append(_Request(_config_file(token), False, _describe_config(config, None), token))
            requests.append(_Request(_shard_file(token, *scope.shard), True,
                                     _describe_config(config, scope.shard), token, scope.shard))
    # One fixed order for every run: global first (so that a conflict between two whole runs names the
    # dataset-wide steps), then by file name.  The locks are taken without waiting, so no order could
    # deadlock; a fixed one still makes "who wins" between two starting runs deterministic.
    return sorted(requests, key=lambda r: (r.filename != GLOBAL_LOCK, r.filename))


def acquire(preprocessed_dataset: Path, scope: LockScope, owner: dict) -> HeldLocks:
    """Take every lock ``scope`` needs without waiting, or raise :class:`BadInputError` naming the holder.

    ``owner``: see :func:`owner_info`; ``pid`` and ``host`` default to this process's.
    On failure nothing stays held.
    """
    preprocessed_dataset = Path(preprocessed_dataset)
    dataset = preprocessed_dataset.name
    locks_dir = preprocessed_dataset / NNRUN_DIR / LOCKS_DIR
    _make_dir(locks_dir, dataset)
    held = HeldLocks(preprocessed_dataset, scope)
    requests = _plan(scope)
    if not requests:
        return held
    owner = {"pid": os.getpid(), "host": socket.gethostname(), **owner}
    mutex = _take_mutex(locks_dir, dataset, owner)
    try:
        for req in requests:
            path = locks_dir / req.filename
            if req.shard is not None:
                _refuse_other_shard_counts(locks_dir, dataset, req, held)
            fd = _open(path, dataset)
            try:
                fcntl.flock(fd, (fcntl.LOCK_EX if req.exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise BadInputError(_busy_message(locks_dir, dataset, req, held)) from None
                raise BadInputError(f"cannot lock {path}: {exc.strerror or exc}",
                                    hint="the file system does not support file locks; "
                                         "put nnUNet_preprocessed on a local disk") from None
            held._held.append((fd, path, req.exclusive))
            if req.exclusive:
                _write_owner(fd, {**owner, "holds": req.holds})
    except BaseException:
        held.release()
        raise
    finally:
        _release_fd(mutex)
    return held


# -- helpers -----------------------------------------------------------------------------------

def _make_dir(locks_dir: Path, dataset: str) -> None:
    try:
        locks_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create nnrun's lock folder {locks_dir}: {exc.strerror or exc}",
                            hint=f"make {locks_dir.parent.parent} and its .nnrun folder writable by this user") from None
    if not locks_dir.is_dir():
        raise BadInputError(f"cannot create nnrun's lock folder {locks_dir}: not a folder",
                            hint=f"move away what is at that path in {dataset}")


def _open(path: Path, dataset: str) -> int:
    try:
        return os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise BadInputError(f"cannot open nnrun's lock file {path}: {exc.strerror or exc}",
                            hint=f"it may belong to another user: every user who runs nnrun on {dataset} "
                                 "must be able to write nnrun's lock files") from None


def _release_fd(fd: int) -> None:
    try:
        fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def _take_mutex(locks_dir: Path, dataset: str, owner: dict) -> int:
    path = locks_dir / MUTEX_LOCK
    fd = _open(path, dataset)
    deadline = time.monotonic() + MUTEX_TIMEOUT_S
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                raise BadInputError(f"cannot lock {path}: {exc.strerror or exc}",
                                    hint="the file system does not support file locks; "
                                         "put nnUNet_preprocessed on a local disk") from None
            if time.monotonic() >= deadline:
                holder = _read_owner(path)
                os.close(fd)
                raise BadInputError(
                    f"{dataset}: another nnrun run has been taking its locks for over {MUTEX_TIMEOUT_S:g} s "
                    f"({_who(holder)}): is it stopped? wait for it to finish, or stop it") from None
            time.sleep(0.01)
    _write_owner(fd, {**owner, "holds": "the lock folder (briefly)"})
    return fd


def _write_owner(fd: int, owner: dict) -> None:
    data = (json.dumps(owner, default=str, sort_keys=True) + "\n").encode()
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, data, 0)
    except OSError:
        pass   # best effort (disk full): a refused run then says "owner unknown"


def _read_owner(path: Path) -> dict | None:
    try:
        owner = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return owner if isinstance(owner, dict) else None


def _held_exclusively(path: Path) -> bool:
    """Whether another open file description holds ``path`` exclusively (only under the mutex)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError:
        return True
    finally:
        os.close(fd)      # also drops the probe's own shared lock
    return False


def _holders(paths: Iterable[Path], mine: HeldLocks) -> list[tuple[Path, dict | None]]:
    own = set(mine.paths)
    return [(p, _read_owner(p)) for p in sorted(paths) if p not in own and _held_exclusively(p)]


def _busy_message(locks_dir: Path, dataset: str, req: _Request, mine: HeldLocks) -> str:
    path = locks_dir / req.filename
    holders: list[tuple[Path, dict | None]] = []
    if not (req.exclusive and not _held_exclusively(path)):
        holders = [(path, _read_owner(path))]
    elif req.filename == GLOBAL_LOCK:             # held shared: by runs that preprocess configurations
        holders = _holders(locks_dir.glob("config-*.lock"), mine)
    elif req.config is not None:                  # a configuration held shared: by its shard runs
        holders = _holders(locks_dir.glob(f"config-{req.config}.shard-*.lock"), mine)
    return _format_busy(dataset, holders or [(path, None)])


def _refuse_other_shard_counts(locks_dir: Path, dataset: str, req: _Request, mine: HeldLocks) -> None:
    """Shards K/N and K'/N' with N != N' share cases: refuse unless every running shard has our N."""
    pattern = re.compile(rf"config-{re.escape(req.config)}\.shard-(\d+)-of-(\d+)\.lock")
    others = []
    for p in locks_dir.glob(f"config-{req.config}.shard-*.lock"):
        m = pattern.fullmatch(p.name)
        if m and int(m.group(2)) != req.shard[1]:
            others.append(p)
    holders = _holders(others, mine)
    if holders:
        raise BadInputError(_format_busy(
            dataset, holders,
            reason=f"the shards of one configuration must all use the same shard count "
                   f"(this run: shard {req.shard[0]} of {req.shard[1]})"))


def _who(owner: dict | None) -> str:
    if not owner:
        return "owner unknown"
    parts = [f"run {owner['run_id']}" if owner.get("run_id") else None]
    pid, host = owner.get("pid"), owner.get("host")
    if pid is not None:
        parts.append(f"pid {pid}" + (f" on host {host}" if host else ""))
    if owner.get("started"):
        parts.append(f"started {_clock(owner['started'])}")
    return ", ".join(p for p in parts if p) or "owner unknown"


def _clock(started) -> str:
    try:
        when = (datetime.fromtimestamp(float(started)).astimezone() if isinstance(started, (int, float))
                else datetime.fromisoformat(str(started)))
    except (ValueError, OverflowError, OSError):
        return str(started)
    now = datetime.now(when.tzinfo) if when.tzinfo else datetime.now()
    return when.strftime("%H:%M:%S" if when.date() == now.date() else "%Y-%m-%d %H:%M:%S")


def _format_busy(dataset: str, holders: list[tuple[Path, dict | None]], reason: str | None = None) -> str:
    path, owner = holders[0]
    who = _who(owner)
    holds = owner.get("holds") if owner else None
    detail = who + (f"; it holds {holds}" if holds else "")
    if who == "owner unknown":
        detail += f": {path}"
    more = len(holders) - 1
    text = (f"{dataset} is being written by another nnrun run ({detail})"
            + (f" and {more} more" if more else "")
            + (f": {reason}" if reason else "")
            + ": wait for it to finish, or stop it")
    return " ".join(text.split())       # one line, whatever the owner file holds
