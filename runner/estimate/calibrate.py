"""Calibration of the estimate's coefficients on real runs (used by scripts/calibrate_estimate.py)."""
from __future__ import annotations

import json
import math
import statistics
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

from runner.estimate.model import (
    DEFAULT_MODEL,
    FINGERPRINT_TOTAL_SAMPLES,
    PHASES,
    Baseline,
    CaseGeometry,
    MiB,
    dataset_geometry,
    features,
    planned_target_spacing,
    predict_case_bytes,
    predict_main_fingerprint_bytes,
    predict_peak,
)


def measured_points(records: list[dict], baseline: Baseline, use_data: bool = True) -> list[dict]:
    """One point per measured case and phase: geometry, target spacing, measured peak and extra.

    ``use_data``: each case's crop and foreground fraction from the file check
    (read now if the check's record does not have them), as nnrun's estimate
    uses them; False: headers only.
    """
    from runner.dataset import load_raw_dataset
    from runner.estimate.data import dataset_geometry_with_data
    from runner.formats.check_cache import check_files_once
    points = []
    for rec in records:
        folder = Path(rec["raw_path"])
        ds = load_raw_dataset(folder.parent, rec["dataset_id"])
        if use_data:
            check_files_once(ds.all_files())            # a no-op when the preprocess run's check recorded them
            geom_list = dataset_geometry_with_data(ds)
        else:
            geom_list = dataset_geometry(ds)
        geoms = {g.case_id: g for g in geom_list}
        spacings: dict[str, object] = {}
        for c in rec["cases"]:
            if c.get("status") != "done" or not c.get("peak_rss_bytes"):
                continue
            phase = c["phase"]
            configuration = str(c.get("configuration") or "3d_fullres")
            if phase == "preprocessing" and configuration not in spacings:
                spacings[configuration] = planned_target_spacing(rec["plans"], configuration, geom_list)
            points.append({
                "dataset_id": rec["dataset_id"], "role": rec["role"], "case": c["case"], "phase": phase,
                "configuration": configuration if phase == "preprocessing" else None,
                "kind": rec.get("kind", "demo"),
                "geom": geoms[c["case"]], "target_spacing": spacings[configuration] if phase == "preprocessing" else None,
                "peak": int(c["peak_rss_bytes"]), "extra": int(c["peak_rss_bytes"]) - baseline.worker_bytes,
            })
    return points


def _lstsq_relative(rows: Sequence[tuple[float, float]], targets: list[float], floor: float,
                    c_in: float | None = None) -> tuple[float, float, float]:
    """min sum(((c0 + c_in a + c_ws b) - y) / max(y, floor))^2 with numpy; ``c_in`` given: only c0 and c_ws."""
    import numpy as np
    a = np.array([[1.0, r[0], r[1]] for r in rows])
    y = np.array(targets, dtype=float)
    w = 1.0 / np.maximum(np.abs(y), floor)
    if c_in is not None:
        c0, _, c_ws = _lstsq_relative([(0.0, r[1]) for r in rows], list(y - c_in * a[:, 1]), floor)
        return c0, float(c_in), c_ws
    cols = [j for j in range(3) if np.any(a[:, j] != 0)]
    sol, *_ = np.linalg.lstsq(a[:, cols] * w[:, None], y * w, rcond=None)
    full = [0.0, 0.0, 0.0]
    for j, v in zip(cols, sol):
        full[j] = float(v)
    return full[0], full[1], full[2]


def _error_row(pts: list[dict], phase: str, model: dict, baseline: Baseline) -> dict:
    rel_extra, rel_peak, signed_peak = [], [], []
    worst: tuple[float, dict] | None = None
    for p in pts:
        extra = predict_case_bytes(p["geom"], phase, p["target_spacing"], model)
        peak = baseline.worker_bytes + extra
        rel_peak.append(abs(peak - p["peak"]) / p["peak"])
        signed_peak.append((peak - p["peak"]) / p["peak"])
        if p["extra"] > 0:
            rel_extra.append(abs(extra - p["extra"]) / p["extra"])
        if worst is None or rel_peak[-1] > worst[0]:
            worst = (rel_peak[-1], p)
    assert worst is not None        # pts is not empty
    return {
        "cases": len(pts),
        "extra_median_abs_rel_error": round(statistics.median(rel_extra), 4) if rel_extra else None,
        "extra_max_abs_rel_error": round(max(rel_extra), 4) if rel_extra else None,
        "peak_median_abs_rel_error": round(statistics.median(rel_peak), 4),
        "peak_max_abs_rel_error": round(max(rel_peak), 4),
        "peak_max_underestimate": round(max(0.0, -min(signed_peak)), 4),
        "peak_max_overestimate": round(max(0.0, max(signed_peak)), 4),
        "worst_case": f"Dataset{worst[1]['dataset_id']} {worst[1]['case']}",
    }


def _errors(points: list[dict], model: dict, baseline: Baseline) -> dict:
    """Per phase; preprocessing also per configuration and, for each, on the realistic anatomy only."""
    out = {}
    for phase in PHASES:
        pts = [p for p in points if p["phase"] == phase]
        if not pts:
            continue
        out[phase] = _error_row(pts, phase, model, baseline)
        groups: dict[str, list[dict]] = {}
        for p in pts:
            if phase == "preprocessing":
                groups.setdefault(f"preprocessing {p['configuration']}", []).append(p)
            if p.get("kind", "demo") != "demo":
                name = f"preprocessing {p['configuration']}" if phase == "preprocessing" else phase
                groups.setdefault(f"{name} (head phantoms)", []).append(p)
        for name, group in sorted(groups.items()):
            if name != phase:
                out[name] = _error_row(group, phase, model, baseline)
    return out


