"""runner.diagnosis.report: the JSON object (against runner/schema/report.schema.json) and the human report."""
from __future__ import annotations

import copy
import json
import signal

import jsonschema
import pytest

from runner import __version__
from runner.diagnosis.report import SCHEMA_VERSION, RunReport, dumps, load_schema, render_human, to_json
from runner.errors import Outcome
from runner.units import MIB

CAP = 1200 * MIB
PEAK = 1186 * MIB


@pytest.fixture(scope="module")
def schema() -> dict:
    s = load_schema()
    jsonschema.Draft202012Validator.check_schema(s)
    return s


@pytest.fixture(scope="module")
def validator(schema):
    return jsonschema.Draft202012Validator(schema)


def context(**kw) -> dict:
    """The context fields of a report of a run that got as far as a container."""
    base = dict(dataset="Dataset501_Demo", configurations=["3d_fullres"], workers={"npfp": 1, "np": {"3d_fullres": 4}},
                nnunet_argv=["nnUNetv2_plan_and_preprocess", "-d", "501", "-c", "3d_fullres", "-np", "4", "-npfp", "1"],
                image="nnrun:0.1.0", image_id="sha256:" + "ab" * 32, run_id="20261125-193158-9bab8d",
                run_dir="/pre/Dataset501_Demo/.nnrun/runs/20261125-193158-9bab8d",
                log_path="/pre/Dataset501_Demo/.nnrun/runs/20261125-193158-9bab8d/nnunet.log",
                limit_bytes=CAP, peak_anon_bytes=PEAK, peak_usage_bytes=CAP, duration_s=5.73,
                engine_oom_killed=False, engine_oom_events=0, cgroup_reader="host", oom_kills=0, oom_source="cgroup")
    base.update(kw)
    return base


def oom_report(**kw) -> RunReport:
    fields = context(
        outcome=Outcome.OOM, engine_oom_killed=True,
        message="the kernel OOM-killed a worker process (pid 69) during preprocessing 3d_fullres",
        phase="preprocessing", configuration="3d_fullres", victim="worker",
        victims=[{"role": "worker", "pid": 69, "case": None}], oom_kills=1, container_exit_code=1,
        cases_in_flight=["case000", "case001", "case002", "case003"], cases_exact=False,
        recommendation_text="use fewer workers for 3d_fullres: -np 2 (was 4)",
        recommendation_argv=["nnrun", "preprocess", "-d", "501", "--mem", "1200m", "-c", "3d_fullres", "-np", "2",
                             "-npfp", "1"],
        removed_outputs=["/pre/Dataset501_Demo/nnUNetPlans_3d_fullres"])
    fields["recommendation"] = " ".join(fields["recommendation_argv"])
    fields.update(kw)
    return RunReport(**fields)


REPORTS = {
    "ok": lambda: RunReport(**context(outcome=Outcome.OK, message="Dataset501_Demo preprocessed (3d_fullres) in 22.0 s",
                                      container_exit_code=0)),
    "bad_input": lambda: RunReport(outcome=Outcome.BAD_INPUT, message="invalid --mem 'abc': give a size like 16g",
                                   hint="see nnrun preprocess --help"),
    "oom": oom_report,
    "oom_main_engine": lambda: oom_report(victim="main", victims=[{"role": "main", "pid": 7, "case": None}],
                                          oom_source="engine", cgroup_reader=None, phase="fingerprint",
                                          configuration=None, recommendation=None, recommendation_argv=None,
                                          container_exit_code=137),
    "oom_thrashing": lambda: oom_report(
        victim=None, victims=[], oom_kills=0, oom_source="thrashing", phase="fingerprint", configuration=None,
        container_exit_code=143, message="nnU-Net thrashed at the 1.2 GiB cap for 10 s during fingerprint extraction",
        thrashing={"since": 1795647719.8, "seconds": 10.1, "reread_rate": 2431.0, "stall_share": None,
                   "limit_bytes": CAP}),
    "error": lambda: RunReport(**context(outcome=Outcome.ERROR, phase="fingerprint", container_exit_code=1,
                                         message="nnU-Net failed during fingerprint extraction: ValueError: operands",
                                         error_detail="ValueError: operands could not be broadcast together",
                                         hint="fix the cause above")),
    "killed": lambda: RunReport(**context(outcome=Outcome.KILLED, phase="fingerprint", container_exit_code=137,
                                          message="nnU-Net was killed by signal 9", hint="run the same command again")),
    "infra": lambda: RunReport(outcome=Outcome.INFRA, message="Docker daemon not reachable at unix:///x.sock"),
    "infra_startup": lambda: RunReport(**context(outcome=Outcome.INFRA, phase="startup", container_exit_code=1,
                                                 message="the container exited with code 1 before nnU-Net ran")),
    "interrupted_int": lambda: RunReport(**context(outcome=Outcome.INTERRUPTED, phase="preprocessing",
                                                   configuration="3d_fullres", interrupt_signal=signal.SIGINT,
                                                   message="interrupted by SIGINT")),
    "interrupted_term": lambda: RunReport(**context(outcome=Outcome.INTERRUPTED, phase="verify",
                                                    interrupt_signal=signal.SIGTERM, message="interrupted by SIGTERM")),
    "bug": lambda: RunReport(outcome=Outcome.BUG, message="RuntimeError: boom", log_path="/cache/nnrun/crash-1.log"),
}
EXPECTED_EXIT = {"ok": 0, "bad_input": 2, "oom": 3, "oom_main_engine": 3, "oom_thrashing": 3, "error": 4, "killed": 5, "infra": 6,
                 "infra_startup": 6, "interrupted_int": 130, "interrupted_term": 143, "bug": 1}


