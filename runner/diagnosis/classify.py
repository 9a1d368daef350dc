"""Classification: the outcome of a run and the processes the kernel killed, from its facts.

The verdict is ``oom`` if and only if the container's cgroup ``oom_kill``
counter rose, or the supervisor ended nnU-Net because it thrashed at the cap
(``oom_source: thrashing``, :mod:`runner.incontainer.thrash`).  Docker's ``oom`` events and ``State.OOMKilled`` are not
evidence of a kill (cgroup v1 sends an ``oom`` event whenever the cgroup hits
its limit; Podman misses child kills), so they are used only when the counter
could not be read, and the result then says ``oom_source: engine``.  Neither
the "6 feet under" text nor exit code 137 alone ever decides.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field

from runner.diagnosis.facts import RunFacts, WorkerExit
from runner.errors import Outcome

# Signals a process dies of by itself (a native crash), as opposed to being killed.
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL})
SHM_FULL_FRACTION = 0.9        # /dev/shm this full when a worker died of SIGBUS: shared memory ran out
DEAD_WORKER_TEXT = "Some background worker is 6 feet under"     # nnU-Net's words for a missing pool worker


@dataclass(frozen=True)
class Victim:
    role: str                 # "main" or "worker"
    pid: int | None
    case: str | None = None
    t: float | None = None
    # A worker killed between two cases held none; the memory it still had came from the one it finished last.
    last_case: str | None = None

    def to_dict(self) -> dict:
        return {"role": self.role, "pid": self.pid, "case": self.case, "last_case": self.last_case}


@dataclass(frozen=True)
class Death:
    """A process of nnU-Net that died of something other than the OOM killer, and what is known of why."""

    role: str                         # "worker" or "main"
    pid: int | None
    signal: int | None = None         # the signal it died of
    exit_status: int | None = None    # or the status it exited with
    case: str | None = None           # the case it held
    phase: str | None = None
    configuration: str | None = None
    frame: str | None = None          # faulthandler's innermost Python frame
    library: str | None = None        # the package of that frame
    error: str | None = None          # a Python exception's last line (role "worker": raised on ``case``)

    @property
    def signal_name(self) -> str | None:
        if self.signal is None:
            return None
        try:
            return signal.Signals(self.signal).name
        except ValueError:
            return f"signal {self.signal}"


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    oom_kills: int | None
    oom_source: str | None            # "cgroup", "engine", "thrashing" (ended by nnrun, no kill) or None
    victims: tuple[Victim, ...] = field(default_factory=tuple)
    reason: str | None = None         # not OOM: crash, shm, exception, killed, exit
    death: Death | None = None

    @property
    def victim(self) -> str | None:
        return self.victims[0].role if self.victims else None


def count_oom_kills(facts: RunFacts) -> tuple[int | None, str | None]:
    """(kills, source): the cgroup counter's rise, or the engine's word as a fallback."""
    if facts.oom_kill_after is not None:
        return max(0, facts.oom_kill_after - (facts.oom_kill_before or 0)), "cgroup"
    if facts.engine_oom_killed or facts.engine_oom_events > 0:
        # Unreadable counter: the engine says the limit was hit; count one kill
        # only if the run did not finish cleanly.
        failed = facts.nnunet_returncode not in (0, None) or facts.container_exit_code not in (0, None)
        return (1 if failed else 0), "engine"
    return None, None


# Exits this close together were seen by the same supervisor poll (it polls every 50 ms).
SAME_POLL_S = 0.06
# How long the cgroup's oom_kill counter may lag behind the killed worker's exit.  Seen on a real
# cgroup v2 host (kernel 6.1 under emulation, loaded): the worker holding the case vanished with the
# counter flat, the counter showed the kill 0.24 s later, and the pool's idle worker, torn down after
# that, was the only exit "after the rise".
COUNTER_LAG_S = 1.0


def _likeliest_first(exits: list[WorkerExit], facts: RunFacts) -> list[WorkerExit]:
    """Among workers that vanished together, the kernel's likeliest pick first.

    A worker that was processing a case (per the agent's log) holds data; one
    the pool tore down right after was idle.  Then the larger last-seen RSS
    (the OOM killer picks by RSS), then the earlier exit.
    """
    return sorted(exits, key=lambda w: (w.pid not in facts.open_case_pids, -(w.last_rss_bytes or 0), w.t, w.pid))


def find_victims(facts: RunFacts, kills: int) -> tuple[Victim, ...]:
    """Which processes the kernel killed, earliest first."""
    victims: list[Victim] = []
    main_killed = facts.nnunet_returncode == -signal.SIGKILL or (
        not facts.supervisor_ran and facts.container_exit_code == 137)
    if main_killed and not facts.watchdog_fired and facts.thrashing is None:     # not the supervisor's own kill
        victims.append(Victim("main", facts.main_pid, None, facts.main_ended))
    # Workers that vanished while the main process was alive, in a poll window
    # in which the oom_kill counter rose, were killed by the kernel -- at most
    # as many per window as the counter rose (the pool tears the others down
    # within the same window when nnU-Net notices the dead worker).
    alive_exits = [w for w in facts.worker_exits if w.main_alive]
    windows: dict[tuple[int, int], list[WorkerExit]] = {}
    for w in alive_exits:
        if w.oom_kill_after is not None and w.oom_kill_before is not None and w.oom_kill_after > w.oom_kill_before:
            windows.setdefault((w.oom_kill_before, w.oom_kill_after), []).append(w)
    in_windows = {id(w) for exits in windows.values() for w in exits}
    for (before, after), exits in windows.items():
        # The counter may show the kill after the killed worker is gone (seen on a cgroup v2 host): a worker
        # that vanished just before, with the counter still at this window's start, is a candidate too.
        first_t = min(w.t for w in exits)
        lagging = [w for w in alive_exits if id(w) not in in_windows and w.oom_kill_after == before
                   and 0 <= first_t - w.t < COUNTER_LAG_S]
        for w in _likeliest_first(lagging + exits, facts)[: after - before]:
            victims.append(Victim("worker", w.pid, None, w.t))
    if not victims and kills > 0:
        # The counter rose but no exit lined up with it (the kill fell one poll
        # before the worker was seen gone): among the workers seen vanishing
        # once the counter had risen, the likeliest.
        base = facts.oom_kill_before or 0
        after_rise = [w for w in alive_exits if w.oom_kill_before is not None and w.oom_kill_before > base]
        if not after_rise and all(w.oom_kill_before is None for w in alive_exits):
            after_rise = alive_exits     # the supervisor could not read the counter: order is all we have
        if after_rise:
            first_t = min(w.t for w in after_rise)
            same_poll = [w for w in after_rise if w.t - first_t < SAME_POLL_S]
            # The counter may show the kill after the killed worker is already gone: the exits just
            # before the first risen reading are candidates too (the one holding a case first).
            lagging = [w for w in alive_exits if w not in after_rise and w.oom_kill_before is not None
                       and w.oom_kill_before <= base and 0 <= first_t - w.t < COUNTER_LAG_S]
            w = _likeliest_first(lagging + same_poll, facts)[0]
            victims.append(Victim("worker", w.pid, None, w.t))
        else:
            victims.append(Victim("worker", None, None, None))
    return tuple(sorted(victims, key=lambda v: (v.t is None, v.t or 0.0)))


def classify(facts: RunFacts) -> Verdict:
    """The outcome of a run that got as far as creating a container."""
    kills, source = count_oom_kills(facts)
    if facts.interrupt_signal is not None:
        # A SIGTERM after the kernel's counter rose is the job manager reacting to the OOM kill
        # (seen on a real cgroup v2 host: a systemd scope's default OOMPolicy=stop SIGTERMs every
        # process of the unit, nnrun included): the run died of the OOM kill.  Ctrl-C stays an interrupt.
        if facts.interrupt_signal == signal.SIGTERM and kills and source == "cgroup":
            return Verdict(Outcome.OOM, kills, source, find_victims(facts, kills))
        return Verdict(Outcome.INTERRUPTED, kills, source)
    if kills:
        return Verdict(Outcome.OOM, kills, source, find_victims(facts, kills))
    if facts.thrashing is not None and facts.nnunet_returncode != 0:
        # The supervisor ended nnU-Net thrashing at the cap: out of memory, without (yet) a kill.
        return Verdict(Outcome.OOM, 0, "thrashing")
    if facts.supervisor_ran and facts.nnunet_returncode == 0:
        return Verdict(Outcome.OK, kills, source)
    if facts.start_error:
        return Verdict(Outcome.INFRA, kills, source)
    if facts.nnunet_returncode is not None and facts.nnunet_returncode < 0:
        death = _main_death(facts, -facts.nnunet_returncode)
        if death.signal in CRASH_SIGNALS:
            return Verdict(Outcome.ERROR, kills, source, reason="crash", death=death)
        return Verdict(Outcome.KILLED, kills, source, reason="killed", death=death)
    if not facts.supervisor_ran:
        # The supervisor itself died: a signal from outside (docker kill, a
        # scheduler), or the container never got going.
        if facts.container_exit_code is not None and facts.container_exit_code > 128:
            return Verdict(Outcome.KILLED, kills, source)
        return Verdict(Outcome.INFRA, kills, source)
    # nnU-Net's main process failed: first what a worker's death or exception says.
    worker = find_worker_death(facts)
    if worker is not None:
        death = worker
        if death.error is not None:
            no_space = "No space left on device" in death.error or "Errno 28" in death.error
            reason = "shm" if no_space and shm_was_full(facts) else "exception"
            return Verdict(Outcome.ERROR, kills, source, reason=reason, death=death)
        if death.signal in CRASH_SIGNALS:
            reason = "shm" if death.signal == signal.SIGBUS and shm_was_full(facts) else "crash"
            return Verdict(Outcome.ERROR, kills, source, reason=reason, death=death)
        if death.signal is not None or death.exit_status is None:
            # SIGKILL (or a worker that vanished without a word) while the OOM counter stayed flat.
            return Verdict(Outcome.KILLED, kills, source, reason="killed", death=death)
        return Verdict(Outcome.ERROR, kills, source, reason="exit", death=death)
    return Verdict(Outcome.ERROR, kills, source)


def shm_was_full(facts: RunFacts) -> bool:
    """/dev/shm was (nearly) full: nnU-Net named it, or the supervisor's peak reached 90 % of its size."""
    if facts.exception_line and "/dev/shm" in facts.exception_line:
        return True
    if not facts.peak_shm_bytes or not facts.shm_size_bytes:
        return False
    return facts.peak_shm_bytes >= SHM_FULL_FRACTION * facts.shm_size_bytes


def _main_death(facts: RunFacts, signum: int) -> Death:
    dump = next((d for d in facts.fault_dumps if d.pid == facts.main_pid), None)
    return Death("main", facts.main_pid, signal=signum, phase=facts.phase, configuration=facts.configuration,
                 frame=dump.frame if dump else None, library=dump.library if dump else None)


def _signal_number(name: str | None) -> int | None:
    try:
        return int(signal.Signals[name]) if name else None
    except KeyError:
        return None


def find_worker_death(facts: RunFacts) -> Death | None:
    """The worker whose death (or exception) made nnU-Net fail, earliest first; None when none is known.

    In order of evidence: nnrun's pool saw a worker die with an exit code; faulthandler wrote a dump
    (a fatal signal: any pool, nnU-Net's own fingerprint pool included); a worker raised an exception on
    a case; a worker vanished while the main process lived and nnU-Net then said a worker was missing.
    """
    dumps = {d.pid: d for d in facts.fault_dumps if d.pid != facts.main_pid}
    for d in facts.worker_deaths:
        dump = dumps.get(d.pid)
        sig = -d.exitcode if d.exitcode is not None and d.exitcode < 0 else _signal_number(
            dump.signal_name if dump else None)
        status = d.exitcode if d.exitcode is not None and d.exitcode > 0 else None
        if sig is None and status is None and dump is None:
            continue         # exit code 0 or unknown: not the cause
        return Death("worker", d.pid, signal=sig, exit_status=status, case=d.case or facts.case_of(d.pid),
                     phase=d.phase or facts.phase, configuration=d.configuration or facts.configuration,
                     frame=dump.frame if dump else None, library=dump.library if dump else None)
    if dumps:
        dump = next(iter(dumps.values()))
        exits = {w.pid: w for w in facts.worker_exits}
        if len(dumps) > 1:      # the earliest to vanish
            dump = min(dumps.values(), key=lambda d: exits[d.pid].t if d.pid in exits else float("inf"))
        return Death("worker", dump.pid, signal=_signal_number(dump.signal_name), case=facts.case_of(dump.pid),
                     phase=facts.phase, configuration=facts.configuration, frame=dump.frame, library=dump.library)
    if facts.case_errors:
        e = facts.case_errors[0]
        return Death("worker", e.pid, case=e.case, phase=e.phase or facts.phase,
                     configuration=e.configuration or facts.configuration, error=e.error)
    if facts.exception_line and DEAD_WORKER_TEXT in facts.exception_line:
        alive_exits = sorted((w for w in facts.worker_exits if w.main_alive), key=lambda w: w.t)
        if alive_exits:
            w = alive_exits[0]
            return Death("worker", w.pid, case=facts.case_of(w.pid), phase=facts.phase,
                         configuration=facts.configuration)
    return None
