"""``nnrun merge``: check that the shards of a dataset add up to a complete preprocessed dataset.

Every shard task stages its cases into the same ``.nnrun/staging/<data
identifier>/`` folder and the last one to finish moves it into place.  This
step, run after all shards (or any time), verifies:

* the global outputs exist (fingerprint, plans, dataset.json),
* every case of every planned configuration is complete (``.pkl`` present,
  which nnrun's agent renames last; ``.b2nd`` frames decodable when blosc2 is
  installed on this host),
* every case's ground-truth copy exists,

then moves a complete staging folder into place if no shard did (a shard
killed after its last case), and removes temporary files that killed tasks
left outside ``.nnrun/``.  It refuses while shard runs hold their locks.
Incomplete cases are reported per shard with the command that redoes them.

No Docker and no nnU-Net: it reads files only.
"""
from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from runner.dataset import RawDataset
from runner.errors import BadInputError
from runner.incontainer.preprocess import STAGING, case_complete, folder_lock
from runner.run.outputs import FINGERPRINT_FILE, GT_FOLDER, data_identifier, incomplete_outputs, remove_paths
from runner.shards import ShardError, cases_of, map_path, read_map


@dataclass
class ConfigurationState:
    configuration: str
    data_identifier: str
    location: str                     # "final", "staging", "missing"
    complete: list[str] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)
    moved_into_place: bool = False


@dataclass
class MergeResult:
    dataset: str
    ok: bool
    configurations: list[ConfigurationState]
    missing_gt: list[str]
    shard_count: int | None
    incomplete_by_shard: dict[int, list[str]]     # shard -> cases incomplete in any configuration
    removed_temporary: list[str]
    skipped_configurations: list[str]             # asked for but not in the plans (nnU-Net skips them too)

    def to_json(self) -> dict:
        return {
            "outcome": "ok" if self.ok else "bad_input",
            "dataset": self.dataset,
            "complete": self.ok,
            "configurations": [{"configuration": c.configuration, "data_identifier": c.data_identifier,
                                "location": c.location, "complete": len(c.complete),
                                "incomplete": c.incomplete, "moved_into_place": c.moved_into_place}
                               for c in self.configurations],
            "missing_gt": self.missing_gt,
            "shards": self.shard_count,
            "incomplete_by_shard": {str(k): v for k, v in sorted(self.incomplete_by_shard.items())},
            "removed_temporary": self.removed_temporary,
            "skipped_configurations": self.skipped_configurations,
        }


def _usable_map(obj) -> dict | None:
    """A shard map with a shard count and an assignment of cases to shards in range, else None."""
    if not isinstance(obj, dict) or not isinstance(obj.get("assignment"), dict):
        return None
    try:
        count = int(obj.get("shards"))
        if count < 1 or any(not 0 <= int(k) < count for k in obj["assignment"].values()):
            return None
    except (TypeError, ValueError):
        return None
    return obj


def _move_into_place(staging: Path, final: Path) -> None:
    """Under the agent's own folder lock, so a finishing shard and merge never race."""
    with folder_lock(str(staging)):
        if staging.is_dir():
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)


