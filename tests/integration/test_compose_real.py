"""compose/preprocess.yml with compose/demo.env, run once with Debian's docker-compose 1.29 on a tiny
Dataset501_Demo (three small cases instead of the demo's six).

scripts/ensure-docker.sh installs docker-compose.  The run gets its own
project name; the shell environment overrides demo.env's folders (to this
test's), the image, and the container user (the one nnrun itself would pick),
as demo.env's comment tells users to; the cleanup registry's test id becomes
a label (the compose file copies NNRUN_TEST_ID into ``io.nnrun.test-id``).  After the run: the exit code, the preprocessed
outputs, the supervisor's status.json and the agent's records; the stopped
container's settings against those nnrun's engine module builds for the same
run; then `docker-compose down` and no container left.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.engines.docker import host_config_kwargs
from runner.options import PreprocessOptions
from runner.run.contract import build_spec, container_user, hand_over
from runner.run.settings import RunSettings
from runner.units import parse_mem
from tests.integration.conftest import IMAGE, REPO

pytestmark = [pytest.mark.docker, pytest.mark.compose]
COMPOSE = REPO / "compose" / "preprocess.yml"
DEMO_ENV = REPO / "compose" / "demo.env"
CASES = [CaseSpec((64, 64, 24), (0.8, 0.8, 3.0)), CaseSpec((56, 64, 20), (0.8, 0.8, 4.0)),
         CaseSpec((64, 56, 28), (0.8, 0.8, 2.5))]


def _compose(project: str, env: dict, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(["docker-compose", "--env-file", str(DEMO_ENV), "-f", str(COMPOSE), "-p", project, *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO, env={**os.environ, **env})


def _env_file(path: Path) -> dict[str, str]:
    pairs = (ln.split("=", 1) for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def _project_containers(project: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter",
                          f"label=com.docker.compose.project={project}"], capture_output=True, text=True).stdout
    return out.split()


@pytest.fixture(scope="session")
def compose_ready(docker_ready) -> str:
    if shutil.which("docker-compose") is None:
        pytest.fail("docker-compose is missing: run scripts/ensure-docker.sh (scripts/test.sh does it)")
    return docker_ready


def test_compose_demo_preprocesses_the_dataset_with_nnruns_settings(compose_ready, tmp_path):
    demo = _env_file(DEMO_ENV)
    raw, pre_root = tmp_path / "raw", tmp_path / "pre"
    dataset_id, name = int(demo["DATASET_ID"]), demo["DATASET"].split("_", 1)[1]
    make_dataset(raw, dataset_id, name, CASES)
    dataset = load_raw_dataset(raw, dataset_id)
    assert dataset.name == demo["DATASET"]
    pre = pre_root / dataset.name
    run_dir = pre / ".nnrun" / "runs" / "compose"
    run_dir.mkdir(parents=True)                           # the documented first step
    uid, gid, _ = container_user(pre_root)                # the user nnrun would run the container as
    if os.getuid() == 0:
        hand_over([pre], uid, gid)
    env = {"RAW": str(raw), "PREPROCESSED": str(pre_root), "UID_GID": f"{uid}:{gid}", "NNRUN_IMAGE": IMAGE}
    project = "nnrun-test-" + uuid.uuid4().hex[:10]
    try:
        up = _compose(project, env, "up", "--abort-on-container-exit", "--exit-code-from", "preprocess")
        assert up.returncode == 0, f"docker-compose up: exit {up.returncode}\n{up.stdout[-3000:]}\n{up.stderr[-3000:]}"
        containers = _project_containers(project)
        assert len(containers) == 1
        inspected = json.loads(subprocess.run(["docker", "inspect", containers[0]], capture_output=True, text=True,
                                              check=True).stdout)[0]
    finally:
        down = _compose(project, env, "down", "--remove-orphans", timeout=120)
    assert down.returncode == 0, down.stderr[-2000:]
    assert _project_containers(project) == []

    # It completed: nnU-Net's outputs, the supervisor's status, the agent's records.
    for rel in ("dataset_fingerprint.json", "nnUNetPlans.json", "gt_segmentations/case000.nii.gz"):
        assert (pre / rel).is_file(), rel
    for case in ("case000", "case001", "case002"):
        for suffix in (".pkl", ".b2nd", "_seg.b2nd"):
            assert (pre / "nnUNetPlans_3d_fullres" / f"{case}{suffix}").is_file(), case + suffix
    status = json.loads((run_dir / "status.json").read_text())
    assert status["returncode"] == 0
    assert status.get("oom_kill_end") == status.get("oom_kill_start") == 0
    records = [json.loads(line) for line in (run_dir / "agent.jsonl").read_text().splitlines() if line.strip()]
    ended = {(r.get("phase"), r.get("case")) for r in records if r.get("event") == "case_end"}
    assert {c for p, c in ended if p == "preprocessing"} == {"case000", "case001", "case002"}
    assert (pre / "nnUNetPlans.json").stat().st_uid == uid

    # The container Compose made has the settings nnrun's engine module builds for the same run.
    opts = PreprocessOptions(dataset_id, configurations=(demo["CONFIGURATION"],), np=(int(demo["NP"]),),
                             npfp=int(demo["NPFP"]))
    spec = build_spec(opts, RunSettings(mem=demo["MEM"], image=IMAGE, schedule="fixed"), dataset, pre, run_dir,
                      parse_mem(demo["MEM"]), "compose", (uid, gid))
    kw = host_config_kwargs(spec)
    host, config = inspected["HostConfig"], inspected["Config"]
    assert host["Memory"] == host["MemorySwap"] == kw["mem_limit"] == kw["memswap_limit"]
    assert host["NetworkMode"] == kw["network_mode"]
    assert host["ReadonlyRootfs"] is kw["read_only"]
    assert host["CapDrop"] == kw["cap_drop"] and not host.get("CapAdd")
    assert host["SecurityOpt"] == kw["security_opt"]
    assert host["PidsLimit"] == kw["pids_limit"]
    assert host["ShmSize"] == kw["shm_size"]
    assert host["Tmpfs"] == kw["tmpfs"]
    assert not host.get("Init") and not host.get("Privileged")
    assert config["User"] == kw["user"]
    assert config["Cmd"] == [a for a in spec.command if a != "--wait-for-host"]
    env = dict(item.split("=", 1) for item in config["Env"])
    for key, value in kw["environment"].items():
        if key not in ("NNRUN_TEST_OOM_VICTIM", "NNRUN_TEST_KILL_AT"):
            assert env[key] == value, key
    assert config["Labels"]["io.nnrun.test-id"] == os.environ["NNRUN_TEST_ID"]
    assert config["Labels"]["io.nnrun.dataset"] == dataset.name
    binds = {m["Destination"]: (m["Source"], m["RW"]) for m in inspected["Mounts"]}
    for source, bind in kw["volumes"].items():
        assert binds[bind["bind"]] == (source, bind["mode"] == "rw")
