"""The data behind the estimate: the nonzero bounding box and counts the file check sees, their cache, the model's use of them."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from runner.dataset import load_raw_dataset
from runner.estimate.model import (
    DEFAULT_MODEL,
    CaseGeometry,
    predict_case_bytes,
    stage_bytes,
    with_data_stats,
)
from runner.formats import check_cache, nifti
from runner.formats.check import check_files, check_one
from runner.formats.check_cache import cached_stats, case_data_stats, check_files_once, combine_case_stats
from runner.formats.nifti import check_file_complete_with_stats, write_nifti


def numpy_stats(a: np.ndarray, zero=0) -> dict:
    mask = a != zero
    if a.ndim == 2:
        mask = mask[..., None]
    nz = np.argwhere(mask)
    bbox = None if nz.size == 0 else [[int(lo), int(hi) + 1] for lo, hi in zip(nz.min(0), nz.max(0))]
    return {"shape": list(mask.shape), "bbox": bbox, "nonzero": int(mask.sum())}


def blob(shape, dtype, box, seed=0) -> np.ndarray:
    a = np.zeros(shape, dtype=dtype)
    sl = tuple(slice(lo, hi) for lo, hi in box)
    a[sl] = np.random.default_rng(seed).integers(1, 50, [hi - lo for lo, hi in box]).astype(dtype)
    a[tuple(lo for lo, _ in box)] = 0                  # a zero inside the box does not shrink it
    return a


@pytest.mark.parametrize("name", ["x.nii.gz", "x.nii"])
@pytest.mark.parametrize("dtype", [np.int16, np.float32, np.uint8, np.float64, np.uint16])
def test_bbox_and_count_match_numpy_whatever_the_chunking(tmp_path, monkeypatch, name, dtype):
    # chunks of 1000 bytes: rows straddle chunk boundaries, the header ends mid-chunk
    monkeypatch.setattr(nifti, "_MAX_OUT_CHUNK", 1000)
    monkeypatch.setattr(nifti, "_READ_CHUNK", 1000)
    a = blob((37, 29, 17), dtype, [(5, 20), (3, 27), (2, 9)])
    path = tmp_path / name
    write_nifti(path, a, (1.0, 1.0, 2.0))
    _, stats = check_file_complete_with_stats(path)
    assert stats == numpy_stats(a)
    assert check_one(path) == stats


def test_nan_is_nonzero_as_in_nnunet(tmp_path):
    a = np.zeros((10, 12, 6), dtype=np.float32)
    a[7, 1, 4] = np.nan
    a[2, 9, 1] = -3.0
    write_nifti(tmp_path / "n.nii.gz", a, (1.0, 1.0, 1.0))
    assert check_one(tmp_path / "n.nii.gz") == {"shape": [10, 12, 6], "bbox": [[2, 8], [1, 10], [1, 5]], "nonzero": 2}


def test_all_zero_image_has_no_box(tmp_path):
    write_nifti(tmp_path / "z.nii.gz", np.zeros((8, 8, 4), dtype=np.int16), (1.0, 1.0, 1.0))
    assert check_one(tmp_path / "z.nii.gz") == {"shape": [8, 8, 4], "bbox": None, "nonzero": 0}


def test_a_2d_nifti_has_one_slice(tmp_path):
    a = blob((30, 20), np.int16, [(4, 9), (2, 18)])
    write_nifti(tmp_path / "s.nii.gz", a, (1.0, 1.0))
    assert check_one(tmp_path / "s.nii.gz") == numpy_stats(a)


def test_scl_inter_moves_the_zero(tmp_path):
    """SimpleITK returns raw * slope + inter: with inter = -100 the stored 100 is nnU-Net's 0."""
    a = np.full((10, 10, 5), 100, dtype=np.int16)
    a[3:6, 2:8, 1:3] = 140
    path = tmp_path / "scaled.nii"
    write_nifti(path, a, (1.0, 1.0, 1.0))
    raw = bytearray(path.read_bytes())
    struct.pack_into("<ff", raw, 112, 1.0, -100.0)
    path.write_bytes(bytes(raw))
    assert check_one(path) == numpy_stats(a, zero=100)


