"""Deaths that are not OOM kills (issue: every worker death explained): classification, wording, early line,
the report and --retry after a crash, over plain facts and through Preprocess with a fake engine.

The real signals (SIGSEGV, SIGBUS, SIGABRT, SIGKILL, a full /dev/shm, a worker exception) sent to real
nnU-Net workers are in tests/integration/test_worker_deaths_real.py.
"""
from __future__ import annotations

import json
import signal

import pytest

from runner.diagnosis.classify import classify, find_worker_death
from runner.diagnosis.early import EarlyOom
from runner.diagnosis.facts import CaseError, RunFacts, WorkerDeath, WorkerExit
from runner.diagnosis.report import render_human
from runner.errors import Outcome
from runner.options import PreprocessOptions
from runner.rundir import AGENT_EVENTS_FILE, FAULTS_DIR, FaultDump, parse_fault_dump, read_fault_dumps
from tests.unit.test_run_pure import FakeEngine, assert_report_json_matches, run_fake, status

SIX_FEET = "RuntimeError: Some background worker is 6 feet under. Yuck."
BLOSC2_DUMP = """Fatal Python error: Segmentation fault

Current thread 0x00007f3a1c5fe740 (most recent call first):
  File "/opt/venv/lib/python3.11/site-packages/blosc2/ndarray.py", line 3245 in asarray
  File "/opt/venv/lib/python3.11/site-packages/nnunetv2/preprocessing/default_preprocessor.py", line 240 in run_case_save
  File "/opt/nnrun/runner/incontainer/agent.py", line 70 in wrapped

Extension modules: numpy.core._multiarray_umath, blosc2.blosc2_ext (total: 52)
"""


def facts(**kw) -> RunFacts:
    base = dict(container_exit_code=1, supervisor_ran=True, nnunet_returncode=1, main_pid=7, main_ended=None,
                phase="preprocessing", configuration="3d_fullres", oom_kill_before=0, oom_kill_after=0,
                exception_line=SIX_FEET)
    base.update(kw)
    return RunFacts(**base)


# -- faulthandler dumps ---------------------------------------------------------------------------------

def test_a_dump_gives_the_signal_the_innermost_frame_and_its_library():
    dump = parse_fault_dump(73, BLOSC2_DUMP)
    assert dump == FaultDump(pid=73, signal_name="SIGSEGV", frame="blosc2/ndarray.py:3245 in asarray",
                             library="blosc2")


@pytest.mark.parametrize("words,name", [("Bus error", "SIGBUS"), ("Aborted", "SIGABRT"),
                                        ("Floating-point exception", "SIGFPE"), ("Illegal instruction", "SIGILL")])
def test_every_fatal_signal_faulthandler_names(words, name):
    assert parse_fault_dump(1, f"Fatal Python error: {words}\n\nCurrent thread 0x1 (most recent call first):\n"
                               f'  File "x.py", line 3 in f\n').signal_name == name


def test_empty_dump_files_are_no_crash_and_others_are_read(tmp_path):
    (tmp_path / FAULTS_DIR).mkdir()
    (tmp_path / FAULTS_DIR / "12.log").write_text("")
    (tmp_path / FAULTS_DIR / "73.log").write_text(BLOSC2_DUMP)
    (tmp_path / FAULTS_DIR / "notes.txt").write_text(BLOSC2_DUMP)
    assert [d.pid for d in read_fault_dumps(tmp_path)] == [73]
    assert read_fault_dumps(tmp_path / "nothing-here") == []


# -- classification ---------------------------------------------------------------------------------------

def test_a_worker_segfault_is_an_error_naming_signal_case_and_library():
    f = facts(worker_deaths=(WorkerDeath(73, -11, None, "preprocessing", "3d_fullres"),),
              fault_dumps=(parse_fault_dump(73, BLOSC2_DUMP),), open_cases=((73, "case003"), (74, "case004")))
    v = classify(f)
    assert v.outcome is Outcome.ERROR and v.reason == "crash"
    d = v.death
    assert (d.role, d.pid, d.signal_name, d.case, d.library) == ("worker", 73, "SIGSEGV", "case003", "blosc2")


