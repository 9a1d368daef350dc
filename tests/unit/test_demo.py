"""runner.demo: synthetic raw datasets."""
from __future__ import annotations

import gzip
import json
import time

import numpy as np
import pytest

from runner.dataset import load_raw_dataset
from runner.demo import DEMO_CASES, STAMP_NAME, CaseSpec, main, make_dataset, make_demo
from runner.errors import BadInputError
from runner.formats.nifti import check_file_complete, check_files, read_header

SMALL = [CaseSpec((24, 20, 10), (0.8, 0.8, 3.0)), CaseSpec((16, 18, 8), (1.0, 1.0, 2.5))]


def _mtimes(folder):
    return {p.relative_to(folder): p.stat().st_mtime_ns for p in folder.rglob("*")}


def _voxels(path, header):
    """Decode a file written by write_nifti (tests only: whole file in memory)."""
    raw = gzip.decompress(path.read_bytes()) if str(path).endswith(".gz") else path.read_bytes()
    data = np.frombuffer(raw, dtype=header.dtype, offset=header.vox_offset, count=int(np.prod(header.shape)))
    return data.reshape(header.shape, order="F")


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    start = time.monotonic()
    folder = make_demo(raw)
    return raw, folder, time.monotonic() - start


def test_demo_layout_and_validation(demo):
    raw, folder, seconds = demo
    assert folder == raw / "Dataset501_Demo"
    assert seconds < 30  # a few seconds normally; generous for slow CI machines
    ds = load_raw_dataset(raw, 501)
    assert [c.case_id for c in ds.cases] == [f"case{i:03d}" for i in range(len(DEMO_CASES))]
    assert ds.dataset_json["channel_names"] == {"0": "CT"}
    assert ds.dataset_json["labels"] == {"background": 0, "organ": 1, "lesion": 2}
    assert ds.dataset_json["numTraining"] == 6 and ds.file_ending == ".nii.gz"
    # the stamp lives in the dataset root, never among the cases
    assert (folder / STAMP_NAME).is_file()
    assert sorted(p.name for p in (folder / "imagesTr").iterdir()) == [f"case{i:03d}_0000.nii.gz" for i in range(6)]
    assert sorted(p.name for p in (folder / "labelsTr").iterdir()) == [f"case{i:03d}.nii.gz" for i in range(6)]
    assert not [p for p in raw.iterdir() if p.name != "Dataset501_Demo"]  # no temp folders left


def test_demo_files_are_complete_and_match_spec(demo):
    raw, folder, _ = demo
    ds = load_raw_dataset(raw, 501)
    assert check_files(ds.all_files()) == []
    for case, spec in zip(ds.cases, DEMO_CASES):
        image = check_file_complete(case.images[0])
        label = check_file_complete(case.label)
        assert image.shape == label.shape == spec.shape
        assert image.spacing == pytest.approx(spec.spacing) == label.spacing
        assert (image.dtype, label.dtype) == ("<i2", "|u1")


def test_demo_is_anisotropic_with_mixed_sizes():
    z_over_xy = {spec.spacing[2] / spec.spacing[0] for spec in DEMO_CASES}
    assert max(z_over_xy) > 3  # nnU-Net's separate-z resampling kicks in
    sizes = [int(np.prod(spec.shape)) for spec in DEMO_CASES]
    assert len(set(sizes)) == len(sizes) and max(sizes) >= 4 * min(sizes)


def test_labels_overlap_bright_structures(demo):
    raw, folder, _ = demo
    case = load_raw_dataset(raw, 501).cases[3]
    img = _voxels(folder / "imagesTr" / "case003_0000.nii.gz", read_header(case.images[0]))
    seg = _voxels(folder / "labelsTr" / "case003.nii.gz", read_header(case.label))
    counts = np.bincount(seg.ravel(), minlength=3)
    assert counts[1] > 1000 and counts[2] > 100 and set(np.unique(seg)) == {0, 1, 2}
    body = img[(seg == 0) & (img > -500)].mean()
    assert img[seg == 1].mean() > body + 20 and img[seg == 2].mean() > img[seg == 1].mean() + 20
    assert (img < -900).mean() > 0.05  # air around the body


def test_make_demo_is_idempotent(demo):
    raw, folder, _ = demo
    before = _mtimes(folder)
    start = time.monotonic()
    assert make_demo(raw) == folder
    assert time.monotonic() - start < 5
    assert _mtimes(folder) == before


def test_deterministic_for_a_seed(tmp_path):
    a = make_dataset(tmp_path / "a", 10, "Small", SMALL, seed=3)
    b = make_dataset(tmp_path / "b", 10, "Small", SMALL, seed=3)
    c = make_dataset(tmp_path / "c", 10, "Small", SMALL, seed=4)
    name = "imagesTr/case000_0000.nii.gz"
    assert (a / name).read_bytes() == (b / name).read_bytes()
    assert (a / name).read_bytes() != (c / name).read_bytes()


def test_changed_spec_rebuilds(tmp_path):
    folder = make_dataset(tmp_path, 10, "Small", SMALL)
    assert len(list((folder / "imagesTr").iterdir())) == 2
    folder2 = make_dataset(tmp_path, 10, "Small", SMALL[:1], channels=2)
    assert folder2 == folder
    ds = load_raw_dataset(tmp_path, 10)
    assert ds.num_channels == 2 and len(ds.cases) == 1
    assert ds.dataset_json["channel_names"] == {"0": "CT", "1": "MR"}
    assert read_header(ds.cases[0].images[1]).dtype == "<f4"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["Dataset010_Small"]


def test_deleted_file_triggers_rebuild(tmp_path):
    folder = make_dataset(tmp_path, 10, "Small", SMALL)
    (folder / "labelsTr" / "case001.nii.gz").unlink()
    make_dataset(tmp_path, 10, "Small", SMALL)
    assert load_raw_dataset(tmp_path, 10).cases[1].label.endswith("case001.nii.gz")


def test_mismatched_label_shape(tmp_path):
    cases = [CaseSpec((20, 20, 10), (1.0, 1.0, 2.0), label_shape=(20, 20, 12))]
    ds = load_raw_dataset(make_dataset(tmp_path, 11, "Mismatch", cases).parent, 11)
    assert read_header(ds.cases[0].images[0]).shape == (20, 20, 10)
    assert read_header(ds.cases[0].label).shape == (20, 20, 12)


def test_refuses_to_overwrite_foreign_folder(tmp_path):
    foreign = tmp_path / "Dataset501_Demo"
    foreign.mkdir()
    (foreign / "precious.txt").write_text("user data")
    with pytest.raises(BadInputError, match="not generated by nnrun"):
        make_demo(tmp_path)
    assert (foreign / "precious.txt").read_text() == "user data"


def test_refuses_second_folder_for_same_id(tmp_path):
    (tmp_path / "Dataset501_Mine").mkdir()
    with pytest.raises(BadInputError, match="already used by Dataset501_Mine"):
        make_demo(tmp_path)


def test_main_prints_path(tmp_path, capsys):
    # custom id keeps this fast-ish: it is the same demo spec
    assert main(["--raw", str(tmp_path), "--id", "42"]) == 0
    out = capsys.readouterr().out.strip()
    assert out == str(tmp_path / "Dataset042_Demo")
    assert json.loads((tmp_path / "Dataset042_Demo" / "dataset.json").read_text())["numTraining"] == 6
