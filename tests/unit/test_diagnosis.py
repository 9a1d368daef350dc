"""runner.diagnosis.classify: classify (the outcome table), find_victims and recommend.

The rules come from shared/notes/oom-on-this-machine.md: the cgroup oom_kill
counter is the only evidence of an OOM kill; Docker's OOMKilled flag and oom
events are used only when the counter could not be read; neither "6 feet
under" nor exit code 137 decides on its own.
"""
from __future__ import annotations

import signal
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.diagnosis.advice import Recommendation, recommend
from runner.diagnosis.classify import Verdict, Victim, classify, count_oom_kills, find_victims
from runner.diagnosis.facts import RunFacts, WorkerExit
from runner.diagnosis.wording import PHASES, describe_phase
from runner.errors import EXIT_CODES, Outcome, exit_code_for
from runner.options import PreprocessOptions, validate
from runner.units import GIB, MIB, format_mem_arg, parse_mem

SIX_FEET = "RuntimeError: Some background worker is 6 feet under. Yuck."
DOCUMENTED_EXIT_CODES = {0, 1, 2, 3, 4, 5, 6, 130, 143}


def facts(**overrides) -> RunFacts:
    """A clean, finished run in preprocessing 3d_fullres; override what a test is about."""
    base = dict(container_exit_code=0, supervisor_ran=True, nnunet_returncode=0, main_pid=7, main_ended=100.0,
                phase="preprocessing", configuration="3d_fullres", oom_kill_before=0, oom_kill_after=0)
    base.update(overrides)
    return RunFacts(**base)


def worker_exit(pid: int, t: float, main_alive: bool = True, before: int | None = 0,
                after: int | None = 0) -> WorkerExit:
    return WorkerExit(pid=pid, t=t, main_alive=main_alive, oom_kill_before=before, oom_kill_after=after)


# -- exit codes ----------------------------------------------------------------

@pytest.mark.parametrize("outcome,code", [
    (Outcome.OK, 0), (Outcome.BUG, 1), (Outcome.BAD_INPUT, 2), (Outcome.OOM, 3), (Outcome.ERROR, 4),
    (Outcome.KILLED, 5), (Outcome.INFRA, 6),
])
def test_exit_code_for_each_outcome_is_the_documented_code(outcome, code):
    assert exit_code_for(outcome) == code


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143), (None, 130)])
def test_exit_code_for_interrupted_is_128_plus_signal(signum, code):
    assert exit_code_for(Outcome.INTERRUPTED, signum) == code


def test_every_outcome_has_an_exit_code():
    for outcome in Outcome:
        assert exit_code_for(outcome) in DOCUMENTED_EXIT_CODES
    assert set(EXIT_CODES) == set(Outcome)


# -- classify: the outcome table ------------------------------------------------

def test_clean_run_is_ok():
    v = classify(facts())
    assert v.outcome is Outcome.OK
    assert v.oom_kills == 0 and v.oom_source == "cgroup"
    assert v.victims == () and v.victim is None
    assert exit_code_for(v.outcome) == 0


def test_six_feet_under_with_counter_rise_is_oom_from_cgroup():
    # nnU-Net exits 1 with "6 feet under" after the kernel killed a pool worker.
    f = facts(container_exit_code=1, nnunet_returncode=1, oom_kill_before=0, oom_kill_after=1,
              exception_line=SIX_FEET, worker_exits=(worker_exit(69, 50.0, before=0, after=1),))
    v = classify(f)
    assert v.outcome is Outcome.OOM
    assert v.oom_source == "cgroup" and v.oom_kills == 1
    assert v.victim == "worker" and v.victims[0].pid == 69
    assert exit_code_for(v.outcome) == 3


def test_counter_rise_alone_is_oom_even_when_nnunet_exits_1_without_any_message():
    v = classify(facts(container_exit_code=1, nnunet_returncode=1, oom_kill_before=2, oom_kill_after=3))
    assert v.outcome is Outcome.OOM and v.oom_kills == 1 and v.oom_source == "cgroup"


