"""compose/preprocess.yml must give the container what nnrun's engine module gives it.

The expected values come from nnrun's own code (build_spec + the Docker SDK
arguments the engine module derives from it, the demo's constants), not from
constants copied here.  The file must also be valid for the Compose
Specification (its JSON schema, vendored in tests/fixtures), before and after
the demo's variables are filled in.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema
import pytest
import yaml

from runner import __version__
from runner.dataset import load_raw_dataset
from runner.demo import DEMO_ID, DEMO_NAME, FILE_ENDING, CaseSpec, make_dataset
from runner.engines.docker import host_config_kwargs
from runner.options import DEFAULT_NP, DEFAULT_NPFP, PreprocessOptions
from runner.run.contract import CONTAINER_RUN_DIR, IMAGE_USER, RUN_LABEL, TEST_LABEL, build_spec
from runner.run.settings import DEFAULT_IMAGE, RunSettings
from runner.units import parse_mem

REPO = Path(__file__).resolve().parents[2]
COMPOSE = REPO / "compose" / "preprocess.yml"
DEMO_ENV = REPO / "compose" / "demo.env"
SCHEMA = REPO / "tests" / "fixtures" / "compose-spec.json"
TEST_HOOKS = ("NNRUN_TEST_OOM_VICTIM", "NNRUN_TEST_KILL_AT")
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


def interpolate(value, env: dict[str, str]):
    """Compose's ${VAR}, ${VAR:-default} and ${VAR:?error}, over a loaded YAML tree."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(match: re.Match) -> str:
        name, op, arg = match.group(1), match.group(2), match.group(3)
        if env.get(name):
            return env[name]
        if op == ":-":
            return arg
        if op == ":?":
            raise KeyError(f"{name}: {arg}")
        return env.get(name, "")

    return _VAR.sub(one, value)


def read_env_file(path: Path) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in path.read_text().splitlines() if line.strip() and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


@pytest.fixture(scope="module")
def document():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def service(document):
    return document["services"]["preprocess"]


@pytest.fixture(scope="module")
def demo_env():
    return read_env_file(DEMO_ENV)


@pytest.fixture(scope="module")
def demo_service(service, demo_env):
    return interpolate(service, demo_env)


def _spec(tmp_path_factory, opts: PreprocessOptions, name: str = "Demo"):
    root = tmp_path_factory.mktemp("c")
    make_dataset(root / "raw", opts.dataset_id, name, [CaseSpec((8, 8, 4), (1.0, 1.0, 3.0))])
    dataset = load_raw_dataset(root / "raw", opts.dataset_id)
    pre = root / "pre" / dataset.name
    run_dir = pre / ".nnrun" / "runs" / "r"
    run_dir.mkdir(parents=True)
    # Compose has no estimate: a fixed pool of workers, as nnU-Net.
    spec = build_spec(opts, RunSettings(mem="6g", schedule="fixed"), dataset, pre, run_dir, parse_mem("6g"), "r",
                      IMAGE_USER)
    return spec


@pytest.fixture(scope="module")
def engine_kwargs(tmp_path_factory):
    spec = _spec(tmp_path_factory, PreprocessOptions(501, configurations=("3d_fullres",)))
    return spec, host_config_kwargs(spec)


@pytest.fixture(scope="module")
def demo_spec(tmp_path_factory, demo_env):
    """What `nnrun preprocess` would run for the demo's settings."""
    opts = PreprocessOptions(int(demo_env["DATASET_ID"]), configurations=(demo_env["CONFIGURATION"],),
                             np=(int(demo_env["NP"]),), npfp=int(demo_env["NPFP"]))
    return _spec(tmp_path_factory, opts, name=demo_env["DATASET"].split("_", 1)[1])


def _default(value: str) -> str:
    """'${MEM:-6g}' -> '6g' (Compose's default syntax)."""
    return interpolate(str(value), {})


# --------------------------------------------------------------------------- the Compose Specification

def test_valid_for_the_compose_specification_as_written_and_filled_in(document, demo_env):
    schema = json.loads(SCHEMA.read_text())
    jsonschema.Draft7Validator(schema).validate(document)
    jsonschema.Draft7Validator(schema).validate(interpolate(document, demo_env))
    assert "version" not in document          # obsolete in the specification


# --------------------------------------------------------------------------- limits and hardening

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
    # Nothing that would widen what the engine module gives (privileges, devices, host namespaces).
    for key in ("privileged", "cap_add", "devices", "pid", "ipc", "userns_mode", "ports", "network", "networks"):
        assert key not in service, key


