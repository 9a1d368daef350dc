"""A run folder read back: the facts of its run, for the live run and after the fact.

``nnrun preprocess`` calls :func:`facts_from_run_folder` with its own readings
(the host monitor's counters, the engine's word); ``nnrun k8s diagnose``
calls :func:`death_in_run_folder` on a pod's run folder on the shared volume,
so that a worker's death reads the same in a pod's diagnosis as in a local
report.  Readers that take a path; the classification and the words are
:mod:`runner.diagnosis`'s.
"""
from __future__ import annotations

from pathlib import Path

from runner.diagnosis import wording
from runner.diagnosis.classify import Verdict, classify
from runner.diagnosis.facts import CaseError, RunFacts, gather_facts, worker_deaths_from_events
from runner.errors import Outcome
from runner.run.telemetry import CaseRecord, case_records
from runner.rundir import AGENT_EVENTS_FILE, SupervisorStatus, read_fault_dumps, read_jsonl, read_status


def facts_from_run_folder(run_dir: Path, status: SupervisorStatus | None, *, host_oom_first: int | None = None,
                          host_oom_last: int | None = None, exit_code: int | None = None,
                          engine_oom_killed: bool = False, engine_oom_events: int = 0,
                          interrupt_signal: int | None = None) -> tuple[RunFacts, list[CaseRecord], bool]:
    """(facts, the agent's per-case records, whether the agent ran) of the run in ``run_dir``."""
    agent_events = read_jsonl(Path(run_dir) / AGENT_EVENTS_FILE)
    records = case_records(agent_events)
    facts = gather_facts(status, host_oom_first=host_oom_first, host_oom_last=host_oom_last, exit_code=exit_code,
                         engine_oom_killed=engine_oom_killed, engine_oom_events=engine_oom_events,
                         interrupt_signal=interrupt_signal,
                         open_cases=tuple((r.pid, r.case) for r in records if r.status == "unfinished"),
                         worker_deaths=worker_deaths_from_events(agent_events),
                         fault_dumps=tuple(read_fault_dumps(run_dir)),
                         case_errors=tuple(CaseError(r.pid, r.case, r.phase, r.configuration, r.error or "")
                                           for r in records if r.status == "error"))
    return facts, records, bool(agent_events)


def death_in_run_folder(run_dir: Path) -> tuple[Verdict, str] | None:
    """(verdict, message) when the run folder shows a process that died of something else than the OOM
    killer (crash, /dev/shm, a kill from outside, an exception on a case); None otherwise or unreadable."""
    status = read_status(Path(run_dir))
    if status is None:
        return None
    facts, _, _ = facts_from_run_folder(Path(run_dir), status)
    verdict = classify(facts)
    if verdict.death is None or verdict.outcome is Outcome.OOM:
        return None
    return verdict, wording.death_message(verdict.death, verdict.reason, facts.peak_shm_bytes, facts.shm_size_bytes)