def test_formats_without_a_voxel_scan_are_unknown(tmp_path):
    sitk = pytest.importorskip("SimpleITK")
    img = sitk.GetImageFromArray(np.ones((4, 5, 6), dtype=np.int16))
    sitk.WriteImage(img, str(tmp_path / "x.mha"), useCompression=True)
    assert check_one(tmp_path / "x.mha") is None


def test_check_files_returns_the_stats_of_the_files_that_passed(tmp_path):
    good = tmp_path / "good.nii.gz"
    write_nifti(good, blob((8, 8, 4), np.int16, [(1, 3), (2, 5), (0, 2)]), (1.0, 1.0, 1.0))
    bad = tmp_path / "bad.nii.gz"
    write_nifti(bad, blob((20, 20, 20), np.int16, [(1, 3), (2, 5), (0, 2)]), (1.0, 1.0, 1.0))
    bad.write_bytes(bad.read_bytes()[:-30])
    stats: dict = {}
    problems = check_files([good, bad], stats=stats)
    assert [p.path for p in problems] == [str(bad)]
    assert stats[str(good)]["bbox"] == [[1, 3], [2, 5], [0, 2]]
    assert str(bad) not in stats


# --------------------------------------------------------------------------- cache and cases

def make_raw(tmp_path, zero_margin: bool = True):
    """Dataset601: two 2-channel cases whose channels' boxes differ; labels 1 inside."""
    folder = tmp_path / "raw" / "Dataset601_Crop"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    shape = (40, 30, 20)
    for i in range(2):
        c0 = blob(shape, np.int16, [(5, 25), (4, 20), (2, 12)], seed=i)
        c1 = blob(shape, np.float32, [(10, 30), (6, 24), (3, 10)], seed=i + 7)
        if not zero_margin:
            c0 += 1
        seg = np.zeros(shape, dtype=np.uint8)
        seg[10:20, 8:18, 4:8] = 1                         # 400 voxels
        write_nifti(folder / "imagesTr" / f"case{i:03d}_0000.nii.gz", c0, (1.0, 1.0, 2.0))
        write_nifti(folder / "imagesTr" / f"case{i:03d}_0001.nii.gz", c1, (1.0, 1.0, 2.0))
        write_nifti(folder / "labelsTr" / f"case{i:03d}.nii.gz", seg, (1.0, 1.0, 2.0))
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "T1", "1": "T2"}, "labels": {"background": 0, "x": 1},
        "numTraining": 2, "file_ending": ".nii.gz"}))
    return load_raw_dataset(tmp_path / "raw", 601)


def test_the_cache_keeps_the_stats_and_a_second_run_reads_nothing(tmp_path, monkeypatch):
    ds = make_raw(tmp_path)
    cache = tmp_path / "cache"
    assert case_data_stats(ds, cache) == {}              # never checked: unknown
    assert check_files_once(ds.all_files(), cache_dir=cache) == []
    stats = case_data_stats(ds, cache)
    # union of the channels' boxes: x 5..30, y 4..24, z 2..12 -> 25 x 20 x 10 = 5000 voxels
    assert stats == {"case000": ((25, 20, 10), 400 / 5000), "case001": ((25, 20, 10), 400 / 5000)}

    def no_reading(*a, **k):
        raise AssertionError("a checked file was read again")
    monkeypatch.setattr(check_cache, "check_files", no_reading)
    assert check_files_once(ds.all_files(), cache_dir=cache) == []
    assert case_data_stats(ds, cache) == stats


