"""Inside the container: nnU-Net's preprocessing with atomic outputs, resume and memory-aware admission.

Installed by :mod:`runner.incontainer.agent` in the main process and every spawned worker.
Everything that computes a case is nnU-Net's own code
(``DefaultPreprocessor.run_case_save`` with nnU-Net's arguments), so the
files are the same as native ``nnUNetv2_plan_and_preprocess`` writes; only
*where* and *when* they are written changes:

* **Atomic case files.** A case is written under a temporary name and renamed
  into place, ``.pkl`` last (the pkl marks a complete case).  Fingerprint and
  plans JSON files, and ground-truth copies, are written to a temporary file
  and renamed.  A kill at any instant leaves no final-named file half-written.
* **Staging and resume.** A configuration is preprocessed into
  ``.nnrun/staging/<data identifier>/`` and renamed to its final folder only
  when every case is complete, so nnU-Net's trainer never sees a half-filled
  folder.  A later run keeps the complete cases of the staging folder and
  redoes only the others; ``--clean`` starts over.
* **Scheduling.** ``fixed``: a pool of ``-np`` workers, all cases queued, as
  nnU-Net does.  ``memory``: cases are admitted largest first while the sum of
  their predicted extra memory stays within a budget the host computed from
  the estimate and the cap; smaller cases fill the gaps.

Test-only hooks (``NNRUN_TEST_KILL_AT``) SIGKILL nnU-Net's process group at
chosen points, so the resume tests can kill deterministically.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
from contextlib import contextmanager

from runner.incontainer.events import emit, kill_hook
from runner.rundir import CLEAN_ENV, RESUME_ENV, SCHEDULE_ENV, SCHEDULE_FILE_ENV
from runner.shards import (
    PLANS_NAME_ENV,
    SHARD_MAP_ENV,
    SKIP_PLANNING_ENV,
    cases_of,
    header_weights,
    load_or_create,
    read_map,
    shard_from_env,
)
from runner.shards import map_path as shard_map_path

TMP_MARK = ".nnrun-tmp"
STAGING = os.path.join(".nnrun", "staging")
CASE_SUFFIXES = (".b2nd", "_seg.b2nd")      # data first, then seg; the .pkl is renamed last


# -- atomic writes ------------------------------------------------------------------------

def atomic_save_json(original):
    """batchgenerators' save_json(obj, file, ...), written to a temporary file and renamed."""
    def save_json(obj, file, *args, **kwargs):
        tmp = f"{file}{TMP_MARK}"
        original(obj, tmp, *args, **kwargs)
        if os.path.basename(str(file)) == "dataset_fingerprint.json":
            kill_hook("fingerprint_written")
        os.replace(tmp, file)
    save_json.__nnrun_atomic__ = True
    return save_json


def atomic_copy_file(original):
    """distutils' copy_file (ground-truth copies), to a temporary name and renamed."""
    def copy_file(src, dst, *args, **kwargs):
        update = kwargs.get("update", False)
        if update and os.path.exists(dst) and os.path.getmtime(dst) >= os.path.getmtime(src):
            return dst, 0
        if not _gt_copy_is_mine(str(dst)):
            return dst, 0           # another shard copies this case's ground truth
        # A name of its own: shards of other tasks may copy other cases into this folder at the same time.
        tmp = f"{dst}{TMP_MARK}.{os.getpid()}-{os.urandom(3).hex()}"
        result = original(src, tmp, *args, **kwargs)
        os.replace(tmp, dst)
        return result
    copy_file.__nnrun_atomic__ = True
    return copy_file


