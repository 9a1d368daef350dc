"""runner.run.telemetry: the agent's per-case log read back (pure, no Docker).

* ``case_records`` pairs each ``case_start`` with the ``case_end`` /
  ``case_error`` of the same worker pid, case, phase and configuration; a start
  without an end is ``unfinished`` (the worker was killed holding it); a line
  cut short by a kill is skipped.
* ``case_held_by`` names the case a worker held at a given time.
* ``JsonlTail`` follows a file another process appends to, returning a line
  only once its newline has been written.
"""
from __future__ import annotations

import json

import pytest

from runner.run.telemetry import JsonlTail, case_finished_last, case_held_by, case_records, unfinished, with_cases
from runner.rundir import parse_jsonl, read_jsonl

PRE = {"phase": "preprocessing", "configuration": "3d_fullres"}
FP = {"phase": "fingerprint", "configuration": None}


def ev(t, kind, case, pid, **extra):
    return {"t": t, "event": kind, "case": case, "pid": pid, **extra}


def _jsonl(events) -> str:
    return "".join(json.dumps(e) + "\n" for e in events)


# A real interleaving: two workers (pids 35, 36) under -np 2, one case fails,
# one worker is OOM-killed holding case002; the fingerprint phase before it.
EVENTS = [
    {"t": 99.0, "event": "agent_start", "pid": 7, "argv": ["nnUNetv2_plan_and_preprocess"]},
    {"t": 99.5, "event": "phase_start", "pid": 7, **FP},
    ev(100.0, "case_start", "case000", 20, **FP),
    ev(100.4, "case_end", "case000", 20, peak_rss_bytes=50_000_000, duration_s=0.4, **FP),
    ev(101.0, "case_start", "case000", 35, **PRE),
    ev(101.0, "case_start", "case001", 36, **PRE),
    ev(101.5, "case_error", "case001", 36, error="ValueError: broadcast", peak_rss_bytes=90_000_000,
       duration_s=0.5, **PRE),
    ev(102.0, "case_end", "case000", 35, peak_rss_bytes=400_000_000, duration_s=1.0, **PRE),
    ev(102.0, "case_start", "case002", 35, **PRE),
    ev(102.1, "case_start", "case003", 36, **PRE),
    ev(103.0, "case_end", "case003", 36, peak_rss_bytes=420_000_000, duration_s=0.9, **PRE),
]


def _by_case_phase(records):
    return {(r.case, r.phase): r for r in records}


def test_case_records_pairs_start_end_error_per_pid():
    records = case_records(EVENTS)
    assert [(r.case, r.phase, r.pid, r.status) for r in records] == [
        ("case000", "fingerprint", 20, "done"),
        ("case000", "preprocessing", 35, "done"),
        ("case001", "preprocessing", 36, "error"),
        ("case002", "preprocessing", 35, "unfinished"),
        ("case003", "preprocessing", 36, "done"),
    ]
    by = _by_case_phase(records)
    fp = by[("case000", "fingerprint")]
    assert (fp.start, fp.end, fp.peak_rss_bytes, fp.duration_s, fp.configuration) == (100.0, 100.4, 50_000_000,
                                                                                      0.4, None)
    done = by[("case000", "preprocessing")]
    assert (done.start, done.end, done.peak_rss_bytes, done.configuration) == (101.0, 102.0, 400_000_000,
                                                                               "3d_fullres")
    err = by[("case001", "preprocessing")]
    assert err.status == "error" and err.error == "ValueError: broadcast" and err.end == 101.5
    assert err.peak_rss_bytes == 90_000_000
    open_ = by[("case002", "preprocessing")]
    assert (open_.start, open_.end, open_.peak_rss_bytes, open_.duration_s) == (102.0, None, None, None)
    assert [r.case for r in unfinished(records)] == ["case002"]


