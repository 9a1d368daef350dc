#!/usr/bin/env python3
"""The per-case peak error of an estimate (any nnrun checkout + model file) on calibrate_estimate.py's measurements.

    python scripts/estimate_before_after.py --code DIR [--model FILE] [--data] [--workdir /tmp/nnrun-estimate-calib]

``--code`` is the root of an nnrun checkout whose ``runner`` is imported (e.g.
an older commit unpacked with ``git archive COMMIT runner | tar -x -C DIR``);
``--model`` its ``estimate_model.json`` (default: the checkout's own);
``--data`` passes each case's crop and foreground fraction from the file
check (needs a checkout that has ``runner.estimate.data``).  Reads the cached
runs in ``WORKDIR/results/*.json`` (nothing is run) and the baseline measured
for them; prints one JSON object: per split, phase/configuration and group
(all datasets; head phantoms only; each dataset) the number of cases, the median and
maximum absolute relative error of the predicted peak, the largest under- and
over-estimate and the worst case.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--code", type=Path, required=True)
    ap.add_argument("--model", type=Path)
    ap.add_argument("--data", action="store_true")
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/nnrun-estimate-calib"))
    ap.add_argument("--worker-bytes", type=int, help="the per-worker baseline (default: the calibration's cache)")
    args = ap.parse_args()
    sys.path.insert(0, str(args.code.resolve()))
    from runner.dataset import load_raw_dataset
    from runner.estimate import model as m
    model = json.loads((args.model or (args.code / "runner" / "estimate" / "estimate_model.json")).read_text())
    worker = args.worker_bytes
    if worker is None:
        for f in sorted((args.workdir / "baseline-cache").glob("*.json")):
            worker = int(json.loads(f.read_text())["worker_bytes"])
    assert worker, "no baseline: give --worker-bytes"
    rows: dict[tuple[str, str, str], list[tuple[float, str]]] = {}
    for path in sorted((args.workdir / "results").glob("*.json")):
        rec = json.loads(path.read_text())
        folder = Path(rec["raw_path"])
        ds = load_raw_dataset(folder.parent, rec["dataset_id"])
        if args.data:
            from runner.estimate.data import dataset_geometry_with_data
            geoms = dataset_geometry_with_data(ds)
        else:
            geoms = m.dataset_geometry(ds)
        by_id = {g.case_id: g for g in geoms}
        head = rec.get("kind", "demo") != "demo"
        for c in rec["cases"]:
            if c.get("status") != "done" or not c.get("peak_rss_bytes"):
                continue
            phase = c["phase"]
            cfg = c.get("configuration") or "3d_fullres"
            spacing = m.planned_target_spacing(rec["plans"], cfg, geoms) if phase == "preprocessing" else None
            peak = worker + m.predict_case_bytes(by_id[c["case"]], phase, spacing, model)
            err = peak / int(c["peak_rss_bytes"]) - 1.0
            label = phase if phase == "fingerprint" else f"preprocessing {cfg}"
            who = f"Dataset{rec['dataset_id']} {c['case']}"
            for group in (["all", "head phantoms"] if head else ["all"]) + [f"Dataset{rec['dataset_id']}"]:
                rows.setdefault((rec["role"], label, group), []).append((err, who))
    out: dict = {}
    for (role, label, group), errs in sorted(rows.items()):
        absolute = [abs(e) for e, _ in errs]
        worst = max(errs, key=lambda x: abs(x[0]))
        out.setdefault(role, {}).setdefault(label, {})[group] = {
            "cases": len(errs), "median_abs": round(statistics.median(absolute), 4), "max_abs": round(max(absolute), 4),
            "max_under": round(max(0.0, -min(e for e, _ in errs)), 4),
            "max_over": round(max(0.0, max(e for e, _ in errs)), 4), "worst": f"{worst[1]} ({worst[0]:+.1%})"}
    print(json.dumps({"code": str(args.code), "data": args.data, "worker_bytes": worker, "errors": out}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