def test_every_outcome_is_covered():
    assert {REPORTS[k]().outcome for k in REPORTS} == set(Outcome)


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_to_json_validates_against_the_schema(name, validator):
    data = to_json(REPORTS[name]())
    validator.validate(data)
    assert data["exit_code"] == EXPECTED_EXIT[name]
    assert data["outcome"] == REPORTS[name]().outcome.value
    assert data["schema_version"] == SCHEMA_VERSION == 5
    assert data["nnrun_version"] == __version__


@pytest.mark.parametrize("name", sorted(REPORTS))
def test_to_json_has_the_documented_keys_and_no_others(name, schema):
    data = to_json(REPORTS[name]())
    assert set(schema["required"]) <= set(data)
    assert set(data) == set(schema["properties"])
    assert "recommendation_text" not in data and "interrupt_signal" not in data


def test_dumps_is_one_line_of_json_equal_to_to_json():
    report = oom_report()
    text = dumps(report)
    assert "\n" not in text
    assert json.loads(text) == to_json(report)


def test_the_schema_rejects_an_oom_report_with_the_wrong_exit_code_or_no_victim(validator):
    good = to_json(oom_report())
    for change in ({"exit_code": 4}, {"victim": None}, {"oom_kills": 0}, {"surprise": 1}):
        bad = copy.deepcopy(good)
        bad.update(change)
        assert not validator.is_valid(bad), change


def test_the_schema_wants_a_thrashing_record_and_no_kill_for_oom_source_thrashing(validator):
    good = to_json(REPORTS["oom_thrashing"]())
    for change in ({"thrashing": None}, {"oom_kills": 1}, {"victim": "main"}):
        bad = copy.deepcopy(good)
        bad.update(change)
        assert not validator.is_valid(bad), change


def test_human_report_of_a_thrashed_run_says_how_long_and_no_kill_count():
    text = render_human(REPORTS["oom_thrashing"]())
    assert "  thrashing:    10 s at the cap (2431 pages read back/s); ended by nnrun" in text
    assert "OOM kills:" not in text and "killed:" not in text


def test_the_schema_rejects_an_ok_report_with_a_phase(validator):
    data = to_json(REPORTS["ok"]())
    data["phase"] = "preprocessing"
    assert not validator.is_valid(data)


def test_exit_code_property_follows_the_outcome():
    assert RunReport(Outcome.INTERRUPTED, "x", interrupt_signal=signal.SIGTERM).exit_code == 143
    assert RunReport(Outcome.INTERRUPTED, "x").exit_code == 130
    assert RunReport(Outcome.OOM, "x").exit_code == 3


# -- render_human ----------------------------------------------------------------

def test_render_human_for_a_worker_oom_names_everything_needed_to_act():
    report = oom_report()
    text = render_human(report)
    lines = text.splitlines()
    head = lines[0].lower()
    assert "oom" in head or "out of memory" in head
    assert report.message in lines[0]
    assert "worker" in text and "69" in text                      # victim role and pid
    assert "preprocessing 3d_fullres" in text                     # phase
    assert "1.2 GiB" in text                                      # cap (1200 MiB)
    assert "1.2 GiB" in [ln for ln in lines if "peak" in ln.lower()][0]   # peak anon
    assert "npfp 1" in text and "3d_fullres=4" in text             # workers
    assert report.recommendation in text                          # the next command
    assert "case000" in text                                      # cases in flight
    assert report.log_path in text


def test_render_human_for_a_main_oom_with_engine_source_says_main_and_unreadable_counter():
    text = render_human(REPORTS["oom_main_engine"]())
    assert "main process" in text
    assert "fingerprint extraction" in text
    assert "engine" in text and "unreadable" in text


def test_render_human_without_recommendation_shows_the_hint():
    text = render_human(REPORTS["killed"]())
    assert "run the same command again" in text
    assert "killed" in text.splitlines()[0].lower()


def test_render_human_for_an_error_shows_the_detail():
    text = render_human(REPORTS["error"]())
    assert "ValueError: operands could not be broadcast together" in text


@pytest.mark.parametrize("name", ["bad_input", "infra"])
def test_render_human_when_nothing_ran_is_a_single_line(name):
    report = REPORTS[name]()
    text = render_human(report)
    assert "\n" not in text
    assert text.startswith("nnrun:")
    assert report.outcome.value in text and report.message in text


def test_render_human_for_infra_after_a_container_ran_is_more_than_one_line():
    text = render_human(REPORTS["infra_startup"]())
    assert len(text.splitlines()) > 1
    assert "nnunet.log" in text


def test_render_human_for_ok_has_no_phase_line():
    text = render_human(REPORTS["ok"]())
    assert "phase:" not in text
    assert "ok" in text.splitlines()[0].lower()
