"""Pre-flight: everything about a run that can be checked before a container engine is involved.

Each check raises :class:`~runner.errors.BadInputError` with a one-line message
and a hint, before anything is written.
"""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from runner.dataset import RawDataset, load_raw_dataset
from runner.errors import BadInputError, NnrunError
from runner.incontainer.preprocess import STAGING
from runner.options import PreprocessOptions, validate, validate_configurations
from runner.run.settings import ProgressSink, RunSettings
from runner.units import parse_mem


def resolve_root(given: str | None, env_name: str, flag: str) -> Path:
    value = given or os.environ.get(env_name)
    if not value:
        raise BadInputError(f"no {env_name} folder: pass {flag} DIR or set the {env_name} environment variable")
    return Path(value).expanduser().resolve()


def preflight(opts: PreprocessOptions, settings: RunSettings, sink: ProgressSink) -> tuple[int, RawDataset, Path]:
    """Everything that can be checked without Docker.  Raises BadInputError."""
    validate(opts)
    mem_bytes = parse_mem(settings.mem)
    parse_mem(settings.shm_size, "--shm-size")
    raw_root = resolve_root(settings.raw_root, "nnUNet_raw", "--raw")
    # -d DatasetXXX_Name as given: the folder found for XXX must have that name.
    dataset = load_raw_dataset(raw_root, settings.dataset_arg or opts.dataset_id)
    preprocessed_root = resolve_root(settings.preprocessed_root, "nnUNet_preprocessed", "--preprocessed")
    existing = preprocessed_root
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise BadInputError(f"--preprocessed {preprocessed_root}: {existing} is not a folder")
    if raw_root == preprocessed_root:
        raise BadInputError("the raw and preprocessed folders must differ")
    note = check_configurations(opts, preprocessed_root / dataset.name, shard=settings.shard is not None)
    if note:
        sink.stage(note)
    if settings.shard is not None:
        check_shard_run(opts, preprocessed_root / dataset.name, settings.mem)
    elif not settings.skip_file_check:      # a shard checks its own cases' files, once it knows them
        check_dataset_files(dataset, settings, sink)
    if settings.shard is None:
        check_case_geometry(dataset, unreadable_ok=settings.skip_file_check,
                            check_spacing=opts.verify_dataset_integrity)
    return mem_bytes, dataset, preprocessed_root


def read_plans(path: Path) -> dict | None:
    """A plans file as a dict (None: missing or unreadable; nnU-Net plans anew then)."""
    try:
        plans = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return plans if isinstance(plans, dict) else None


def check_configurations(opts: PreprocessOptions, preprocessed_dataset: Path | None,
                         shard: bool = False) -> str | None:
    """-c against the plans in the preprocessed folder (None: no folder given), or the names nnU-Net's
    planner makes: BadInputError for a name nnU-Net would skip; a note for one accepted unchecked.
    ``nnrun preprocess`` and ``nnrun estimate`` both check -c here."""
    if preprocessed_dataset is None:
        return validate_configurations(opts, None, shard=shard, fingerprint_kept=False)
    plans = read_plans(preprocessed_dataset / f"{opts.plans_name}.json")
    return validate_configurations(opts, plans, shard=shard,
                                   fingerprint_kept=(preprocessed_dataset / "dataset_fingerprint.json").is_file())


def check_case_geometry(dataset: RawDataset, unreadable_ok: bool = False, check_spacing: bool = True) -> None:
    """nnU-Net's conventions, from headers: every channel and the label of a case share shape (and spacing,
    with ``check_spacing``: --verify_dataset_integrity), and the channel files hold the channels dataset.json
    declares.  ``unreadable_ok``
    (--skip-file-check): files whose headers cannot be read are skipped, not refused."""
    from runner.errors import DamagedFileError
    from runner.formats.headers import case_info, channel_problem, geometry_problem, reader_for
    if not dataset.cases:
        return
    reader = reader_for(dataset.dataset_json, dataset.cases[0].images[0])
    for case in dataset.cases:
        try:
            info = case_info(case, reader, dataset.header_memo)
        except DamagedFileError:
            if unreadable_ok:      # --skip-file-check: a header no library reads is the user's to judge
                continue
            raise
        problem = geometry_problem(info, check_spacing) or channel_problem(info, dataset.num_channels)
        if problem:
            raise BadInputError(f"{dataset.name}: {problem}",
                                hint="nnU-Net needs every channel and the label of a case on the same grid; "
                                     "resample or fix the file")


