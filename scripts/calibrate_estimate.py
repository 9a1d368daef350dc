#!/usr/bin/env python3
"""Calibrate and evaluate nnrun's memory estimate (runner/estimate/model.py) on real runs.

What it does:

1. writes synthetic nnU-Net raw datasets with ``runner.demo.make_dataset``
   (shapes from ~40k to ~18M voxels, isotropic and anisotropic spacings
   incl. z 1.5-5 mm and an anisotropic x axis, 1 and 2 channels, 3-8 cases);
2. runs real ``nnrun preprocess --mem 8g -np 1 -npfp 1 -c 3d_fullres --json``
   on each, one at a time (one worker: clean per-case peaks), with
   ``NNRUN_TEST_ID=estimate-calib``;
3. collects per case and phase the worker's peak RSS (report.json ``cases``)
   and, from ``timeline.jsonl``, the main process's peak RSS in the
   fingerprint phase; measures the per-worker baseline in the same image
   (``runner.estimate.baseline.measure_baseline``);
4. fits the model's coefficients by least squares on the CALIBRATION datasets
   and evaluates them on DIFFERENT datasets (other shapes, spacings, channel
   counts, case counts); writes ``runner/estimate/estimate_model.json`` with the
   coefficients, the safety margin (from the maximum evaluation error), the
   errors and the provenance.

Runs are cached in the work folder (``--workdir``, default /tmp/nnrun-estimate-calib):
``--refit`` refits from the cached measurements without running anything.

    python scripts/calibrate_estimate.py                 # everything (~8-10 min on 2 cores)
    python scripts/calibrate_estimate.py --refit         # only the fit, from cached runs
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.demo import CaseSpec, make_dataset  # noqa: E402

TEST_ID = "estimate-calib"
MEM = "8g"


def _c(shape, spacing):
    return CaseSpec(tuple(shape), tuple(float(s) for s in spacing))


# id -> (name, channels, cases, role).  Calibration and evaluation differ in
# shapes, spacings, channel counts and case counts on purpose.
DATASETS: dict[int, tuple[str, int, list[CaseSpec], str]] = {
    # --- calibration -------------------------------------------------------
    # 1 channel, anisotropic z (2.5-4 mm at 0.8 mm in-plane: separate-z resampling)
    710: ("CalAniso", 1, [_c((96, 96, 40), (0.8, 0.8, 2.5)), _c((160, 144, 56), (0.8, 0.8, 3.0)),
                          _c((224, 224, 80), (0.8, 0.8, 4.0)), _c((128, 128, 48), (0.8, 0.8, 3.0)),
                          _c((192, 200, 64), (0.8, 0.8, 2.5)), _c((112, 120, 36), (0.8, 0.8, 4.0))], "calibration"),
    # 2 channels, near-isotropic (order-3 3d resize, no separate z)
    711: ("CalIso2ch", 2, [_c((80, 80, 80), (1.0, 1.0, 1.0)), _c((144, 128, 96), (1.0, 1.0, 1.5)),
                           _c((160, 160, 120), (1.0, 1.0, 1.25)), _c((112, 112, 72), (1.0, 1.0, 1.0))], "calibration"),
    # 1 channel, large cases, one separate-z and one not
    712: ("CalLarge", 1, [_c((256, 256, 120), (0.7, 0.7, 2.0)), _c((240, 256, 90), (0.7, 0.7, 3.0)),
                          _c((200, 220, 100), (0.7, 0.7, 2.5))], "calibration"),
    # 2 channels, 5 mm slices (strongly anisotropic: the planner's 10th-percentile rule)
    713: ("CalThick2ch", 2, [_c((200, 200, 24), (1.0, 1.0, 5.0)), _c((160, 176, 30), (1.0, 1.0, 4.0)),
                             _c((224, 208, 20), (1.0, 1.0, 5.0)), _c((176, 160, 36), (1.0, 1.0, 3.0)),
                             _c((192, 192, 28), (1.0, 1.0, 5.0))], "calibration"),
    # 1 channel, many small cases (fewer fingerprint samples per case)
    714: ("CalSmall", 1, [_c((64, 64, 32), (1.2, 1.2, 1.2)), _c((72, 80, 40), (1.0, 1.0, 1.5)),
                          _c((96, 96, 48), (1.2, 1.2, 1.2)), _c((80, 72, 36), (1.5, 1.5, 1.5)),
                          _c((88, 96, 44), (1.2, 1.2, 2.0)), _c((104, 96, 52), (1.2, 1.2, 1.2)),
                          _c((60, 70, 30), (1.0, 1.0, 1.0)), _c((96, 88, 40), (1.2, 1.2, 1.6))], "calibration"),
    # --- evaluation --------------------------------------------------------
    # 2 channels, mixed z 1.5-4.5 mm at 0.9 mm in-plane
    720: ("EvMixed2ch", 2, [_c((180, 180, 90), (0.9, 0.9, 1.5)), _c((150, 170, 50), (0.9, 0.9, 3.0)),
                            _c((210, 190, 40), (0.9, 0.9, 4.5)), _c((120, 130, 70), (0.9, 0.9, 2.0))], "evaluation"),
    # 1 channel, isotropic 1.2 mm with one finer case; one ~300x300x200 case
    721: ("EvIsoBig", 1, [_c((300, 300, 200), (1.2, 1.2, 1.2)), _c((140, 150, 130), (0.8, 0.8, 0.8)),
                          _c((120, 110, 100), (1.2, 1.2, 1.2)), _c((90, 100, 80), (1.5, 1.5, 1.5))], "evaluation"),
    # 1 channel, anisotropic along x (nnU-Net transposes the axes)
    722: ("EvAnisoX", 1, [_c((40, 160, 150), (3.5, 0.75, 0.75)), _c((56, 180, 170), (2.5, 0.75, 0.75)),
                          _c((32, 200, 190), (4.0, 0.75, 0.75))], "evaluation"),
    # 2 channels, 6 small thick-slice cases
    723: ("EvSmall2ch", 2, [_c((128, 128, 20), (1.1, 1.1, 5.0)), _c((100, 110, 26), (1.1, 1.1, 4.0)),
                            _c((140, 120, 18), (1.1, 1.1, 5.0)), _c((96, 96, 30), (1.1, 1.1, 3.0)),
                            _c((120, 130, 22), (1.1, 1.1, 5.0)), _c((110, 100, 24), (1.1, 1.1, 4.5))], "evaluation"),
    # 1 channel, one ~290x290x160 case resampled along z with the separate-z path
    724: ("EvBigAniso", 1, [_c((288, 288, 160), (0.8, 0.8, 2.5)), _c((256, 256, 100), (0.8, 0.8, 2.0)),
                            _c((200, 200, 90), (0.8, 0.8, 1.5))], "evaluation"),
}


# Realistic anatomy (scripts/head_phantoms.py): MRI-like heads with wide exact-zero margins (nnU-Net crops
# them away), a CT-like variant (air -1000: no crop), 1 and 2 channels, isotropic 0.8-1.5 mm and
# 0.6 x 0.6 x 2 mm anisotropic, labels from a whole brain (~25 % of the crop) to a small lesion (~0.1 %).
# id -> (name, kind, channels, cases, role)
def _h(shape, spacing, labels):
    from head_phantoms import HeadSpec
    return HeadSpec(tuple(shape), tuple(float(s) for s in spacing), labels)


HEAD_DATASETS: dict[int, tuple[str, str, int, list, str]] = {
    # --- calibration -------------------------------------------------------
    730: ("CalHeadIso", "mri", 1, [_h((192, 224, 180), (1.0, 1.0, 1.0), "brain"),
                                  _h((160, 192, 144), (1.2, 1.2, 1.2), "structure"),
                                  _h((256, 256, 180), (0.9, 0.9, 0.9), "lesion")], "calibration"),
    731: ("CalHeadAniso2ch", "mri", 2, [_h((288, 352, 80), (0.6, 0.6, 2.0), "structure"),
                                        _h((256, 320, 72), (0.7, 0.7, 2.0), "brain"),
                                        _h((288, 352, 64), (0.6, 0.6, 2.5), "lesion"),
                                        _h((256, 320, 96), (0.65, 0.65, 1.8), "brain")], "calibration"),
    732: ("CalHeadCT", "ct", 1, [_h((256, 256, 120), (0.8, 0.8, 1.5), "brain"),
                                 _h((224, 224, 100), (0.9, 0.9, 2.0), "lesion"),
                                 _h((240, 240, 140), (0.8, 0.8, 1.25), "structure")], "calibration"),
    # large heads (26-35 M voxels). 734 was first run as an evaluation dataset (744): its 10 % over-prediction
    # with a freely fitted c_in led to fixing preprocessing's c_in at 1; so it is calibration now, and 745
    # (run after that decision) is the clean test of large cases.
    734: ("CalHeadLarge", "mri", 1, [_h((320, 320, 256), (0.7, 0.7, 0.7), "brain"),
                                     _h((384, 384, 240), (0.6, 0.6, 0.6), "structure")], "calibration"),
    # --- evaluation --------------------------------------------------------
    745: ("EvHeadLarge", "mri", 1, [_h((352, 352, 256), (0.65, 0.65, 0.65), "lesion"),
                                    _h((300, 340, 280), (0.7, 0.7, 0.7), "brain"),
                                    _h((256, 320, 200), (0.9, 0.9, 0.9), "structure")], "evaluation"),
    # run after the not-resampled foreground stage was fixed (found on 745 case001): large, one case not resampled
    746: ("EvHeadLarge2", "mri", 1, [_h((320, 352, 240), (0.75, 0.75, 0.75), "brain"),
                                     _h((288, 288, 220), (0.8, 0.8, 0.8), "brain"),
                                     _h((256, 256, 200), (1.0, 1.0, 1.0), "structure")], "evaluation"),
    740: ("EvHeadIso", "mri", 1, [_h((256, 256, 180), (0.8, 0.8, 0.8), "brain"),
                                  _h((256, 256, 180), (1.0, 1.0, 1.0), "lesion"),
                                  _h((256, 256, 180), (1.2, 1.2, 1.2), "structure"),
                                  _h((256, 256, 180), (1.5, 1.5, 1.5), "brain")], "evaluation"),
    741: ("EvHeadAniso", "mri", 1, [_h((384, 384, 90), (0.6, 0.6, 2.0), "brain"),
                                    _h((320, 320, 80), (0.6, 0.6, 2.0), "structure"),
                                    _h((352, 352, 72), (0.6, 0.6, 2.5), "lesion")], "evaluation"),
    742: ("EvHead2chAniso", "mri", 2, [_h((256, 320, 72), (0.6, 0.6, 2.0), "brain"),
                                       _h((288, 320, 64), (0.6, 0.6, 2.5), "structure"),
                                       _h((256, 288, 80), (0.7, 0.7, 2.0), "lesion"),
                                       _h((320, 320, 60), (0.6, 0.6, 2.5), "brain"),
                                       _h((240, 288, 90), (0.65, 0.65, 1.8), "structure")], "evaluation"),
    743: ("EvHeadCT", "ct", 1, [_h((256, 256, 140), (0.9, 0.9, 1.25), "structure"),
                                _h((288, 288, 100), (0.75, 0.75, 2.0), "brain"),
                                _h((224, 224, 160), (1.0, 1.0, 1.0), "lesion")], "evaluation"),
}


HEAD_SEEDS = {734: 744}      # generated (and measured) as dataset 744


def _describe(did: int) -> tuple[str, int, list, str, str]:
    """(name, channels, cases, role, kind) of a dataset of either table."""
    if did in HEAD_DATASETS:
        name, kind, channels, cases, role = HEAD_DATASETS[did]
        return name, channels, cases, role, kind
    name, channels, cases, role = DATASETS[did]
    return name, channels, cases, role, "demo"


def log(msg: str) -> None:
    print(f"[calibrate {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------- real runs

def run_dataset(did: int, workdir: Path, image: str | None, force: bool = False,
                configurations: tuple[str, ...] = ("3d_fullres",)) -> dict:
    """Run nnrun on one dataset (cached in workdir/results/<id>.json); return the measurement record."""
    name, channels, cases, role, kind = _describe(did)
    raw, pre = workdir / "raw", workdir / "preprocessed"
    out = workdir / "results" / f"{did}.json"
    if out.is_file() and not force:
        cached = json.loads(out.read_text())
        if tuple(cached.get("configurations") or ("3d_fullres",)) == tuple(configurations):
            return cached
    out.parent.mkdir(parents=True, exist_ok=True)
    pre.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    if kind == "demo":
        folder = make_dataset(raw, did, name, cases, channels=channels, seed=did)
    else:
        from head_phantoms import make_head_dataset
        folder = make_head_dataset(raw, did, name, cases, kind=kind, channels=channels, seed=HEAD_SEEDS.get(did, did))
    gen_s = time.time() - t0
    env = {**os.environ, "NNRUN_TEST_ID": TEST_ID, "nnUNet_raw": str(raw), "nnUNet_preprocessed": str(pre),
           "PYTHONPATH": str(REPO)}
    argv = [sys.executable, "-m", "runner.cli", "preprocess", "-d", str(did), "--mem", MEM,
            "-np", "1", "-npfp", "1", "-c", *configurations, "--json", "--quiet", "--no-plot", "--clean"]
    if image:
        argv += ["--image", image]
    t1 = time.time()
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, cwd=REPO, timeout=1800)
    run_s = time.time() - t1
    try:
        report = json.loads(proc.stdout)
    except ValueError:
        raise SystemExit(f"dataset {did}: nnrun printed no JSON (exit {proc.returncode}): {proc.stderr[-2000:]}") from None
    if report.get("outcome") != "ok":
        raise SystemExit(f"dataset {did}: nnrun outcome {report.get('outcome')}: {report.get('message')}")
    run_dir = Path(report["run_dir"])
    plans_path = pre / folder.name / "nnUNetPlans.json"
    record = {
        "dataset_id": did, "name": folder.name, "role": role, "channels": channels, "kind": kind,
        "configurations": list(configurations),
        "raw_path": str(folder),
        "cases": report["cases"],
        "main_fingerprint_peak_rss_bytes": _main_fingerprint_peak(run_dir),
        "plans": json.loads(plans_path.read_text()),
        "image_id": report.get("image_id"),
        "run_id": report.get("run_id"),
        "run_duration_s": round(run_s, 1),
        "generate_s": round(gen_s, 1),
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }
    out.write_text(json.dumps(record, indent=1) + "\n")
    return record


def _main_fingerprint_peak(run_dir: Path) -> int | None:
    """The nnU-Net main process's highest sampled RSS (10 Hz) during the fingerprint phase."""
    from runner.rundir import read_jsonl
    events = read_jsonl(run_dir / "agent.jsonl")
    main_pid = next((e.get("pid") for e in events if e.get("event") == "agent_start"), None)
    start = next((e["t"] for e in events if e.get("event") == "phase_start" and e.get("phase") == "fingerprint"), None)
    end = next((e["t"] for e in events if e.get("event") == "phase_end" and e.get("phase") == "fingerprint"), None)
    if main_pid is None or start is None or end is None:
        return None
    peak = None
    for s in read_jsonl(run_dir / "timeline.jsonl"):
        if not start <= s.get("t", 0) <= end + 0.2:
            continue
        for p in (s.get("procs") or {}).values():
            if p.get("ns_pid") == main_pid:
                peak = max(peak or 0, int(p.get("rss") or 0))
    return peak


