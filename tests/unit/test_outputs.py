"""runner.run.outputs: cases in flight, half-written outputs of a failed phase, data identifiers."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from runner.run.outputs import (
    FINGERPRINT_FILE,
    cases_in_flight,
    data_identifier,
    incomplete_outputs,
    new_run_dir,
    remove_paths,
)
from runner.rundir import NNRUN_DIR

CASES = [f"case{i:03d}" for i in range(8)]
OLD = time.time() - 3600


def write_plans(folder: Path, configurations: dict, name: str = "nnUNetPlans") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps({"plans_name": name, "configurations": configurations}))


def make_old(*paths: Path) -> None:
    for p in paths:
        os.utime(p, (OLD, OLD))


@pytest.fixture
def pre(tmp_path) -> Path:
    """A preprocessed dataset folder with nnU-Net 2.8.1's plans (3d_lowres dropped, the cascade inheriting)."""
    folder = tmp_path / "Dataset501_Demo"
    write_plans(folder, {
        "2d": {"data_identifier": "nnUNetPlans_2d"},
        "3d_fullres": {"data_identifier": "nnUNetPlans_3d_fullres"},
        "3d_cascade_fullres": {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"},
    })
    return folder


# -- data_identifier ---------------------------------------------------------------

def test_data_identifier_comes_from_the_plans(tmp_path):
    write_plans(tmp_path, {"3d_fullres": {"data_identifier": "custom_folder"}})
    assert data_identifier(tmp_path, "nnUNetPlans", "3d_fullres") == "custom_folder"


def test_data_identifier_follows_inherits_from(pre):
    assert data_identifier(pre, "nnUNetPlans", "3d_cascade_fullres") == "nnUNetPlans_3d_fullres"


def test_data_identifier_follows_a_chain_of_inheritance(tmp_path):
    write_plans(tmp_path, {"a": {"data_identifier": "A_data"}, "b": {"inherits_from": "a"},
                           "c": {"inherits_from": "b"}})
    assert data_identifier(tmp_path, "nnUNetPlans", "c") == "A_data"


def test_data_identifier_of_a_custom_plans_name(tmp_path):
    write_plans(tmp_path, {"3d_fullres": {"data_identifier": "myPlans_3d_fullres"}}, name="myPlans")
    assert data_identifier(tmp_path, "myPlans", "3d_fullres") == "myPlans_3d_fullres"


@pytest.mark.parametrize("setup", ["no plans", "garbage", "config missing", "no identifier", "parent missing",
                                   "cycle"])
def test_data_identifier_falls_back_to_nnunets_naming_rule(tmp_path, setup):
    if setup == "garbage":
        (tmp_path / "nnUNetPlans.json").write_text("{not json")
    elif setup == "config missing":
        write_plans(tmp_path, {"2d": {"data_identifier": "nnUNetPlans_2d"}})
    elif setup == "no identifier":
        write_plans(tmp_path, {"3d_fullres": {"batch_size": 2}})
    elif setup == "parent missing":
        write_plans(tmp_path, {"3d_fullres": {"inherits_from": "nowhere"}})
    elif setup == "cycle":
        write_plans(tmp_path, {"3d_fullres": {"inherits_from": "x"}, "x": {"inherits_from": "3d_fullres"}})
    assert data_identifier(tmp_path, "nnUNetPlans", "3d_fullres") == "nnUNetPlans_3d_fullres"


# -- cases_in_flight -------------------------------------------------------------

def test_in_preprocessing_the_first_unfinished_sorted_ids_are_in_flight(pre):
    out = pre / "nnUNetPlans_3d_fullres"
    out.mkdir()
    for done in ("case000", "case001", "case003"):
        (out / f"{done}.pkl").write_bytes(b"x")
    (out / "case002.b2nd").write_bytes(b"half")            # started but not finished: no .pkl yet
    shuffled = list(reversed(CASES))
    assert cases_in_flight(shuffled, "preprocessing", "3d_fullres", 2, pre, "nnUNetPlans", None) == \
        ["case002", "case004"]
    assert cases_in_flight(shuffled, "preprocessing", "3d_fullres", 4, pre, "nnUNetPlans", None) == \
        ["case002", "case004", "case005", "case006"]


def test_in_preprocessing_the_folder_comes_from_the_plans(pre):
    # 3d_cascade_fullres writes into 3d_fullres's folder
    out = pre / "nnUNetPlans_3d_fullres"
    out.mkdir()
    (out / "case000.pkl").write_bytes(b"x")
    assert cases_in_flight(CASES, "preprocessing", "3d_cascade_fullres", 1, pre, "nnUNetPlans", 0) == ["case001"]


def test_in_preprocessing_without_outputs_the_first_ids_are_in_flight(pre):
    assert cases_in_flight(CASES, "preprocessing", "2d", 3, pre, "nnUNetPlans", None) == CASES[:3]


def test_when_every_case_is_done_nothing_is_in_flight(pre):
    out = pre / "nnUNetPlans_2d"
    out.mkdir()
    for c in CASES:
        (out / f"{c}.pkl").write_bytes(b"x")
    assert cases_in_flight(CASES, "preprocessing", "2d", 8, pre, "nnUNetPlans", None) == []


@pytest.mark.parametrize("phase", ["fingerprint", "verify"])
def test_in_fingerprint_the_cases_after_the_progress_count_are_in_flight(pre, phase):
    assert cases_in_flight(list(reversed(CASES)), phase, None, 3, pre, "nnUNetPlans", 2) == \
        ["case002", "case003", "case004"]
    assert cases_in_flight(CASES, phase, None, 2, pre, "nnUNetPlans", None) == ["case000", "case001"]
    assert cases_in_flight(CASES, phase, None, 4, pre, "nnUNetPlans", 6) == ["case006", "case007"]


@pytest.mark.parametrize("phase,configuration", [("planning", None), ("startup", None), (None, None),
                                                 ("preprocessing", None)])
def test_other_phases_have_no_cases_in_flight(pre, phase, configuration):
    assert cases_in_flight(CASES, phase, configuration, 4, pre, "nnUNetPlans", 3) == []


# -- incomplete_outputs ------------------------------------------------------------

def test_only_temporary_files_outside_nnrun_are_incomplete(pre):
    (pre / "dataset_fingerprint.json.nnrun-tmp").write_text("{")
    (pre / "nnUNetPlans.json").write_text("{}")                      # final names are complete
    gt = pre / "gt_segmentations"
    gt.mkdir(exist_ok=True)
    (gt / "case000.nii.gz.nnrun-tmp").write_bytes(b"x")
    (gt / "case001.nii.gz").write_bytes(b"x")
    staging = pre / ".nnrun" / "staging" / "nnUNetPlans_3d_fullres"
    staging.mkdir(parents=True)
    (staging / ".nnrun-tmp.case002.b2nd").write_bytes(b"x")          # the next run resumes from staging
    assert incomplete_outputs(pre) == sorted([pre / "dataset_fingerprint.json.nnrun-tmp",
                                              gt / "case000.nii.gz.nnrun-tmp"])


def test_a_missing_folder_lists_nothing(tmp_path):
    assert incomplete_outputs(tmp_path / "nothing") == []


def test_remove_paths_removes_folders_and_files_and_skips_missing_ones(tmp_path):
    folder = tmp_path / "nnUNetPlans_3d_fullres"
    folder.mkdir()
    (folder / "case000.b2nd").write_bytes(b"x")
    file = tmp_path / FINGERPRINT_FILE
    file.write_text("{")
    gone = tmp_path / "gone.json"
    removed = remove_paths([folder, file, gone])
    assert removed == [str(folder), str(file)]
    assert not folder.exists() and not file.exists()


def test_remove_paths_removes_a_symlink_not_its_target(tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    (target / "keep").write_text("x")
    link = tmp_path / "link"
    link.symlink_to(target)
    assert remove_paths([link]) == [str(link)]
    assert (target / "keep").exists() and not link.exists()


def test_new_run_dir_lives_in_the_hidden_folder_and_is_unique(tmp_path):
    run_dir = new_run_dir(tmp_path, "20261125-193158-9bab8d")
    assert run_dir == tmp_path / NNRUN_DIR / "runs" / "20261125-193158-9bab8d"
    assert run_dir.is_dir()
    with pytest.raises(FileExistsError):
        new_run_dir(tmp_path, "20261125-193158-9bab8d")
