"""The diagnosis line as soon as it is certain (an OOM kill, a worker's crash), while nnU-Net is still winding down.

The full report can only be written once nnU-Net has ended and the container
is gone (final cgroup readings, the supervisor's status, removal of
half-written outputs).  After a worker is OOM-killed that takes a second or
more: nnU-Net notices the dead worker, tears its pool down and exits, the
supervisor waits for the host's last reading, the engine removes the
container.  What was killed is known much earlier: the supervisor's
``oom_kill`` event says the cgroup counter rose, and its ``worker_exit`` event
(or, for the main process, ``child_exit`` with SIGKILL) says which process
vanished in that poll.  :class:`EarlyOom` follows the run's events (the
supervisor's and the agent's, as the progress sink receives them) and returns
the headline once, with the same rules as the final diagnosis
(:func:`runner.diagnosis.classify.find_victims`), so the two agree.

Which of several workers that vanished in one poll the kernel killed is a
choice among all of them (open case, RSS), so an OOM line is held until the
poll is complete: until an event from a later moment, or nnU-Net's exit,
arrives.  Without that the host could read the first of a poll's exits, name
it, and the final report, which sees them all, name another.

It states only facts that cannot change: the OOM kill, the process, its case.
The final report (its content and exit code are unchanged) follows when
nnU-Net has ended; it may add what happened after (cases in flight, peak).
"""
from __future__ import annotations

import signal

from runner.diagnosis.classify import CRASH_SIGNALS, SAME_POLL_S, Death, Victim, find_victims
from runner.diagnosis.facts import RunFacts, WorkerExit, worker_exit
from runner.diagnosis.wording import early_death_line, early_oom_line
from runner.rundir import (
    EV_CASE_END,
    EV_CASE_ERROR,
    EV_CASE_START,
    EV_CHILD_EXIT,
    EV_CHILD_START,
    EV_OOM_KILL,
    EV_PHASE,
    EV_SUPERVISOR_START,
    EV_WATCHDOG,
    EV_WORKER_DIED,
    EV_WORKER_EXIT,
    WorkerExitRecord,
)


class EarlyOom:
    """Feed it every event of a run; :meth:`feed` returns the early diagnosis line once, else None."""

    def __init__(self) -> None:
        self.oom_start: int | None = None
        self.oom_last: int | None = None
        self.main_pid: int | None = None
        self.returncode: int | None = None
        self.watchdog = False
        self.exits: list[WorkerExit] = []
        self.exit_phase: dict[int, tuple[str | None, str | None]] = {}
        self.phase: str | None = None
        self.configuration: str | None = None
        self.open_cases: dict[int, str | None] = {}        # worker pid -> the case it holds (agent's case_start)
        self.said: str | None = None
        self.pending_since: float | None = None   # the time of the poll that showed an OOM victim, not yet said

    def feed(self, event: dict) -> str | None:
        if self.said is not None:
            return None
        kind = event.get("event")
        t = event.get("t")
        poll_complete = kind == EV_CHILD_EXIT or (
            self.pending_since is not None and isinstance(t, (int, float)) and t - self.pending_since >= SAME_POLL_S)
        if kind == EV_SUPERVISOR_START:
            self.oom_start = event.get("oom_kill")
            self.oom_last = self.oom_start
        elif kind == EV_CHILD_START:
            self.main_pid = event.get("pid")
        elif kind == EV_PHASE:
            self.phase, self.configuration = event.get("phase"), event.get("configuration")
        elif kind == EV_OOM_KILL:
            count = event.get("count")
            if count is not None:
                self.oom_last = max(self.oom_last or 0, int(count))
        elif kind == EV_WATCHDOG:
            self.watchdog = True
        elif kind == EV_CASE_START and event.get("pid") is not None:
            self.open_cases[event["pid"]] = event.get("case")
        elif kind in (EV_CASE_END, EV_CASE_ERROR) and event.get("pid") is not None:
            if self.open_cases.get(event["pid"]) == event.get("case"):
                self.open_cases.pop(event["pid"], None)
        elif kind == EV_WORKER_EXIT and event.get("pid") is not None:
            record = WorkerExitRecord.from_json(event)
            self.exits.append(worker_exit(record))
            self.exit_phase[record.pid] = (record.phase, record.configuration)
            # A worker exit at a counter rise carries the rise itself (the oom_kill event may come later).
            after = event.get("oom_kill_after")
            if after is not None:
                self.oom_last = max(self.oom_last or 0, int(after))
        elif kind == EV_CHILD_EXIT:
            self.returncode = event.get("returncode")
        elif kind == EV_WORKER_DIED and event.get("worker_pid") is not None:
            said = self._crash(event)
            if said is not None:
                return said
        decided = self._decide()
        if decided is None:
            return None
        line, since = decided
        if not poll_complete:
            if self.pending_since is None:
                self.pending_since = since if since is not None else (t if isinstance(t, (int, float)) else None)
            return None
        self.said = line
        return line

    def _crash(self, event: dict) -> str | None:
        """nnrun's pool saw a worker die of a crash signal: that is certain at once (no OOM kill dies of
        SIGSEGV, SIGBUS, SIGABRT...); a SIGKILL waits for the final report, which reads the OOM counter."""
        code = event.get("exitcode")
        if code is None or code >= 0 or -code not in CRASH_SIGNALS:
            return None
        if self.oom_last is not None and self.oom_last > (self.oom_start or 0):
            return None
        pid = int(event["worker_pid"])
        death = Death("worker", pid, signal=-code, case=event.get("case") or self.open_cases.get(pid),
                      phase=event.get("phase") or self.phase,
                      configuration=event.get("configuration") or self.configuration)
        self.said = early_death_line(death, "crash")
        return self.said

    def _decide(self) -> tuple[str, float | None] | None:
        """The OOM line the events so far give, and the time of the poll that showed its victim."""
        if self.oom_last is None or self.oom_last <= (self.oom_start or 0):
            return None
        kills = self.oom_last - (self.oom_start or 0)
        facts = RunFacts(container_exit_code=None, supervisor_ran=self.returncode is not None,
                         nnunet_returncode=self.returncode, main_pid=self.main_pid, main_ended=None,
                         phase=self.phase, configuration=self.configuration, oom_kill_before=self.oom_start,
                         oom_kill_after=self.oom_last, worker_exits=tuple(self.exits),
                         watchdog_fired=self.watchdog, open_case_pids=frozenset(self.open_cases))
        victims = find_victims(facts, kills)
        if not victims:
            return None
        first = victims[0]
        if first.role == "worker" and first.pid is None:
            return None                    # the counter rose, the process is not known yet
        if first.role == "main" and self.returncode != -signal.SIGKILL:
            return None
        phase, configuration = self.phase, self.configuration
        if first.role == "worker" and first.pid is not None:
            phase, configuration = self.exit_phase.get(first.pid, (phase, configuration))
            case = self.open_cases.get(first.pid)
            first = Victim("worker", first.pid, case, first.t)
        return early_oom_line(first, phase, configuration), first.t
