"""Typed facts about one run, from what the supervisor, the host monitor and the engine saw.

:func:`gather_facts` is the one translation of the supervisor's status (see
:mod:`runner.rundir`) and the host's cgroup readings into :class:`RunFacts`;
the classification (:mod:`runner.diagnosis.classify`) reads nothing else.
"""
from __future__ import annotations

from dataclasses import dataclass

from runner.rundir import EV_WORKER_DIED, FaultDump, SupervisorStatus, Thrashing, WorkerExitRecord


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
class WorkerDeath:
    """nnrun's pool saw a worker die (its exit code: negative is the signal that killed it)."""

    pid: int
    exitcode: int | None
    case: str | None = None
    phase: str | None = None
    configuration: str | None = None


@dataclass(frozen=True)
class CaseError:
    """A Python exception a worker raised on one case (the agent's case_error event)."""

    pid: int
    case: str
    phase: str | None
    configuration: str | None
    error: str                            # 'ValueError: ...', the exception's last line


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
    thrashing: Thrashing | None = None            # the supervisor ended nnU-Net: it thrashed at the cap
    open_case_pids: frozenset[int] = frozenset()   # workers holding an unfinished case (agent's log)
    open_cases: tuple[tuple[int, str], ...] = ()   # (pid, case) of those unfinished cases
    worker_deaths: tuple[WorkerDeath, ...] = ()    # nnrun's pools: dead workers and their exit codes
    fault_dumps: tuple[FaultDump, ...] = ()        # faulthandler: processes that died of a fatal signal
    case_errors: tuple[CaseError, ...] = ()        # exceptions raised by workers, per case
    peak_shm_bytes: int | None = None
    shm_size_bytes: int | None = None

    def case_of(self, pid: int | None) -> str | None:
        """The case worker ``pid`` held when it died (its last unfinished case)."""
        held = [case for p, case in self.open_cases if p == pid]
        return held[-1] if held else None


def worker_exit(record: WorkerExitRecord) -> WorkerExit:
    return WorkerExit(record.pid, record.t, record.main_alive, record.oom_kill_before, record.oom_kill_after,
                      record.last_rss_bytes)


def highest(*values: int | None) -> int | None:
    """The largest of the values that are known (None when none is)."""
    present = [v for v in values if v is not None]
    return max(present) if present else None


def worker_deaths_from_events(agent_events: list[dict]) -> tuple[WorkerDeath, ...]:
    return tuple(WorkerDeath(pid=int(e["worker_pid"]), exitcode=e.get("exitcode"), case=e.get("case"),
                             phase=e.get("phase"), configuration=e.get("configuration"))
                 for e in agent_events if e.get("event") == EV_WORKER_DIED and e.get("worker_pid") is not None)


def gather_facts(status: SupervisorStatus | None, *, host_oom_first: int | None, host_oom_last: int | None,
                 exit_code: int | None, engine_oom_killed: bool, engine_oom_events: int,
                 interrupt_signal: int | None, open_case_pids: frozenset[int] = frozenset(),
                 open_cases: tuple[tuple[int, str], ...] = (), worker_deaths: tuple[WorkerDeath, ...] = (),
                 fault_dumps: tuple[FaultDump, ...] = (), case_errors: tuple[CaseError, ...] = ()) -> RunFacts:
    """The facts of a run: the supervisor's status, the host's first and last reading of the cgroup's
    OOM-kill counter, the container's exit code and the engine's word."""
    status = status or SupervisorStatus(partial=True)
    starts = [v for v in (status.oom_kill_start, host_oom_first) if v is not None]
    return RunFacts(
        container_exit_code=exit_code,
        supervisor_ran=status.supervisor_ran,
        nnunet_returncode=status.returncode,
        main_pid=status.main_pid,
        main_ended=status.ended,
        phase=status.phase,
        configuration=status.configuration,
        oom_kill_before=min(starts) if starts else None,
        oom_kill_after=highest(status.oom_kill_end, host_oom_last),
        engine_oom_killed=engine_oom_killed,
        engine_oom_events=engine_oom_events,
        worker_exits=tuple(worker_exit(w) for w in status.worker_exits),
        interrupt_signal=interrupt_signal,
        exception_line=status.last_exception_line,
        start_error=status.start_error,
        watchdog_fired=bool(status.watchdog_fired),
        thrashing=status.thrashing,
        open_case_pids=open_case_pids or frozenset(pid for pid, _ in open_cases),
        open_cases=open_cases,
        worker_deaths=worker_deaths,
        fault_dumps=fault_dumps,
        case_errors=case_errors,
        peak_shm_bytes=status.peak_shm_bytes,
        shm_size_bytes=status.shm_size_bytes,
    )
