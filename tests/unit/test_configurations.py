"""runner.configurations and its callers: which -c names are valid, and which configurations nnU-Net skipped.

The planner's rules are nnU-Net 2.8.1's (ExperimentPlanner.plan_experiment): 3d configurations only for
3D images, 3d_lowres only when the 3d_fullres patch holds less than 25 % of the median image's voxels,
3d_cascade_fullres only with 3d_lowres.  A name the plans lack is skipped by nnU-Net with exit 0.
"""
from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from runner.cli import app as cli
from runner.configurations import (
    PLANNER_CONFIGURATIONS,
    check_configurations,
    default_plans_name,
    preprocessed_and_skipped,
    skip_reason,
)
from runner.diagnosis import wording
from runner.diagnosis.report import RunReport, dumps, load_schema, render_human, report_from_json, to_json
from runner.errors import BadInputError, Outcome
from runner.options import DEFAULT_CONFIGURATIONS, PreprocessOptions, validate_configurations
from runner.run.preflight import check_configurations as check_in_folder
from runner.run.preflight import read_plans

# The demo dataset's plans as nnU-Net 2.8.1 wrote them (trimmed): no 3d_lowres, the patch is larger
# than the median image.
DEMO_PLANS = {
    "plans_name": "nnUNetPlans", "experiment_planner_used": "ExperimentPlanner",
    "configurations": {
        "2d": {"data_identifier": "nnUNetPlans_2d", "patch_size": [160, 160],
               "median_image_size_in_voxels": [144.0, 144.0]},
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres", "patch_size": [64, 160, 160],
                       "median_image_size_in_voxels": [62.0, 144.0, 144.0]},
    },
}
# A large dataset: 3d_lowres and the cascade planned.
LARGE_PLANS = {
    "experiment_planner_used": "ExperimentPlanner",
    "configurations": {
        "2d": {}, "3d_fullres": {"patch_size": [128, 128, 128], "median_image_size_in_voxels": [400, 512, 512]},
        "3d_lowres": {"next_stage": "3d_cascade_fullres"},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
    },
}
# Natural images: one slice, nnU-Net plans only 2d.
PLANS_2D = {"experiment_planner_used": "ExperimentPlanner",
            "configurations": {"2d": {"patch_size": [256, 256], "median_image_size_in_voxels": [240, 240]}}}


def refused(configurations, plans, **kw) -> str:
    with pytest.raises(BadInputError) as info:
        check_configurations(tuple(configurations), plans, "nnUNetPlans.json", **kw)
    line = info.value.one_line()
    assert "\n" not in line
    return line


# -- which names -c may take --------------------------------------------------------

def test_nonsense_without_plans_is_refused_listing_the_planner_names():
    line = refused(["nonsense"], None)
    assert "'nonsense'" in line and " ".join(PLANNER_CONFIGURATIONS) in line


def test_every_planner_name_is_valid_without_plans():
    for name in PLANNER_CONFIGURATIONS:
        assert check_configurations((name,), None, "nnUNetPlans.json") is None


def test_nnunet_default_list_is_never_refused():
    # -c not given: nnU-Net's own default, with 3d_lowres the plans may lack; the report says what was skipped
    assert check_configurations(DEFAULT_CONFIGURATIONS, DEMO_PLANS, "nnUNetPlans.json", plans_final=True,
                                default_requested=True) is None


def test_final_plans_are_the_only_valid_names():
    line = refused(["3d_fullres", "nonsense"], DEMO_PLANS, plans_final=True)
    assert "'nonsense'" in line and "valid (the configurations of nnUNetPlans.json): 2d 3d_fullres" in line
    assert "3d_lowres" not in line


def test_a_planner_name_the_final_plans_lack_is_refused_with_the_reason():
    line = refused(["3d_lowres"], DEMO_PLANS, plans_final=True)
    assert line.startswith("-c 3d_lowres: nnUNetPlans.json has none")
    assert "25 %" in line and "64x160x160" in line and "62x144x144" in line
    assert "valid: 2d 3d_fullres" in line


def test_a_3d_configuration_of_2d_images_is_refused_when_the_plans_are_final():
    line = refused(["3d_fullres"], PLANS_2D, plans_final=True)
    assert "2D" in line and "valid: 2d" in line


