"""runner.incontainer.schedule: warm workers, nnU-Net's fixed pool and memory-aware admission (no Docker).

* ``plan_admissions`` (pure): which case runs where, when a worker starts, when an idle one stops.
* The real schedulers over REAL ``spawn`` pools and a picklable stand-in for nnU-Net's preprocessor
  (tests/unit/_schedule_spawn_target.py): a case that needs the cap alone never overlaps another,
  small cases run side by side on a second worker started for them, the phase reaches warm workers,
  a dead worker is fatal with nnU-Net's message, a case's exception fails the run.
* Warm workers: started from ``warm.json``, taken by the matching configuration only.
"""
from __future__ import annotations

import json
import os
import time

import pytest

from runner.incontainer import events as agent_events
from runner.incontainer import schedule as agent_schedule
from runner.incontainer.schedule import MIN_FEEDBACK_RATIO, MemoryModel, plan_admissions, run_fixed, run_memory_aware

PRE = ("preprocessing", "3d_fullres")


# --------------------------------------------------------------------------- plan_admissions (pure)

def _model(**need) -> MemoryModel:
    # free(workers, running) = 1000 - 100 - 50 x workers - sum(need of running)
    return MemoryModel({"cap_bytes": 1000, "main_bytes": 100, "worker_added_bytes": 50, "need_bytes": need}, need)


def test_a_case_that_needs_the_cap_alone_starts_alone():
    m = _model(L=700, M=300, s1=120, s2=120)
    assert plan_admissions(m, ["L", "M", "s1", "s2"], [], idle=0, alive=0, max_workers=2) == [("spawn", "L")]


def test_a_second_worker_starts_as_soon_as_a_case_fits_next_to_the_running_one():
    m = _model(L=700, M=300, s1=120, s2=120)
    # L done; its worker idle: M runs on it, s1 gets a new worker; s2 waits (two workers at most)
    assert plan_admissions(m, ["M", "s1", "s2"], [], idle=1, alive=1, max_workers=2) == [("run", "M"), ("spawn", "s1")]
    assert plan_admissions(m, ["M", "s1", "s2"], [], idle=1, alive=1, max_workers=1) == [("run", "M")]


def test_an_idle_worker_stops_when_the_next_case_only_fits_alone():
    m = _model(L=850, s1=120)
    assert plan_admissions(m, ["L"], [], idle=2, alive=2, max_workers=2) == [("retire", ""), ("run", "L")]
    # too large even alone: it runs anyway (the host refused cases whose point estimate does not fit)
    m = _model(X=2000)
    assert plan_admissions(m, ["X"], [], idle=1, alive=1, max_workers=2) == [("run", "X")]


def test_smaller_cases_fill_the_gap_next_to_a_running_one():
    m = _model(M=300, L2=600, s1=120)
    assert plan_admissions(m, ["L2", "s1"], ["M"], idle=1, alive=2, max_workers=2) == [("run", "s1")]
    assert plan_admissions(m, ["L2"], ["M"], idle=1, alive=2, max_workers=2) == []


def test_a_model_one_plan_is_a_budget_for_the_extras():
    m = MemoryModel({"workers": 2, "budget_bytes": 500, "case_bytes": {"a": 300, "b": 300, "c": 100}}, ["a", "b", "c"])
    assert plan_admissions(m, ["a", "b", "c"], [], idle=2, alive=2, max_workers=2) == [("run", "a"), ("run", "c")]


def _feedback_model(**extra) -> MemoryModel:
    # whole worker baseline 100, margin 10 %: need = extra + 10 % of (100 + extra)
    need = {c: e + round(0.1 * (100 + e)) for c, e in extra.items()}
    return MemoryModel({"cap_bytes": 2000, "main_bytes": 100, "worker_added_bytes": 50, "worker_bytes": 100,
                        "margin": 0.1, "need_bytes": need, "case_bytes": dict(extra), "measured_cases": ["K"]},
                       list(extra))


def test_feedback_packs_tighter_when_the_model_over_predicts():
    m = _feedback_model(L=900, M=900, a=400, b=400, K=400)
    before = dict(m.need)
    assert m.learn("L", 900, ["M", "a", "b", "K"], []) == 0.9        # measured 900 of a predicted 1000...
    assert m.need == before                                           # ...one case is not enough to lower
    assert m.learn("M", 850, ["a", "b", "K"], []) == 0.9             # the worst ratio of the two
    assert m.need["a"] == m.need["b"] == 450 - 100 + 45               # peak 500 * 0.9: 350 extra + 45 margin
    assert m.need["K"] == before["K"]                                 # measured by an earlier run: known
    assert m.need["L"] == before["L"]                                 # finished: not re-predicted


