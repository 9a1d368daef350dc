"""The shard pieces of the agent (runner.incontainer.preprocess) and of the host run (runner.run.preprocess) that need no
nnU-Net and no Docker: clean_folder with ``only_these``, whose ground truth a shard copies, the checks
before a shard run, the shard's environment and its own leftovers.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import blosc2
import numpy as np
import pytest

from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.errors import BadInputError
from runner.incontainer.preprocess import STAGING, TMP_MARK, _gt_copy_is_mine, clean_folder
from runner.options import PreprocessOptions
from runner.run.contract import CONTAINER_PREPROCESSED, container_environment
from runner.run.preflight import check_shard_run, dataset_complete, shard_dataset
from runner.run.preprocess import Preprocess
from runner.run.settings import RunSettings
from runner.shards import (
    PLANS_NAME_ENV,
    SHARD_COUNT_ENV,
    SHARD_INDEX_ENV,
    SHARD_LIST_ENV,
    SHARD_MAP_ENV,
    SKIP_PLANNING_ENV,
    Shard,
    map_path,
)


def write_case(folder: Path, case: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    blosc2.asarray(np.zeros((2, 3, 4), np.float32), urlpath=str(folder / f"{case}.b2nd"), mode="w")
    blosc2.asarray(np.ones((2, 3, 4), np.int8), urlpath=str(folder / f"{case}_seg.b2nd"), mode="w")
    (folder / f"{case}.pkl").write_bytes(b"\x80\x04}\x94.")


def tmp_files_of(case: str) -> list[str]:
    """The temporary names atomic_run_case_save gives a case's files (``.nnrun-tmp.<case>`` + suffix)."""
    return [f"{TMP_MARK}.{case}{suffix}" for suffix in (".b2nd", "_seg.b2nd", ".pkl")]


# -- clean_folder ---------------------------------------------------------------------------------------