def merge(dataset: RawDataset, preprocessed_dataset: Path, plans_name: str,
          configurations: tuple[str, ...] | None) -> MergeResult:
    """Check (and finish) a sharded dataset; the caller holds the locks that keep shard runs out."""
    for name in (FINGERPRINT_FILE, f"{plans_name}.json", "dataset.json"):
        if not (preprocessed_dataset / name).is_file():
            raise BadInputError(f"{preprocessed_dataset} has no {name}: the planning step has not run",
                                hint=f"run nnrun preprocess -d {dataset.dataset_id} --mem SIZE --no_pp first")
    try:
        plans = json.loads((preprocessed_dataset / f"{plans_name}.json").read_text())
        planned = list(plans["configurations"])
    except (OSError, ValueError, KeyError) as err:
        raise BadInputError(f"cannot read {plans_name}.json in {preprocessed_dataset}: {err}") from None
    wanted = list(configurations) if configurations else [c for c in ("2d", "3d_fullres", "3d_lowres")
                                                          if c in planned]
    skipped = [c for c in wanted if c not in planned]
    cases = sorted(c.case_id for c in dataset.cases)

    states = []
    for configuration in [c for c in wanted if c in planned]:
        ident = data_identifier(preprocessed_dataset, plans_name, configuration)
        final, staging = preprocessed_dataset / ident, preprocessed_dataset / STAGING / ident
        folder, location = (staging, "staging") if staging.is_dir() else (final, "final")
        if not folder.is_dir():
            states.append(ConfigurationState(configuration, ident, "missing", [], list(cases)))
            continue
        done = [c for c in cases if case_complete(str(folder), c)]
        state = ConfigurationState(configuration, ident, location, done, [c for c in cases if c not in done])
        if location == "staging" and not state.incomplete:
            _move_into_place(staging, final)      # every shard finished, none moved it (one was killed at the end)
            state.location, state.moved_into_place = "final", True
        states.append(state)

    gt = preprocessed_dataset / GT_FOLDER
    missing_gt = [c for c in cases if not (gt / f"{c}{dataset.file_ending}").is_file()]

    # The map only names the shards to rerun: one that cannot be read is ignored (the cases are still named).
    try:
        shard_map = _usable_map(read_map(map_path(preprocessed_dataset, plans_name)))
    except ShardError:
        shard_map = None
    by_shard: dict[int, list[str]] = {}
    incomplete = sorted({c for s in states for c in s.incomplete} | set(missing_gt))
    if shard_map is not None:
        for k in range(int(shard_map["shards"])):
            bad = [c for c in cases_of(shard_map, k) if c in incomplete]
            if bad:
                by_shard[k] = bad
    unassigned = [c for c in incomplete if not any(c in v for v in by_shard.values())]
    if unassigned:
        by_shard[-1] = unassigned           # not sharded (or not in the map): no shard to name

    # Temporary files outside .nnrun/ that killed tasks left (no run holds the locks now).
    removed = remove_paths(incomplete_outputs(preprocessed_dataset))
    ok = not incomplete and not skipped
    return MergeResult(dataset.name, ok, states, missing_gt,
                       int(shard_map["shards"]) if shard_map else None, by_shard, removed, skipped)


def render_merge(result: MergeResult, rerun_hint: str) -> str:
    """Human text (the CLI prints it)."""
    lines = []
    if result.ok:
        lines.append(f"nnrun: ok: {result.dataset} is complete: "
                     + ", ".join(f"{c.configuration} {len(c.complete)} cases" for c in result.configurations)
                     + (f" ({result.shard_count} shards)" if result.shard_count else ""))
    else:
        n = len({c for s in result.configurations for c in s.incomplete} | set(result.missing_gt))
        lines.append(f"nnrun: bad_input: {result.dataset} is not complete: {n} case(s) missing"
                     + (f"; configurations not in the plans: {', '.join(result.skipped_configurations)}"
                        if result.skipped_configurations else ""))
    for c in result.configurations:
        moved = " (moved into place now)" if c.moved_into_place else ""
        lines.append(f"  {c.configuration:<11} {len(c.complete)}/{len(c.complete) + len(c.incomplete)} complete, "
                     f"{c.location}{moved}")
    if result.missing_gt:
        lines.append(f"  gt_segmentations: missing {', '.join(result.missing_gt[:5])}"
                     + (" ..." if len(result.missing_gt) > 5 else ""))
    for k, bad in sorted(result.incomplete_by_shard.items()):
        label = f"shard {k}/{result.shard_count}" if k >= 0 else "cases"
        lines.append(f"  {label}: {', '.join(bad[:6])}{' ...' if len(bad) > 6 else ''}")
    if result.removed_temporary:
        lines.append(f"  removed {len(result.removed_temporary)} temporary file(s) left by killed tasks")
    if not result.ok and rerun_hint:
        lines.append(f"  next: {rerun_hint}")
    return "\n".join(lines)


def rerun_command(result: MergeResult, dataset_id: int, mem: str = "SIZE") -> str:
    """What redoes the incomplete cases: their shards, or a plain run."""
    shards = sorted(k for k in result.incomplete_by_shard if k >= 0)
    if shards and result.shard_count:
        return "; ".join(f"nnrun preprocess -d {dataset_id} --mem {mem} --shard {k}/{result.shard_count}"
                         for k in shards)
    return f"nnrun preprocess -d {dataset_id} --mem {mem}"