def test_case_records_same_case_in_two_phases_and_two_workers_stay_apart():
    # The same case id, same pid, but fingerprint then preprocessing: two records, not one.
    events = [ev(1.0, "case_start", "case000", 5, **FP), ev(2.0, "case_start", "case000", 5, **PRE),
              ev(3.0, "case_end", "case000", 5, peak_rss_bytes=1, duration_s=1.0, **PRE)]
    records = case_records(events)
    assert [(r.phase, r.status) for r in records] == [("fingerprint", "unfinished"), ("preprocessing", "done")]
    # An end from another pid does not close this pid's start.
    events = [ev(1.0, "case_start", "case000", 5, **PRE),
              ev(2.0, "case_end", "case000", 6, peak_rss_bytes=1, duration_s=1.0, **PRE)]
    statuses = {(r.pid, r.status) for r in case_records(events)}
    assert statuses == {(5, "unfinished"), (6, "done")}


def test_case_end_without_start_takes_its_start_from_the_duration():
    records = case_records([ev(10.0, "case_end", "case004", 37, peak_rss_bytes=123, duration_s=0.25, **PRE)])
    assert len(records) == 1
    assert records[0].start == pytest.approx(9.75) and records[0].end == 10.0 and records[0].status == "done"


def test_truncated_last_line_is_skipped(tmp_path):
    text = _jsonl(EVENTS)
    cut = json.dumps(ev(104.0, "case_end", "case002", 35, peak_rss_bytes=1, duration_s=2.0, **PRE))
    path = tmp_path / "agent.jsonl"
    path.write_text(text + cut[: len(cut) // 2])          # the writer was killed mid-line
    events = read_jsonl(path)
    assert len(events) == len(EVENTS)
    records = case_records(events)
    assert _by_case_phase(records)[("case002", "preprocessing")].status == "unfinished"
    # Garbage, blank lines and non-object JSON are skipped as well.
    assert parse_jsonl('\n  \n[1, 2]\n"x"\n{"event": "a"}\nnot json\n') == [{"event": "a"}]
    assert read_jsonl(tmp_path / "missing.jsonl") == []


def test_malformed_case_events_are_ignored():
    events = [{"event": "case_start", "case": "case000", "t": 1.0},                 # no pid
              {"event": "case_start", "case": "case000", "pid": "x", "t": 1.0},     # pid not a number
              {"event": "case_end", "pid": 3, "case": "case000", "t": "later"},     # t not a number
              {"event": "phase_start", "pid": 3, "t": 1.0}]
    assert case_records(events) == []


def test_case_held_by_at_a_time():
    records = case_records(EVENTS)
    assert case_held_by(records, 35, 101.5) == "case000"
    assert case_held_by(records, 36, 101.2) == "case001"
    assert case_held_by(records, 36, 102.5) == "case003"
    # At the very end of a case the worker no longer holds it (end is exclusive).
    assert case_held_by(records, 35, 102.0) == "case002"
    # Killed while holding case002: any later time (the supervisor notices the exit a poll later).
    assert case_held_by(records, 35, 150.0) == "case002"
    assert case_held_by(records, 35) == "case002"
    # A worker that finished everything holds nothing later; unknown pids and None hold nothing.
    assert case_held_by(records, 36, 150.0) is None
    assert case_held_by(records, 36) is None
    assert case_held_by(records, 999, 101.5) is None
    assert case_held_by(records, None, 101.5) is None


def test_case_finished_last_names_what_a_worker_between_cases_held():
    records = case_records(EVENTS)
    assert case_finished_last(records, 36, 150.0) == "case003"
    assert case_finished_last(records, 36, 102.5) == "case001"      # an errored case ended too
    assert case_finished_last(records, 35, 101.5) is None           # nothing finished yet
    assert case_finished_last(records, None, 150.0) is None


def test_jsonl_tail_returns_lines_only_once_complete(tmp_path):
    path = tmp_path / "events.jsonl"
    tail = JsonlTail(path)
    assert tail.read_new() == []                              # the file does not exist yet
    first, second, third = ({"event": "e", "n": n} for n in range(3))
    line1, line2, line3 = (json.dumps(e) + "\n" for e in (first, second, third))
    with open(path, "ab", buffering=0) as fh:
        fh.write(line1.encode())
        assert tail.read_new() == [first]
        assert tail.read_new() == []                          # nothing new
        fh.write(line2[:7].encode())                          # a partial line
        assert tail.read_new() == []
        fh.write(line2[7:-1].encode())                        # still no newline
        assert tail.read_new() == []
        fh.write(b"\n" + line3[:5].encode())                  # line 2 completes, line 3 starts
        assert tail.read_new() == [second]
        fh.write(line3[5:].encode())
        assert tail.read_new() == [third]
        assert tail.read_new() == []
        # Several lines at once, in order; a multi-byte character split across writes survives.
        many = [{"event": "e", "n": n, "s": "µ"} for n in range(3, 8)]
        blob = "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in many).encode()
        split = blob.index("µ".encode()) + 1                  # inside the two-byte character
        fh.write(blob[:split])
        got = tail.read_new()
        fh.write(blob[split:])
        got += tail.read_new()
        assert got == many


# --------------------------------------------------------------------------- victim attribution
# Two real runs (recorded on this machine, cgroup v1): Dataset502_Mixed (six cases, case002 about
# four times larger: ~1.9 GiB worker peak vs ~0.4 GiB), preprocessing 3d_fullres with -np 2 under a
# 2200m cap, NNRUN_TEST_OOM_VICTIM=worker.  The kernel killed the worker holding case002 both times
# (the largest RSS among equal oom_score_adj); the supervisor's worker_exits and the agent's case
# events are copied from status.json and agent.jsonl.  The run folder's victim must be that worker.

def _pre(t, kind, case, pid, **extra):
    return ev(t, kind, case, pid, **PRE, **extra)


def _agent_events(holder: int, other: int, t0: float) -> list[dict]:
    """The preprocessing case events: `other` does the five small cases, `holder` takes case002."""
    events = [_pre(t0, "case_start", "case000", other),
              _pre(t0 + 0.27, "case_end", "case000", other, peak_rss_bytes=433_000_448, duration_s=0.27),
              _pre(t0 + 0.29, "case_start", "case002", holder)]
    t = t0 + 0.3
    for case in ("case001", "case003", "case004", "case005"):
        events += [_pre(t, "case_start", case, other),
                   _pre(t + 0.12, "case_end", case, other, peak_rss_bytes=433_800_000, duration_s=0.12)]
        t += 0.13
    return events


def _status(worker_exits: list[tuple[int, float, int, int]]) -> dict:
    return {"main_pid": 7, "returncode": 1, "ended": worker_exits[-1][1] + 0.5, "phase": "preprocessing",
            "configuration": "3d_fullres", "oom_kill_start": 0, "oom_kill_end": 1, "watchdog_fired": False,
            "last_exception_line": "RuntimeError: Some background worker is 6 feet under. Yuck.",
            "worker_exits": [{"pid": pid, "t": t, "main_alive": True, "oom_kill_before": before,
                              "oom_kill_after": after, **PRE} for pid, t, before, after in worker_exits]}


def _attribute(status: dict, agent_events: list[dict]):
    """What runner/run/preprocess.py (Preprocess.run and _fill) derives: the verdict and the victims' cases."""

    from runner.diagnosis.classify import classify
    from runner.diagnosis.facts import gather_facts
    from runner.errors import Outcome
    from runner.run.monitor import MonitorSummary
    from runner.rundir import SupervisorStatus

    summary = MonitorSummary(readable=True, cgroup_dir="/sys/fs/cgroup/memory/docker/x", cgroup_version=1, samples=100,
                             limit_bytes=2200 * 2**20, peak_anon_bytes=2_291_000_000, peak_usage_bytes=2200 * 2**20,
                             oom_kill_first=0, oom_kill_last=1, error=None)
    records = case_records(agent_events)
    verdict = classify(gather_facts(SupervisorStatus.from_json(status), host_oom_first=summary.oom_kill_first,
                                    host_oom_last=summary.oom_kill_last, exit_code=1, engine_oom_killed=False,
                                    engine_oom_events=0, interrupt_signal=None,
                                    open_case_pids=frozenset(r.pid for r in records if r.status == "unfinished")))
    assert verdict.outcome is Outcome.OOM and verdict.oom_kills == 1
    victims = [with_cases(v, records) for v in verdict.victims]
    return verdict, victims


def test_victim_is_not_a_process_that_vanished_before_the_oom_kill():
    # Run 1: the kill was counted one poll (50 ms) before the killed worker was seen gone, so no exit
    # lines up with the rise; pid 92 (cmdline of a worker, lived < 50 ms) had exited long before.
    status = _status([(92, 585.003, 0, 0), (68, 589.692, 1, 1), (69, 589.795, 1, 1), (142, 589.795, 1, 1)])
    verdict, victims = _attribute(status, _agent_events(holder=68, other=69, t0=584.686))
    assert victims[0].pid == 68
    assert victims[0].case == "case002"


def test_one_kill_one_victim_the_worker_holding_the_big_case():
    # Run 2: pid 69 (holding case002) was killed; the main process saw it, raised "6 feet under" and
    # terminated the pool within the same 50 ms poll, so idle pid 68 vanished in that window too.
    status = _status([(68, 599.336, 0, 1), (69, 599.336, 0, 1), (138, 599.387, 1, 1)])
    verdict, victims = _attribute(status, _agent_events(holder=69, other=68, t0=595.592))
    assert len(victims) <= verdict.oom_kills
    assert victims[0].pid == 69
    assert victims[0].case == "case002"


def test_victim_attribution_when_the_exit_lines_up_with_the_rise():
    # A third recorded run (2000m): the killed worker is seen gone in the poll of the rise, alone.
    status = _status([(69, 1000.0, 0, 1), (68, 1000.1, 1, 1), (150, 1000.1, 1, 1)])
    verdict, victims = _attribute(status, _agent_events(holder=69, other=68, t0=996.0))
    assert [(v.role, v.pid, v.case) for v in victims] == [("worker", 69, "case002")]


def test_a_worker_killed_between_two_cases_names_the_case_it_had_just_finished():
    # A real run (fault matrix, -npfp 2 at 1g; pids and times copied from its status.json and agent.jsonl):
    # pid 29 finished case000 and, before it took the next case, was OOM-killed with 456 MB still resident;
    # pid 30 (holding case001) died 0.2 s later when nnU-Net tore the pool down; 43 was the pool's
    # replacement worker.  The victim held no case; what it held was case000's memory.
    t0 = 1796490946.589
    agent = [ev(t0, "case_start", "case000", 29, **FP), ev(t0 + 0.381, "case_start", "case001", 30, **FP),
             ev(t0 + 0.543, "case_end", "case000", 29, peak_rss_bytes=577_437_696, duration_s=0.543, **FP)]
    status = {"main_pid": 7, "returncode": 1, "ended": 1796490948.24, **FP, "oom_kill_start": 0,
              "oom_kill_end": 1, "watchdog_fired": False,
              "last_exception_line": "RuntimeError: Some background worker is 6 feet under. Yuck.",
              "worker_exits": [{"pid": pid, "t": t, "main_alive": True, "oom_kill_before": 1, "oom_kill_after": 1,
                                "last_rss_bytes": rss, **FP}
                               for pid, t, rss in ((29, 1796490947.259, 455_741_440), (43, 1796490947.31, 11_591_680),
                                                   (30, 1796490947.464, 461_975_552))]}
    verdict, victims = _attribute(status, agent)
    assert [(v.pid, v.case, v.last_case) for v in victims] == [(29, None, "case000")]
    from runner.diagnosis.wording import oom_message
    text = oom_message(victims[0], "fingerprint", None, ["case001"], True)
    assert "(pid 29) between two cases (it had just finished case000" in text and "case001" in text