def check_dataset_files(dataset: RawDataset, settings: RunSettings, sink: ProgressSink) -> None:
    """Read every image and label file to its end (damaged files fail here, not in a worker)."""
    files = list(dataset.all_files())
    sink.stage(f"checking {len(files)} image and label files of {dataset.name} to the end")
    from runner.formats.check_cache import check_files_once  # files verified before are not read again
    problems = check_files_once(files, workers=settings.check_workers, progress=sink.file_check)
    if problems:
        first = problems[0]
        more = f" (and {len(problems) - 1} more damaged file(s))" if len(problems) > 1 else ""
        # This check is what nnrun preprocess --skip-file-check skips (the file headers are read either way).
        raise BadInputError(first.message + more, hint=f"{first.hint}; --skip-file-check skips this check")


def check_shard_run(opts: PreprocessOptions, preprocessed_dataset: Path, mem: str) -> None:
    """A shard only preprocesses: the global steps must have run once before (they are not sharded)."""
    if opts.no_pp:
        raise BadInputError("--shard preprocesses cases; --no_pp runs only the global steps",
                            hint="run the planning step once without --shard, then the shards")
    if opts.clean:
        raise BadInputError("--clean cannot be combined with --shard: it would delete other shards' cases",
                            hint="run `nnrun preprocess --clean --no_pp` once before the shards")
    if opts.verify_dataset_integrity:
        raise BadInputError("--verify_dataset_integrity belongs to the planning step, not to a shard",
                            hint="pass it to the run with --no_pp")
    needed = [preprocessed_dataset / "dataset_fingerprint.json", preprocessed_dataset / f"{opts.plans_name}.json",
              preprocessed_dataset / "dataset.json"]
    missing = [p.name for p in needed if not p.is_file()]
    if missing:
        raise BadInputError(f"a shard run needs the fingerprint and plans of {preprocessed_dataset.name}, "
                            f"missing: {', '.join(missing)}",
                            hint=f"run the planning step once first: nnrun preprocess -d {opts.dataset_id} "
                                 f"--mem {mem} --no_pp (nnrun slurm submit does this for you)")


def dataset_complete(preprocessed_dataset: Path, plans_name: str, configurations) -> bool:
    """Every configuration's folder is in its final place (nothing left in staging)."""
    from runner.run.outputs import data_identifier
    try:
        planned = json.loads((preprocessed_dataset / f"{plans_name}.json").read_text())["configurations"]
    except (OSError, ValueError, KeyError):
        return False
    for configuration in configurations:
        if configuration not in planned:      # nnU-Net skips configurations its plans do not have
            continue
        ident = data_identifier(preprocessed_dataset, plans_name, configuration)
        if not (preprocessed_dataset / ident).is_dir() or (preprocessed_dataset / STAGING / ident).exists():
            return False
    return True


def shard_dataset(dataset: RawDataset, cases: list[str]) -> RawDataset:
    """The dataset restricted to a shard's cases (same order)."""
    keep = set(cases)
    return replace(dataset, cases=tuple(c for c in dataset.cases if c.case_id in keep))


def shape_mismatches(dataset: RawDataset) -> list[str]:
    """Cases whose label's shape differs from their image's, from headers only."""
    from runner.formats.headers import case_infos
    found = []
    try:
        # Read again, not from the run's header memo: this explains a failure, and the files may have
        # changed since the pre-flight read them (tests/integration/test_worker_deaths_real.py swaps a label).
        infos = case_infos(replace(dataset, header_memo={}))
    except NnrunError:
        return found
    for info in infos:
        image, label = info.images[0], info.label
        if image.shape != label.shape:
            found.append(f"{info.case_id} (image {image.shape_text()}, label {label.shape_text()})")
    return found


def check_output_writable(preprocessed_dataset: Path) -> None:
    """A folder this user cannot write: say so before anything starts (nothing is written as root)."""
    probe = preprocessed_dataset
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK | os.X_OK):
        try:
            owner = f"uid {probe.stat().st_uid}"
        except OSError:
            owner = "another user"
        raise BadInputError(f"the output folder {probe} belongs to {owner} and is not writable by you "
                            f"(uid {os.getuid()})",
                            hint="pass --preprocessed with a folder of yours, or ask its owner to run nnrun")