def test_a_dump_alone_explains_a_fingerprint_worker_of_nnunets_own_pool():
    dump = parse_fault_dump(40, BLOSC2_DUMP.replace("Segmentation fault", "Aborted"))
    f = facts(phase="fingerprint", configuration=None, fault_dumps=(dump,), open_cases=((40, "case001"),),
              worker_exits=(WorkerExit(40, 10.0, True, 0, 0),))
    v = classify(f)
    assert v.outcome is Outcome.ERROR and v.reason == "crash"
    assert (v.death.signal_name, v.death.case, v.death.phase) == ("SIGABRT", "case001", "fingerprint")


def test_the_main_process_dump_is_not_a_worker_death():
    f = facts(fault_dumps=(parse_fault_dump(7, BLOSC2_DUMP),))
    assert find_worker_death(f) is None


def test_sigbus_with_dev_shm_full_is_shared_memory():
    f = facts(worker_deaths=(WorkerDeath(73, -signal.SIGBUS, "case002"),), peak_shm_bytes=8 << 20,
              shm_size_bytes=8 << 20)
    assert classify(f).reason == "shm"
    f = facts(worker_deaths=(WorkerDeath(73, -signal.SIGBUS, "case002"),), peak_shm_bytes=1 << 20,
              shm_size_bytes=64 << 20)
    assert classify(f).reason == "crash"


def test_a_worker_sigkill_without_a_counter_rise_is_killed_from_outside():
    f = facts(worker_deaths=(WorkerDeath(73, -9, None),), open_cases=((73, "case003"),))
    v = classify(f)
    assert v.outcome is Outcome.KILLED and v.reason == "killed" and v.death.case == "case003"


def test_the_oom_counter_wins_over_a_sigkilled_worker():
    f = facts(oom_kill_after=1, worker_deaths=(WorkerDeath(73, -9, None),),
              worker_exits=(WorkerExit(73, 10.0, True, 0, 1),))
    v = classify(f)
    assert v.outcome is Outcome.OOM and v.death is None


def test_a_vanished_worker_behind_nnunets_six_feet_under_is_killed():
    f = facts(phase="fingerprint", configuration=None, open_cases=((41, "case002"),),
              worker_exits=(WorkerExit(42, 11.0, True, 0, 0), WorkerExit(41, 10.0, True, 0, 0)))
    v = classify(f)
    assert v.outcome is Outcome.KILLED and (v.death.pid, v.death.case) == (41, "case002")


def test_a_vanished_worker_without_nnunets_words_is_not_blamed():
    f = facts(exception_line="ValueError: bad plans", worker_exits=(WorkerExit(41, 10.0, True, 0, 0),))
    v = classify(f)
    assert v.outcome is Outcome.ERROR and v.death is None


def test_a_worker_exception_names_its_case_and_last_line():
    err = "RuntimeError: Exception thrown in SimpleITK ImageFileReader_Execute: ... Could not read"
    f = facts(exception_line="RuntimeError: Exception thrown in SimpleITK ImageFileReader_Execute",
              case_errors=(CaseError(55, "case004", "fingerprint", None, err),),
              worker_exits=(WorkerExit(41, 10.0, True, 0, 0),))
    v = classify(f)
    assert v.outcome is Outcome.ERROR and v.reason == "exception"
    assert (v.death.case, v.death.error) == ("case004", err)


def test_a_worker_exit_status_is_an_error():
    v = classify(facts(worker_deaths=(WorkerDeath(73, 3, "case001"),)))
    assert v.outcome is Outcome.ERROR and v.reason == "exit" and v.death.exit_status == 3


@pytest.mark.parametrize("sig,outcome,reason", [(signal.SIGSEGV, Outcome.ERROR, "crash"),
                                                (signal.SIGABRT, Outcome.ERROR, "crash"),
                                                (signal.SIGTERM, Outcome.KILLED, "killed"),
                                                (signal.SIGKILL, Outcome.KILLED, "killed")])
def test_the_main_process_dying_of_a_signal(sig, outcome, reason):
    v = classify(facts(nnunet_returncode=-sig, exception_line=None, phase="planning", configuration=None))
    assert (v.outcome, v.reason, v.death.role, v.death.signal) == (outcome, reason, "main", sig)


# -- early line -----------------------------------------------------------------------------------------------

def feed(events):
    early = EarlyOom()
    return [line for line in (early.feed(e) for e in events) if line]


