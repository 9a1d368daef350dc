#!/usr/bin/env python3
"""The estimate's error on one real run: predicted vs measured per-case worker peak, per phase.

    python scripts/estimate_error.py RUN_DIR [--raw RAW_ROOT] [--image IMAGE]

RUN_DIR is a run folder of `nnrun preprocess` (its report.json holds each
case's measured peak RSS); the prediction is `nnrun estimate`'s (same
baseline, the plans the run wrote, each case's crop and foreground fraction
from the file check's record).  Prints one line per phase: the number of
cases, the mean, the median absolute and the largest relative error
(predicted / measured - 1), and the largest predicted and measured memory
above the per-worker baseline.  ``--headers-only``: the estimate without the
data (no crop, an assumed foreground fraction), as before issue 13.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from runner.cli.estimate import run_estimate  # noqa: E402
from runner.run.settings import DEFAULT_IMAGE  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--raw", default=os.environ.get("nnUNet_raw"))
    ap.add_argument("--image", default=DEFAULT_IMAGE)
    ap.add_argument("--headers-only", action="store_true", help="ignore the crop and foreground from the data")
    ap.add_argument("--model", type=Path, help="another estimate_model.json (default: nnrun's)")
    args = ap.parse_args()
    if args.model:
        import runner.estimate.model as model_module
        model_module.MODEL_PATH = args.model
    report = json.loads((args.run_dir / "report.json").read_text())
    manifest = json.loads((args.run_dir / "manifest.json").read_text())
    preprocessed = args.run_dir.parents[3]
    dataset = manifest["dataset"]["name"]
    configurations = tuple(report.get("configurations") or ("3d_fullres",))
    est = run_estimate(dataset, "8g", configurations, args.raw, str(preprocessed), args.image,
                       use_data=not args.headers_only)
    predicted = {(r["case"], r["phase"], r["configuration"]): r["predicted_peak_bytes"] for r in est.per_case}
    base = est.baseline.worker_bytes
    errors: dict[str, list[float]] = {}
    extra: dict[str, list[tuple[int, int]]] = {}
    for c in report["cases"]:
        if c.get("status") != "done" or not c.get("peak_rss_bytes"):
            continue
        key = (c["case"], c["phase"], c.get("configuration"))
        if key in predicted:
            label = c["phase"] + (f" {c['configuration']}" if c.get("configuration") else "")
            errors.setdefault(label, []).append(predicted[key] / c["peak_rss_bytes"] - 1.0)
            extra.setdefault(label, []).append((predicted[key] - base, c["peak_rss_bytes"] - base))
    for label, errs in errors.items():
        worst = max(errs, key=abs)
        print(f"{dataset} {label}: {len(errs)} cases, mean error {statistics.mean(errs):+.1%}, "
              f"median |error| {statistics.median(abs(e) for e in errs):.1%}, largest {worst:+.1%}; "
              f"above the {base / 2**20:.0f} MiB worker baseline: predicted "
              f"{max(p for p, _ in extra[label]) / 2**20:.1f} MiB, measured {max(m for _, m in extra[label]) / 2**20:.1f} MiB "
              f"(largest case)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
