"""What earlier runs of a dataset measured: each case's worker peak, per phase and configuration.

Every run folder (``<preprocessed dataset>/.nnrun/runs/<run id>/``) keeps the
agent's ``case_end`` events with the worker's peak RSS on that case.  A case
measured once with the same image and plans is known, not estimated:
:func:`runner.estimate.need.memory_needed` prefers these numbers.  Runs with
another image (other library versions allocate differently) or other plans
(other target spacings) are ignored.  Reads a folder it is given; pure
otherwise.
"""
from __future__ import annotations

import json
from pathlib import Path

from runner.estimate.need import PeakKey
from runner.rundir import AGENT_EVENTS_FILE, EV_CASE_END, MANIFEST_FILE, NNRUN_DIR, read_jsonl


def peaks_from_events(events: list[dict]) -> dict[PeakKey, int]:
    """The largest peak RSS per (phase, configuration, case) in one run's agent events."""
    out: dict[PeakKey, int] = {}
    for e in events:
        if e.get("event") != EV_CASE_END or not e.get("peak_rss_bytes") or not e.get("case"):
            continue
        phase = e.get("phase")
        if phase not in ("fingerprint", "preprocessing"):
            continue
        key = (phase, e.get("configuration") if phase == "preprocessing" else None, str(e["case"]))
        out[key] = max(out.get(key, 0), int(e["peak_rss_bytes"]))
    return out


def merge_peaks(*sources: dict[PeakKey, int]) -> dict[PeakKey, int]:
    out: dict[PeakKey, int] = {}
    for source in sources:
        for key, value in source.items():
            out[key] = max(out.get(key, 0), value)
    return out


def earlier_peaks(preprocessed_dataset: Path, image_id: str | None, plans_name: str = "nnUNetPlans",
                  exclude: Path | None = None) -> dict[PeakKey, int]:
    """Per-case peaks measured by the earlier runs of this dataset with this image (and these plans)."""
    runs = Path(preprocessed_dataset) / NNRUN_DIR / "runs"
    try:
        folders = sorted(p for p in runs.iterdir() if p.is_dir())
    except OSError:
        return {}
    found: list[dict[PeakKey, int]] = []
    for folder in folders:
        if exclude is not None and folder == exclude:
            continue
        try:
            manifest = json.loads((folder / MANIFEST_FILE).read_text())
        except (OSError, ValueError):
            continue
        if not isinstance(manifest, dict):
            continue
        if image_id and (manifest.get("image") or {}).get("id") != image_id:
            continue
        options = manifest.get("options") or {}
        if (options.get("overwrite_plans_name") or "nnUNetPlans") != plans_name:
            continue
        found.append(peaks_from_events(read_jsonl(folder / AGENT_EVENTS_FILE)))
    return merge_peaks(*found)
