"""runner.dataset: finding and validating raw nnU-Net datasets."""
from __future__ import annotations

import json

import pytest

from runner.dataset import Case, RawDataset, find_dataset_folder, load_raw_dataset, parse_dataset_id
from runner.errors import BadInputError

ENDING = ".nii.gz"


def _dataset_json(**overrides):
    dj = {
        "channel_names": {"0": "CT"},
        "labels": {"background": 0, "organ": 1, "lesion": 2},
        "numTraining": 3,
        "file_ending": ENDING,
        "name": "Demo",
    }
    dj.update(overrides)
    return {k: v for k, v in dj.items() if v is not None}


def _make(raw, dataset_id=501, name="Demo", case_ids=("case000", "case001", "case002"), channels=1,
          dataset_json=None):
    """A raw dataset folder with tiny placeholder files (dataset.py never reads image content)."""
    folder = raw / f"Dataset{dataset_id:03d}_{name}"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for cid in case_ids:
        for c in range(channels):
            (folder / "imagesTr" / f"{cid}_{c:04d}{ENDING}").write_bytes(b"x")
        (folder / "labelsTr" / f"{cid}{ENDING}").write_bytes(b"x")
    if dataset_json is None:
        channel_names = {str(c): n for c, n in zip(range(channels), ["CT", "MR", "T2"])}
        dataset_json = _dataset_json(numTraining=len(case_ids), channel_names=channel_names)
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    return folder


def _error(raw, dataset_id=501) -> str:
    with pytest.raises(BadInputError) as info:
        load_raw_dataset(raw, dataset_id)
    return str(info.value)


# --------------------------------------------------------------------------- happy path

def test_load_valid_dataset(tmp_path):
    folder = _make(tmp_path, case_ids=("case002", "case000", "case001"), channels=2)
    ds = load_raw_dataset(tmp_path, 501)
    assert isinstance(ds, RawDataset)
    assert (ds.dataset_id, ds.name, ds.path) == (501, "Dataset501_Demo", str(folder))
    assert (ds.file_ending, ds.num_channels) == (ENDING, 2)
    assert [c.case_id for c in ds.cases] == ["case000", "case001", "case002"]
    assert ds.cases[0] == Case("case000",
                               (str(folder / "imagesTr/case000_0000.nii.gz"),
                                str(folder / "imagesTr/case000_0001.nii.gz")),
                               str(folder / "labelsTr/case000.nii.gz"))
    files = ds.all_files()
    assert len(files) == 9 and files[2] == str(folder / "labelsTr/case000.nii.gz")
    assert ds.dataset_json["name"] == "Demo"


def test_legacy_modality_key(tmp_path):
    _make(tmp_path, dataset_json=_dataset_json(channel_names=None, modality={"0": "CT"}))
    assert load_raw_dataset(tmp_path, "501").num_channels == 1


def test_case_ids_with_underscores_and_digits(tmp_path):
    _make(tmp_path, case_ids=("liver_10", "liver_2", "la_003"))
    assert [c.case_id for c in load_raw_dataset(tmp_path, 501).cases] == ["la_003", "liver_10", "liver_2"]


