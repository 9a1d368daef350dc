"""runner.diagnosis.early: the OOM diagnosis line as soon as the killed process is known (pure, no Docker).

The early line must agree with the final diagnosis (``runner.diagnosis.classify.find_victims`` over the same
facts) and say nothing that could change: no line without a counter rise, no line before the process
is known, exactly one line per run.
"""
from __future__ import annotations

from runner.diagnosis.classify import classify
from runner.diagnosis.early import EarlyOom
from runner.diagnosis.facts import RunFacts, WorkerExit
from runner.diagnosis.wording import EARLY_SUFFIX, oom_message

PRE = {"phase": "preprocessing", "configuration": "3d_fullres"}
FP = {"phase": "fingerprint", "configuration": None}
# Any event from a later poll: the line is said once the poll that showed the kill is complete.
LATER = {"t": 9.0, "event": "worker_died", "worker_pid": 68, "exitcode": -15}


def _feed(events: list[dict]) -> list[str]:
    early = EarlyOom()
    return [line for line in (early.feed(e) for e in events) if line]


def _start(oom_kill: int = 0) -> list[dict]:
    return [{"t": 1.0, "event": "supervisor_start", "oom_kill": oom_kill},
            {"t": 1.0, "event": "child_start", "pid": 7},
            {"t": 2.0, "event": "phase", **PRE},
            {"t": 2.1, "event": "case_start", "pid": 68, "case": "case000", **PRE},
            {"t": 2.1, "event": "case_start", "pid": 69, "case": "case001", **PRE}]


def test_worker_killed_names_the_worker_and_its_case_once():
    events = _start() + [
        {"t": 5.0, "event": "oom_kill", "count": 1, **PRE},
        {"t": 5.0, "event": "worker_exit", "pid": 69, "main_alive": True, "oom_kill_before": 0,
         "oom_kill_after": 1, "last_rss_bytes": 900, **PRE},
        # nnU-Net notices, the pool goes down, the main process fails: nothing more is said early
        {"t": 5.2, "event": "worker_exit", "pid": 68, "main_alive": True, "oom_kill_before": 1,
         "oom_kill_after": 1, **PRE},
        {"t": 5.5, "event": "child_exit", "returncode": 1, **PRE},
    ]
    lines = _feed(events)
    assert lines == ["nnrun: oom (out of memory): the kernel OOM-killed a worker (pid 69) while preprocessing "
                     f"case001 (3d_fullres) {EARLY_SUFFIX}"]


def test_the_early_line_carries_the_final_reports_message():
    from runner.diagnosis.classify import Victim
    lines = _feed(_start() + [{"t": 5.0, "event": "worker_exit", "pid": 69, "main_alive": True,
                               "oom_kill_before": 0, "oom_kill_after": 1, **PRE}, LATER])
    final = oom_message(Victim("worker", 69, "case001", 5.0), "preprocessing", "3d_fullres", ["case001"], True)
    assert lines == [f"nnrun: oom (out of memory): {final} {EARLY_SUFFIX}"]


def test_no_line_without_a_counter_rise():
    events = _start() + [
        {"t": 5.0, "event": "worker_exit", "pid": 69, "main_alive": True, "oom_kill_before": 0,
         "oom_kill_after": 0, **PRE},
        {"t": 5.5, "event": "child_exit", "returncode": 1, **PRE},
        {"t": 5.6, "event": "child_exit", "returncode": -9, **PRE},
    ]
    assert _feed(events) == []


def test_counter_rise_alone_waits_for_the_process():
    early = EarlyOom()
    for e in _start():
        assert early.feed(e) is None
    assert early.feed({"t": 5.0, "event": "oom_kill", "count": 1, **PRE}) is None
    # the worker is seen gone one poll later (the counter had already risen): the same rule as the report
    assert early.feed({"t": 5.05, "event": "worker_exit", "pid": 68, "main_alive": True, "oom_kill_before": 1,
                       "oom_kill_after": 1, **PRE}) is None
    line = early.feed(LATER)
    assert line and "worker (pid 68) while preprocessing case000 (3d_fullres)" in line


def test_of_workers_vanishing_together_the_one_holding_a_case_is_named():
    events = _start() + [
        {"t": 5.0, "event": "case_end", "pid": 69, "case": "case001", **PRE},
        {"t": 5.0, "event": "worker_exit", "pid": 69, "main_alive": True, "oom_kill_before": 0,
         "oom_kill_after": 1, "last_rss_bytes": 2000, **PRE},
        LATER,
    ]
    early = EarlyOom()
    lines = [ln for ln in (early.feed(e) for e in events) if ln]
    # pid 69 was idle (its case had ended) but is the only exit so far: the final rule names it too
    facts = RunFacts(None, True, 1, 7, None, "preprocessing", "3d_fullres", 0, 1,
                     worker_exits=(WorkerExit(69, 5.0, True, 0, 1, 2000),), open_case_pids=frozenset({68}))
    assert classify(facts).victims[0].pid == 69
    assert lines and "pid 69" in lines[0] and "case001" not in lines[0]


