"""The preprocessed output folder: which cases were in flight, and what a failed run must not leave.

Readers take the dataset's preprocessed folder as a path.  nnrun's own files
live in one hidden folder, ``.nnrun/``, inside it.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from runner.incontainer.preprocess import TMP_MARK  # the agent writes under names holding it, then renames
from runner.rundir import NNRUN_DIR

FINGERPRINT_FILE = "dataset_fingerprint.json"
GT_FOLDER = "gt_segmentations"


def data_identifier(preprocessed_dataset: Path, plans_name: str, configuration: str) -> str:
    """The folder nnU-Net writes a configuration's cases to (from the plans, else its naming rule)."""
    try:
        plans = json.loads((preprocessed_dataset / f"{plans_name}.json").read_text())
        config = plans["configurations"][configuration]
        for _ in range(5):  # 3d_cascade_fullres inherits its data from 3d_fullres
            if "data_identifier" in config or "inherits_from" not in config:
                break
            config = plans["configurations"][config["inherits_from"]]
        if "data_identifier" in config:
            return str(config["data_identifier"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return f"{plans_name}_{configuration}"


def cases_in_flight(case_ids: list[str], phase: str | None, configuration: str | None,
                    workers: int, preprocessed_dataset: Path, plans_name: str,
                    progress_done: int | None) -> list[str]:
    """The cases nnU-Net was most likely working on (inferred, not exact).

    nnU-Net submits one task per case in sorted id order to a pool of
    ``workers``, so the cases in flight are about the first ``workers`` ones
    not yet finished: in preprocessing, those without a ``.pkl`` (written
    last); in fingerprint extraction, those after the progress bar's count.
    """
    ordered = sorted(case_ids)
    if phase == "preprocessing" and configuration:
        out_dir = preprocessed_dataset / data_identifier(preprocessed_dataset, plans_name, configuration)
        unfinished = [c for c in ordered if not (out_dir / f"{c}.pkl").exists()]
        return unfinished[:workers]
    if phase in ("fingerprint", "verify"):
        start = progress_done or 0
        return ordered[start:start + workers]
    return []




def incomplete_outputs(preprocessed_dataset: Path) -> list[Path]:
    """Half-written files a failed run left outside ``.nnrun/``.

    nnrun's agent writes the fingerprint, the plans, ground-truth copies and
    every case file under a temporary name (holding ``.nnrun-tmp``) and renames
    it when complete; configurations are staged in ``.nnrun/staging/`` and
    moved into place only when every case is done.  So a file with a final
    name is always complete, and what a failed run can leave is temporary
    files: these are listed.  The staging folder is left for the next run,
    which resumes from its complete cases.
    """
    if not preprocessed_dataset.is_dir():
        return []
    found = []
    for path in preprocessed_dataset.rglob(f"*{TMP_MARK}*"):
        if NNRUN_DIR not in path.relative_to(preprocessed_dataset).parts:
            found.append(path)
    return sorted(found)


def remove_paths(paths: list[Path]) -> list[str]:
    removed = []
    for path in paths:
        try:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(str(path))
        except FileNotFoundError:
            continue
    return removed


def new_run_dir(preprocessed_dataset: Path, run_id: str) -> Path:
    run_dir = preprocessed_dataset / NNRUN_DIR / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    os.chmod(run_dir, 0o755)
    return run_dir