def test_explicit_dataset_key(tmp_path, monkeypatch):
    folder = tmp_path / "Dataset007_Explicit"
    (folder / "imgs").mkdir(parents=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    for name in ("imgs/b_ct.nii.gz", "imgs/b_seg.nii.gz", "imgs/a_ct.nii.gz"):
        (folder / name).write_bytes(b"x")
    (elsewhere / "a_seg.nii.gz").write_bytes(b"x")
    monkeypatch.setenv("NNRUN_TEST_ELSEWHERE", str(elsewhere))
    dj = _dataset_json(numTraining=2, dataset={
        "b": {"images": ["imgs/b_ct.nii.gz"], "label": "imgs/b_seg.nii.gz"},
        "a": {"images": ["imgs/a_ct.nii.gz"], "label": "$NNRUN_TEST_ELSEWHERE/a_seg.nii.gz"},
    })
    (folder / "dataset.json").write_text(json.dumps(dj))
    ds = load_raw_dataset(tmp_path, 7)
    # nnU-Net keeps the JSON order for an explicit 'dataset' (no imagesTr/labelsTr needed)
    assert [c.case_id for c in ds.cases] == ["b", "a"]
    assert ds.cases[1].label == str(elsewhere / "a_seg.nii.gz")
    assert ds.cases[0].images == (str(folder / "imgs/b_ct.nii.gz"),)


def test_explicit_dataset_key_missing_file(tmp_path):
    folder = tmp_path / "Dataset007_Explicit"
    folder.mkdir()
    dj = _dataset_json(numTraining=1, dataset={"a": {"images": ["a.nii.gz"], "label": "a_seg.nii.gz"}})
    (folder / "dataset.json").write_text(json.dumps(dj))
    msg = _error(tmp_path, 7)
    assert "missing files" in msg and str(folder / "a.nii.gz") in msg


# --------------------------------------------------------------------------- ids and folders

@pytest.mark.parametrize("text, expected", [
    (501, 501), ("501", 501), (" 42 ", 42), ("Dataset501_Demo", 501), ("Dataset001_X", 1), ("Dataset999", 999),
])
def test_parse_dataset_id(text, expected):
    assert parse_dataset_id(text) == expected


@pytest.mark.parametrize("text", ["demo", "Dataset5_X", "Dataset501Demo", "", "0", "1000", -3, True, "5.0"])
def test_parse_dataset_id_rejects(text):
    with pytest.raises(BadInputError):
        parse_dataset_id(text)


def test_raw_root_missing(tmp_path):
    with pytest.raises(BadInputError) as info:
        find_dataset_folder(tmp_path / "nope", 501)
    text = info.value.one_line()
    assert "does not exist" in text and "--raw" in text and "nnUNet_raw" in text


def test_raw_root_is_a_file(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(BadInputError, match="not a directory"):
        find_dataset_folder(tmp_path / "file", 501)


def test_wrong_id_lists_found_ids(tmp_path):
    _make(tmp_path, 501)
    _make(tmp_path, 3, name="Other")
    (tmp_path / "Dataset777_NotADir").write_text("")
    (tmp_path / "notes").mkdir()
    with pytest.raises(BadInputError) as info:
        find_dataset_folder(tmp_path, 502)
    assert str(info.value) == f"no dataset with id 502 under {tmp_path} (found: 003, 501)"


def test_no_datasets_at_all(tmp_path):
    with pytest.raises(BadInputError, match=r"\(found: none\)"):
        find_dataset_folder(tmp_path, 502)


@pytest.mark.parametrize("bad_id", [0, 1000, -1])
def test_id_out_of_range(tmp_path, bad_id):
    with pytest.raises(BadInputError, match="1..999"):
        find_dataset_folder(tmp_path, bad_id)


def test_two_folders_for_one_id(tmp_path):
    _make(tmp_path, 501, name="A")
    _make(tmp_path, 501, name="B")
    with pytest.raises(BadInputError, match="more than one folder.*Dataset501_A, Dataset501_B"):
        find_dataset_folder(tmp_path, 501)


def test_find_dataset_folder(tmp_path):
    folder = _make(tmp_path, 12, name="Small")
    assert find_dataset_folder(tmp_path, 12) == folder


# --------------------------------------------------------------------------- dataset.json

def test_missing_dataset_json(tmp_path):
    folder = _make(tmp_path)
    (folder / "dataset.json").unlink()
    assert _error(tmp_path).startswith("Dataset501_Demo: dataset.json not found")


def test_malformed_json_reports_line_and_column(tmp_path):
    folder = _make(tmp_path)
    (folder / "dataset.json").write_text('{\n  "labels": {"background": 0},\n  "numTraining": 3,,\n}')
    msg = _error(tmp_path)
    assert "not valid JSON" in msg and "line 3 column 20" in msg


def test_json_not_an_object(tmp_path):
    folder = _make(tmp_path)
    (folder / "dataset.json").write_text("[1, 2]")
    assert "must hold a JSON object" in _error(tmp_path)


@pytest.mark.parametrize("key", ["channel_names", "labels", "numTraining", "file_ending"])
def test_missing_keys(tmp_path, key):
    _make(tmp_path, dataset_json=_dataset_json(**{key: None}))
    assert _error(tmp_path) == f"Dataset501_Demo: dataset.json: missing key '{key}'"


@pytest.mark.parametrize("overrides, message", [
    ({"labels": {"organ": 1}}, "background"),
    ({"labels": {"background": 1, "organ": 0}}, "background must be 0"),
    ({"labels": {"background": [0], "organ": 1}}, "background must be 0"),
    ({"labels": {"background": 0, "organ": 2}}, "consecutive"),
    ({"labels": {"background": 0, "organ": "1"}}, "must be an integer"),
    ({"labels": {"background": 0, "organ": 1, "ignore": 5}}, "ignore label"),
    ({"labels": {"background": 0, "a": [1, 2], "b": 2}}, "regions_class_order"),
    ({"numTraining": "3"}, "numTraining"),
    ({"file_ending": "nii.gz"}, "file_ending"),
    ({"channel_names": {}}, "channel_names"),
])
def test_invalid_values(tmp_path, overrides, message):
    _make(tmp_path, dataset_json=_dataset_json(**overrides))
    msg = _error(tmp_path)
    assert msg.startswith("Dataset501_Demo: dataset.json:") and message in msg


def test_ignore_label_and_regions_accepted(tmp_path):
    labels = {"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}
    _make(tmp_path, dataset_json=_dataset_json(labels=labels, regions_class_order=[1, 2]))
    assert len(load_raw_dataset(tmp_path, 501).cases) == 3


# --------------------------------------------------------------------------- files and cases

def test_missing_channel_file(tmp_path):
    folder = _make(tmp_path, channels=2)
    (folder / "imagesTr" / "case001_0001.nii.gz").unlink()
    msg = _error(tmp_path)
    assert msg.startswith("Dataset501_Demo: missing file imagesTr/case001_0001.nii.gz")


def test_missing_label(tmp_path):
    folder = _make(tmp_path)
    (folder / "labelsTr" / "case002.nii.gz").unlink()
    assert "missing file labelsTr/case002.nii.gz" in _error(tmp_path)


def test_several_missing_files_are_all_named(tmp_path):
    folder = _make(tmp_path)
    for cid in ("case000", "case001", "case002"):
        (folder / "labelsTr" / f"{cid}.nii.gz").unlink()
    msg = _error(tmp_path)
    assert "missing files labelsTr/case000.nii.gz, labelsTr/case001.nii.gz, labelsTr/case002.nii.gz" in msg


def test_extra_channel_file(tmp_path):
    folder = _make(tmp_path)
    (folder / "imagesTr" / "case001_0001.nii.gz").write_bytes(b"x")
    assert "case001_0001.nii.gz is channel 1 but dataset.json declares 1 channel" in _error(tmp_path)


def test_image_without_channel_suffix(tmp_path):
    folder = _make(tmp_path)
    (folder / "imagesTr" / "case003.nii.gz").write_bytes(b"x")
    assert "imagesTr/case003.nii.gz has no 4-digit channel suffix" in _error(tmp_path)


def test_other_files_in_imagestr_are_ignored(tmp_path):
    folder = _make(tmp_path)
    (folder / "imagesTr" / "README.txt").write_text("hi")
    (folder / "imagesTr" / "sub.nii.gz").mkdir()  # not a file: nnU-Net's subfiles skips it
    (folder / "labelsTr" / "orphan.nii.gz").write_bytes(b"x")  # nnU-Net ignores labels without images
    assert len(load_raw_dataset(tmp_path, 501).cases) == 3


def test_num_training_mismatch(tmp_path):
    _make(tmp_path, dataset_json=_dataset_json(numTraining=5))
    assert _error(tmp_path) == ("Dataset501_Demo: dataset.json says numTraining is 5 but 3 cases were found "
                                "in imagesTr")


def test_missing_images_folder(tmp_path):
    folder = _make(tmp_path)
    for f in (folder / "imagesTr").iterdir():
        f.unlink()
    (folder / "imagesTr").rmdir()
    assert "folder imagesTr not found" in _error(tmp_path)


def test_no_cases(tmp_path):
    _make(tmp_path, case_ids=(), dataset_json=_dataset_json(numTraining=0))
    assert "no training cases found in imagesTr" in _error(tmp_path)