def test_counter_rise_with_clean_exit_is_still_oom():
    # A killed child whose loss nnU-Net did not notice: the counter still says a process was killed.
    v = classify(facts(oom_kill_before=0, oom_kill_after=1))
    assert v.outcome is Outcome.OOM


def test_six_feet_under_text_without_counter_rise_is_error_not_oom():
    v = classify(facts(container_exit_code=1, nnunet_returncode=1, exception_line=SIX_FEET))
    assert v.outcome is Outcome.ERROR and v.oom_kills == 0


def test_sigkill_of_main_without_counter_rise_is_killed_not_oom():
    v = classify(facts(container_exit_code=137, nnunet_returncode=-9, oom_kill_before=0, oom_kill_after=0))
    assert v.outcome is Outcome.KILLED
    assert exit_code_for(v.outcome) == 5


def test_sigterm_of_main_without_counter_rise_is_killed():
    v = classify(facts(container_exit_code=143, nnunet_returncode=-15))
    assert v.outcome is Outcome.KILLED


def test_container_137_without_supervisor_status_and_no_counter_rise_is_killed():
    f = facts(container_exit_code=137, supervisor_ran=False, nnunet_returncode=None, main_pid=None,
              main_ended=None, phase=None, configuration=None, oom_kill_before=0, oom_kill_after=0)
    assert classify(f).outcome is Outcome.KILLED


def test_container_137_without_status_and_unreadable_counter_and_no_engine_flag_is_killed():
    f = facts(container_exit_code=137, supervisor_ran=False, nnunet_returncode=None, phase=None,
              configuration=None, oom_kill_before=None, oom_kill_after=None)
    v = classify(f)
    assert v.outcome is Outcome.KILLED and v.oom_kills is None and v.oom_source is None


def test_docker_oomkilled_flag_with_readable_unchanged_counter_is_not_oom():
    # cgroup v1: Docker sets OOMKilled / sends oom events when the cgroup merely hits its limit.
    f = facts(container_exit_code=1, nnunet_returncode=1, oom_kill_before=0, oom_kill_after=0,
              engine_oom_killed=True, engine_oom_events=17)
    v = classify(f)
    assert v.outcome is Outcome.ERROR
    assert v.oom_kills == 0 and v.oom_source == "cgroup"


def test_docker_oomkilled_flag_with_readable_unchanged_counter_and_success_is_ok():
    v = classify(facts(engine_oom_killed=True, engine_oom_events=3))
    assert v.outcome is Outcome.OK and v.oom_source == "cgroup"


def test_unreadable_counter_with_engine_flag_and_failure_is_oom_from_engine():
    f = facts(container_exit_code=1, nnunet_returncode=1, oom_kill_before=None, oom_kill_after=None,
              engine_oom_killed=True)
    v = classify(f)
    assert v.outcome is Outcome.OOM
    assert v.oom_source == "engine" and v.oom_kills == 1
    assert v.victim in ("worker", "main")


def test_unreadable_counter_with_engine_oom_events_and_failure_is_oom_from_engine():
    f = facts(container_exit_code=137, nnunet_returncode=-9, oom_kill_before=None, oom_kill_after=None,
              engine_oom_events=2)
    v = classify(f)
    assert v.outcome is Outcome.OOM and v.oom_source == "engine"
    assert v.victim == "main"


def test_unreadable_counter_with_engine_flag_and_success_is_ok():
    f = facts(oom_kill_before=None, oom_kill_after=None, engine_oom_killed=True, engine_oom_events=5)
    v = classify(f)
    assert v.outcome is Outcome.OK
    assert v.oom_kills == 0 and v.oom_source == "engine"


def test_unreadable_counter_without_engine_word_has_no_source():
    assert count_oom_kills(facts(oom_kill_before=None, oom_kill_after=None)) == (None, None)


def test_nnunet_rc1_without_kill_is_error():
    v = classify(facts(container_exit_code=1, nnunet_returncode=1,
                       exception_line="ValueError: operands could not be broadcast together with shapes"))
    assert v.outcome is Outcome.ERROR
    assert exit_code_for(v.outcome) == 4