def test_inheriting_and_custom_configurations_of_the_plans_are_valid():
    assert check_configurations(("3d_cascade_fullres",), LARGE_PLANS, "nnUNetPlans.json", plans_final=True) is None
    custom = {"experiment_planner_used": "ExperimentPlanner",
              "configurations": {**DEMO_PLANS["configurations"], "3d_fullres_bs4": {"inherits_from": "3d_fullres"}}}
    assert check_configurations(("3d_fullres_bs4",), custom, "nnUNetPlans.json", plans_final=True) is None
    # kept by nnU-Net's save_plans when it plans anew: valid then too
    assert check_configurations(("3d_fullres_bs4",), custom, "nnUNetPlans.json") is None


def test_plans_that_may_change_still_allow_the_planner_names():
    assert check_configurations(("3d_lowres",), DEMO_PLANS, "nnUNetPlans.json", plans_final=False) is None
    line = refused(["nonsense"], DEMO_PLANS, plans_final=False)
    assert "2d 3d_fullres 3d_lowres 3d_cascade_fullres" in line


def test_a_custom_planner_may_plan_other_names_and_nnrun_says_so():
    note = check_configurations(("3d_fullres", "my_config"), None, "nnUNetPlans.json", planner="MyPlanner")
    assert note is not None and "my_config" in note and "-pl MyPlanner" in note and "3d_fullres" not in note
    assert check_configurations(("3d_fullres",), None, "nnUNetPlans.json", planner="MyPlanner") is None


def test_a_custom_planner_with_final_plans_is_held_to_them():
    plans = {"experiment_planner_used": "MyPlanner", "configurations": {"my_config": {}}}
    assert check_configurations(("my_config",), plans, "nnUNetPlans.json", planner="MyPlanner",
                                plans_final=True) is None
    line = refused(["other"], plans, planner="MyPlanner", plans_final=True)
    assert "valid (the configurations of nnUNetPlans.json): my_config" in line


# -- when the plans in the folder are final ------------------------------------------

def opts(**kw) -> PreprocessOptions:
    return PreprocessOptions(501, **{"configurations": ("3d_lowres",), **kw})


def test_plans_made_by_the_same_planner_are_final():
    with pytest.raises(BadInputError):
        validate_configurations(opts(), DEMO_PLANS)


@pytest.mark.parametrize("kw", [{"clean": True}, {"gpu_memory_target": 24.0},
                                {"overwrite_target_spacing": (1.0, 1.0, 1.0)},
                                {"planner": "nnUNetPlannerResEncM", "overwrite_plans_name": "nnUNetPlans"}])
def test_options_that_plan_anew_keep_the_planner_names_valid(kw):
    assert validate_configurations(opts(**kw), DEMO_PLANS) is None


def test_a_missing_fingerprint_means_the_plans_may_change():
    assert validate_configurations(opts(), DEMO_PLANS, fingerprint_kept=False) is None


def test_a_shard_run_never_plans():
    with pytest.raises(BadInputError):
        validate_configurations(opts(clean=True), DEMO_PLANS, shard=True)


def test_the_default_list_passes_whatever_the_plans():
    assert validate_configurations(PreprocessOptions(501), PLANS_2D) is None


def test_the_planner_picks_its_own_plans_file():
    assert PreprocessOptions(501).plans_name == "nnUNetPlans"
    assert PreprocessOptions(501, planner="nnUNetPlannerResEncM").plans_name == "nnUNetResEncUNetMPlans"
    assert PreprocessOptions(501, planner="nnUNetPlannerResEncM", overwrite_plans_name="X").plans_name == "X"
    assert default_plans_name("SomeoneElsesPlanner") == "nnUNetPlans"


def test_without_configurations_drops_their_workers():
    o = PreprocessOptions(501, configurations=("2d", "3d_fullres", "3d_lowres"), np=(8, 4, 6))
    assert o.without_configurations(["3d_lowres"]) == PreprocessOptions(501, configurations=("2d", "3d_fullres"),
                                                                          np=(8, 4))
    assert o.without_configurations(["2d", "3d_lowres"]).np == (4,)
    assert o.without_configurations(["2d", "3d_fullres", "3d_lowres"]) is o      # never no configuration
    one = PreprocessOptions(501, configurations=("2d", "3d_lowres"), np=(2,))
    assert one.without_configurations(["3d_lowres"]) == PreprocessOptions(501, configurations=("2d",), np=(2,))