def test_main_process_killed():
    events = _start() + [
        {"t": 5.0, "event": "oom_kill", "count": 1, **PRE},
        {"t": 5.1, "event": "worker_exit", "pid": 69, "main_alive": False, "oom_kill_before": 1,
         "oom_kill_after": 1, **PRE},
        {"t": 5.2, "event": "child_exit", "returncode": -9, **PRE},
    ]
    assert _feed(events) == ["nnrun: oom (out of memory): the kernel OOM-killed nnU-Net's main process during "
                             f"preprocessing 3d_fullres {EARLY_SUFFIX}"]


def test_main_ended_by_the_watchdog_is_not_a_victim():
    events = _start() + [
        {"t": 5.0, "event": "oom_kill", "count": 1, **FP},
        {"t": 9.0, "event": "watchdog", "message": "ending it"},
        {"t": 9.5, "event": "child_exit", "returncode": -9, **FP},
    ]
    assert _feed(events) == []


def test_counter_already_risen_before_the_run_is_not_a_kill():
    events = _start(oom_kill=3) + [
        {"t": 5.0, "event": "worker_exit", "pid": 69, "main_alive": True, "oom_kill_before": 3,
         "oom_kill_after": 3, **PRE},
        {"t": 5.5, "event": "child_exit", "returncode": 0, **PRE},
    ]
    assert _feed(events) == []


def test_fingerprint_worker():
    events = [{"t": 1.0, "event": "supervisor_start", "oom_kill": 0},
              {"t": 1.0, "event": "child_start", "pid": 7},
              {"t": 1.2, "event": "phase", **FP},
              {"t": 1.3, "event": "case_start", "pid": 33, "case": "case004", **FP},
              {"t": 4.0, "event": "worker_exit", "pid": 33, "main_alive": True, "oom_kill_before": 0,
               "oom_kill_after": 1, **FP},
              {"t": 6.0, "event": "child_exit", "returncode": 1, **FP}]
    assert _feed(events) == ["nnrun: oom (out of memory): the kernel OOM-killed a worker (pid 33) while extracting "
                             f"the fingerprint of case004 {EARLY_SUFFIX}"]


def _two_exits_of_one_poll() -> list[dict]:
    # One poll saw two workers gone and the counter up by one; the second line names the likelier victim
    # (it holds a case, the first does not).  The host can read the first line before the second is written.
    return _start() + [
        {"t": 4.0, "event": "case_end", "pid": 68, "case": "case000", **PRE},
        {"t": 5.0, "event": "oom_kill", "count": 1, **PRE},
        {"t": 5.000, "event": "worker_exit", "pid": 68, "main_alive": True, "oom_kill_before": 0,
         "oom_kill_after": 1, "last_rss_bytes": 900, **PRE},
        {"t": 5.001, "event": "worker_exit", "pid": 69, "main_alive": True, "oom_kill_before": 0,
         "oom_kill_after": 1, "last_rss_bytes": 800, **PRE},
    ]


def test_no_line_while_the_poll_that_showed_the_kill_may_still_be_read():
    early = EarlyOom()
    assert [early.feed(e) for e in _two_exits_of_one_poll()] == [None] * len(_two_exits_of_one_poll())
    # an event from the same moment does not end the poll; one from later does
    assert early.feed({"t": 5.02, "event": "worker_start", "pid": 70, **PRE}) is None
    line = early.feed({"t": 5.2, "event": "worker_start", "pid": 71, **PRE})
    assert line and "(pid 69)" in line and "case001" in line
    assert early.feed({"t": 6.0, "event": "child_exit", "returncode": 1, **PRE}) is None   # said once


def test_the_early_line_names_the_victim_the_final_report_names():
    # The CI failure this guards: the early line named the first exit read (pid 65), the report the
    # likelier one of the same poll (pid 67).
    events = _two_exits_of_one_poll() + [{"t": 5.5, "event": "child_exit", "returncode": 1, **PRE}]
    lines = _feed(events)
    facts = RunFacts(None, True, 1, 7, None, "preprocessing", "3d_fullres", 0, 1,
                     worker_exits=(WorkerExit(68, 5.0, True, 0, 1, 900), WorkerExit(69, 5.001, True, 0, 1, 800)),
                     open_case_pids=frozenset({69}))
    final = classify(facts).victims[0].pid
    assert final == 69
    assert len(lines) == 1 and f"(pid {final})" in lines[0]
