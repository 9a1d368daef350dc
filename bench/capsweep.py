#!/usr/bin/env python3
"""Cap sweep and user journey: nnrun's defaults against the best fixed pool a user could find, at every cap.

    python bench/capsweep.py                      # both datasets, 5 caps each (~40 min on 2 cores)
    python bench/capsweep.py --datasets heads --caps 3 --journey ''   # a quicker look

For each dataset (``heads``: MRI-like head phantoms of real size, 0.75-1.5 mm and one 0.7 x 0.7 x 2.5 mm
case, smooth tissue in a field of exact zeros; ``mixed``: bench/run.py's mixed-size set):

1. a reference ``nnrun preprocess -np 1 --mem 12g`` gives the fingerprint, the plans and each case's
   measured worker peak;
2. caps from "barely fits one worker" (main process + the largest case's peak, plus 5 %, or the smallest
   cap nnrun accepts when that is higher) to "fits all" (main + the ``cores`` largest peaks side by side,
   plus 15 %), evenly spaced;
3. at each cap, interleaved (bench/run.py's ``_sweep``): native ``nnUNetv2_plan_and_preprocess -c
   3d_fullres -np k -npfp k`` for k = 1..cores, and ``nnrun preprocess -c 3d_fullres`` with its
   defaults, on copies of the reference's fingerprint and plans; ratio T(best surviving fixed pool) /
   T(nnrun), and whether nnrun's first try was OOM-free;
4. the user journey at each cap (``--journey`` names the datasets): native from nnU-Net's defaults for
   ``-c 3d_fullres`` (``-np 4 -npfp 8``), halving both after each failure and running the same command
   again in the same folder (nnU-Net reuses a fingerprint it finished), until one attempt succeeds; its
   total time against nnrun's first try from an empty folder (fingerprint included).

Writes ``bench/results/<stamp>-capsweep.json``, the table (stdout, and ``--docs``), and the plot
``docs/capsweep.png`` (wall time against cap: native pools, the journey, nnrun).  Root (reads /dev/kmsg
for the kernel's OOM kills of each run's own container), on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
for p in (str(REPO), str(REPO / "scripts")):
    if p not in sys.path:
        sys.path.insert(0, p)

from head_phantoms import HeadSpec, make_head_dataset  # noqa: E402

from bench.run import (  # noqa: E402
    DEAD_WORKER,
    DockerEvents,
    Kmsg,
    MiB,
    _sweep,
    compile_runner,
    datasets,
    estimate,
    fresh,
    log,
    machine,
    native,
    nnrun,
    oom_mem_fmt,
    rnd,
    summary,
    write_results,
)

# Six heads of real size (x, y, z voxels at mm spacings): 0.75-1.5 mm, one anisotropic, labels of
# different foreground fractions; nnU-Net's target spacing is their median, so most are resampled.
HEAD_CASES = [HeadSpec((240, 240, 160), (1.0, 1.0, 1.0), "brain"),
              HeadSpec((256, 256, 176), (0.9, 0.9, 0.9), "structure"),
              HeadSpec((200, 200, 140), (1.2, 1.2, 1.2), "lesion"),
              HeadSpec((320, 320, 64), (0.7, 0.7, 2.5), "brain"),
              HeadSpec((160, 160, 112), (1.5, 1.5, 1.5), "structure"),
              HeadSpec((288, 288, 200), (0.75, 0.75, 0.75), "lesion")]
# nnU-Net's own defaults for plan_and_preprocess -c 3d_fullres, halved after each failure.
JOURNEY = [(4, 8), (2, 4), (1, 2), (1, 1)]
ARGS = ["-c", "3d_fullres"]


def make_datasets(raw: Path, which: list[str], head_repeat: int) -> dict[str, Path]:
    out = {}
    if "heads" in which:
        out["heads"] = make_head_dataset(raw, 760, "Heads", HEAD_CASES * head_repeat, "mri", 1, seed=18)
    if "mixed" in which:
        out["mixed"] = datasets(raw, tiny=False)[1]
    return out


def caps_for(ds: Path, ref_pre: Path, peaks: dict[str, int], cores: int, n_caps: int) -> tuple[list[int], dict]:
    """n_caps caps from barely one worker to everything side by side (bytes, rounded to 16 MiB)."""
    base = (estimate(ds, ref_pre, "12g") or {}).get("baseline") or {}
    main_b = int(base.get("main_bytes") or 420 * MiB)
    shared_b = int(base.get("shared_bytes") or 0)
    top = sorted(peaks.values(), reverse=True)
    low = int((main_b + top[0]) * 1.05)
    while (estimate(ds, ref_pre, oom_mem_fmt(low)) or {}).get("_rc") not in (0, None) and low < 4 * top[0]:
        low += 32 * MiB            # the smallest cap nnrun accepts (it refuses a case predicted not to fit alone)
    high = int((main_b + sum(p - shared_b for p in top[:cores]) + shared_b) * 1.15)
    high = max(high, low + 64 * MiB * (n_caps - 1))
    step = (high - low) / max(1, n_caps - 1)
    caps = [int(-(-(low + i * step) // (16 * MiB)) * 16 * MiB) for i in range(n_caps)]
    return caps, {"main_bytes": main_b, "shared_bytes": shared_b, "largest_peaks_bytes": top[:cores],
                  "rule": "low: (main + largest peak) x 1.05, raised to the smallest cap nnrun accepts; "
                          "high: (main + the cores largest peaks, shared pages once) x 1.15; evenly spaced"}


def journey(ds: Path, base: Path, mem: str, kmsg: Kmsg, ev: DockerEvents) -> dict:
    """Native from nnU-Net's defaults, halving -np/-npfp after each failure, same folder; then nnrun's first try."""
    pre = fresh(base / "native")
    attempts, total = [], 0.0
    for np_, npfp in JOURNEY:
        kmsg.read()
        r = native(ds, pre, mem, "nnUNetv2_plan_and_preprocess", [*ARGS, "-np", str(np_), "-npfp", str(npfp)],
                   marks={"dead": DEAD_WORKER}, events=ev)
        kills = kmsg.kills(ev.ids(r["container_names"]))
        ok = r["rc"] == 0 and not kills
        total += r["wall_s"]
        attempts.append({"np": np_, "npfp": npfp, "wall_s": rnd(r["wall_s"], 1), "rc": r["rc"], "ok": ok,
                         "kernel_oom_kills": len(kills), "six_feet_under": "dead" in r["marks"]})
        log(f"journey {ds.name} {mem} native -np {np_} -npfp {npfp}: {r['wall_s']:.1f} s rc={r['rc']} kills={len(kills)}")
        if ok:
            break
    kmsg.read()
    n = nnrun(ds, fresh(base / "nnrun"), mem, ARGS, events=ev)
    kills = kmsg.kills(ev.ids(n["container_names"]))
    rep = n.get("report") or {}
    first_ok = rep.get("outcome") == "ok" and len(rep.get("attempts") or []) <= 1 and not kills
    log(f"journey {ds.name} {mem} nnrun first try: {n['wall_s']:.1f} s outcome={rep.get('outcome')}")
    done = bool(attempts) and attempts[-1]["ok"]
    return {"mem": mem, "native_attempts": attempts, "native_total_s": rnd(total, 1) if done else None,
            "native_reached_ok": done, "nnrun": summary(n), "nnrun_first_try_oom_free": first_ok,
            "ratio_journey_over_nnrun": rnd(total / n["wall_s"]) if done and first_ok else None}


def sweep_dataset(name: str, ds: Path, work: Path, n_caps: int, reps: int, with_journey: bool,
                  ev: DockerEvents) -> dict:
    cores = os.cpu_count() or 1
    base = work / name
    ref_pre = fresh(base / "reference")
    ref = nnrun(ds, ref_pre, "12g", [*ARGS, "-np", "1", "-npfp", "2", "--no-plot"], events=ev)
    rep = ref.get("report") or {}
    log(f"{name}: reference {ref['wall_s']:.1f} s outcome={rep.get('outcome')}")
    if rep.get("outcome") != "ok":
        return {"dataset": ds.name, "error": f"reference run failed: {ref['stderr'][-800:]}"}
    cases = [c for c in rep.get("cases") or [] if c.get("phase") == "preprocessing" and c.get("status") == "done"]
    peaks = {c["case"]: int(c["peak_rss_bytes"]) for c in cases}
    cpu_s = sum(c.get("duration_s") or 0 for c in cases)
    caps, rule = caps_for(ds, ref_pre, peaks, cores, n_caps)
    out: dict = {"dataset": ds.name, "cases": len(peaks), "reference": summary(ref), "cap_rule": rule,
                 "peak_bytes": peaks, "physical_limit_s": rnd(cpu_s / cores), "caps": []}
    kmsg = Kmsg()
    try:
        for cap in caps:
            mem = oom_mem_fmt(cap)
            sw = _sweep(ds, ref_pre / ds.name, base / f"sweep-{mem}", mem, cores, ev, out["physical_limit_s"], reps,
                        np_auto=False)
            row = {"mem": mem, "cap_bytes": cap, "best_fixed_np": sw["best_fixed_np"], "best_fixed_s": sw["best_fixed_s"],
                   "runs": sw["runs"], "ratio_best_fixed_over_nnrun": sw["speedup_nnrun_default"],
                   "nnrun_first_try_oom_free": (sw["runs"].get("nnrun_default") or {}).get("first_try_oom_free")}
            if with_journey:
                row["journey"] = journey(ds, base / f"journey-{mem}", mem, kmsg, ev)
            out["caps"].append(row)
            shutil.rmtree(base / f"sweep-{mem}", ignore_errors=True)
            shutil.rmtree(base / f"journey-{mem}", ignore_errors=True)
    finally:
        kmsg.close()
    return out


def table(res: dict) -> str:
    m = res["machine"]
    lines = [f"Machine: {m.get('cores')} cores, {m.get('mem_total_gib')} GiB, cgroup v{m.get('cgroup_version')} "
             f"({m.get('cgroup_driver')}), Docker {m.get('docker')}; {m.get('date')}; took {res.get('duration_s')} s",
             "", "| dataset | cap | native -np k -npfp k (s; x = OOM) | best fixed | nnrun defaults (s, workers) | "
             "best / nnrun | first try OOM-free | journey (attempts, total s) | journey / nnrun |",
             "|---|---|---|---|---|---|---|---|---|"]
    for d in res["datasets"].values():
        for row in d.get("caps") or []:
            nat = ", ".join(f"{k[len('native_np'):]}: {v['wall_s']:.1f}" if v.get("ok") else f"{k[len('native_np'):]}: x"
                            for k, v in row["runs"].items() if k.startswith("native_np"))
            nn = row["runs"].get("nnrun_default") or {}
            j = row.get("journey") or {}
            jtxt = (" → ".join(f"{a['np']}/{a['npfp']}{'' if a['ok'] else ' x'}" for a in j.get("native_attempts") or [])
                    + f", {j.get('native_total_s')}") if j else "—"
            ratio = row["ratio_best_fixed_over_nnrun"]
            lines.append(f"| {d['dataset']} ({d['cases']} cases) | {row['mem']} | {nat} | "
                         f"{row['best_fixed_np'] or 'none'} | {nn.get('wall_s')} ({json.dumps(nn.get('workers'))}) | "
                         f"{'n/a' if ratio is None else f'{ratio:.2f}'} | {row['nnrun_first_try_oom_free']} | {jtxt} | "
                         f"{(j.get('ratio_journey_over_nnrun') if j else None) or '—'} |")
    rows = [r for d in res["datasets"].values() for r in d.get("caps") or []]
    ratios = [r["ratio_best_fixed_over_nnrun"] for r in rows if r["ratio_best_fixed_over_nnrun"] is not None]
    free = sum(1 for r in rows if r["nnrun_first_try_oom_free"])
    lines += ["", f"Goal T(best fixed)/T(nnrun) >= 1.0 at every cap: min {min(ratios) if ratios else 'n/a'} "
                  f"over {len(ratios)} caps; nnrun first-try OOM-free {free} of {len(rows)}."]
    return "\n".join(lines) + "\n"


def plot(res: dict, path: Path) -> None:
    from matplotlib.figure import Figure
    sets = [d for d in res["datasets"].values() if d.get("caps")]
    fig = Figure(figsize=(6.5 * len(sets), 4.2))
    for i, d in enumerate(sets):
        ax = fig.add_subplot(1, len(sets), i + 1)
        caps = [r["cap_bytes"] / 2 ** 30 for r in d["caps"]]
        names = sorted({k for r in d["caps"] for k in r["runs"] if k.startswith("native_np")})
        for k in names:
            pts = [(c, r["runs"][k]["wall_s"]) for c, r in zip(caps, d["caps"]) if (r["runs"].get(k) or {}).get("ok")]
            if pts:
                ax.plot(*zip(*pts), "o--", label=f"native -np {k[len('native_np'):]} (OOM-killed where missing)")
        pts = [(c, (r["runs"].get("nnrun_default") or {}).get("wall_s")) for c, r in zip(caps, d["caps"])]
        ax.plot(*zip(*pts), "s-", color="black", label="nnrun defaults")
        jp = [(c, r["journey"]["native_total_s"]) for c, r in zip(caps, d["caps"])
              if (r.get("journey") or {}).get("native_total_s")]
        if jp:
            ax.plot(*zip(*jp), "^:", color="#d62728", label="journey: nnU-Net defaults, halving (total)")
        ax.set_title(f"{d['dataset']} ({d['cases']} cases, -c 3d_fullres)")
        ax.set_xlabel("memory cap (GiB)")
        ax.set_ylabel("wall time (s)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    os.replace(tmp, path)


def run_capsweep(work: Path, which: list[str], n_caps: int, mixed_caps: int | None, reps: int, head_repeat: int,
                 journey_sets: list[str], ev: DockerEvents) -> dict:
    """Every dataset's sweep (and journey), in ``work``: what ``main`` and ``bench/run.py``'s full run record."""
    for d in (work, work / "raw"):
        d.mkdir(parents=True, exist_ok=True)
        os.chmod(d, 0o755)
    out: dict = {}
    for name, ds in make_datasets(work / "raw", which, head_repeat).items():
        caps = mixed_caps if name == "mixed" and mixed_caps else n_caps
        out[name] = sweep_dataset(name, ds, work, caps, reps, name in journey_sets, ev)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--datasets", default="heads,mixed", help="comma-separated: heads, mixed")
    ap.add_argument("--caps", type=int, default=5, help="caps per dataset")
    ap.add_argument("--mixed-caps", type=int, default=None, help="caps for the mixed set (default: --caps)")
    ap.add_argument("--reps", type=int, default=1, help="rounds of each sweep (medians)")
    ap.add_argument("--head-repeat", type=int, default=2, help="the six head specs, this many times (new seeds)")
    ap.add_argument("--journey", default="heads,mixed", help="datasets to run the user journey on ('' for none)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results")
    ap.add_argument("--plot", type=Path, default=REPO / "docs" / "capsweep.png")
    ap.add_argument("--docs", type=Path, default=None, help="markdown file to write the table to")
    ap.add_argument("--work", type=Path, default=None)
    a = ap.parse_args(argv)
    compile_runner()
    started = time.time()
    work = a.work or Path(f"/tmp/nnrun-capsweep-{uuid.uuid4().hex[:8]}")
    res: dict = {"schema": 1, "machine": machine(), "argv": sys.argv[1:], "datasets": {}}
    ev = DockerEvents()
    try:
        res["datasets"] = run_capsweep(work, a.datasets.split(","), a.caps, a.mixed_caps, a.reps, a.head_repeat,
                                       a.journey.split(","), ev)
    finally:
        ev.close()
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    tab, path = write_results(res, table, a.out, "-capsweep", started)
    plot(res, a.plot)
    if a.docs:
        a.docs.write_text(tab)
    print(tab)
    print(f"results: {path}; plot: {a.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