def atomic_run_case_save(original):
    """run_case_save writing ``.nnrun-tmp.<case>*`` files, renamed into place with the .pkl last."""
    def run_case_save(self, output_filename_truncated, *args, **kwargs):
        folder, case = os.path.split(output_filename_truncated)
        tmp = os.path.join(folder, f"{TMP_MARK}.{case}")
        result = original(self, tmp, *args, **kwargs)
        for suffix in CASE_SUFFIXES:
            if os.path.exists(tmp + suffix):
                os.replace(tmp + suffix, output_filename_truncated + suffix)
        kill_hook("mid_case_write")          # data renamed, pkl not yet: an incomplete case
        os.replace(tmp + ".pkl", output_filename_truncated + ".pkl")
        return result
    run_case_save.__nnrun_atomic__ = True
    return run_case_save


# -- completeness -------------------------------------------------------------------------

def case_complete(folder: str, case: str) -> bool:
    """Complete: the .pkl exists and both .b2nd files open (their frames are whole).

    The agent renames the .pkl last, so a final-named .pkl means both .b2nd
    files were whole when renamed.  Where blosc2 is not installed (nnrun merge
    on a host without it) that, and the files being there, is the check;
    with blosc2 (always, in the image) the last chunk of each file is decoded.
    """
    if not os.path.isfile(os.path.join(folder, case + ".pkl")):
        return False
    paths = [os.path.join(folder, case + suffix) for suffix in CASE_SUFFIXES]
    if not all(os.path.isfile(p) for p in paths):
        return False
    try:
        import blosc2
    except ImportError:
        return True
    for path in paths:
        try:
            arr = blosc2.open(urlpath=path, mode="r")
            arr.schunk.get_chunk(arr.schunk.nchunks - 1)   # the last chunk: a cut file fails here
        except Exception:  # noqa: BLE001 - any failure to read means incomplete
            return False
    return True


def clean_folder(folder: str, cases: list[str], only_these: bool = False) -> list[str]:
    """Drop temporary files and incomplete cases; return the complete cases.

    ``only_these``: touch only the temporary files of ``cases`` (a shard must
    not remove what another shard is writing into the same folder).
    """
    complete = []
    # The exact temporary names atomic_run_case_save writes for these cases.
    own_tmp = {f"{TMP_MARK}.{case}{suffix}" for case in cases for suffix in (*CASE_SUFFIXES, ".pkl")}
    for name in os.listdir(folder):
        if TMP_MARK in name and (not only_these or name in own_tmp):
            try:
                os.remove(os.path.join(folder, name))
            except FileNotFoundError:
                pass
    for case in cases:
        if case_complete(folder, case):
            complete.append(case)
            continue
        for suffix in (*CASE_SUFFIXES, ".pkl"):
            path = os.path.join(folder, case + suffix)
            if os.path.exists(path):
                os.remove(path)
    return complete


# -- the preprocessing step of one configuration --------------------------------------------

def _budget_for(configuration: str) -> dict | None:
    path = os.environ.get(SCHEDULE_FILE_ENV)
    if not path or not os.path.exists(path):
        return None
    with open(path) as fh:
        plan = json.load(fh)
    return (plan.get("configurations") or {}).get(configuration)


def _my_shard_cases(dataset_folder: str, plans_identifier: str, cases: list[str], dataset: dict) -> list[str] | None:
    """The cases of this task's shard (None: no sharding), from the shared map (made here if no task made it)."""
    shard = shard_from_env()
    if shard is None:
        return None
    path = os.environ.get(SHARD_MAP_ENV) or shard_map_path(dataset_folder, plans_identifier)
    shard_map = load_or_create(path, shard.count, cases,
                               lambda: (header_weights({c: dataset[c]["images"] for c in cases}), "voxels"),
                               plans_identifier)
    mine = cases_of(shard_map, shard.index)
    emit("shard", index=shard.index, count=shard.count, cases=mine, map=path,
          balanced_by=shard_map.get("balanced_by"))
    return mine


_READ_MAPS: dict[str, dict] = {}