def test_clean_folder_keeps_complete_cases_and_drops_incomplete_ones(tmp_path: Path) -> None:
    for case in ("a", "b", "c"):
        write_case(tmp_path, case)
    (tmp_path / "b.pkl").unlink()                         # killed before the pkl rename
    raw = (tmp_path / "c.b2nd").read_bytes()
    (tmp_path / "c.b2nd").write_bytes(raw[: len(raw) // 2])      # cut frame (pkl present)
    assert clean_folder(str(tmp_path), ["a", "b", "c"]) == ["a"]
    left = sorted(os.listdir(tmp_path))
    assert left == ["a.b2nd", "a.pkl", "a_seg.b2nd"]      # b's and c's files are gone


def test_clean_folder_removes_every_temporary_file_without_only_these(tmp_path: Path) -> None:
    write_case(tmp_path, "a")
    for name in tmp_files_of("a") + tmp_files_of("other"):
        (tmp_path / name).write_bytes(b"half")
    assert clean_folder(str(tmp_path), ["a"]) == ["a"]
    assert not [n for n in os.listdir(tmp_path) if TMP_MARK in n]


def test_clean_folder_only_these_leaves_other_shards_temporary_files(tmp_path: Path) -> None:
    write_case(tmp_path, "b")                             # another shard's complete case
    others = tmp_files_of("b") + tmp_files_of("a0")       # "a0": a case name that merely starts with "a"
    for name in others:
        (tmp_path / name).write_bytes(b"being written by another shard")
    (tmp_path / f"{TMP_MARK}.a.b2nd").write_bytes(b"mine, half")
    assert clean_folder(str(tmp_path), ["a"], only_these=True) == []
    for name in others:
        assert (tmp_path / name).exists(), name
    assert not (tmp_path / f"{TMP_MARK}.a.b2nd").exists()
    assert (tmp_path / "b.pkl").exists()                  # other shards' complete cases are untouched


def test_clean_folder_only_these_removes_all_of_its_cases_temporary_files(tmp_path: Path) -> None:
    for name in tmp_files_of("a"):
        (tmp_path / name).write_bytes(b"half")
    clean_folder(str(tmp_path), ["a"], only_these=True)
    assert [n for n in os.listdir(tmp_path) if TMP_MARK in n] == []


# -- _gt_copy_is_mine ------------------------------------------------------------------------------------


@pytest.fixture
def shard_env(tmp_path: Path, monkeypatch):
    assignment = {"case000": 0, "case001": 1, "case002": 0}
    path = tmp_path / "shards.nnUNetPlans.json"
    path.write_text(json.dumps({"schema_version": 1, "shards": 2, "assignment": assignment}))
    monkeypatch.setenv(SHARD_MAP_ENV, str(path))
    monkeypatch.setenv(SHARD_COUNT_ENV, "2")
    monkeypatch.setenv("NNRUN_FILE_ENDING", ".nii.gz")
    monkeypatch.delenv(SHARD_LIST_ENV, raising=False)
    return path


@pytest.mark.parametrize("index,mine", [("0", {"case000", "case002"}), ("1", {"case001"})])
def test_gt_copy_is_mine_follows_the_map(shard_env, monkeypatch, index: str, mine: set[str]) -> None:
    monkeypatch.setenv(SHARD_INDEX_ENV, index)
    for case in ("case000", "case001", "case002"):
        assert _gt_copy_is_mine(f"/data/preprocessed/D/gt_segmentations/{case}.nii.gz") == (case in mine)


def test_gt_copy_is_mine_through_a_shard_list(shard_env, monkeypatch) -> None:
    # A resubmission of shard 1 alone: array index 0 runs list[0] = 1.
    monkeypatch.setenv(SHARD_INDEX_ENV, "0")
    monkeypatch.setenv(SHARD_LIST_ENV, "1")
    assert _gt_copy_is_mine("/x/gt_segmentations/case001.nii.gz")
    assert not _gt_copy_is_mine("/x/gt_segmentations/case000.nii.gz")


def test_gt_copy_of_an_unmapped_case_is_copied(shard_env, monkeypatch) -> None:
    monkeypatch.setenv(SHARD_INDEX_ENV, "1")
    assert _gt_copy_is_mine("/x/gt_segmentations/case999.nii.gz")


def test_gt_copy_without_shards_or_map_is_always_mine(shard_env, monkeypatch) -> None:
    monkeypatch.setenv(SHARD_INDEX_ENV, "1")
    shard_env.unlink()                                    # the map is not written yet
    assert _gt_copy_is_mine("/x/gt_segmentations/case000.nii.gz")
    monkeypatch.delenv(SHARD_COUNT_ENV)                   # not a shard at all
    assert _gt_copy_is_mine("/x/gt_segmentations/case000.nii.gz")


# -- run.py: before a shard run --------------------------------------------------------------------------


def _planned(pre: Path, plans: str = "nnUNetPlans") -> Path:
    pre.mkdir(parents=True, exist_ok=True)
    for name in ("dataset_fingerprint.json", "dataset.json"):
        (pre / name).write_text("{}")
    (pre / f"{plans}.json").write_text(json.dumps({"configurations": {
        "2d": {"data_identifier": f"{plans}_2d"}, "3d_fullres": {"data_identifier": f"{plans}_3d_fullres"}}}))
    return pre


@pytest.mark.parametrize("field,match", [("no_pp", "--no_pp"), ("clean", "--clean"),
                                         ("verify_dataset_integrity", "--verify_dataset_integrity")])
def test_check_shard_run_refuses_global_options(tmp_path: Path, field: str, match: str) -> None:
    opts = PreprocessOptions(dataset_id=501, **{field: True})
    with pytest.raises(BadInputError, match=match):
        check_shard_run(opts, _planned(tmp_path / "D"), "4g")


@pytest.mark.parametrize("missing", ["dataset_fingerprint.json", "nnUNetPlans.json", "dataset.json"])
def test_check_shard_run_needs_the_planning_step(tmp_path: Path, missing: str) -> None:
    pre = _planned(tmp_path / "Dataset501_X")
    (pre / missing).unlink()
    with pytest.raises(BadInputError) as info:
        check_shard_run(PreprocessOptions(dataset_id=501), pre, "12g")
    text = info.value.one_line()
    assert f"missing: {missing}" in text
    assert "nnrun preprocess -d 501 --mem 12g --no_pp" in text


def test_check_shard_run_uses_the_custom_plans_name(tmp_path: Path) -> None:
    pre = _planned(tmp_path / "D")                                  # nnUNetPlans.json only
    with pytest.raises(BadInputError, match="MyPlans.json"):
        check_shard_run(PreprocessOptions(dataset_id=501, overwrite_plans_name="MyPlans"), pre, "4g")
    _planned(pre, "MyPlans")
    check_shard_run(PreprocessOptions(dataset_id=501, overwrite_plans_name="MyPlans"), pre, "4g")


def test_shard_dataset_keeps_only_its_cases_in_order(tmp_path: Path) -> None:
    make_dataset(tmp_path, 501, "T", [CaseSpec((4, 4, 4), (1.0, 1.0, 1.0))] * 5)
    ds = load_raw_dataset(tmp_path, 501)
    ids = [c.case_id for c in ds.cases]
    part = shard_dataset(ds, [ids[3], ids[1], "not_a_case"])
    assert [c.case_id for c in part.cases] == [ids[1], ids[3]]
    assert part.name == ds.name and part.file_ending == ds.file_ending
    assert len(ds.cases) == 5                                        # the original is unchanged


def test_dataset_complete(tmp_path: Path) -> None:
    pre = _planned(tmp_path / "D")
    assert not dataset_complete(pre, "nnUNetPlans", ("2d", "3d_fullres"))          # no folders yet
    (pre / "nnUNetPlans_2d").mkdir()
    assert not dataset_complete(pre, "nnUNetPlans", ("2d", "3d_fullres"))
    (pre / "nnUNetPlans_3d_fullres").mkdir()
    assert dataset_complete(pre, "nnUNetPlans", ("2d", "3d_fullres"))
    # A configuration the plans lack is skipped, as nnU-Net skips it.
    assert dataset_complete(pre, "nnUNetPlans", ("2d", "3d_fullres", "3d_lowres"))
    # A staging folder means some shard has not finished (or not moved it).
    (pre / STAGING / "nnUNetPlans_2d").mkdir(parents=True)
    assert not dataset_complete(pre, "nnUNetPlans", ("2d", "3d_fullres"))
    assert dataset_complete(pre, "nnUNetPlans", ("3d_fullres",))
    assert not dataset_complete(tmp_path / "nothing", "nnUNetPlans", ("2d",))


def test_container_environment_of_a_shard() -> None:
    opts = PreprocessOptions(dataset_id=501, overwrite_plans_name="MyPlans")
    env = container_environment(opts, RunSettings(mem="4g", shard=Shard(2, 5)), ".nii.gz",
                                dataset_name="Dataset501_X")
    assert env[SHARD_INDEX_ENV] == "2" and env[SHARD_COUNT_ENV] == "5"
    assert env[SKIP_PLANNING_ENV] == "1" and env[PLANS_NAME_ENV] == "MyPlans"
    # The map as the agent sees it: the same file the host reads, under the container's preprocessed folder.
    assert env[SHARD_MAP_ENV] == map_path(f"{CONTAINER_PREPROCESSED}/Dataset501_X", "MyPlans")
    assert env[SHARD_MAP_ENV].startswith(env["nnUNet_preprocessed"] + "/Dataset501_X/")


def test_container_environment_without_a_shard_has_no_shard_variables() -> None:
    env = container_environment(PreprocessOptions(dataset_id=501), RunSettings(mem="4g"), ".nii.gz",
                                dataset_name="Dataset501_X")
    for name in (SHARD_INDEX_ENV, SHARD_COUNT_ENV, SHARD_MAP_ENV, SKIP_PLANNING_ENV, PLANS_NAME_ENV):
        assert name not in env


def test_own_leftovers_are_only_this_shards_gt_temporaries(tmp_path: Path) -> None:
    make_dataset(tmp_path / "raw", 501, "T", [CaseSpec((4, 4, 4), (1.0, 1.0, 1.0))] * 3)
    ds = load_raw_dataset(tmp_path / "raw", 501)
    p = Preprocess(PreprocessOptions(dataset_id=501), RunSettings(mem="4g", shard=Shard(0, 2)),
                   lambda: pytest.fail("no engine"))
    p.full_dataset = ds
    ids = [c.case_id for c in ds.cases]
    p.shard_cases = [ids[0], ids[2]]
    gt = tmp_path / "pre" / "gt_segmentations"
    paths = [gt / f"{c}{ds.file_ending}{TMP_MARK}.4711-abcdef" for c in ids]
    paths.append(tmp_path / "pre" / f"dataset_fingerprint.json{TMP_MARK}")
    assert p._own_leftovers(paths) == [paths[0], paths[2]]