def evaluate_model(records: list[dict], baseline: Baseline, model: dict, use_data: bool = True) -> dict:
    """The errors of ``model`` (a model file's content) on the calibration and evaluation records."""
    points = measured_points(records, baseline, use_data=use_data)
    return {"calibration": _errors([p for p in points if p["role"] == "calibration"], model, baseline),
            "evaluation": _errors([p for p in points if p["role"] == "evaluation"], model, baseline)}


# Preprocessing's input bytes are exact sizes of the arrays nnU-Net holds (reader arrays, their float32 copies,
# the float64 copy of the crop): their coefficient is 1, not fitted.  Fitted freely it came out 1.20 on the
# calibration set (no case above 16 M voxels) and over-predicted a 26 M-voxel head by 10 %.
FIXED_C_IN = {"preprocessing": 1.0}


def fit_model(records: list[dict], baseline: Baseline, extra_floor_bytes: int = 64 * MiB,
              use_data: bool = True) -> dict:
    """Fit the coefficients on the 'calibration' records, evaluate on the 'evaluation' ones.

    Least squares on the relative error of the per-case extra bytes (each row
    weighted by 1 / max(measured extra, 64 MiB), so small cases, whose extra is
    mostly allocator noise, do not dominate); preprocessing's ``c_in`` is
    fixed (:data:`FIXED_C_IN`).  ``margin`` is the largest
    relative error of the full peak on the evaluation set, rounded up to the
    next percent, plus 5 points.
    """
    model = json.loads(json.dumps(DEFAULT_MODEL))
    points = measured_points(records, baseline, use_data=use_data)
    calib = [p for p in points if p["role"] == "calibration"]
    evalu = [p for p in points if p["role"] == "evaluation"]
    for phase in PHASES:
        pts = [p for p in calib if p["phase"] == phase]
        rows = [features(p["geom"], phase, p["target_spacing"], model) for p in pts]
        c0, c_in, c_ws = _lstsq_relative(rows, [p["extra"] for p in pts], extra_floor_bytes,
                                         c_in=FIXED_C_IN.get(phase))
        model["coefficients"][phase] = {"c0": round(c0), "c_in": round(c_in, 5), "c_ws": round(c_ws, 5)}
    mains = [r for r in records if r.get("main_fingerprint_peak_rss_bytes") and r["role"] == "calibration"]
    if mains:
        ratios = [(r["main_fingerprint_peak_rss_bytes"] - baseline.main_bytes)
                  / (3 * 4 * FINGERPRINT_TOTAL_SAMPLES * r["channels"]) for r in mains]
        model["coefficients"]["main_fingerprint"] = {"c_ws": round(max(ratios), 4)}
    errors = {"calibration": _errors(calib, model, baseline), "evaluation": _errors(evalu, model, baseline)}
    worst = max(v["peak_max_abs_rel_error"] for k, v in errors["evaluation"].items() if k in PHASES)
    model["margin"] = round(math.ceil(worst * 100) / 100 + 0.05, 2)
    model["errors"] = errors
    model["baseline_used"] = asdict(baseline)
    model["main_fingerprint_check"] = [{
        "dataset_id": r["dataset_id"], "channels": r["channels"], "measured_bytes": r["main_fingerprint_peak_rss_bytes"],
        "predicted_bytes": predict_main_fingerprint_bytes(
            [CaseGeometry("x", (1, 1, 1), (1.0, 1.0, 1.0), r["channels"], 4, 1)], baseline, model),
    } for r in records if r.get("main_fingerprint_peak_rss_bytes")]
    model["points"] = [{
        "dataset_id": p["dataset_id"], "role": p["role"], "case": p["case"], "phase": p["phase"],
        "configuration": p.get("configuration"), "kind": p.get("kind", "demo"),
        "crop_xyz": list(p["geom"].crop_shape) if p["geom"].crop_shape else None,
        "foreground_fraction": (round(p["geom"].foreground_fraction, 5)
                                if p["geom"].foreground_fraction is not None else None),
        "shape_xyz": list(p["geom"].shape), "spacing_xyz": [round(s, 4) for s in p["geom"].spacing],
        "channels": p["geom"].channels, "dataset_cases": p["geom"].dataset_cases,
        "measured_peak_bytes": p["peak"],
        "predicted_peak_bytes": predict_peak(p["geom"], p["phase"], p["target_spacing"], baseline, model),
    } for p in points]
    model["definition"] = {
        "extra": "c0 + c_in * in_bytes + c_ws * ws_bytes of the analytic peak stage (runner.estimate.model.stage_bytes)",
        "peak": "baseline.worker_bytes + extra",
        "margin": "max abs relative error of the full peak on the evaluation set, rounded up to 1 %, + 0.05; "
                  "n workers fit when main + the n largest peaks (less the shared pages) + margin x those whole peaks <= cap",
        "main_fingerprint": "baseline.main_bytes + c_ws * 3 * 4 bytes * 1e8 samples * channels",
        "foreground_fraction": "assumed fraction of labelled voxels in the crop when the data did not give it "
                               "(the pre-flight file check measures it for NIfTI)",
        "crop": "stage_bytes resamples the crop to the nonzero region when the data gave it (crop_xyz)",
    }
    return model
