"""The memory estimate against a real run (marked docker by this folder's conftest).

A fresh synthetic dataset that is in neither the calibration nor the
evaluation set of runner/estimate_model.json (other shapes, spacings, 2
channels, 3 cases) is preprocessed for real with one worker; every per-case
peak the telemetry records must be within the model's documented error
(its ``margin``, derived from the maximum evaluation error) of the prediction
made from the headers alone.  The baseline is measured in a real container,
must be plausible, and is cached by image id.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.engines.docker import DockerEngine
from runner.estimate.baseline import measure_baseline
from runner.estimate.model import dataset_geometry, estimate, load_model, planned_target_spacing, predict_peak
from tests.integration.conftest import run_nnrun

MiB = 1 << 20
DATASET_ID = 751
CASES = [CaseSpec((150, 140, 50), (0.85, 0.85, 3.5)),
         CaseSpec((120, 130, 80), (0.85, 0.85, 2.0)),
         CaseSpec((170, 160, 40), (0.85, 0.85, 2.8))]


@pytest.fixture(scope="module")
def baseline_cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("baseline-cache")


def test_baseline_in_a_real_container_is_plausible_and_cached(docker_ready, baseline_cache):
    b = measure_baseline(DockerEngine, docker_ready, baseline_cache)
    assert b.measured and b.image_id.startswith("sha256:")
    # interpreter + torch + nnunetv2: a few hundred MiB, not tens and not gigabytes
    assert 150 * MiB < b.worker_bytes < 1500 * MiB, b
    assert 150 * MiB < b.main_bytes < 1500 * MiB, b
    cached = list(baseline_cache.glob("baseline-*.json"))
    assert len(cached) == 1 and b.image_id.replace(":", "-") in cached[0].name
    assert json.loads(cached[0].read_text())["worker_bytes"] == b.worker_bytes

    def no_container(image, script):
        raise AssertionError("the cached baseline should have been used")

    assert measure_baseline(DockerEngine, docker_ready, baseline_cache, run_probe=no_container) == b


def test_predicted_peaks_match_a_real_run_of_an_unseen_dataset(docker_ready, baseline_cache, tmp_path):
    model = load_model()
    calibrated = {d["id"] for d in model["provenance"]["datasets"]}
    assert DATASET_ID not in calibrated
    raw, pre = tmp_path / "raw", tmp_path / "preprocessed"
    pre.mkdir()
    make_dataset(raw, DATASET_ID, "EstimateCheck", CASES, channels=2, seed=7)
    ds = load_raw_dataset(raw, DATASET_ID)
    geoms = dataset_geometry(ds)
    baseline = measure_baseline(DockerEngine, docker_ready, baseline_cache)

    before = estimate(ds, None, ["3d_fullres"], 8 << 30, baseline, model, cpus=2, geoms=geoms)
    result = run_nnrun("preprocess", "-d", str(DATASET_ID), "--mem", "8g", "-np", "1", "-npfp", "1",
                       "-c", "3d_fullres", "--quiet", "--no-plot", "--image", docker_ready,
                       env={"nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre)})
    assert result.report and result.report["outcome"] == "ok", result.stderr[-2000:]

    plans = json.loads((pre / ds.name / "nnUNetPlans.json").read_text())
    # the planner's rule, applied to headers only, gives the spacing the real planner chose
    rule = planned_target_spacing(None, "3d_fullres", geoms)
    planned = planned_target_spacing(plans, "3d_fullres", geoms)
    assert all(math.isclose(a, b, rel_tol=1e-4) for a, b in zip(rule, planned)), (rule, planned)

    by_case = {g.case_id: g for g in geoms}
    predicted_before = {(r["case"], r["phase"]): r["predicted_peak_bytes"] for r in before.per_case}
    measured = [c for c in result.report["cases"] if c["status"] == "done"]
    assert {(c["case"], c["phase"]) for c in measured} == set(predicted_before)
    errors = []
    for c in measured:
        spacing = planned if c["phase"] == "preprocessing" else None
        pred = predict_peak(by_case[c["case"]], c["phase"], spacing, baseline, model)
        assert pred == predicted_before[(c["case"], c["phase"])]   # the estimate made before the run
        errors.append((abs(pred - c["peak_rss_bytes"]) / c["peak_rss_bytes"], c["case"], c["phase"],
                       pred, c["peak_rss_bytes"]))
    worst = max(errors)
    for e in sorted(errors, key=lambda e: (e[2], e[1])):
        print(f"{e[2]:<14} {e[1]}: predicted {e[3] / MiB:7.0f} MiB, measured {e[4] / MiB:7.0f} MiB, error {e[0]:.1%}")
    assert worst[0] <= model["margin"], f"worst case off by {worst[0]:.1%} (> margin {model['margin']}): {worst}"
    # and the estimate's -np for this cap is consistent with the run: one worker fits
    assert before.max_np["3d_fullres"] >= 1 and before.max_npfp >= 1 and not before.too_large
