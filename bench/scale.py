#!/usr/bin/env python3
"""nnrun's costs against the number and the size of the cases: pre-flight file check and whole-command overhead.

    python bench/scale.py                          # both sections (7.5 min on 2 cores, measured 2026-12-06)
    python bench/scale.py --only preflight         # the file check alone (~40 s with making its files, no Docker)

* ``preflight``: nnrun's pre-flight file check (``runner.formats.check_cache.check_files_once``, one worker,
  an empty cache) against ``gzip -t`` (one process) on the same ``.nii.gz`` files, head phantoms of real
  size (``scripts/head_phantoms.py``) and the large cases below: MB/s of decompressed data per core, ratio;
  then the same check a second time (the cache: files verified before are not read again).
* ``overhead``: ``nnrun preprocess`` (its defaults for the cap, ``memory.png`` included) against a plain
  ``docker run --memory X --memory-swap X`` of the same image and nnU-Net command and pools
  (``-c 3d_fullres -np 2 -npfp 2``), interleaved (order alternating), on 10, 100 and 500 small cases
  (48 x 48 x 24 voxels) and 10 cases of 512 x 512 x 200 voxels; ratio of medians per dataset.  Every
  run starts from an empty preprocessed folder; nnrun's file check runs with an empty cache on its
  first repetition only (as for a user's second run of a dataset).

Writes ``bench/results/<stamp>-scale.json`` and prints the table.  Run as root on an idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "scripts")):
    if p not in sys.path:
        sys.path.insert(0, p)

from head_phantoms import HeadSpec, make_head_dataset  # noqa: E402

from bench.run import DockerEvents, compile_runner, fresh, log, machine, med, native, nnrun, rnd, write_results  # noqa: E402
from runner.demo import CaseSpec, make_dataset  # noqa: E402

ARGS = ["-c", "3d_fullres", "-np", "2", "-npfp", "2"]
SMALL = CaseSpec((48, 48, 24), (1.0, 1.0, 2.0))
LARGE = CaseSpec((512, 512, 200), (0.8, 0.8, 2.0))


def nifti_bytes(path: Path) -> int:
    """The decompressed size of a .nii.gz (gzip's trailer holds it modulo 2**32; these files are smaller)."""
    with open(path, "rb") as fh:
        fh.seek(-4, os.SEEK_END)
        return int.from_bytes(fh.read(4), "little")


def bench_preflight(folders: list[Path]) -> dict:
    from runner.formats.check_cache import check_files_once
    files = sorted(f for d in folders for f in d.rglob("*.nii.gz"))
    raw_bytes = sum(nifti_bytes(f) for f in files)
    subprocess.run(["cat", *map(str, files)], stdout=subprocess.DEVNULL, check=True)   # both read from page cache
    rows = {}
    for _rep in range(2):
        t = time.monotonic()
        subprocess.run(["gzip", "-t", *map(str, files)], check=True)
        rows.setdefault("gzip_t_s", []).append(time.monotonic() - t)
        with tempfile.TemporaryDirectory() as cache:
            t = time.monotonic()
            problems = check_files_once(files, workers=1, cache_dir=Path(cache))
            rows.setdefault("nnrun_first_s", []).append(time.monotonic() - t)
            t = time.monotonic()
            check_files_once(files, workers=1, cache_dir=Path(cache))
            rows.setdefault("nnrun_second_s", []).append(time.monotonic() - t)
        if problems:
            raise RuntimeError(f"the file check found problems in the benchmark's own files: {problems[:2]}")
    gz, first, second = (med(rows[k]) for k in ("gzip_t_s", "nnrun_first_s", "nnrun_second_s"))
    mb = raw_bytes / 1e6
    return {"files": len(files), "decompressed_mb": rnd(mb, 1), "runs_s": {k: [rnd(x) for x in v] for k, v in rows.items()},
            "gzip_t_mb_per_s": rnd(mb / gz, 1), "nnrun_first_mb_per_s": rnd(mb / first, 1),
            "ratio_nnrun_over_gzip_t": rnd(gz / first), "nnrun_second_s": rnd(second, 3),
            "note": "one core each (gzip -t one process, the check one worker), files in the page cache; "
                    "the check also records each image's nonzero box and count for the estimate"}


def bench_overhead(raw: Path, work: Path, reps: int, sizes: list[str], ev: DockerEvents) -> dict:
    out = {}
    for label in sizes:
        if label == "large10":
            ds, mem = make_dataset(raw, 580, "Large10", [LARGE] * 10), "12g"
        else:
            n = int(label[len("small"):])
            ds, mem = make_dataset(raw, 570 + {10: 0, 100: 1, 500: 2}[n], f"Small{n}", [SMALL] * n), "4g"
        walls: dict[str, list[float]] = {"native": [], "nnrun": []}
        for rep in range(reps):
            order = ("native", "nnrun") if rep % 2 == 0 else ("nnrun", "native")
            for side in order:
                pre = fresh(work / "pre" / f"{label}-{side}-{rep}")
                if side == "native":
                    r = native(ds, pre, mem, "nnUNetv2_plan_and_preprocess", ARGS, events=ev, timeout=3600)
                    ok = r["rc"] == 0
                else:
                    r = nnrun(ds, pre, mem, ARGS, events=ev, timeout=3600)
                    ok = (r.get("report") or {}).get("outcome") == "ok"
                log(f"overhead {label} {side} rep {rep + 1}/{reps}: {r['wall_s']:.1f} s ok={ok}")
                if not ok:
                    raise RuntimeError(f"{label} {side} failed: {r['stderr'][-600:]}")
                walls[side].append(r["wall_s"])
                shutil.rmtree(pre, ignore_errors=True)
        out[label] = {"dataset": ds.name, "mem": mem, "walls_s": walls, "median_native_s": rnd(med(walls["native"]), 1),
                      "median_nnrun_s": rnd(med(walls["nnrun"]), 1),
                      "ratio_nnrun_over_native": rnd(med(walls["nnrun"]) / med(walls["native"]), 3)}
    return out


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"Machine: {m.get('cores')} cores, {m.get('mem_total_gib')} GiB, cgroup v{m.get('cgroup_version')}, "
             f"Docker {m.get('docker')}; {m.get('date')}; took {res.get('duration_s')} s", "",
             "| measure | value | goal | met |", "|---|---|---|---|"]
    p = res.get("preflight")
    if p:
        r = p["ratio_nnrun_over_gzip_t"]
        lines.append(f"| pre-flight check, first run ({p['files']} files, {p['decompressed_mb']} MB decompressed): "
                     f"nnrun {p['nnrun_first_mb_per_s']} MB/s vs gzip -t {p['gzip_t_mb_per_s']} MB/s per core | "
                     f"{r} | ≥ 0.9 | {'yes' if r >= 0.9 else 'NO'} |")
        lines.append(f"| pre-flight check, second run (cache) | {p['nnrun_second_s']} s | ~0 | "
                     f"{'yes' if p['nnrun_second_s'] < 0.5 else 'NO'} |")
    for label, o in (res.get("overhead") or {}).items():
        r = o["ratio_nnrun_over_native"]
        lines.append(f"| overhead {label} ({o['dataset']}, --mem {o['mem']}): nnrun {o['median_nnrun_s']} s vs "
                     f"docker run {o['median_native_s']} s | {r} | ≤ 1.03 | {'yes' if r <= 1.03 else 'NO'} |")
    return "\n".join(lines) + "\n"


