"""runner.estimate.model: header-only geometry, nnU-Net's target spacing rule, the arithmetic of -np, output shape.

The target-spacing tests compare with ``nnUNetPlans.json`` files written by
real nnU-Net 2.8.1 runs (``scripts/calibrate_estimate.py``, datasets 710-723):
only the keys the estimate reads are kept (``transpose_forward`` and each
configuration's ``spacing``), verbatim, next to the case specs that produced
them.
"""
from __future__ import annotations

import json
import math

import pytest

from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.estimate.baseline import measure_baseline, parse_probe_output
from runner.estimate.model import (
    Baseline,
    CaseGeometry,
    Estimate,
    dataset_geometry,
    estimate,
    estimate_json,
    load_model,
    max_workers_that_fit,
    planned_target_spacing,
    predict_case_bytes,
    predict_peak,
    render_estimate,
    rule_target_spacing_zyx,
    stage_bytes,
)

MiB = 1 << 20
GiB = 1 << 30

# (case specs (shape xyz, spacing xyz), plans excerpt) from real runs of nnU-Net 2.8.1.
REAL_PLANS = {
    # z 2.5-4 mm at 0.8 mm: anisotropic spacing but not anisotropic voxel counts -> median z (3.0)
    "710_CalAniso": (
        [((96, 96, 40), (0.8, 0.8, 2.5)), ((160, 144, 56), (0.8, 0.8, 3.0)), ((224, 224, 80), (0.8, 0.8, 4.0)),
         ((128, 128, 48), (0.8, 0.8, 3.0)), ((192, 200, 64), (0.8, 0.8, 2.5)), ((112, 120, 36), (0.8, 0.8, 4.0))],
        {"transpose_forward": [0, 1, 2], "configurations": {
            "2d": {"spacing": [0.800000011920929, 0.800000011920929]},
            "3d_fullres": {"spacing": [3.0, 0.800000011920929, 0.800000011920929]}}}),
    # 5 mm slices, few of them: the planner's 10th-percentile rule (3.4, not the median 5.0)
    "713_CalThick2ch": (
        [((200, 200, 24), (1.0, 1.0, 5.0)), ((160, 176, 30), (1.0, 1.0, 4.0)), ((224, 208, 20), (1.0, 1.0, 5.0)),
         ((176, 160, 36), (1.0, 1.0, 3.0)), ((192, 192, 28), (1.0, 1.0, 5.0))],
        {"transpose_forward": [0, 1, 2], "configurations": {
            "2d": {"spacing": [1.0, 1.0]},
            "3d_fullres": {"spacing": [3.4, 1.0, 1.0]}}}),
    # near-isotropic: median
    "711_CalIso2ch": (
        [((80, 80, 80), (1.0, 1.0, 1.0)), ((144, 128, 96), (1.0, 1.0, 1.5)), ((160, 160, 120), (1.0, 1.0, 1.25)),
         ((112, 112, 72), (1.0, 1.0, 1.0))],
        {"transpose_forward": [0, 1, 2], "configurations": {
            "2d": {"spacing": [1.0, 1.0]},
            "3d_fullres": {"spacing": [1.125, 1.0, 1.0]}}}),
    # anisotropic along x: nnU-Net's axes are (z, y, x), so transpose_forward = [2, 0, 1]; 10th percentile of x
    "722_EvAnisoX": (
        [((40, 160, 150), (3.5, 0.75, 0.75)), ((56, 180, 170), (2.5, 0.75, 0.75)), ((32, 200, 190), (4.0, 0.75, 0.75))],
        {"transpose_forward": [2, 0, 1], "configurations": {
            "2d": {"spacing": [0.75, 0.75]},
            "3d_fullres": {"spacing": [2.7, 0.75, 0.75]}}}),
    # 1.1 mm in-plane, 3-5 mm slices: median 4.75 is anisotropic; 10th percentile 3.5
    "723_EvSmall2ch": (
        [((128, 128, 20), (1.1, 1.1, 5.0)), ((100, 110, 26), (1.1, 1.1, 4.0)), ((140, 120, 18), (1.1, 1.1, 5.0)),
         ((96, 96, 30), (1.1, 1.1, 3.0)), ((120, 130, 22), (1.1, 1.1, 5.0)), ((110, 100, 24), (1.1, 1.1, 4.5))],
        {"transpose_forward": [0, 1, 2], "configurations": {
            "2d": {"spacing": [1.100000023841858, 1.100000023841858]},
            "3d_fullres": {"spacing": [3.5, 1.100000023841858, 1.100000023841858]}}}),
}