def test_supervisor_never_ran_and_container_exit_1_is_infra():
    f = facts(container_exit_code=1, supervisor_ran=False, nnunet_returncode=None, main_pid=None,
              phase=None, configuration=None, oom_kill_before=None, oom_kill_after=None)
    v = classify(f)
    assert v.outcome is Outcome.INFRA
    assert exit_code_for(v.outcome) == 6


def test_supervisor_never_ran_and_no_exit_code_is_infra():
    f = facts(container_exit_code=None, supervisor_ran=False, nnunet_returncode=None, phase=None,
              oom_kill_before=None, oom_kill_after=None)
    assert classify(f).outcome is Outcome.INFRA


def test_start_error_is_infra():
    f = facts(container_exit_code=127, supervisor_ran=True, nnunet_returncode=None, main_pid=None,
              phase="startup", configuration=None,
              start_error="[Errno 2] No such file or directory: 'nnUNetv2_plan_and_preprocess'")
    assert classify(f).outcome is Outcome.INFRA


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_signal_is_interrupted(signum, code):
    f = facts(container_exit_code=143, nnunet_returncode=-15, interrupt_signal=signum)
    v = classify(f)
    assert v.outcome is Outcome.INTERRUPTED
    assert exit_code_for(v.outcome, signum) == code


# -- victims ---------------------------------------------------------------------

def test_main_is_the_victim_when_killed_by_sigkill_and_counter_rose():
    f = facts(container_exit_code=137, nnunet_returncode=-9, main_pid=7, main_ended=120.0,
              phase="fingerprint", configuration=None, oom_kill_before=0, oom_kill_after=1)
    v = classify(f)
    assert v.outcome is Outcome.OOM
    assert v.victims == (Victim("main", 7, None, 120.0),)
    assert v.victim == "main"


def test_worker_is_attributed_by_an_exit_in_a_poll_window_where_the_counter_rose():
    f = facts(container_exit_code=1, nnunet_returncode=1, oom_kill_before=0, oom_kill_after=1,
              worker_exits=(worker_exit(76, 40.0, before=0, after=0),     # a normal exit earlier
                            worker_exit(69, 50.0, before=0, after=1),     # the kill
                            worker_exit(68, 50.1, before=1, after=1)))    # pool teardown
    v = classify(f)
    assert [(x.role, x.pid) for x in v.victims] == [("worker", 69)]


def test_worker_exits_after_the_main_process_died_are_not_victims():
    # The main process was killed; its orphaned workers vanish afterwards, in windows
    # in which the counter still rose (the last one could be the same window).
    f = facts(container_exit_code=137, nnunet_returncode=-9, main_pid=7, main_ended=60.0,
              oom_kill_before=0, oom_kill_after=1,
              worker_exits=(worker_exit(33, 55.0, main_alive=False, before=0, after=1),
                            worker_exit(34, 56.0, main_alive=False, before=1, after=1)))
    v = classify(f)
    assert [(x.role, x.pid) for x in v.victims] == [("main", 7)]


def test_two_victims_are_sorted_by_time_and_the_first_is_the_victim():
    f = facts(container_exit_code=137, nnunet_returncode=-9, main_pid=7, main_ended=80.0,
              oom_kill_before=0, oom_kill_after=2,
              worker_exits=(worker_exit(70, 75.0, before=0, after=1),))
    v = classify(f)
    assert [(x.role, x.pid) for x in v.victims] == [("worker", 70), ("main", 7)]
    assert v.victim == "worker"


def test_main_killed_before_the_worker_is_listed_first():
    f = facts(container_exit_code=137, nnunet_returncode=-9, main_pid=7, main_ended=30.0,
              oom_kill_before=0, oom_kill_after=2,
              worker_exits=(worker_exit(70, 75.0, before=1, after=2),))
    v = classify(f)
    assert [x.role for x in v.victims] == ["main", "worker"]
    assert v.victim == "main"