def _gt_copy_is_mine(dst: str) -> bool:
    """With shards, each shard copies the ground truth of its own cases only."""
    shard = shard_from_env()
    path = os.environ.get(SHARD_MAP_ENV)
    if shard is None or not path:
        return True
    shard_map = _READ_MAPS.get(path) or read_map(path)
    if shard_map is None:
        return True
    _READ_MAPS[path] = shard_map          # written once, never changed: read it once, not per copied file
    name = os.path.basename(dst)
    ending = os.environ.get("NNRUN_FILE_ENDING", "")
    case = name[: -len(ending)] if ending and name.endswith(ending) else name
    owner = shard_map["assignment"].get(case)
    return owner is None or int(owner) == shard.index


@contextmanager
def folder_lock(staging: str):
    """Serialise moving a configuration folder between staging and its final place (shards share it)."""
    os.makedirs(os.path.dirname(staging), exist_ok=True)
    fd = os.open(staging + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def preprocess_configuration(self, dataset_name_or_id, configuration_name: str, plans_identifier: str,
                             num_processes: int) -> None:
    """DefaultPreprocessor.run, with staging, resume, shards and a choice of scheduler."""
    from batchgenerators.utilities.file_and_folder_operations import isdir, isfile, join, load_json
    from nnunetv2.paths import nnUNet_preprocessed, nnUNet_raw
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    # The same set-up as nnU-Net's DefaultPreprocessor.run (2.8.1).
    dataset_name = maybe_convert_to_dataset_name(dataset_name_or_id)
    assert isdir(join(nnUNet_raw, dataset_name)), "The requested dataset could not be found in nnUNet_raw"
    plans_file = join(nnUNet_preprocessed, dataset_name, plans_identifier + '.json')
    assert isfile(plans_file), ("Expected plans file (%s) not found. Run corresponding "  # noqa: UP031 - nnU-Net's own text
                                "nnUNet_plan_experiment first." % plans_file)
    plans = load_json(plans_file)
    plans_manager = PlansManager(plans)
    configuration_manager = plans_manager.get_configuration(configuration_name)
    dataset_json = load_json(join(nnUNet_preprocessed, dataset_name, 'dataset.json'))
    dataset = get_filenames_of_train_images_and_targets(join(nnUNet_raw, dataset_name), dataset_json)
    cases = sorted(dataset.keys())
    mine = _my_shard_cases(join(nnUNet_preprocessed, dataset_name), plans_identifier, cases, dataset)
    sharded = mine is not None
    mine = cases if mine is None else mine

    final_dir = join(nnUNet_preprocessed, dataset_name, configuration_manager.data_identifier)
    staging = join(nnUNet_preprocessed, dataset_name, STAGING, configuration_manager.data_identifier)
    if os.environ.get(CLEAN_ENV) == "1" and not sharded:      # the host refuses --clean with --shard
        shutil.rmtree(staging, ignore_errors=True)
        shutil.rmtree(final_dir, ignore_errors=True)
    with folder_lock(staging):
        if isdir(final_dir) and not isdir(staging):
            done = clean_folder(final_dir, cases, only_these=sharded)
            if len(done) == len(cases):
                emit("configuration_complete", configuration=configuration_name, cases=len(cases), skipped=True)
                print(f"nnrun: {configuration_manager.data_identifier} is complete from an earlier run: kept "
                      f"(--clean redoes it)", flush=True)
                return
            # A folder native nnU-Net left unfinished: carry its complete cases over.
            os.replace(final_dir, staging)
        os.makedirs(staging, exist_ok=True)
    done = set(clean_folder(staging, mine, only_these=sharded))
    pending = [c for c in mine if c not in done]
    emit("resume", configuration=configuration_name, complete=len(done), pending=len(pending))
    if done:
        print(f"nnrun: resuming {configuration_name}: {len(done)} of {len(mine)} cases already complete",
              flush=True)
    args = {c: (join(staging, c), dataset[c]['images'], dataset[c]['label'], plans_manager, configuration_manager,
                dataset_json) for c in pending}
    budget = _budget_for(configuration_name) if os.environ.get(SCHEDULE_ENV) == "memory" else None
    if pending:
        if budget:
            _run_memory_aware(self, args, budget)
        else:
            _run_fixed(self, args, num_processes)
    with folder_lock(staging):
        # Under the lock: another shard that finished last may have moved the folder into place already.
        where = staging if isdir(staging) else final_dir
        missing = [c for c in mine if not case_complete(where, c)]
        if missing:
            raise RuntimeError(f"nnrun: {len(missing)} case(s) not complete after preprocessing: {missing[:5]}")
        if sharded:
            if where == final_dir:
                emit("configuration_complete", configuration=configuration_name, cases=len(cases), skipped=True)
                return
            others = [c for c in cases if c not in set(mine) and not case_complete(staging, c)]
            if others:
                emit("shard_complete", configuration=configuration_name, cases=len(mine), others_pending=len(others))
                print(f"nnrun: shard of {configuration_name} complete ({len(mine)} cases); {len(others)} case(s) "
                      f"of other shards still pending: the last shard to finish moves the folder into place",
                      flush=True)
                return
        if isdir(final_dir):
            shutil.rmtree(final_dir)
        os.replace(staging, final_dir)
    emit("configuration_complete", configuration=configuration_name, cases=len(cases), skipped=False)


def _run_fixed(preprocessor, args: dict, num_processes: int) -> None:
    """nnU-Net's own pool logic: every case queued on -np spawn workers, a dead worker is fatal."""
    from runner.incontainer.schedule import run_fixed
    run_fixed(preprocessor, args, num_processes)


def _run_memory_aware(preprocessor, args: dict, budget: dict) -> None:
    """Admit cases largest first while the predicted memory in flight fits the cap (runner.incontainer.schedule)."""
    from runner.incontainer.schedule import run_memory_aware
    run_memory_aware(preprocessor, args, budget)


def install() -> None:
    """Patch nnU-Net (idempotent): atomic writes always; staging/resume/scheduling when the host asks."""
    from nnunetv2.experiment_planning.dataset_fingerprint import fingerprint_extractor
    from nnunetv2.experiment_planning.experiment_planners import default_experiment_planner
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    if getattr(fingerprint_extractor.save_json, "__nnrun_atomic__", False):
        return
    fingerprint_extractor.save_json = atomic_save_json(fingerprint_extractor.save_json)
    default_experiment_planner.save_json = atomic_save_json(default_experiment_planner.save_json)
    try:   # nnU-Net copies ground truth with distutils' copy_file (setuptools' shim on 3.12+)
        from distutils import file_util
        file_util.copy_file = atomic_copy_file(file_util.copy_file)
    except ImportError:
        pass
    DefaultPreprocessor.run_case_save = atomic_run_case_save(DefaultPreprocessor.run_case_save)
    if os.environ.get(SKIP_PLANNING_ENV) == "1":
        skip_global_steps()
    if os.environ.get(RESUME_ENV) == "1":
        DefaultPreprocessor.run = preprocess_configuration


def skip_global_steps() -> None:
    """A shard task: the fingerprint and plans exist (made once by the plan step); only preprocess.

    nnU-Net's entry point calls extract_fingerprints and plan_experiments by
    the names it imported; replacing those names skips both.  Re-planning in
    every shard would rewrite the plans file that running shards read.
    """
    from nnunetv2.experiment_planning import plan_and_preprocess_entrypoints as entry

    def extract_fingerprints(*args, **kwargs):
        print("nnrun: fingerprint exists (shard task): not extracted again", flush=True)

    def plan_experiments(*args, **kwargs):
        print("nnrun: plans exist (shard task): not planned again", flush=True)
        return os.environ.get(PLANS_NAME_ENV) or "nnUNetPlans"

    entry.extract_fingerprints = extract_fingerprints
    entry.plan_experiments = plan_experiments