def _geoms(specs, channels=1):
    return [CaseGeometry(f"case{i:03d}", tuple(shape), tuple(float(s) for s in spacing), channels, 2, 1, len(specs))
            for i, (shape, spacing) in enumerate(specs)]


def _close(a, b, tol=1e-4):
    return all((math.isnan(x) and math.isnan(y)) or abs(x - y) <= tol for x, y in zip(a, b))


# --------------------------------------------------------------------------- geometry from headers

def test_dataset_geometry_reads_headers_written_by_make_dataset(tmp_path):
    cases = [CaseSpec((12, 10, 6), (0.8, 0.7, 3.0)), CaseSpec((9, 11, 5), (0.8, 0.8, 2.5))]
    make_dataset(tmp_path, 640, "Geo", cases, channels=2)
    ds = load_raw_dataset(tmp_path, 640)
    geoms = dataset_geometry(ds)
    assert [g.case_id for g in geoms] == ["case000", "case001"]
    g = geoms[0]
    assert g.shape == (12, 10, 6)
    assert _close(g.spacing, (0.8, 0.7, 3.0), 1e-6)
    assert g.channels == 2
    assert g.image_itemsize == 4          # channel 0 is int16, channel 1 float32: the larger one
    assert g.label_itemsize == 1          # uint8 labels
    assert g.dataset_cases == 2
    assert g.voxels == 12 * 10 * 6


def test_dataset_geometry_does_not_read_voxel_data(tmp_path, monkeypatch):
    make_dataset(tmp_path, 641, "Geo", [CaseSpec((8, 8, 4), (1.0, 1.0, 2.0))])
    ds = load_raw_dataset(tmp_path, 641)
    import runner.formats.nifti as nifti
    monkeypatch.setattr(nifti, "check_file_complete", lambda *a, **k: pytest.fail("read voxel data"))
    assert dataset_geometry(ds)[0].shape == (8, 8, 4)


# --------------------------------------------------------------------------- target spacing

@pytest.mark.parametrize("name", sorted(REAL_PLANS))
def test_rule_matches_the_real_planner(name):
    specs, plans = REAL_PLANS[name]
    geoms = _geoms(specs)
    ours = planned_target_spacing(None, "3d_fullres", geoms)
    from_plans = planned_target_spacing(plans, "3d_fullres", geoms)
    assert _close(ours, from_plans, 1e-4), (ours, from_plans)


@pytest.mark.parametrize("name", sorted(REAL_PLANS))
def test_2d_keeps_each_case_own_out_of_plane_spacing(name):
    specs, plans = REAL_PLANS[name]
    geoms = _geoms(specs)
    ours = planned_target_spacing(None, "2d", geoms)
    from_plans = planned_target_spacing(plans, "2d", geoms)
    assert sum(math.isnan(v) for v in ours) == 1
    assert [math.isnan(v) for v in ours] == [math.isnan(v) for v in from_plans]
    assert _close(ours, from_plans, 1e-4)


def test_plans_spacing_is_mapped_back_through_transpose_forward():
    # Case anisotropic along x: nnU-Net's arrays are (z, y, x), so x is axis 2 and transpose_forward = [2, 0, 1];
    # the plans store the spacing as (x, z, y).
    plans = {"transpose_forward": [2, 0, 1], "configurations": {
        "3d_fullres": {"spacing": [3.5, 0.75, 0.7]}, "2d": {"spacing": [0.75, 0.7]}}}
    assert _close(planned_target_spacing(plans, "3d_fullres", []), (3.5, 0.7, 0.75))
    two_d = planned_target_spacing(plans, "2d", [])
    assert math.isnan(two_d[0]) and _close(two_d[1:], (0.7, 0.75))