def test_attributed_workers_given_out_of_order_come_out_earliest_first():
    f = facts(container_exit_code=1, nnunet_returncode=1, oom_kill_before=0, oom_kill_after=2,
              worker_exits=(worker_exit(80, 90.0, before=1, after=2), worker_exit(81, 70.0, before=0, after=1)))
    assert [x.pid for x in classify(f).victims] == [81, 80]


def test_counter_rose_without_a_matching_exit_blames_the_first_worker_that_vanished_while_main_lived():
    f = facts(container_exit_code=1, nnunet_returncode=1, oom_kill_before=0, oom_kill_after=1,
              worker_exits=(worker_exit(91, 20.0, before=None, after=None), worker_exit(90, 10.0, before=None,
                                                                                       after=None)))
    v = classify(f)
    assert [(x.role, x.pid) for x in v.victims] == [("worker", 90)]


def test_counter_rose_without_any_worker_exit_still_names_a_worker_victim_without_pid():
    v = classify(facts(container_exit_code=1, nnunet_returncode=1, oom_kill_before=0, oom_kill_after=1))
    assert v.victims == (Victim("worker", None, None, None),)


def test_main_ended_by_the_watchdog_is_not_a_victim():
    # verify hangs after a worker kill; the supervisor's watchdog ends nnU-Net with SIGKILL.
    f = facts(container_exit_code=137, nnunet_returncode=-9, phase="verify", configuration=None,
              oom_kill_before=0, oom_kill_after=1, watchdog_fired=True,
              worker_exits=(worker_exit(40, 12.0, before=0, after=1),))
    v = classify(f)
    assert [(x.role, x.pid) for x in v.victims] == [("worker", 40)]


def test_container_137_without_status_and_counter_rise_makes_main_the_victim():
    f = facts(container_exit_code=137, supervisor_ran=False, nnunet_returncode=None, main_pid=None,
              main_ended=None, phase=None, configuration=None, oom_kill_before=0, oom_kill_after=1)
    v = classify(f)
    assert v.outcome is Outcome.OOM and v.victim == "main"


def test_find_victims_with_no_kills_and_no_main_kill_is_empty():
    assert find_victims(facts(), 0) == ()


# -- the property --------------------------------------------------------------

counters = st.one_of(st.none(), st.integers(min_value=0, max_value=6))
worker_exits = st.lists(st.builds(WorkerExit, pid=st.integers(2, 500), t=st.floats(0, 1000, allow_nan=False),
                                  main_alive=st.booleans(), oom_kill_before=counters, oom_kill_after=counters),
                        max_size=5).map(tuple)
facts_strategy = st.builds(
    RunFacts,
    container_exit_code=st.one_of(st.none(), st.integers(-1, 255)),
    supervisor_ran=st.booleans(),
    nnunet_returncode=st.one_of(st.none(), st.integers(-64, 255)),
    main_pid=st.one_of(st.none(), st.integers(1, 500)),
    main_ended=st.one_of(st.none(), st.floats(0, 1000, allow_nan=False)),
    phase=st.one_of(st.none(), st.sampled_from(PHASES + ("done",))),
    configuration=st.one_of(st.none(), st.sampled_from(("2d", "3d_fullres", "3d_lowres"))),
    oom_kill_before=counters,
    oom_kill_after=counters,
    engine_oom_killed=st.booleans(),
    engine_oom_events=st.integers(0, 20),
    worker_exits=worker_exits,
    interrupt_signal=st.none(),
    exception_line=st.one_of(st.none(), st.just(SIX_FEET)),
    start_error=st.one_of(st.none(), st.just("exec failed")),
    watchdog_fired=st.booleans(),
)