def run_scale(work: Path, only: set[str], reps: int, sizes: list[str], ev: DockerEvents | None) -> dict:
    """The sections in ``only``, in ``work``: what ``main`` and ``bench/run.py``'s full run record."""
    raw = work / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for d in (work, raw):
        os.chmod(d, 0o755)
    res: dict = {}
    if "preflight" in only:
        heads = make_head_dataset(raw, 790, "CheckHeads", [HeadSpec((256, 256, 180), (1.0, 1.0, 1.0)),
                                                           HeadSpec((320, 320, 64), (0.7, 0.7, 2.5)),
                                                           HeadSpec((288, 288, 200), (0.75, 0.75, 0.75))] * 2)
        big = make_dataset(raw, 791, "CheckLarge", [LARGE] * 3)
        res["preflight"] = bench_preflight([heads, big])
        log(f"preflight: {json.dumps(res['preflight'])}")
    if "overhead" in only and ev is not None:
        res["overhead"] = bench_overhead(raw, work, reps, sizes, ev)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", default="preflight,overhead", help="comma-separated: preflight, overhead")
    ap.add_argument("--sizes", default="small10,small100,small500,large10", help="overhead datasets")
    ap.add_argument("--reps", type=int, default=2, help="overhead repetitions per side")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args(argv)
    compile_runner()
    started = time.time()
    work = a.work or Path(f"/tmp/nnrun-scale-{uuid.uuid4().hex[:8]}")
    only = set(a.only.split(","))
    res: dict = {"schema": 1, "machine": machine(), "argv": sys.argv[1:]}
    ev = DockerEvents() if "overhead" in only else None
    try:
        res.update(run_scale(work, only, a.reps, a.sizes.split(","), ev))
    finally:
        if ev:
            ev.close()
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    tab, path = write_results(res, table, a.out, "-scale", started)
    print(tab)
    print(f"results: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