def test_rule_with_anisotropic_x_axis_transposes_like_nnunet():
    specs, plans = REAL_PLANS["722_EvAnisoX"]
    geoms = _geoms(specs)
    full = planned_target_spacing(None, "3d_fullres", geoms)
    assert _close(full, (2.7, 0.75, 0.75), 1e-6)       # x: the 10th percentile of 2.5 / 3.5 / 4.0
    two_d = planned_target_spacing(None, "2d", geoms)
    assert math.isnan(two_d[0]) and _close(two_d[1:], (0.75, 0.75))


def test_rule_ten_percent_is_never_finer_than_in_plane():
    geoms = _geoms([((200, 200, 10), (1.0, 1.0, 0.5)), ((200, 200, 10), (1.0, 1.0, 0.5)),
                    ((200, 200, 10), (1.0, 1.0, 8.0)), ((200, 200, 10), (1.0, 1.0, 8.0)),
                    ((200, 200, 10), (1.0, 1.0, 8.0))])
    target = rule_target_spacing_zyx(geoms)
    assert target[0] == pytest.approx(1.0 + 1e-5)


def test_missing_configuration_in_plans_is_none_and_3d_lowres_falls_back_with_a_note(tmp_path):
    specs, plans = REAL_PLANS["710_CalAniso"]
    assert planned_target_spacing(plans, "3d_lowres", _geoms(specs)) is None
    make_dataset(tmp_path, 642, "Low", [CaseSpec((10, 10, 6), (0.8, 0.8, 3.0))])
    ds = load_raw_dataset(tmp_path, 642)
    est = estimate(ds, None, ["3d_lowres"], 8 * GiB, Baseline(400 * MiB, 400 * MiB, "x", True), load_model(), 2)
    assert est.max_np["3d_lowres"] >= 1
    assert any("3d_lowres" in n and "3d_fullres" in n for n in est.notes)


# --------------------------------------------------------------------------- model

def test_preprocessing_memory_grows_with_size_and_anisotropic_path_costs_more():
    model = load_model()
    small = CaseGeometry("a", (100, 100, 40), (0.8, 0.8, 3.0), 1, 2, 1, 10)
    big = CaseGeometry("b", (300, 300, 120), (0.8, 0.8, 3.0), 1, 2, 1, 10)
    t = (0.8, 0.8, 2.0)
    assert predict_case_bytes(big, "preprocessing", t, model) > predict_case_bytes(small, "preprocessing", t, model)
    iso = CaseGeometry("c", (300, 300, 120), (0.8, 0.8, 2.0), 1, 2, 1, 10)
    # same output shape; separate-z (4.0/0.8 > 3) needs the float64 coordinate grid
    aniso = CaseGeometry("d", (300, 300, 60), (0.8, 0.8, 4.0), 1, 2, 1, 10)
    assert "resample_data" in stage_bytes(aniso, "preprocessing", t)
    assert predict_case_bytes(aniso, "preprocessing", t, model) > predict_case_bytes(
        CaseGeometry("e", (300, 300, 60), (0.8, 0.8, 2.5), 1, 2, 1, 10), "preprocessing", (0.8, 0.8, 2.0), model)
    # a case already at the target spacing is not resampled
    assert "resample_data" not in stage_bytes(iso, "preprocessing", t)


def test_fingerprint_memory_depends_on_the_number_of_cases():
    model = load_model()
    few = CaseGeometry("a", (64, 64, 32), (1.0, 1.0, 1.0), 1, 2, 1, 2)
    many = CaseGeometry("a", (64, 64, 32), (1.0, 1.0, 1.0), 1, 2, 1, 500)
    # 1e8 // 2 samples per case and channel: int64 indices + float32 samples, hundreds of MiB
    assert predict_case_bytes(few, "fingerprint", None, model) > 400 * MiB
    assert predict_case_bytes(many, "fingerprint", None, model) < 100 * MiB