def test_a_changed_file_has_no_stats_until_checked_again(tmp_path):
    ds = make_raw(tmp_path)
    cache = tmp_path / "cache"
    check_files_once(ds.all_files(), cache_dir=cache)
    label = ds.cases[0].label
    st = os.stat(label)
    write_nifti(label, np.ones((40, 30, 20), dtype=np.uint8), (1.0, 1.0, 2.0))
    os.utime(label, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert set(case_data_stats(ds, cache)) == {"case001"}
    assert cached_stats([label], cache) == {}
    check_files_once(ds.all_files(), cache_dir=cache)
    assert case_data_stats(ds, cache)["case000"] == ((25, 20, 10), 1.0)     # capped at the crop


def test_records_of_the_previous_cache_version_are_read_again(tmp_path):
    ds = make_raw(tmp_path)
    cache = tmp_path / "cache"
    files = [os.fspath(f) for f in ds.all_files()]
    record = check_cache.cache_file([check_cache.Path(f) for f in files], cache)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"version": 2, "files": {
        str(check_cache.Path(f).resolve()): check_cache._key(check_cache.Path(f)) for f in files}}))
    assert case_data_stats(ds, cache) == {}
    check_files_once(files, cache_dir=cache)
    assert len(case_data_stats(ds, cache)) == 2


def test_no_zero_margin_means_no_crop(tmp_path):
    ds = make_raw(tmp_path, zero_margin=False)
    cache = tmp_path / "cache"
    check_files_once(ds.all_files(), cache_dir=cache)
    assert case_data_stats(ds, cache)["case000"] == ((40, 30, 20), 400 / 24000)


def test_combine_unknown_cases():
    box = {"shape": [4, 4, 4], "bbox": [[0, 2], [0, 2], [0, 2]], "nonzero": 3}
    empty = {"shape": [4, 4, 4], "bbox": None, "nonzero": 0}
    assert combine_case_stats([box], {"shape": [4, 4, 4], "bbox": None, "nonzero": 0}) == ((2, 2, 2), 0.0)
    assert combine_case_stats([empty], box) is None                     # all-zero image: nothing to crop to
    assert combine_case_stats([box, None], box) is None                 # a channel of an unscanned format
    assert combine_case_stats([box], None) is None
    assert combine_case_stats([{**box, "shape": [4, 4, 5]}], box) is None


# --------------------------------------------------------------------------- the model

SPACING = (0.9, 0.9, 0.9)


def head(crop=None, fg=None) -> CaseGeometry:
    return CaseGeometry("c", (256, 256, 180), (1.0, 1.0, 1.0), 1, 2, 1, dataset_cases=4,
                        crop_shape=crop, foreground_fraction=fg)


@pytest.mark.parametrize("phase,spacing", [("fingerprint", None), ("preprocessing", SPACING),
                                           ("preprocessing", (1.0, 1.0, 3.5)), ("preprocessing", (1.0, 1.0, 1.0))])
def test_a_case_with_big_zero_margins_predicts_less(phase, spacing):
    model = DEFAULT_MODEL
    full = predict_case_bytes(head(), phase, spacing, model)
    cropped = predict_case_bytes(head((150, 190, 150), 0.1), phase, spacing, model)
    assert cropped < full


def test_unknown_data_is_the_header_estimate():
    for spacing in (SPACING, (1.0, 1.0, 3.5)):
        assert stage_bytes(head(), "preprocessing", spacing) == stage_bytes(
            head((256, 256, 180), DEFAULT_MODEL["foreground_fraction"]), "preprocessing", spacing)


def test_the_measured_foreground_fraction_replaces_the_assumed_one():
    small = stage_bytes(head((150, 190, 150), 0.001), "preprocessing", SPACING)["foreground"]
    large = stage_bytes(head((150, 190, 150), 0.5), "preprocessing", SPACING)["foreground"]
    assert small[0] == large[0] and small[1] < large[1]


def test_resampling_uses_the_crop_shape():
    stages = stage_bytes(head((100, 100, 90)), "preprocessing", (0.5, 0.5, 0.5))
    # the foreground stage's workspace scales with the resampled crop: 200 x 200 x 180 voxels
    n_out = 200 * 200 * 180
    fg = DEFAULT_MODEL["foreground_fraction"]
    assert stages["foreground"][1] == 4 * n_out + 4 * n_out + n_out + int(88 * fg * n_out)
    # a crop at the target spacing already: nothing is resampled
    assert "resample_data" not in stage_bytes(head((100, 100, 90)), "preprocessing", (1.0, 1.0, 1.0))