# --------------------------------------------------------------------------- fit and evaluation

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workdir", type=Path, default=Path(os.environ.get("NNRUN_CALIB_DIR", "/tmp/nnrun-estimate-calib")))
    ap.add_argument("--image", default=None, help="image (default: nnrun's default image)")
    ap.add_argument("--refit", action="store_true", help="only refit from cached measurements")
    ap.add_argument("--collect-only", action="store_true", help="only run the datasets")
    ap.add_argument("--force", action="store_true", help="re-run datasets even when cached")
    ap.add_argument("--only", type=int, nargs="*", help="dataset ids to run (default: all)")
    ap.add_argument("--configs", nargs="+", default=["3d_fullres"],
                    help="configurations to preprocess (default 3d_fullres; e.g. 2d 3d_fullres)")
    ap.add_argument("--headers-only", action="store_true",
                    help="ignore the crop and foreground fraction from the data (the estimate before issue 13)")
    ap.add_argument("--evaluate", type=Path, metavar="MODEL_JSON",
                    help="do not fit: print the errors of this model file on the measurements")
    ap.add_argument("--output", type=Path, default=REPO / "runner" / "estimate" / "estimate_model.json")
    args = ap.parse_args(argv)
    started = time.time()
    ids = args.only or sorted([*DATASETS, *HEAD_DATASETS])
    records = []
    for did in ids:
        cached = (args.workdir / "results" / f"{did}.json").is_file()
        if args.refit and not cached:
            raise SystemExit(f"--refit: no cached measurement for dataset {did} in {args.workdir}")
        name, _, _, role, _ = _describe(did)
        log(f"dataset {did} {name} ({role}): {'cached' if cached and not args.force else 'running'}")
        if args.refit or args.evaluate:
            rec = json.loads((args.workdir / "results" / f"{did}.json").read_text())
        else:
            rec = run_dataset(did, args.workdir, args.image, force=args.force, configurations=tuple(args.configs))
        log(f"  done: {len(rec['cases'])} case records, run {rec['run_duration_s']} s")
        records.append(rec)
    if args.collect_only:
        log(f"collected in {time.time() - started:.0f} s")
        return 0
    from runner.estimate.calibrate import evaluate_model, fit_model
    baseline = _baseline(args)
    if args.evaluate:
        model = json.loads(args.evaluate.read_text())
        print(json.dumps(evaluate_model(records, baseline, model, use_data=not args.headers_only), indent=1))
        return 0
    model = fit_model(records, baseline, use_data=not args.headers_only)
    model["provenance"] = _provenance(records, baseline, started, args)
    args.output.write_text(json.dumps(model, indent=1) + "\n")
    log(f"wrote {args.output}")
    print(json.dumps({k: model[k] for k in ("coefficients", "margin", "errors")}, indent=1))
    return 0