def test_predict_peak_is_baseline_plus_extra():
    model = load_model()
    g = CaseGeometry("a", (100, 100, 40), (0.8, 0.8, 3.0), 1, 2, 1, 10)
    b = Baseline(410 * MiB, 420 * MiB, "sha256:x", True)
    assert predict_peak(g, "preprocessing", (0.8, 0.8, 2.0), b, model) == \
        420 * MiB + predict_case_bytes(g, "preprocessing", (0.8, 0.8, 2.0), model)


def test_model_file_documents_coefficients_margin_errors_and_provenance():
    model = load_model()
    assert set(model["coefficients"]) >= {"fingerprint", "preprocessing"}
    assert 0 < model["margin"] < 1
    for role in ("calibration", "evaluation"):
        for phase in ("fingerprint", "preprocessing"):
            e = model["errors"][role][phase]
            assert e["peak_max_abs_rel_error"] >= e["peak_median_abs_rel_error"] >= 0
    # the margin comes from the maximum evaluation error, not the median
    worst = max(e["peak_max_abs_rel_error"] for e in model["errors"]["evaluation"].values())
    assert model["margin"] >= worst
    prov = model["provenance"]
    roles = {d["role"] for d in prov["datasets"]}
    assert roles == {"calibration", "evaluation"}
    calib_ids = {d["id"] for d in prov["datasets"] if d["role"] == "calibration"}
    eval_ids = {d["id"] for d in prov["datasets"] if d["role"] == "evaluation"}
    assert calib_ids.isdisjoint(eval_ids)
    assert prov["machine"]["cpus"] and prov["fitted_at"]


# --------------------------------------------------------------------------- -np arithmetic

def test_max_workers_that_fit_arithmetic():
    # main 400 + (1000 + 900) * 1.1 = 2490 <= 2600; + 800 * 1.1 -> 3370 > 2600
    assert max_workers_that_fit([1000, 900, 800, 100], 400, 2600, 0.10, cpus=8) == 2
    # the margin is on the cases, not on the measured main process: 2000 + 500 * 1.2 = 2600 fits
    assert max_workers_that_fit([500], 2000, 2600, 0.20, cpus=1) == 1
    # each peak given less the shared pages; the margin is on the whole peak: 2000 + 400 + 0.2 * 500 = 2500
    assert max_workers_that_fit([400], 2000, 2499, 0.20, cpus=1, shared_bytes=100) == 0
    assert max_workers_that_fit([400], 2000, 2500, 0.20, cpus=1, shared_bytes=100) == 1
    # exactly at the cap fits
    assert max_workers_that_fit([1000], 100, 1100, 0.0, cpus=1) == 1
    # not even one
    assert max_workers_that_fit([1000], 100, 1099, 0.0, cpus=4) == 0
    # bounded by cpus and by the number of cases
    assert max_workers_that_fit([10, 10, 10, 10], 10, 10 ** 9, 0.2, cpus=2) == 2
    assert max_workers_that_fit([10, 10], 10, 10 ** 9, 0.2, cpus=16) == 2
    # order of the input does not matter: the largest go side by side
    assert max_workers_that_fit([100, 1000, 900, 800], 400, 2600, 0.10, cpus=8) == 2
    assert max_workers_that_fit([], 400, 2600, 0.10, cpus=8) == 0


# --------------------------------------------------------------------------- estimate, JSON and text

@pytest.fixture
def mixed_raw(tmp_path):
    make_dataset(tmp_path, 643, "Mixed", [CaseSpec((20, 20, 8), (0.8, 0.8, 3.0)),
                                          CaseSpec((40, 36, 12), (0.8, 0.8, 2.5)),
                                          CaseSpec((16, 18, 6), (0.8, 0.8, 4.0))])
    return load_raw_dataset(tmp_path, 643)