@settings(max_examples=300, deadline=None)
@given(facts_strategy)
def test_classify_is_total_and_oom_iff_the_readable_counter_rose(f):
    v = classify(f)                                   # never raises
    assert isinstance(v, Verdict)
    assert exit_code_for(v.outcome) in DOCUMENTED_EXIT_CODES
    assert v.outcome not in (Outcome.BUG, Outcome.BAD_INPUT, Outcome.INTERRUPTED)
    if f.oom_kill_after is not None:
        rose = f.oom_kill_after > (f.oom_kill_before or 0)
        assert (v.outcome is Outcome.OOM) == rose
        assert v.oom_source == "cgroup"
        # Docker's word is not evidence while the counter is readable.
        flipped = replace(f, engine_oom_killed=not f.engine_oom_killed,
                          engine_oom_events=0 if f.engine_oom_events else 3)
        assert classify(flipped).outcome is v.outcome
    if v.outcome is Outcome.OOM:
        assert v.oom_kills and v.oom_kills >= 1
        assert v.victim in ("worker", "main")
        times = [x.t for x in v.victims if x.t is not None]
        assert times == sorted(times)
        assert all(x.role == "main" or x.pid is None or
                   any(w.pid == x.pid and w.main_alive for w in f.worker_exits) for x in v.victims)


@settings(max_examples=100, deadline=None)
@given(facts_strategy, st.sampled_from((signal.SIGINT, signal.SIGTERM)))
def test_an_interrupt_classifies_as_interrupted_unless_a_sigterm_followed_a_counted_oom_kill(f, signum):
    v = classify(replace(f, interrupt_signal=signum))
    counted = f.oom_kill_after is not None and f.oom_kill_after > (f.oom_kill_before or 0)
    if signum == signal.SIGTERM and counted:
        # systemd's OOMPolicy=stop (a scope's default) SIGTERMs nnrun after the kernel's kill.
        assert v.outcome is Outcome.OOM and v.oom_source == "cgroup"
    else:
        assert v.outcome is Outcome.INTERRUPTED
        assert exit_code_for(v.outcome, signum) in (130, 143)


def test_sigterm_after_a_worker_oom_kill_in_a_systemd_scope_is_oom():
    """What the cgroup v2 guest showed: systemd-run --scope -p MemoryMax=..., a worker OOM-killed, then the
    scope's OOMPolicy=stop SIGTERMed nnrun; the report said 'interrupted' with oom_kills 1."""
    f = facts(oom_kill_before=0, oom_kill_after=1, interrupt_signal=signal.SIGTERM)
    v = classify(f)
    assert v.outcome is Outcome.OOM and v.oom_kills == 1 and v.victim == "worker"
    assert classify(replace(f, interrupt_signal=signal.SIGINT)).outcome is Outcome.INTERRUPTED
    assert classify(replace(f, oom_kill_after=0)).outcome is Outcome.INTERRUPTED


# -- recommend ---------------------------------------------------------------------

OOM_WORKER = Verdict(Outcome.OOM, 1, "cgroup", (Victim("worker", 69, None, 1.0),))
OOM_MAIN = Verdict(Outcome.OOM, 1, "cgroup", (Victim("main", 7, None, 1.0),))
HOST = 24 * GIB


def test_worker_oom_in_preprocessing_halves_np_for_that_configuration_only():
    opts = PreprocessOptions(501, np=(8, 4, 8))
    rec = recommend(OOM_WORKER, "preprocessing", "3d_fullres", opts, 2 * GIB, HOST)
    assert isinstance(rec, Recommendation)
    assert rec.options.workers_per_configuration() == {"2d": 8, "3d_fullres": 2, "3d_lowres": 8}
    assert rec.options.np == (8, 2, 8)
    assert rec.options.npfp == opts.npfp
    assert rec.mem_bytes is None                        # the cap stays: the user's --mem is kept
    assert "-np 2" in rec.text and "3d_fullres" in rec.text
    validate(rec.options)


def test_worker_oom_with_default_np_halves_the_default_of_that_configuration():
    opts = PreprocessOptions(501)                      # nnU-Net defaults 2d 8, 3d_fullres 4, 3d_lowres 8
    rec = recommend(OOM_WORKER, "preprocessing", "3d_fullres", opts, 2 * GIB, HOST)
    assert rec.options.workers_per_configuration() == {"2d": 8, "3d_fullres": 2, "3d_lowres": 8}