def test_feedback_never_below_the_floor_and_the_worst_ratio_wins():
    m = _feedback_model(L=900, M=900, a=400, b=400)
    m.learn("L", 500, ["M", "a", "b"], [])
    m.learn("M", 500, ["a", "b"], [])                                  # 0.5: floored at MIN_FEEDBACK_RATIO
    assert m.need["a"] == int(MIN_FEEDBACK_RATIO * 500) - 100 + round(0.1 * MIN_FEEDBACK_RATIO * 500)
    assert m.learn("a", 550, ["b"], []) == 1.1                         # under-predicted: the worst ratio wins
    assert m.need["b"] == 550 - 100 + 55


def test_feedback_raises_at_once_and_only_grows_a_running_cases_reservation():
    m = _feedback_model(L=900, a=400, b=400)
    before = m.need["a"]
    m.learn("L", 1200, ["a", "b"], ["a"])                              # 1.2 after one case: raised at once
    assert m.need["a"] == m.need["b"] == 600 - 100 + 60
    m2 = _feedback_model(L=900, M=900, a=400, b=400)
    m2.learn("L", 800, ["M", "a", "b"], ["a"])
    m2.learn("M", 800, ["a", "b"], ["a"])
    assert m2.need["a"] == before and m2.need["b"] < before           # a running case keeps its reservation


def test_no_feedback_without_the_baseline_or_a_peak():
    m = MemoryModel({"cap_bytes": 1000, "main_bytes": 100, "worker_added_bytes": 50, "need_bytes": {"a": 1, "b": 1}},
                    ["a", "b"])
    assert m.learn("a", 500, ["b"], []) is None and m.need["b"] == 1
    assert _feedback_model(a=1, b=1).learn("a", None, ["b"], []) is None


# --------------------------------------------------------------------------- real spawn pools

@pytest.fixture
def agent_env(tmp_path, monkeypatch):
    events = tmp_path / "agent.jsonl"
    monkeypatch.setenv(agent_events.AGENT_EVENTS_ENV, str(events))
    monkeypatch.setenv(agent_schedule.PHASE_ENV, PRE[0])
    monkeypatch.setenv(agent_schedule.CONFIGURATION_ENV, PRE[1])
    monkeypatch.delenv("NNRUN_TEST_KILL_AT", raising=False)
    monkeypatch.setattr(agent_events, "_fd", None)
    monkeypatch.setattr(agent_schedule, "_WARM", None)
    yield tmp_path
    if agent_events._fd is not None:
        os.close(agent_events._fd)
        agent_events._fd = None
    agent_schedule.discard_warm()


def _records(log) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def _overlap(a: dict, b: dict) -> bool:
    return a["start"] < b["end"] and b["start"] < a["end"]


def test_memory_aware_runs_the_large_case_alone_and_small_ones_side_by_side(agent_env):
    import _schedule_spawn_target as target
    log = agent_env / "cases.jsonl"
    cases = {"case000": 0.3, "case001": 0.3, "case002": 0.3, "case003": 0.8, "case004": 0.3, "case005": 0.3}
    args = {c: (str(agent_env / c), s, str(log)) for c, s in cases.items()}
    need = {c: (700 if c == "case003" else 120) for c in cases}
    plan = {"model": 2, "workers": 2, "cap_bytes": 1000, "main_bytes": 100, "worker_added_bytes": 50,
            "need_bytes": need}
    run_memory_aware(target.FakePreprocessor(), args, plan)
    recs = {r["case"]: r for r in _records(log)}
    assert sorted(recs) == sorted(cases)
    large = recs["case003"]
    assert all(not _overlap(large, r) for c, r in recs.items() if c != "case003")     # alone
    assert large["start"] == min(r["start"] for r in recs.values())                    # largest first
    assert len({r["pid"] for r in recs.values()}) == 2                                 # a second worker for the small ones
    assert any(_overlap(a, b) for a in recs.values() for b in recs.values() if a is not b)
    assert {(r["phase"], r["configuration"]) for r in recs.values()} == {PRE}
    schedule = [e for e in _records(agent_env / "agent.jsonl") if e["event"] == "schedule"]
    assert schedule and schedule[0]["order"][0] == "case003" and schedule[0]["model"] == 2


def test_memory_aware_with_one_worker_at_most(agent_env):
    import _schedule_spawn_target as target
    log = agent_env / "cases.jsonl"
    args = {f"case00{i}": (str(agent_env / f"case00{i}"), 0.05, str(log)) for i in range(4)}
    plan = {"model": 2, "workers": 1, "cap_bytes": 10**9, "main_bytes": 1, "worker_added_bytes": 1,
            "need_bytes": {c: 1 for c in args}}
    run_memory_aware(target.FakePreprocessor(), args, plan)
    recs = _records(log)
    assert len(recs) == 4 and len({r["pid"] for r in recs}) == 1


