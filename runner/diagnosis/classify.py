"""Classification and recommendation: pure functions over the facts of a run.

The verdict is ``oom`` if and only if the container's cgroup ``oom_kill``
counter rose.  Docker's ``oom`` events and ``State.OOMKilled`` are not
evidence of a kill (cgroup v1 sends an ``oom`` event whenever the cgroup hits
its limit; Podman misses child kills), so they are used only when the counter
could not be read, and the result then says ``oom_source: engine``.  Neither
the "6 feet under" text nor exit code 137 alone ever decides.
"""
from __future__ import annotations

import signal
from dataclasses import dataclass, field

from runner.errors import Outcome
from runner.options import PreprocessOptions
from runner.units import format_bytes, format_mem_arg, parse_mem

PHASES = ("startup", "verify", "fingerprint", "planning", "preprocessing")
PHASE_WORDS = {
    "startup": "start-up",
    "verify": "dataset verification",
    "fingerprint": "fingerprint extraction",
    "planning": "experiment planning",
    "preprocessing": "preprocessing",
}


@dataclass(frozen=True)
class WorkerExit:
    """A worker process the supervisor saw vanish (from status.json)."""

    pid: int
    t: float
    main_alive: bool
    oom_kill_before: int | None
    oom_kill_after: int | None
    last_rss_bytes: int | None = None     # its RSS at the last poll before it vanished


@dataclass(frozen=True)
class RunFacts:
    """Everything observed about one container run, as plain data."""

    container_exit_code: int | None
    supervisor_ran: bool                  # status.json was written
    nnunet_returncode: int | None         # negative: killed by that signal
    main_pid: int | None
    main_ended: float | None
    phase: str | None
    configuration: str | None
    oom_kill_before: int | None           # cgroup counter when the run started
    oom_kill_after: int | None            # highest counter seen (host monitor or supervisor)
    engine_oom_killed: bool = False
    engine_oom_events: int = 0
    worker_exits: tuple[WorkerExit, ...] = ()
    interrupt_signal: int | None = None
    exception_line: str | None = None
    start_error: str | None = None
    watchdog_fired: bool = False
    open_case_pids: frozenset[int] = frozenset()   # workers holding an unfinished case (agent's log)


@dataclass(frozen=True)
class Victim:
    role: str                 # "main" or "worker"
    pid: int | None
    case: str | None = None
    t: float | None = None

    def to_dict(self) -> dict:
        return {"role": self.role, "pid": self.pid, "case": self.case}


@dataclass(frozen=True)
class Verdict:
    outcome: Outcome
    oom_kills: int | None
    oom_source: str | None            # "cgroup", "engine" or None
    victims: tuple[Victim, ...] = field(default_factory=tuple)

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
    if main_killed and not facts.watchdog_fired:
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
    for (before, after), exits in windows.items():
        for w in _likeliest_first(exits, facts)[: after - before]:
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
            same_poll = [w for w in after_rise if w.t - first_t < 0.06]
            w = _likeliest_first(same_poll, facts)[0]
            victims.append(Victim("worker", w.pid, None, w.t))
        else:
            victims.append(Victim("worker", None, None, None))
    return tuple(sorted(victims, key=lambda v: (v.t is None, v.t or 0.0)))


def classify(facts: RunFacts) -> Verdict:
    """The outcome of a run that got as far as creating a container."""
    kills, source = count_oom_kills(facts)
    if facts.interrupt_signal is not None:
        return Verdict(Outcome.INTERRUPTED, kills, source)
    if kills:
        return Verdict(Outcome.OOM, kills, source, find_victims(facts, kills))
    if facts.supervisor_ran and facts.nnunet_returncode == 0:
        return Verdict(Outcome.OK, kills, source)
    if facts.start_error:
        return Verdict(Outcome.INFRA, kills, source)
    if facts.nnunet_returncode is not None and facts.nnunet_returncode < 0:
        return Verdict(Outcome.KILLED, kills, source)
    if not facts.supervisor_ran:
        # The supervisor itself died: a signal from outside (docker kill, a
        # scheduler), or the container never got going.
        if facts.container_exit_code is not None and facts.container_exit_code > 128:
            return Verdict(Outcome.KILLED, kills, source)
        return Verdict(Outcome.INFRA, kills, source)
    return Verdict(Outcome.ERROR, kills, source)


# -- recommendation ---------------------------------------------------------

@dataclass(frozen=True)
class Recommendation:
    text: str                          # one sentence, for the human report
    options: PreprocessOptions | None  # the options to run next (None: no command)
    mem_bytes: int | None              # a new --mem to run with (None: keep the user's)


def recommend(verdict: Verdict, phase: str | None, configuration: str | None, opts: PreprocessOptions,
              limit_bytes: int, host_mem_bytes: int | None) -> Recommendation | None:
    """A concrete next run after an OOM: fewer workers where that helps, else more memory."""
    if verdict.outcome is not Outcome.OOM:
        return None
    per_config = opts.workers_per_configuration()
    in_worker_pool = phase in ("verify", "fingerprint", "preprocessing")
    if phase in ("verify", "fingerprint") and opts.npfp > 1:
        new_npfp = max(1, opts.npfp // 2)
        return Recommendation(f"use fewer fingerprint workers: -npfp {new_npfp} (was {opts.npfp})",
                              opts.with_workers(npfp=new_npfp), None)
    if phase == "preprocessing" and configuration in per_config and per_config[configuration] > 1:
        current = per_config[configuration]
        new_np = max(1, current // 2)
        return Recommendation(f"use fewer workers for {configuration}: -np {new_np} (was {current})",
                              opts.with_workers(configuration=configuration, np=new_np), None)
    if phase == "preprocessing" and configuration is None and any(n > 1 for n in per_config.values()):
        new = opts
        for c, n in per_config.items():
            new = new.with_workers(configuration=c, np=max(1, n // 2))
        return Recommendation("use fewer preprocessing workers", new, None)
    # One worker already (or the main process in planning): only memory helps.
    new_mem = int(limit_bytes * 1.5)
    mem_arg_bytes = parse_mem(format_mem_arg(new_mem))
    where = "with one worker" if in_worker_pool else "in this phase"
    if host_mem_bytes and mem_arg_bytes > host_mem_bytes:
        return Recommendation(
            f"nnU-Net needs more than the {format_bytes(limit_bytes)} cap {where}, and 1.5x that is more "
            f"than this host's {format_bytes(host_mem_bytes)}: use a machine with more memory", None, None)
    return Recommendation(f"raise the cap: --mem {format_mem_arg(new_mem)} (was {format_bytes(limit_bytes)}); "
                          f"nnU-Net ran out {where}", opts, mem_arg_bytes)


def during_phase(phase: str | None, configuration: str | None) -> str:
    """'during fingerprint extraction', or 'before nnU-Net started' when no phase is known."""
    if phase is None or phase == "startup":
        return "before nnU-Net started"
    return f"during {describe_phase(phase, configuration)}"


def describe_phase(phase: str | None, configuration: str | None) -> str:
    if phase is None:
        return "before nnU-Net started"
    words = PHASE_WORDS.get(phase, phase)
    if phase == "preprocessing" and configuration:
        return f"{words} {configuration}"
    return words
