"""The estimate's part in one run: making it, the peaks measured so far, and what the rest of the run
needs after an OOM kill.  The decisions are pure (:mod:`runner.estimate.need`,
:mod:`runner.run.admission`); this module gathers their inputs for :mod:`runner.run.preprocess`.
"""
from __future__ import annotations

import os
from pathlib import Path

from runner.dataset import RawDataset
from runner.errors import NnrunError
from runner.estimate.data import dataset_geometry_with_data  # crop + foreground from the file check
from runner.estimate.model import Baseline, Estimate, estimate, load_model
from runner.estimate.need import MemoryNeed, PeakKey, memory_needed
from runner.options import PreprocessOptions
from runner.run.history import earlier_peaks, merge_peaks, peaks_from_events
from runner.run.preflight import read_plans


def run_estimate(dataset: RawDataset, preprocessed_dataset: Path, opts: PreprocessOptions, mem_bytes: int,
                 baseline: Baseline) -> tuple[Estimate, dict[PeakKey, int]]:
    """The estimate for this run and the per-case peaks earlier runs of the dataset measured (same image
    and plans)."""
    plans = read_plans(preprocessed_dataset / f"{opts.plans_name}.json")   # None: nnU-Net plans anew
    est = estimate(dataset, plans, opts.configurations, mem_bytes, baseline, load_model(),
                   cpus=os.cpu_count() or 1, geoms=dataset_geometry_with_data(dataset))
    return est, earlier_peaks(preprocessed_dataset, baseline.image_id, opts.plans_name)


def predicted_case_bytes(dataset: RawDataset, preprocessed_dataset: Path, opts: PreprocessOptions,
                         mem_bytes: int) -> dict[str, int] | None:
    """Each case's largest predicted preprocessing peak over the configurations (None: no estimate)."""
    # The extra memory above the process baseline ranks the cases; the baseline itself is the same for all.
    no_baseline = Baseline(main_bytes=0, worker_bytes=0, image_id="", measured=False)
    plans = read_plans(preprocessed_dataset / f"{opts.plans_name}.json")
    if plans is None:
        return None
    try:
        est = estimate(dataset, plans, opts.configurations, mem_bytes, no_baseline, load_model(),
                       cpus=os.cpu_count() or 1, geoms=dataset_geometry_with_data(dataset))
    except (NnrunError, OSError, ValueError, KeyError, RuntimeError):
        return None
    out: dict[str, int] = {}
    for row in est.per_case:
        if row.get("phase") == "preprocessing":
            out[row["case"]] = max(out.get(row["case"], 0), int(row.get("extra_bytes") or 0))
    return out or None


def need_after_oom(est: Estimate | None, opts: PreprocessOptions, fingerprint_needed: bool,
                   earlier: dict[PeakKey, int], phase: str | None, configuration: str | None, records: list,
                   victims: list, workers: int, limit_bytes: int, thrashed: bool = False) -> MemoryNeed | None:
    """What the rest of the run needs with one worker (None: no estimate), from the estimate, the peaks
    measured in this run (``records``: the agent's per-case records) and earlier ones, and what the kill
    proved: a process killed at the cap while it ran alone (one worker, or the main process outside a
    pool) needed more than the cap; so did a run that thrashed at the cap (``thrashed``) alone."""
    if est is None:
        return None
    this_run = peaks_from_events([{"event": "case_end", "case": r.case, "phase": r.phase,
                                   "configuration": r.configuration, "peak_rss_bytes": r.peak_rss_bytes}
                                  for r in records if r.status == "done"])
    configs = list(opts.configurations)
    if phase == "preprocessing" and configuration in configs:
        configs = configs[configs.index(configuration):]      # the configurations before it are done
    fingerprint = phase in (None, "startup", "verify", "fingerprint") and fingerprint_needed
    at_least: dict[str, int] = {}
    first = victims[0] if victims else None
    in_pool = phase in ("verify", "fingerprint", "preprocessing")
    if thrashed and (workers <= 1 or not in_pool):
        at_least["main"] = limit_bytes      # the working set of nnU-Net itself did not fit
    elif first is not None and first.role == "main" and (workers <= 1 or not in_pool):
        at_least["main"] = limit_bytes
    elif first is not None and first.role == "worker" and first.case and workers <= 1:
        at_least[first.case] = limit_bytes
    return memory_needed(est, fingerprint=fingerprint, configurations=() if opts.no_pp else configs,
                         measured=merge_peaks(earlier, this_run), at_least=at_least,
                         floor_source="thrashed at the cap" if thrashed else "killed at the cap")
