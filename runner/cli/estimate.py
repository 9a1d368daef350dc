"""``nnrun estimate``: the estimate for a dataset, without running anything but the (cached) baseline probe."""
from __future__ import annotations

import json
import os
from pathlib import Path

from runner.dataset import load_raw_dataset, parse_dataset_id
from runner.errors import BadInputError
from runner.estimate.model import Estimate, default_cache_dir, estimate, load_model, measure_baseline
from runner.options import DEFAULT_CONFIGURATIONS, PreprocessOptions, validate
from runner.units import parse_mem


def run_estimate(dataset_arg: str, mem: str, configurations: tuple[str, ...] | None, raw: str | None,
                 preprocessed: str | None, image: str, engine_factory=None) -> Estimate:
    if engine_factory is None:
        from runner.engines.docker import DockerEngine as engine_factory

    opts = validate(PreprocessOptions(parse_dataset_id(dataset_arg),
                                      configurations=configurations or DEFAULT_CONFIGURATIONS))
    cap = parse_mem(mem)
    raw_root = raw or os.environ.get("nnUNet_raw")
    if not raw_root:
        raise BadInputError("no nnUNet_raw folder: pass --raw DIR or set the nnUNet_raw environment variable")
    dataset = load_raw_dataset(Path(raw_root), opts.dataset_id)
    plans = None
    pre_root = preprocessed or os.environ.get("nnUNet_preprocessed")
    if pre_root:
        plans_path = Path(pre_root) / dataset.name / f"{opts.plans_name}.json"
        if plans_path.is_file():
            plans = json.loads(plans_path.read_text())
    engine = engine_factory()
    info = engine.info()
    if info.mem_total_bytes and cap > info.mem_total_bytes:
        raise BadInputError(f"--mem {mem} is more than the Docker host's memory")
    baseline = measure_baseline(lambda: engine, image, default_cache_dir())
    return estimate(dataset, plans, opts.configurations, cap, baseline, load_model(), cpus=os.cpu_count() or 1)