def test_with_data_stats_merges_known_cases_only():
    a, b = head(), CaseGeometry("d", (10, 10, 10), (1.0, 1.0, 1.0), 1, 2, 1)
    merged = with_data_stats([a, b], {"c": ((100, 120, 90), 0.2), "d": ((11, 10, 10), 0.1)})
    assert merged[0].crop_shape == (100, 120, 90) and merged[0].foreground_fraction == 0.2
    assert merged[1].crop_shape is None                     # a crop larger than the image: ignored
    assert with_data_stats([a], {}) == [a]


def test_the_planner_rule_uses_the_crop_shapes():
    """nnU-Net's anisotropy test compares the cropped sizes: a thick-slice case whose zero margins are cropped
    in plane is no longer 'many voxels in plane', so the low-resolution axis keeps the median spacing."""
    from runner.estimate.model import rule_target_spacing_zyx
    spacing = [(0.5, 0.5, 4.0), (0.5, 0.5, 3.0), (0.5, 0.5, 5.0)]
    full = [CaseGeometry(f"c{i}", (400, 400, 100), s, 1, 2, 1) for i, s in enumerate(spacing)]
    assert rule_target_spacing_zyx(full)[0] == pytest.approx(3.2)          # 10th percentile: aniso voxels too
    cropped = with_data_stats(full, {g.case_id: ((200, 200, 100), 0.1) for g in full})
    assert rule_target_spacing_zyx(cropped)[0] == pytest.approx(4.0)       # median: 100 * 3 >= 200


def test_with_an_ignore_label_every_voxel_of_the_crop_is_sampled(tmp_path):
    ds = make_raw(tmp_path)
    dj_path = tmp_path / "raw" / "Dataset601_Crop" / "dataset.json"
    dj = json.loads(dj_path.read_text())
    dj["labels"]["ignore"] = 2
    dj_path.write_text(json.dumps(dj))
    ds = load_raw_dataset(tmp_path / "raw", 601)
    cache = tmp_path / "cache"
    check_files_once(ds.all_files(), cache_dir=cache)
    assert case_data_stats(ds, cache)["case000"] == ((25, 20, 10), 1.0)


def test_the_fit_can_hold_c_in_fixed():
    from runner.estimate.calibrate import _lstsq_relative
    rows = [(100.0, 10.0), (300.0, 50.0), (200.0, 80.0), (50.0, 5.0)]
    targets = [7 + 1.0 * a + 2.0 * b for a, b in rows]
    c0, c_in, c_ws = _lstsq_relative(rows, targets, floor=1.0, c_in=1.0)
    assert c_in == 1.0 and c0 == pytest.approx(7) and c_ws == pytest.approx(2)
    free = _lstsq_relative(rows, targets, floor=1.0)
    assert free == pytest.approx((7, 1.0, 2.0))


def test_the_estimate_says_for_how_many_cases_the_data_was_used(tmp_path):
    from runner.estimate.data import dataset_geometry_with_data
    from runner.estimate.model import Baseline, estimate, load_model
    ds = make_raw(tmp_path)
    cache = tmp_path / "cache"
    base = Baseline(400 << 20, 400 << 20, "x", True)

    def run():
        return estimate(ds, None, ["3d_fullres"], 8 << 30, base, load_model(), 2,
                        geoms=dataset_geometry_with_data(ds, cache))
    header_only = run()
    assert any("from the data for 0 of 2 cases" in n for n in header_only.notes)
    check_files_once(ds.all_files(), cache_dir=cache)
    with_data = run()
    assert not any("from the data" in n for n in with_data.notes)
    peak = {r["case"]: r["predicted_peak_bytes"] for r in with_data.per_case if r["phase"] == "preprocessing"}
    before = {r["case"]: r["predicted_peak_bytes"] for r in header_only.per_case if r["phase"] == "preprocessing"}
    assert all(peak[c] <= before[c] for c in peak)       # a crop to a quarter of the image only lowers the peak