def test_worker_oom_with_a_single_np_value_keeps_the_other_configuration():
    opts = PreprocessOptions(501, configurations=("2d", "3d_fullres"), np=(4,))
    rec = recommend(OOM_WORKER, "preprocessing", "3d_fullres", opts, 2 * GIB, HOST)
    assert rec.options.workers_per_configuration() == {"2d": 4, "3d_fullres": 2}
    validate(rec.options)


def test_worker_oom_with_np_4_and_one_configuration_gives_np_2():
    opts = PreprocessOptions(501, configurations=("3d_fullres",), np=(4,), npfp=1)
    rec = recommend(OOM_WORKER, "preprocessing", "3d_fullres", opts, 1200 * MIB, HOST)
    assert rec.options.np == (2,)
    assert rec.options.npfp == 1


@pytest.mark.parametrize("phase", ["fingerprint", "verify"])
def test_oom_in_fingerprint_halves_npfp(phase):
    opts = PreprocessOptions(501, npfp=8, np=(8, 4, 8))
    rec = recommend(OOM_WORKER, phase, None, opts, 4 * GIB, HOST)
    assert rec.options.npfp == 4
    assert rec.options.np == (8, 4, 8)
    assert rec.mem_bytes is None
    assert "-npfp 4" in rec.text


@pytest.mark.parametrize("phase,configuration,opts", [
    ("preprocessing", "3d_fullres", PreprocessOptions(501, configurations=("3d_fullres",), np=(1,))),
    ("fingerprint", None, PreprocessOptions(501, npfp=1)),
    ("planning", None, PreprocessOptions(501)),
])
def test_with_one_worker_already_the_advice_is_1_5_times_the_memory(phase, configuration, opts):
    limit = 1200 * MIB
    rec = recommend(OOM_MAIN, phase, configuration, opts, limit, HOST)
    arg = format_mem_arg(int(limit * 1.5))
    assert rec.options == opts                           # nothing else changes
    assert rec.mem_bytes == parse_mem(arg)
    assert rec.mem_bytes >= int(limit * 1.5)
    assert format_mem_arg(rec.mem_bytes) == arg          # round-trips through --mem
    assert f"--mem {arg}" in rec.text


def test_raise_mem_above_4_gib_uses_whole_gigabytes():
    rec = recommend(OOM_MAIN, "planning", None, PreprocessOptions(501), 6 * GIB, HOST)
    assert rec.mem_bytes == 9 * GIB
    assert "--mem 9g" in rec.text


def test_more_memory_than_the_host_has_gives_no_command():
    rec = recommend(OOM_MAIN, "planning", None, PreprocessOptions(501), 20 * GIB, HOST)
    assert rec is not None
    assert rec.options is None and rec.mem_bytes is None
    assert "host" in rec.text and "more memory" in rec.text


def test_host_memory_unknown_still_recommends_more_memory():
    rec = recommend(OOM_MAIN, "planning", None, PreprocessOptions(501), 20 * GIB, None)
    assert rec.options is not None and rec.mem_bytes == 30 * GIB


@pytest.mark.parametrize("outcome", [o for o in Outcome if o is not Outcome.OOM])
def test_no_recommendation_for_anything_but_oom(outcome):
    verdict = Verdict(outcome, 0, "cgroup")
    assert recommend(verdict, "preprocessing", "3d_fullres", PreprocessOptions(501), GIB, HOST) is None


@settings(max_examples=150, deadline=None)
@given(phase=st.sampled_from(PHASES),
       configuration=st.sampled_from((None, "2d", "3d_fullres", "3d_lowres")),
       np=st.one_of(st.none(), st.lists(st.integers(1, 16), min_size=1, max_size=1),
                    st.lists(st.integers(1, 16), min_size=3, max_size=3)),
       npfp=st.integers(1, 16),
       limit=st.integers(64 * MIB, 64 * GIB))