def write_plans(folder: Path, plans: dict | str, fingerprint: bool = True, name: str = "nnUNetPlans") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(plans if isinstance(plans, str) else json.dumps(plans))
    if fingerprint:
        (folder / "dataset_fingerprint.json").write_text("{}")
    return folder


def test_the_folder_check_reads_the_plans(tmp_path):
    folder = write_plans(tmp_path / "Dataset501_Demo", DEMO_PLANS)
    with pytest.raises(BadInputError, match="3d_lowres"):
        check_in_folder(opts(), folder)
    assert check_in_folder(opts(configurations=("2d",)), folder) is None
    assert check_in_folder(opts(), tmp_path / "nothing-here") is None     # not planned yet
    assert check_in_folder(opts(), None) is None                          # no preprocessed folder given
    with pytest.raises(BadInputError):
        check_in_folder(opts(configurations=("nonsense",)), None)


def test_unreadable_plans_count_as_none(tmp_path):
    folder = write_plans(tmp_path / "Dataset501_Demo", "{not json")
    assert read_plans(folder / "nnUNetPlans.json") is None
    assert check_in_folder(opts(), folder) is None


# -- what nnU-Net skipped, and why -------------------------------------------------

def test_the_demo_plans_skip_3d_lowres_with_the_rule_and_its_numbers():
    done, skipped = preprocessed_and_skipped(DEFAULT_CONFIGURATIONS, DEMO_PLANS, "nnUNetPlans.json")
    assert done == ["2d", "3d_fullres"]
    assert [s["configuration"] for s in skipped] == ["3d_lowres"]
    reason = skipped[0]["reason"]
    assert reason.startswith("nnUNetPlans.json has none: nnU-Net plans it only when the 3d_fullres patch holds "
                             "less than 25 % of the voxels of the median image")
    assert "64x160x160 holds 127 % of the median image 62x144x144" in reason


def test_a_3d_lowres_tried_and_dropped_says_so():
    plans = {"experiment_planner_used": "ExperimentPlanner", "configurations": {
        "2d": {}, "3d_fullres": {"patch_size": [64, 64, 64], "median_image_size_in_voxels": [200, 200, 200]}}}
    assert "dropped" in skip_reason("3d_lowres", plans, "nnUNetPlans.json")


def test_2d_images_skip_every_3d_configuration():
    done, skipped = preprocessed_and_skipped(("2d", "3d_fullres", "3d_lowres"), PLANS_2D, "nnUNetPlans.json")
    assert done == ["2d"]
    assert [s["configuration"] for s in skipped] == ["3d_fullres", "3d_lowres"]
    assert all("2D" in s["reason"] for s in skipped)


def test_the_cascade_is_preprocessed_when_planned_and_explained_when_not():
    assert preprocessed_and_skipped(("3d_cascade_fullres",), LARGE_PLANS, "p.json") == (["3d_cascade_fullres"], [])
    reason = skip_reason("3d_cascade_fullres", DEMO_PLANS, "nnUNetPlans.json")
    assert reason == "nnUNetPlans.json has none: nnU-Net plans it only together with 3d_lowres"


def test_without_plans_nothing_counts_as_skipped():
    assert preprocessed_and_skipped(("2d", "nonsense"), None, "p.json") == (["2d", "nonsense"], [])


def test_plans_of_another_planner_get_no_made_up_rule():
    plans = {"experiment_planner_used": "MyPlanner", "configurations": {"2d": {}}}
    assert skip_reason("3d_lowres", plans, "MyPlans.json") == "MyPlans.json has none"


# -- the ok line and the report ------------------------------------------------------

def test_the_ok_line_lists_only_what_was_preprocessed():
    line = wording.ok_message("Dataset502_Natural", ["2d"], 3.0, False, "", ["3d_fullres", "3d_lowres"])
    assert line.startswith("Dataset502_Natural preprocessed (2d; 3d_fullres 3d_lowres skipped: not in the plans)")
    assert "3d" not in line.split("preprocessed (")[1].split(";")[0]
    assert wording.ok_message("D", ["2d", "3d_fullres"], 3.0, False, "") == "D preprocessed (2d 3d_fullres) in 3.0 s"
    nothing = wording.ok_message("D", [], 3.0, False, "", ["3d_lowres"])
    assert nothing.startswith("D: nothing preprocessed") and "3d_lowres" in nothing