def _baseline(args):
    from runner.engines.docker import DockerEngine
    from runner.estimate.baseline import measure_baseline
    from runner.run.settings import DEFAULT_IMAGE
    image = args.image or DEFAULT_IMAGE
    return measure_baseline(DockerEngine, image, args.workdir / "baseline-cache")


def _provenance(records, baseline, started, args) -> dict:
    try:
        import numpy
        numpy_version = numpy.__version__
    except ImportError:  # pragma: no cover
        numpy_version = None
    mem_total = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_total = int(line.split()[1]) * 1024
    except OSError:
        pass
    return {
        "script": "scripts/calibrate_estimate.py",
        "fitted_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"hostname": platform.node(), "kernel": platform.release(), "cpus": os.cpu_count(),
                    "mem_total_bytes": mem_total, "python": platform.python_version(), "numpy": numpy_version},
        "image_id": baseline.image_id,
        "command": f"nnrun preprocess -d ID --mem 8g -np 1 -npfp 1 -c {' '.join(args.configs)} --json "
                   "(one dataset at a time)",
        "data_stats": not args.headers_only,
        "datasets": [{
            "id": r["dataset_id"], "name": r["name"], "role": r["role"], "channels": r["channels"],
            "cases": len({c["case"] for c in r["cases"]}),
            "kind": r.get("kind", "demo"), "configurations": r.get("configurations", ["3d_fullres"]),
            "shapes_xyz": [list(s.shape) for s in _describe(r["dataset_id"])[2]],
            "spacings_xyz": [list(s.spacing) for s in _describe(r["dataset_id"])[2]],
            "run_id": r["run_id"], "run_date": r["date"], "run_duration_s": r["run_duration_s"],
        } for r in records],
        "runs_total_s": round(sum(r["run_duration_s"] + r.get("generate_s", 0) for r in records), 1),
        "run_image_ids": sorted({r.get("image_id") for r in records if r.get("image_id")}),
        "total_wall_s_of_this_invocation": round(time.time() - started, 1),
    }


if __name__ == "__main__":
    sys.exit(main())