def test_estimate_shape_json_and_render(mixed_raw):
    model = load_model()
    base = Baseline(420 * MiB, 430 * MiB, "sha256:abc", True)
    est = estimate(mixed_raw, None, ["3d_fullres", "2d"], 16 * GiB, base, model, cpus=2)
    assert isinstance(est, Estimate)
    assert {(r["phase"], r["configuration"]) for r in est.per_case} == {
        ("fingerprint", None), ("preprocessing", "3d_fullres"), ("preprocessing", "2d")}
    assert len(est.per_case) == 9
    assert all(r["predicted_peak_bytes"] >= base.worker_bytes for r in est.per_case)
    assert est.max_np == {"3d_fullres": 2, "2d": 2}          # tiny cases: bounded by cpus
    assert est.max_npfp == 2
    assert est.too_large == []
    assert [x["case"] for x in est.largest["3d_fullres"]][0] == "case001"     # the biggest volume
    doc = estimate_json(est)
    json.dumps(doc)
    assert doc["baseline"]["worker_bytes"] == 430 * MiB and doc["margin"] == model["margin"]
    assert set(doc) >= {"cap_bytes", "margin", "baseline", "per_case", "largest", "max_np", "max_npfp", "too_large"}
    text = render_estimate(est)
    assert "case001" in text and "-npfp" in text and "3d_fullres" in text and "2d" in text


def test_too_large_cases_are_listed(mixed_raw):
    model = load_model()
    base = Baseline(420 * MiB, 430 * MiB, "sha256:abc", True)
    geoms = dataset_geometry(mixed_raw)
    peaks = {g.case_id: predict_peak(g, "preprocessing", planned_target_spacing(None, "3d_fullres", geoms), base, model)
             for g in geoms}
    # a cap just below the largest case next to the main process, with the margin on the case's peak
    cap = int(max(peaks.values()) * (1 + model["margin"])) + base.main_bytes - 1
    est = estimate(mixed_raw, None, ["3d_fullres"], cap, base, model, cpus=2)
    big = [t for t in est.too_large if t["configuration"] == "3d_fullres"]
    assert [t["case"] for t in big] == [max(peaks, key=peaks.get)]
    assert est.max_np["3d_fullres"] == 0
    assert "too large" in render_estimate(est)


def test_estimate_uses_the_plans_spacing_when_given(mixed_raw):
    model = load_model()
    base = Baseline(420 * MiB, 430 * MiB, "sha256:abc", True)
    plans = {"transpose_forward": [0, 1, 2], "configurations": {"3d_fullres": {"spacing": [1.0, 0.4, 0.4]}}}
    est = estimate(mixed_raw, plans, ["3d_fullres", "3d_lowres"], 16 * GiB, base, model, cpus=2)
    assert est.target_spacings["3d_fullres"] == [0.4, 0.4, 1.0]          # x, y, z
    assert any("no 3d_lowres" in n for n in est.notes)


# --------------------------------------------------------------------------- baseline (no container here)

class _FakeEngine:
    def __init__(self, image_id):
        self._id = image_id

    def image(self, ref):
        from runner.engines.base import ImageInfo
        return ImageInfo(ref=ref, image_id=self._id, labels={}, repo_digests=[])


def test_baseline_is_cached_per_image_id(tmp_path):
    calls = []

    def probe(image, script):
        calls.append(image)
        return 'noise\nNNRUN_BASELINE {"main": {"VmRSS": 400, "VmHWM": 410}, ' \
               '"workers": [{"VmRSS": 300, "VmHWM": 310}, {"VmRSS": 305, "VmHWM": 320}]}\n'

    b1 = measure_baseline(lambda: _FakeEngine("sha256:one"), "img:1", tmp_path, run_probe=probe)
    assert (b1.main_bytes, b1.worker_bytes, b1.image_id, b1.measured) == (400, 320, "sha256:one", True)
    b2 = measure_baseline(lambda: _FakeEngine("sha256:one"), "img:1", tmp_path, run_probe=probe)
    assert b2 == b1 and len(calls) == 1
    measure_baseline(lambda: _FakeEngine("sha256:two"), "img:1", tmp_path, run_probe=probe)
    assert len(calls) == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["baseline-sha256-one.json", "baseline-sha256-two.json"]


def test_parse_probe_output_without_the_line_fails():
    with pytest.raises(RuntimeError):
        parse_probe_output("Traceback ...")