START = [{"event": "supervisor_start", "oom_kill": 0}, {"event": "child_start", "pid": 7},
         {"event": "phase", "phase": "preprocessing", "configuration": "3d_fullres"},
         {"event": "case_start", "pid": 73, "case": "case003"}]


def test_a_crashed_worker_is_said_at_once():
    lines = feed([*START, {"event": "worker_died", "worker_pid": 73, "exitcode": -11, "phase": "preprocessing",
                           "configuration": "3d_fullres"}])
    assert lines == ["nnrun: error: a worker (pid 73) died of SIGSEGV (segmentation fault) while preprocessing "
                     "case003 (3d_fullres) (full report when nnU-Net has ended)"]


def test_a_sigkilled_worker_waits_for_the_counter():
    assert feed([*START, {"event": "worker_died", "worker_pid": 73, "exitcode": -9}]) == []


# -- the report, through Preprocess ----------------------------------------------------------------------

OPTS2 = PreprocessOptions(501, configurations=("3d_fullres",), np=(2,), npfp=2)


def crash(engine, pid=73, case="case001", exitcode=-11, dump=BLOSC2_DUMP):
    """The container's life: a worker holding ``case`` dies of a signal; nnU-Net's main process says 6 feet under."""
    run_dir = engine.run_dir
    events = [{"t": 1.0, "event": "case_start", "pid": pid, "case": case, "phase": "preprocessing",
               "configuration": "3d_fullres"},
              {"t": 2.0, "event": "worker_died", "pid": 7, "worker_pid": pid, "exitcode": exitcode,
               "phase": "preprocessing", "configuration": "3d_fullres"}]
    (run_dir / AGENT_EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    (run_dir / FAULTS_DIR).mkdir(exist_ok=True)
    (run_dir / FAULTS_DIR / f"{pid}.log").write_text(dump)
    (run_dir / FAULTS_DIR / "74.log").write_text("")
    engine.write_status(status(returncode=1, phase="preprocessing", configuration="3d_fullres",
                               last_exception_line=SIX_FEET, completed_phases=["fingerprint", "planning"]))
    return 1


def test_a_segfault_report_names_everything_and_quotes_six_feet_under(tiny_raw, tmp_path):
    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(crash, exit_code=1), opts=OPTS2)
    assert report.outcome is Outcome.ERROR and report.exit_code == 4 and report.reason == "crash"
    assert (report.signal, report.signal_name, report.victim_case) == (11, "SIGSEGV", "case001")
    assert report.crash_frame == "blosc2/ndarray.py:3245 in asarray" and report.crash_library == "blosc2"
    assert report.victims == [{"role": "worker", "pid": 73, "case": "case001"}]
    text = render_human(report)
    head = text.splitlines()[0]
    assert head.startswith("nnrun: error: a worker (pid 73) died of SIGSEGV (segmentation fault) while "
                           "preprocessing case001 (3d_fullres): a native crash in blosc2")
    assert "6 feet under" not in head
    assert [ln for ln in text.splitlines() if "6 feet under" in ln] == [f'  nnU-Net said: "{SIX_FEET}"']
    assert "-np 1" in report.recommendation and "-npfp 1" in report.recommendation
    assert not (report.run_dir and (tmp_path / "x").exists())
    data = assert_report_json_matches(report)
    assert data["schema_version"] == 5 and data["signal_name"] == "SIGSEGV"
    # the empty dump of the worker that did not crash is tidied away, the real one kept
    faults = sorted(p.name for p in (tmp_path / "pre").rglob(f"{FAULTS_DIR}/*"))
    assert faults == ["73.log"]


def test_a_full_dev_shm_advises_a_larger_shm_size(tiny_raw, tmp_path):
    def shm(engine):
        crash(engine, exitcode=-signal.SIGBUS, dump="")
        engine.write_status(status(returncode=1, phase="preprocessing", configuration="3d_fullres",
                                   last_exception_line=SIX_FEET, peak_shm_bytes=8 << 20, shm_size_bytes=8 << 20))
        return 1
    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(shm, exit_code=1), opts=OPTS2, shm_size="8m")
    assert report.reason == "shm" and report.signal_name == "SIGBUS" and report.exit_code == 4
    assert "shared memory (/dev/shm) was full (8 MiB of 8 MiB in use)" in report.message
    argv = report.recommendation_argv
    # twice the peak at least, as a --mem-style size (64 MiB steps): 64m
    assert argv[argv.index("--shm-size") + 1] == "64m" and argv.count("--shm-size") == 1
    assert_report_json_matches(report)