def ok_report() -> RunReport:
    _, skipped = preprocessed_and_skipped(DEFAULT_CONFIGURATIONS, DEMO_PLANS, "nnUNetPlans.json")
    return RunReport(outcome=Outcome.OK, message="Dataset501_Demo preprocessed (2d 3d_fullres) in 9.0 s",
                     dataset="Dataset501_Demo", configurations=["2d", "3d_fullres"], configurations_skipped=skipped,
                     workers={"npfp": 2, "np": {"2d": 8, "3d_fullres": 4, "3d_lowres": 8}, "schedule": "fixed"},
                     duration_s=9.0, log_path="/tmp/x/nnunet.log", limit_bytes=4 << 30)


def test_the_human_report_names_each_skipped_configuration_and_its_reason():
    text = render_human(ok_report())
    assert "  skipped:      3d_lowres: nnUNetPlans.json has none: nnU-Net plans it only when" in text
    workers = next(line for line in text.splitlines() if line.startswith("  workers:"))
    assert workers == "  workers:      -npfp 2; -np 2d=8 3d_fullres=4"


def test_the_json_report_carries_the_skipped_list_and_reads_back():
    report = ok_report()
    data = json.loads(dumps(report))
    jsonschema.Draft202012Validator(load_schema()).validate(data)
    assert data["configurations"] == ["2d", "3d_fullres"]
    assert data["configurations_skipped"][0]["configuration"] == "3d_lowres"
    again = report_from_json(data)
    assert again.configurations_skipped == report.configurations_skipped
    assert to_json(again) == data


def test_a_report_without_the_field_reads_back_with_an_empty_list():
    data = to_json(ok_report())
    data.pop("configurations_skipped")
    assert report_from_json(data).configurations_skipped == []


# -- the commands: bad_input before any engine ----------------------------------------

def never_called_engine(*_a, **_k):
    pytest.fail("the container engine was touched although -c is bad")


@pytest.fixture
def no_engine(monkeypatch):
    from runner.run.preprocess import Preprocess as RealPreprocess

    def build(opts, settings, engine_factory, sink=None):
        return RealPreprocess(opts, settings, never_called_engine, sink)
    monkeypatch.setattr("runner.cli.preprocess.Preprocess", build)
    monkeypatch.setattr("runner.engines.docker.engine_factory", lambda runtime: never_called_engine)


def run(argv, capsys):
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("command", [["preprocess", "--skip-file-check"], ["estimate"]])
def test_nonsense_is_bad_input_in_one_line_before_any_engine(command, tiny_raw, tmp_path, no_engine, capsys):
    code, out, err = run([*command, "-d", "501", "--mem", "4g", "-c", "nonsense", "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre"), "--json"], capsys)
    assert code == 2
    data = json.loads(out)
    assert data["outcome"] == "bad_input" and "'nonsense'" in data["message"]
    assert "2d 3d_fullres 3d_lowres 3d_cascade_fullres" in data["message"]
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("nnrun: bad_input: unknown configuration 'nonsense'")
    assert "Traceback" not in err


@pytest.mark.parametrize("command", [["preprocess", "--skip-file-check"], ["estimate"]])
def test_a_configuration_the_plans_lack_is_bad_input(command, tiny_raw, tmp_path, no_engine, capsys):
    write_plans(tmp_path / "pre" / "Dataset501_Tiny", DEMO_PLANS)
    code, out, err = run([*command, "-d", "501", "--mem", "4g", "-c", "3d_lowres", "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre")], capsys)
    assert code == 2 and "Traceback" not in err
    line = (out + err).strip()
    assert "\n" not in line and "-c 3d_lowres: nnUNetPlans.json has none" in line and "valid: 2d 3d_fullres" in line


def test_estimate_reads_the_plans_of_the_planner_given(tiny_raw, tmp_path, no_engine, capsys):
    plans = {**DEMO_PLANS, "experiment_planner_used": "nnUNetPlannerResEncM"}
    write_plans(tmp_path / "pre" / "Dataset501_Tiny", plans, name="nnUNetResEncUNetMPlans")
    code, out, err = run(["estimate", "-d", "501", "--mem", "4g", "-c", "3d_lowres", "-pl", "nnUNetPlannerResEncM",
                          "--raw", str(tiny_raw), "--preprocessed", str(tmp_path / "pre")], capsys)
    assert code == 2 and "-c 3d_lowres: nnUNetResEncUNetMPlans.json has none" in out + err