def test_a_recommendation_always_means_fewer_workers_or_more_memory(phase, configuration, np, npfp, limit):
    opts = validate(PreprocessOptions(501, np=tuple(np) if np else None, npfp=npfp))
    rec = recommend(OOM_WORKER, phase, configuration, opts, limit, None)
    assert rec is not None and rec.text
    new = rec.options
    validate(new)
    fewer = (new.npfp < opts.npfp or
             sum(new.workers_per_configuration().values()) < sum(opts.workers_per_configuration().values()))
    more_memory = rec.mem_bytes is not None and rec.mem_bytes > limit
    assert fewer != more_memory                           # exactly one of the two
    if fewer:
        assert rec.mem_bytes is None                      # same cap: the user's --mem is kept


# -- describe_phase ----------------------------------------------------------------

def test_describe_phase_names_the_configuration_in_preprocessing_only():
    assert describe_phase("preprocessing", "3d_fullres") == "preprocessing 3d_fullres"
    assert describe_phase("fingerprint", None) == "fingerprint extraction"
    assert describe_phase("fingerprint", "3d_fullres") == "fingerprint extraction"
    assert "before" in describe_phase(None, None)


def test_the_oom_message_says_nnrun_was_stopped_after_the_kill():
    from runner.diagnosis.wording import stopped_after_oom_clause
    text = stopped_after_oom_clause(signal.SIGTERM)
    assert "SIGTERM" in text and "OOMPolicy=stop" in text
    assert "signal 77" in stopped_after_oom_clause(77)


def test_a_worker_that_vanished_just_before_the_counter_showed_the_kill_is_the_victim():
    """The cgroup v2 guest, loaded: the worker holding case001 (265 MB) vanished with the counter still 0,
    the counter read 1 0.24 s later, then the pool tore down its idle worker (counter 1 before and after).
    The victim is the worker that held the case, not the idle one seen after the rise."""
    f = facts(phase="fingerprint", configuration=None, nnunet_returncode=1, oom_kill_before=0, oom_kill_after=1,
              worker_exits=(WorkerExit(pid=11, t=909.641, main_alive=True, oom_kill_before=0, oom_kill_after=0,
                                       last_rss_bytes=265_789_440),
                            WorkerExit(pid=10, t=910.070, main_alive=True, oom_kill_before=1, oom_kill_after=1,
                                       last_rss_bytes=20_815_872)),
              open_case_pids=frozenset({11}), open_cases=((11, "case001"),))
    v = classify(f)
    assert v.outcome is Outcome.OOM and v.victim == "worker"
    assert [x.pid for x in v.victims] == [11]
    # A flat-counter exit long before the rise is not a candidate: the idle worker after the rise stays the pick.
    early = replace(f, worker_exits=(replace(f.worker_exits[0], t=900.0), f.worker_exits[1]))
    assert [x.pid for x in classify(early).victims] == [10]


def test_the_worker_holding_the_case_beats_the_idle_one_whose_exit_window_saw_the_rise():
    """The cgroup v2 guest again: the worker holding case001 (255 MB) vanished at .663 with the counter 0 -> 0,
    the idle worker at .748 in the poll where the counter went 0 -> 1.  The kill was the case holder's."""
    f = facts(phase="fingerprint", configuration=None, nnunet_returncode=1, oom_kill_before=0, oom_kill_after=1,
              worker_exits=(WorkerExit(pid=10, t=536.663, main_alive=True, oom_kill_before=0, oom_kill_after=0,
                                       last_rss_bytes=255_561_728),
                            WorkerExit(pid=11, t=536.748, main_alive=True, oom_kill_before=0, oom_kill_after=1,
                                       last_rss_bytes=28_876_800)),
              open_case_pids=frozenset({10}), open_cases=((10, "case001"),))
    v = classify(f)
    assert v.outcome is Outcome.OOM and [x.pid for x in v.victims] == [10]
    # Without a case held and with less RSS, the earlier exit is not preferred over the window's own.
    idle = replace(f, open_case_pids=frozenset(), open_cases=(),
                   worker_exits=(replace(f.worker_exits[0], last_rss_bytes=1_000), f.worker_exits[1]))
    assert [x.pid for x in classify(idle).victims] == [11]