def test_retry_after_a_crash_that_completes_is_flaky(tiny_raw, tmp_path):
    attempts = []

    def life(engine):
        attempts.append(engine.spec.command)
        if len(attempts) == 1:
            return crash(engine)
        engine.write_status(status())
        return 0
    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(life), opts=OPTS2, retries=1)
    assert report.outcome is Outcome.OK and report.crash_retry == "flaky"
    assert "the crash was flaky, not in case001's data" in report.message
    assert len(report.attempts) == 2 and report.attempts[0]["outcome"] == "error"
    second = attempts[1]
    assert second[second.index("-np") + 1] == "1" and second[second.index("-npfp") + 1] == "1"


def test_retry_after_a_crash_on_the_same_case_is_data_dependent(tiny_raw, tmp_path):
    report, _ = run_fake(tiny_raw, tmp_path, FakeEngine(lambda e: crash(e, pid=80 + e.waits), exit_code=1),
                         opts=OPTS2, retries=1)
    assert report.outcome is Outcome.ERROR and report.crash_retry == "data-dependent"
    assert "crashed again on case001 with one worker: the crash depends on case001's data" in report.message
    assert len(report.attempts) == 2


# -- the same words in nnrun k8s diagnose, from the pod's run folder ----------------------------------------

def test_k8s_diagnose_reads_a_failed_pods_run_folder(tmp_path, capsys):
    from runner.cli import app as cli
    from tests.unit.test_k8s import FIXTURES

    pod = json.loads((FIXTURES / "pod-error.json").read_text())
    run_dir = tmp_path / ".nnrun" / "runs" / pod["metadata"]["name"]
    run_dir.mkdir(parents=True)
    (run_dir / "status.json").write_text(json.dumps(status(returncode=1, phase="preprocessing",
                                                           configuration="3d_fullres", last_exception_line=SIX_FEET)))
    events = [{"t": 1.0, "event": "case_start", "pid": 73, "case": "case007", "phase": "preprocessing",
               "configuration": "3d_fullres"},
              {"t": 2.0, "event": "worker_died", "pid": 7, "worker_pid": 73, "exitcode": -6}]
    (run_dir / AGENT_EVENTS_FILE).write_text("".join(json.dumps(e) + "\n" for e in events))
    code = cli.main(["k8s", "diagnose", str(FIXTURES / "pod-error.json"), "--run-folders", str(tmp_path), "--json"])
    out, err = capsys.readouterr()
    assert code == 4
    assert "a worker (pid 73) died of SIGABRT (abort) while preprocessing case007 (3d_fullres)" in err + out
    # without the run folder: what the exit code alone says
    assert cli.main(["k8s", "diagnose", str(FIXTURES / "pod-error.json")]) == 4
    assert "SIGABRT" not in capsys.readouterr().err


def test_no_space_left_with_dev_shm_full_is_shared_memory_not_the_output_disk():
    err = "OSError: [Errno 28] No space left on device"
    f = facts(exception_line=err, case_errors=(CaseError(55, "case004", "preprocessing", "3d_fullres", err),),
              peak_shm_bytes=63 << 20, shm_size_bytes=64 << 20)
    v = classify(f)
    assert v.outcome is Outcome.ERROR and v.reason == "shm" and v.death.case == "case004"


def test_slurm_status_carries_a_tasks_crash_words(tmp_path, tiny_raw):
    """A Slurm task's JSON is nnrun's own report: its crash message reaches `nnrun slurm status`."""
    from runner.backends.slurm.diagnosis import render_status
    from tests.unit.test_slurm import diag, record, st, task_files

    report, _ = run_fake(tiny_raw, tmp_path / "run", FakeEngine(crash, exit_code=1), opts=OPTS2)
    rec = record(tmp_path)
    task_files(rec, 1, assert_report_json_matches(report), 4)     # the task's JSON: the run's report.json
    d = diag(rec, [st(0, "COMPLETED"), st(1, "FAILED", "4:0", "NonZeroExitCode"), st(2, "COMPLETED")])
    assert d.outcome is Outcome.ERROR and d.failed_shards == [1]
    assert "a worker (pid 73) died of SIGSEGV (segmentation fault) while preprocessing case001" in render_status(d)