def test_not_root_and_the_same_environment(service, engine_kwargs):
    spec, kw = engine_kwargs
    assert _default(service["user"]) == kw["user"] == f"{IMAGE_USER[0]}:{IMAGE_USER[1]}"
    expected = {k: v for k, v in kw["environment"].items() if k not in TEST_HOOKS}
    assert interpolate(service["environment"], {}) == expected


def test_labels_and_image_follow_nnrun(service, engine_kwargs, monkeypatch):
    spec, _ = engine_kwargs
    labels = interpolate(service["labels"], {"DATASET": "Dataset501_Demo"})
    assert set(spec.labels) <= set(labels) and {RUN_LABEL, TEST_LABEL} <= set(labels)
    assert labels["io.nnrun.version"] == spec.labels["io.nnrun.version"] == __version__
    assert labels["io.nnrun.dataset"] == "Dataset501_Demo"
    # The test registry's label comes from the same variable nnrun copies it from.
    assert interpolate(service["labels"], {"DATASET": "x", "NNRUN_TEST_ID": "t1"})[TEST_LABEL] == "t1"
    assert _default(service["image"]) == DEFAULT_IMAGE


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
    ours = spec.command[:spec.command.index("runner.incontainer.agent") + 1]
    theirs = service["command"][:service["command"].index("runner.incontainer.agent") + 1]
    assert theirs == [a for a in ours if a != "--wait-for-host"]


def test_defaults_are_nnunets_own(service):
    """Without NP/NPFP/CONFIGURATION the run is what nnUNetv2_plan_and_preprocess -c 3d_fullres does."""
    args = interpolate(service["command"], {"DATASET_ID": "501"})
    args = args[args.index("runner.incontainer.agent") + 1:]
    flags = dict(zip(args[::2], args[1::2]))
    assert flags["-c"] == "3d_fullres"
    assert int(flags["-np"]) == PreprocessOptions(501, configurations=("3d_fullres",)).workers_per_configuration()[
        "3d_fullres"] == DEFAULT_NP["3d_fullres"]
    assert int(flags["-npfp"]) == DEFAULT_NPFP
    assert interpolate(service["environment"], {})["NNRUN_FILE_ENDING"] == FILE_ENDING


# --------------------------------------------------------------------------- the demo

def test_demo_env_names_the_demo_dataset_setup_writes(demo_env):
    assert demo_env["DATASET"] == f"Dataset{DEMO_ID}_{DEMO_NAME}" and int(demo_env["DATASET_ID"]) == DEMO_ID
    compose_dir = COMPOSE.parent
    # scripts/setup.sh writes the demo to $NNRUN_HOME/raw, NNRUN_HOME defaulting to <repo>/.demo.
    assert (compose_dir / demo_env["RAW"]).resolve() == REPO / ".demo" / "raw"
    assert (compose_dir / demo_env["PREPROCESSED"]).resolve() == REPO / ".demo" / "preprocessed"
    setup = (REPO / "scripts" / "setup.sh").read_text()
    assert 'NNRUN_HOME="${NNRUN_HOME:-$REPO/.demo}"' in setup and '"$NNRUN_HOME/raw"' in setup
    # The cap of scripts/demo.sh, the image's unprivileged user.
    demo_sh = (REPO / "scripts" / "demo.sh").read_text()
    assert parse_mem(demo_env["MEM"]) == parse_mem(re.search(r"NNRUN_DEMO_MEM:-([0-9a-z.]+)", demo_sh).group(1))
    assert demo_env["UID_GID"] == f"{IMAGE_USER[0]}:{IMAGE_USER[1]}"


def test_demo_runs_the_command_nnrun_would_run(demo_service, demo_spec, demo_env):
    """With demo.env filled in: the same command, environment, cap and mounts as build_spec for those options."""
    kw = host_config_kwargs(demo_spec)
    assert demo_service["command"] == [a for a in demo_spec.command if a != "--wait-for-host"]
    assert demo_service["environment"] == {k: v for k, v in kw["environment"].items() if k not in TEST_HOOKS}
    assert parse_mem(demo_service["mem_limit"]) == parse_mem(demo_service["memswap_limit"]) == parse_mem(
        demo_env["MEM"])
    assert demo_service["user"] == kw["user"]
    dataset = demo_env["DATASET"]
    targets = {v.rsplit(":", 2)[1]: v.rsplit(":", 2)[2] for v in demo_service["volumes"]}
    assert targets == {m.target: ("ro" if m.read_only else "rw") for m in demo_spec.mounts}
    sources = [v.rsplit(":", 2)[0] for v in demo_service["volumes"]]
    assert sources == [f"{demo_env['RAW']}/{dataset}", f"{demo_env['PREPROCESSED']}/{dataset}",
                       f"{demo_env['PREPROCESSED']}/{dataset}/.nnrun/runs/compose"]