@pytest.mark.parametrize("runner", ["memory", "fixed"])
def test_a_dead_worker_is_fatal_with_nnunets_message(agent_env, runner):
    import _schedule_spawn_target as target
    log = agent_env / "cases.jsonl"
    args = {"case000": (str(agent_env / "case000"), 0.05, str(log), "die"),
            "case001": (str(agent_env / "case001"), 2.0, str(log))}
    with pytest.raises(RuntimeError, match="6 feet under"):
        if runner == "memory":
            run_memory_aware(target.FakePreprocessor(), args, {"model": 2, "workers": 2, "cap_bytes": 10**9,
                                                               "main_bytes": 1, "worker_added_bytes": 1,
                                                               "need_bytes": {"case000": 2, "case001": 1}})
        else:
            run_fixed(target.FakePreprocessor(), args, 2)


@pytest.mark.parametrize("runner", ["memory", "fixed"])
def test_a_failing_case_fails_the_run(agent_env, runner):
    import _schedule_spawn_target as target
    log = agent_env / "cases.jsonl"
    args = {"case000": (str(agent_env / "case000"), 0.05, str(log), "fail")}
    with pytest.raises(ValueError, match="cannot process case000"):
        if runner == "memory":
            run_memory_aware(target.FakePreprocessor(), args, {"model": 2, "workers": 1, "cap_bytes": 10**9,
                                                               "main_bytes": 1, "worker_added_bytes": 1,
                                                               "need_bytes": {"case000": 1}})
        else:
            run_fixed(target.FakePreprocessor(), args, 1)


def _warm(agent_env, configuration: str, kind: str, workers: int) -> list[int]:
    (agent_env / "warm.json").write_text(json.dumps({"configuration": configuration, "kind": kind,
                                                     "workers": workers}))
    agent_schedule.prestart()
    event = [e for e in _records(agent_env / "agent.jsonl") if e["event"] == "warm_workers"][-1]
    assert (event["configuration"], event["pools"], event["workers"]) == (configuration, kind, workers)
    assert len(event["worker_pids"]) == workers
    return event["worker_pids"]


@pytest.mark.parametrize("kind", ["fixed", "memory"])
def test_warm_workers_run_the_first_configuration_with_its_phase(agent_env, monkeypatch, kind):
    import _schedule_spawn_target as target
    monkeypatch.delenv(agent_schedule.PHASE_ENV)          # the warm workers start before any phase is set
    monkeypatch.delenv(agent_schedule.CONFIGURATION_ENV)
    pids = _warm(agent_env, "3d_fullres", kind, 1)
    monkeypatch.setenv(agent_schedule.PHASE_ENV, PRE[0])
    monkeypatch.setenv(agent_schedule.CONFIGURATION_ENV, PRE[1])
    log = agent_env / "cases.jsonl"
    args = {f"case00{i}": (str(agent_env / f"case00{i}"), 0.05, str(log)) for i in range(3)}
    if kind == "fixed":
        run_fixed(target.FakePreprocessor(), args, 1)
    else:
        run_memory_aware(target.FakePreprocessor(), args, {"model": 2, "workers": 1, "cap_bytes": 10**9,
                                                           "main_bytes": 1, "worker_added_bytes": 1,
                                                           "need_bytes": {c: 1 for c in args}})
    recs = _records(log)
    assert len(recs) == 3 and {r["pid"] for r in recs} == set(pids)
    assert {(r["phase"], r["configuration"]) for r in recs} == {PRE}
    assert agent_schedule._WARM is None


def test_warm_workers_of_another_configuration_or_size_are_stopped(agent_env):
    import _schedule_spawn_target as target
    pids = _warm(agent_env, "2d", "fixed", 1)
    log = agent_env / "cases.jsonl"
    args = {"case000": (str(agent_env / "case000"), 0.05, str(log))}
    run_fixed(target.FakePreprocessor(), args, 1)                 # configuration 3d_fullres: a new pool
    assert {r["pid"] for r in _records(log)}.isdisjoint(pids)
    assert agent_schedule._WARM is None
    pids = _warm(agent_env, "3d_fullres", "fixed", 2)
    assert agent_schedule.take_warm("3d_fullres", "fixed", 1) is None
    assert agent_schedule.take_warm("3d_fullres", "fixed", 2) is None         # already stopped


def test_a_warm_worker_that_died_is_fatal(agent_env):
    import signal
    pids = _warm(agent_env, "3d_fullres", "fixed", 1)
    proc = agent_schedule._WARM["procs"][0]
    os.kill(pids[0], signal.SIGKILL)
    proc.join(10)
    # The pool's own handler thread may reap the worker while join() waits (join then returns early, and
    # is_alive() answers True until that thread has stored the exit code): wait for the death to show.
    deadline = time.monotonic() + 10
    while proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(RuntimeError, match="6 feet under"):
        agent_schedule.take_warm("3d_fullres", "fixed", 1)


def test_no_warm_file_no_workers(agent_env):
    agent_schedule.prestart()
    assert agent_schedule._WARM is None
    (agent_env / "warm.json").write_text("{not json")
    agent_schedule.prestart()
    assert agent_schedule._WARM is None
