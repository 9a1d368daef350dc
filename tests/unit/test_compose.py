"""compose/preprocess.yml must give the container what nnrun's engine module gives it.

The expected values come from nnrun's own code (build_spec + the Docker SDK
arguments the engine module derives from it), not from constants copied here.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from runner.demo import CaseSpec, make_dataset
from runner.docker_engine import host_config_kwargs
from runner.options import PreprocessOptions
from runner.run import CONTAINER_RUN_DIR, IMAGE_USER, RunSettings, build_spec
from runner.dataset import load_raw_dataset
from runner.units import parse_mem

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose" / "preprocess.yml"


@pytest.fixture(scope="module")
def service():
    return yaml.safe_load(COMPOSE.read_text())["services"]["preprocess"]


@pytest.fixture(scope="module")
def engine_kwargs(tmp_path_factory):
    root = tmp_path_factory.mktemp("c")
    make_dataset(root / "raw", 501, "Demo", [CaseSpec((8, 8, 4), (1.0, 1.0, 3.0))])
    dataset = load_raw_dataset(root / "raw", 501)
    pre = root / "pre" / dataset.name
    run_dir = pre / ".nnrun" / "runs" / "r"
    run_dir.mkdir(parents=True)
    spec = build_spec(PreprocessOptions(501, configurations=("3d_fullres",)), RunSettings(mem="6g"), dataset, pre,
                      run_dir, parse_mem("6g"), "r", IMAGE_USER)
    return spec, host_config_kwargs(spec)


def _default(value: str) -> str:
    """'${MEM:-6g}' -> '6g' (Compose's default syntax)."""
    value = str(value)
    if value.startswith("${") and ":-" in value:
        return value.split(":-", 1)[1].rstrip("}")
    return value


def test_memory_cap_equals_memory_plus_swap(service, engine_kwargs):
    _, kw = engine_kwargs
    assert kw["mem_limit"] == kw["memswap_limit"]
    assert service["mem_limit"] == service["memswap_limit"]
    assert parse_mem(_default(service["mem_limit"])) == kw["mem_limit"]


def test_same_hardening_as_the_engine_module(service, engine_kwargs):
    _, kw = engine_kwargs
    assert service["network_mode"] == kw["network_mode"]
    assert service["read_only"] is kw["read_only"]
    assert service["cap_drop"] == kw["cap_drop"]
    assert service["security_opt"] == kw["security_opt"]
    assert service["pids_limit"] == kw["pids_limit"]
    assert parse_mem(service["shm_size"]) == kw["shm_size"]
    assert service["init"] is kw["init"]
    tmpfs = dict(entry.split(":", 1) for entry in service["tmpfs"])
    assert tmpfs == kw["tmpfs"]


def test_not_root_and_the_same_environment(service, engine_kwargs):
    spec, kw = engine_kwargs
    assert _default(service["user"]) == kw["user"] == f"{IMAGE_USER[0]}:{IMAGE_USER[1]}"
    for key in ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "PYTHONUNBUFFERED", "HOME"):
        assert service["environment"][key] == kw["environment"][key]


def test_same_mount_modes_and_command_shape(service, engine_kwargs):
    spec, kw = engine_kwargs
    def kind(target: str) -> str:        # /data/raw/X -> raw; /nnrun/run stays
        return target.split("/")[2] if target.startswith("/data/") else target

    modes = {kind(t["bind"]): t["mode"] for t in kw["volumes"].values()}
    # source:target:mode, where the source may hold ${VAR:?message} colons
    compose_modes = {kind(target): mode for _, target, mode in (v.rsplit(":", 2) for v in service["volumes"])}
    assert modes == compose_modes == {"raw": "ro", "preprocessed": "rw", CONTAINER_RUN_DIR: "rw"}
    # The supervisor runs nnU-Net through the agent, as nnrun does.
    # (without --wait-for-host: no nnrun on the host reads the cgroup here)
    ours = spec.command[:spec.command.index("runner.agent") + 1]
    theirs = service["command"][:service["command"].index("runner.agent") + 1]
    assert theirs == [a for a in ours if a != "--wait-for-host"]
