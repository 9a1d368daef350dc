"""runner.merge: does a sharded preprocessed dataset add up, and is it finished properly?

Fixtures: a raw dataset written by runner.demo, and a preprocessed folder
with the global files, plans naming each configuration's data identifier,
ground-truth copies and complete cases made of real blosc2 frames
(``CASE.b2nd``, ``CASE_seg.b2nd``) plus ``CASE.pkl``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import blosc2
import numpy as np
import pytest

from runner.dataset import RawDataset, load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.errors import BadInputError
from runner.incontainer.preprocess import STAGING, TMP_MARK, case_complete
from runner.merge import MergeResult, merge, render_merge, rerun_command
from runner.run.outputs import FINGERPRINT_FILE, GT_FOLDER
from runner.shards import build_map, cases_of, map_path

PLANS = "nnUNetPlans"
# Identifiers that differ from nnU-Net's "<plans>_<configuration>" fallback: merge must read them from the plans.
IDENTS = {"2d": "nnUNetPlans_2d_custom", "3d_fullres": "nnUNetPlans_3d_fullres_custom"}
SPECS = [CaseSpec((8, 7, 5), (1.0, 1.0, 1.0)), CaseSpec((6, 6, 4), (1.0, 1.0, 2.0)),
         CaseSpec((9, 5, 4), (1.0, 1.0, 1.5)), CaseSpec((5, 5, 5), (1.0, 1.0, 1.0))]


def write_case(folder: Path, case: str, shape=(2, 3, 4)) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(case)) % 2 ** 32)
    blosc2.asarray(rng.random(shape, dtype=np.float32), urlpath=str(folder / f"{case}.b2nd"), mode="w")
    blosc2.asarray(np.ones(shape, np.int8), urlpath=str(folder / f"{case}_seg.b2nd"), mode="w")
    (folder / f"{case}.pkl").write_bytes(b"\x80\x04}\x94.")      # pickle of {}


def truncate(path: Path, keep: float = 0.6) -> None:
    raw = path.read_bytes()
    path.write_bytes(raw[: int(len(raw) * keep)])


@dataclass
class Tree:
    dataset: RawDataset
    pre: Path
    cases: list[str]

    def folder(self, configuration: str, staging: bool = False) -> Path:
        return self.pre / STAGING / IDENTS[configuration] if staging else self.pre / IDENTS[configuration]

    def write_map(self, count: int) -> dict:
        m = build_map({c: i + 1 for i, c in enumerate(self.cases)}, count, PLANS, "voxels")
        path = Path(map_path(self.pre, PLANS))
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(m))
        return m


def make_tree(tmp_path: Path, configurations=("2d", "3d_fullres"), complete=True, staging=False) -> Tree:
    raw = tmp_path / "raw"
    make_dataset(raw, 501, "Tiny", SPECS)
    ds = load_raw_dataset(raw, 501)
    pre = tmp_path / "pre" / ds.name
    pre.mkdir(parents=True)
    (pre / FINGERPRINT_FILE).write_text("{}")
    (pre / "dataset.json").write_text(json.dumps(ds.dataset_json))
    plans = {"plans_name": PLANS, "configurations": {c: {"data_identifier": IDENTS[c]} for c in configurations}}
    (pre / f"{PLANS}.json").write_text(json.dumps(plans))
    cases = sorted(c.case_id for c in ds.cases)
    (pre / GT_FOLDER).mkdir()
    for case in cases:
        (pre / GT_FOLDER / f"{case}{ds.file_ending}").write_bytes(b"gt")
    tree = Tree(ds, pre, cases)
    if complete:
        for configuration in configurations:
            for case in cases:
                write_case(tree.folder(configuration, staging), case)
    return tree


# -- case_complete (the agent's, used by merge) -----------------------------------------------------------------------------


def test_case_files_complete_with_real_frames(tmp_path: Path) -> None:
    write_case(tmp_path, "c1")
    assert case_complete(tmp_path, "c1")
    assert not case_complete(tmp_path, "c2")


@pytest.mark.parametrize("missing", ["c1.pkl", "c1.b2nd", "c1_seg.b2nd"])
def test_case_without_one_of_its_files_is_incomplete(tmp_path: Path, missing: str) -> None:
    write_case(tmp_path, "c1")
    (tmp_path / missing).unlink()
    assert not case_complete(tmp_path, "c1")


@pytest.mark.parametrize("name", ["c1.b2nd", "c1_seg.b2nd"])
@pytest.mark.parametrize("keep", [0.0, 0.3, 0.9])
def test_truncated_frame_is_incomplete(tmp_path: Path, name: str, keep: float) -> None:
    write_case(tmp_path, "c1", shape=(16, 16, 16))
    truncate(tmp_path / name, keep)
    assert not case_complete(tmp_path, "c1")


def test_garbage_frame_is_incomplete(tmp_path: Path) -> None:
    write_case(tmp_path, "c1")
    (tmp_path / "c1.b2nd").write_bytes(b"not a blosc2 frame at all" * 20)
    assert not case_complete(tmp_path, "c1")


def test_case_file_that_is_a_folder_is_incomplete(tmp_path: Path) -> None:
    write_case(tmp_path, "c1")
    (tmp_path / "c1.pkl").unlink()
    (tmp_path / "c1.pkl").mkdir()
    assert not case_complete(tmp_path, "c1")


# -- merge: complete -----------------------------------------------------------------------------------


def test_complete_dataset_without_shards(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    result = merge(t.dataset, t.pre, PLANS, None)
    assert result.ok and result.dataset == t.dataset.name
    assert [c.configuration for c in result.configurations] == ["2d", "3d_fullres"]
    for c in result.configurations:
        assert c.data_identifier == IDENTS[c.configuration]
        assert c.location == "final" and c.complete == t.cases and c.incomplete == []
        assert not c.moved_into_place
    assert result.missing_gt == [] and result.incomplete_by_shard == {}
    assert result.shard_count is None and result.skipped_configurations == []


def test_complete_sharded_dataset_reports_the_shard_count(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    t.write_map(3)
    result = merge(t.dataset, t.pre, PLANS, None)
    assert result.ok and result.shard_count == 3 and result.incomplete_by_shard == {}


def test_default_configurations_are_those_the_plans_have(tmp_path: Path) -> None:
    t = make_tree(tmp_path, configurations=("3d_fullres",))
    result = merge(t.dataset, t.pre, PLANS, None)
    assert result.ok and [c.configuration for c in result.configurations] == ["3d_fullres"]


def test_only_the_asked_configurations_are_checked(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    for case in t.cases:
        (t.folder("2d") / f"{case}.pkl").unlink()        # 2d incomplete, but not asked for
    result = merge(t.dataset, t.pre, PLANS, ("3d_fullres",))
    assert result.ok and [c.configuration for c in result.configurations] == ["3d_fullres"]


# -- merge: incomplete ------------------------------------------------------------------------------------


def test_missing_case_is_reported_under_its_shard(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    m = t.write_map(2)
    victim = cases_of(m, 1)[0]
    (t.folder("3d_fullres") / f"{victim}.pkl").unlink()
    result = merge(t.dataset, t.pre, PLANS, None)
    assert not result.ok
    state = {c.configuration: c for c in result.configurations}
    assert state["3d_fullres"].incomplete == [victim]
    assert victim not in state["3d_fullres"].complete
    assert state["2d"].incomplete == []
    assert result.incomplete_by_shard == {1: [victim]}
    assert result.shard_count == 2
    command = rerun_command(result, 501, "8g")
    assert command == "nnrun preprocess -d 501 --mem 8g --shard 1/2"


def test_truncated_frame_counts_as_incomplete(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    m = t.write_map(2)
    victim = cases_of(m, 0)[-1]
    truncate(t.folder("2d") / f"{victim}_seg.b2nd")
    result = merge(t.dataset, t.pre, PLANS, None)
    assert not result.ok
    assert {c.configuration: c.incomplete for c in result.configurations}["2d"] == [victim]
    assert result.incomplete_by_shard == {0: [victim]}


def test_incomplete_cases_of_several_shards_give_one_command_each(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    m = t.write_map(3)
    a, b = cases_of(m, 0)[0], cases_of(m, 2)[0]
    (t.folder("2d") / f"{a}.pkl").unlink()
    (t.folder("3d_fullres") / f"{b}.b2nd").unlink()
    result = merge(t.dataset, t.pre, PLANS, None)
    assert result.incomplete_by_shard == {0: [a], 2: [b]}
    assert rerun_command(result, 501) == ("nnrun preprocess -d 501 --mem SIZE --shard 0/3; "
                                          "nnrun preprocess -d 501 --mem SIZE --shard 2/3")


def test_missing_ground_truth_is_incomplete_and_names_its_shard(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    m = t.write_map(2)
    victim = cases_of(m, 0)[0]
    (t.pre / GT_FOLDER / f"{victim}{t.dataset.file_ending}").unlink()
    result = merge(t.dataset, t.pre, PLANS, None)
    assert not result.ok and result.missing_gt == [victim]
    assert result.incomplete_by_shard == {0: [victim]}
    assert all(not c.incomplete for c in result.configurations)


def test_missing_configuration_folder(tmp_path: Path) -> None:
    t = make_tree(tmp_path, complete=False)
    for case in t.cases:
        write_case(t.folder("2d"), case)
    result = merge(t.dataset, t.pre, PLANS, None)
    state = {c.configuration: c for c in result.configurations}
    assert state["3d_fullres"].location == "missing" and state["3d_fullres"].incomplete == t.cases
    assert state["2d"].location == "final" and not state["2d"].incomplete
    assert not result.ok


def test_unsharded_incomplete_dataset_gets_a_plain_rerun(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    victim = t.cases[2]
    (t.folder("2d") / f"{victim}.b2nd").unlink()
    result = merge(t.dataset, t.pre, PLANS, None)
    assert result.shard_count is None
    assert result.incomplete_by_shard == {-1: [victim]}
    assert rerun_command(result, 501, "4g") == "nnrun preprocess -d 501 --mem 4g"


def test_garbled_shard_map_is_ignored(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    path = Path(map_path(t.pre, PLANS))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("{garbled")
    victim = t.cases[0]
    (t.folder("2d") / f"{victim}.pkl").unlink()
    result = merge(t.dataset, t.pre, PLANS, None)
    assert result.shard_count is None and result.incomplete_by_shard == {-1: [victim]}


def test_configuration_not_in_the_plans_is_skipped_and_not_ok(tmp_path: Path) -> None:
    t = make_tree(tmp_path)                            # plans: 2d, 3d_fullres
    result = merge(t.dataset, t.pre, PLANS, ("3d_fullres", "3d_lowres"))
    assert result.skipped_configurations == ["3d_lowres"]
    assert [c.configuration for c in result.configurations] == ["3d_fullres"]
    assert not result.ok
    assert "3d_lowres" in render_merge(result, "")


@pytest.mark.parametrize("missing", [FINGERPRINT_FILE, f"{PLANS}.json", "dataset.json"])
def test_refuses_before_the_planning_step(tmp_path: Path, missing: str) -> None:
    t = make_tree(tmp_path)
    (t.pre / missing).unlink()
    with pytest.raises(BadInputError, match=missing.replace(".", r"\.")) as info:
        merge(t.dataset, t.pre, PLANS, None)
    assert "--no_pp" in info.value.one_line()


def test_refuses_unreadable_plans(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    (t.pre / f"{PLANS}.json").write_text('{"no": "configurations"}')
    with pytest.raises(BadInputError, match="cannot read"):
        merge(t.dataset, t.pre, PLANS, None)


def test_other_plans_name(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    (t.pre / f"{PLANS}.json").rename(t.pre / "MyPlans.json")
    assert merge(t.dataset, t.pre, "MyPlans", None).ok
    with pytest.raises(BadInputError):
        merge(t.dataset, t.pre, PLANS, None)


# -- merge: staging --------------------------------------------------------------------------------------


def test_complete_staging_folder_is_moved_into_place(tmp_path: Path) -> None:
    t = make_tree(tmp_path, staging=True)
    t.write_map(2)
    result = merge(t.dataset, t.pre, PLANS, None)
    assert result.ok
    for c in result.configurations:
        assert c.moved_into_place and c.location == "final"
        assert not t.folder(c.configuration, staging=True).exists()
        assert all(case_complete(t.folder(c.configuration), case) for case in t.cases)
    assert "moved into place" in render_merge(result, "")
    # A second merge finds everything in place and moves nothing.
    again = merge(t.dataset, t.pre, PLANS, None)
    assert again.ok and not any(c.moved_into_place for c in again.configurations)


def test_complete_staging_replaces_an_older_final_folder(tmp_path: Path) -> None:
    t = make_tree(tmp_path, staging=True)
    stale = t.folder("2d")
    stale.mkdir()
    (stale / "stale_from_an_earlier_run.txt").write_text("old")
    assert merge(t.dataset, t.pre, PLANS, ("2d",)).ok
    assert not (t.folder("2d") / "stale_from_an_earlier_run.txt").exists()
    assert case_complete(t.folder("2d"), t.cases[0])


def test_incomplete_staging_folder_stays_in_staging(tmp_path: Path) -> None:
    t = make_tree(tmp_path, staging=True)
    m = t.write_map(2)
    victim = cases_of(m, 1)[-1]
    (t.folder("2d", staging=True) / f"{victim}.pkl").unlink()
    result = merge(t.dataset, t.pre, PLANS, None)
    state = {c.configuration: c for c in result.configurations}
    assert state["2d"].location == "staging" and not state["2d"].moved_into_place
    assert t.folder("2d", staging=True).is_dir() and not t.folder("2d").exists()
    assert state["3d_fullres"].moved_into_place               # that one was complete
    assert result.incomplete_by_shard == {1: [victim]}


def test_staging_takes_precedence_over_a_final_folder(tmp_path: Path) -> None:
    # A folder in staging means a run is (or was) redoing it: its state, not the old final one, counts.
    t = make_tree(tmp_path)
    staging = t.folder("2d", staging=True)
    write_case(staging, t.cases[0])
    result = merge(t.dataset, t.pre, PLANS, ("2d",))
    state = result.configurations[0]
    assert state.location == "staging" and state.complete == [t.cases[0]]
    assert not result.ok


# -- merge: temporary files ------------------------------------------------------------------------------


def test_temporary_files_outside_nnrun_are_removed(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    left = [t.folder("2d") / f"{TMP_MARK}.{t.cases[0]}.b2nd",
            t.pre / GT_FOLDER / f"{t.cases[1]}{t.dataset.file_ending}{TMP_MARK}.123-abcdef",
            t.pre / f"dataset_fingerprint.json{TMP_MARK}"]
    for p in left:
        p.write_bytes(b"half")
    inside = t.pre / ".nnrun" / f"something{TMP_MARK}"
    inside.parent.mkdir(exist_ok=True)
    inside.write_text("nnrun's own")
    result = merge(t.dataset, t.pre, PLANS, None)
    assert result.ok
    assert sorted(result.removed_temporary) == sorted(str(p) for p in left)
    assert not any(p.exists() for p in left)
    assert inside.exists()
    assert "removed 3 temporary file(s)" in render_merge(result, "")


# -- rendering and JSON -------------------------------------------------------------------------------------


def test_render_ok(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    t.write_map(2)
    result = merge(t.dataset, t.pre, PLANS, None)
    text = render_merge(result, rerun_command(result, 501))
    first = text.splitlines()[0]
    assert first.startswith("nnrun: ok:") and t.dataset.name in first and "(2 shards)" in first
    assert f"2d {len(t.cases)} cases" in first
    assert "next:" not in text                          # nothing to redo


def test_render_incomplete_names_shard_cases_and_command(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    m = t.write_map(2)
    victim = cases_of(m, 1)[0]
    (t.folder("2d") / f"{victim}.pkl").unlink()
    result = merge(t.dataset, t.pre, PLANS, None)
    text = render_merge(result, rerun_command(result, 501, "6g"))
    lines = text.splitlines()
    assert lines[0].startswith("nnrun: bad_input:") and "1 case(s) missing" in lines[0]
    assert any(line.strip() == f"shard 1/2: {victim}" for line in lines)
    assert any(f"{len(t.cases) - 1}/{len(t.cases)} complete" in line and "2d" in line for line in lines)
    assert lines[-1].strip() == "next: nnrun preprocess -d 501 --mem 6g --shard 1/2"


def test_render_shortens_long_lists(tmp_path: Path) -> None:
    result = MergeResult("Dataset501_X", False, [], [f"c{i:02d}" for i in range(9)], 2,
                         {0: [f"c{i:02d}" for i in range(9)]}, [], [])
    text = render_merge(result, "x")
    assert "c04 ..." in text and "c05" not in text.split("gt_segmentations")[1].splitlines()[0]
    assert "9 case(s) missing" in text
    assert "shard 0/2: c00, c01, c02, c03, c04, c05 ..." in text


def test_to_json_is_plain_json(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    m = t.write_map(2)
    victim = cases_of(m, 0)[0]
    (t.folder("3d_fullres") / f"{victim}_seg.b2nd").unlink()
    data = json.loads(json.dumps(merge(t.dataset, t.pre, PLANS, None).to_json()))
    assert data["outcome"] == "bad_input" and data["complete"] is False
    assert data["shards"] == 2 and data["incomplete_by_shard"] == {"0": [victim]}
    configs = {c["configuration"]: c for c in data["configurations"]}
    assert configs["3d_fullres"]["incomplete"] == [victim]
    assert configs["3d_fullres"]["complete"] == len(t.cases) - 1
    assert configs["2d"]["complete"] == len(t.cases)


# -- known bugs ----------------------------------------------------------------------------------------------


def test_incomplete_case_missing_from_the_map_is_still_named(tmp_path: Path) -> None:
    t = make_tree(tmp_path)
    victim = t.cases[-1]
    m = build_map({c: 1 for c in t.cases if c != victim}, 2, PLANS, "voxels")
    path = Path(map_path(t.pre, PLANS))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(m))
    (t.folder("2d") / f"{victim}.pkl").unlink()
    result = merge(t.dataset, t.pre, PLANS, None)
    assert not result.ok
    assert victim in {c for cases in result.incomplete_by_shard.values() for c in cases}
    assert victim in render_merge(result, rerun_command(result, 501))


@pytest.mark.parametrize("content", ["{}", '{"shards": 2}', "[]"])
def test_json_that_is_not_a_shard_map_is_not_a_crash(tmp_path: Path, content: str) -> None:
    t = make_tree(tmp_path)
    path = Path(map_path(t.pre, PLANS))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)
    try:
        result = merge(t.dataset, t.pre, PLANS, None)
    except BadInputError:
        return                                         # refusing it in one line is fine too
    assert result.ok and result.shard_count is None
