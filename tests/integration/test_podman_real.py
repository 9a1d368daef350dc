"""`nnrun preprocess --engine podman`: the same runs as test_preprocess_real.py, through Podman's
Docker-compatible API (Debian's podman 4.3, runc, cgroup v1 with the cgroupfs manager here).

scripts/test.sh runs scripts/ensure-podman.sh as root first: it installs
podman, serves its API on unix:///run/nnrun-podman.sock (where
``--engine podman`` looks first) and loads the image from Docker into
Podman's own store.  When Podman cannot be used at all these tests skip, with
the reason (the exact error); when it could be used but the set-up is missing
(run as root and no service, or no image in Podman's store) they fail.

What differs from Docker and is checked here: Podman cannot raise container
rlimits above those of its service (root lacks CAP_SYS_RESOURCE on this kind
of machine), so nnrun asks for lower nofile/nproc limits; the container's
memory cgroup is ``memory/libpod_parent/libpod-<id>``; and Podman's
OOMKilled flag misses the kill of a child process, which the cgroup counter
(nnrun's evidence) does not.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from runner.cgroup import find_container_cgroup
from runner.dataset import load_raw_dataset
from runner.engines.docker import DockerEngine, host_config_kwargs, podman_base_url
from runner.errors import InfraError
from runner.options import PreprocessOptions
from runner.run.contract import build_spec, container_user
from runner.run.settings import RunSettings
from runner.units import parse_mem
from tests.integration.conftest import IMAGE, REPO, NnrunResult, nnrun_cmd, parse_single_json, run_nnrun
from tests.integration.test_preprocess_real import FAST, _assert_report

pytestmark = [pytest.mark.docker, pytest.mark.podman]
ENGINE = ["--engine", "podman", "--image", IMAGE]
TEST_LABEL = "io.nnrun.test-id"
CGROUP_ROOT = Path("/sys/fs/cgroup")


def _podman(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def podman_ready() -> str:
    """Podman's API answers and holds IMAGE; skip (with the reason) only when Podman cannot run containers here."""
    if os.environ.get("NNRUN_SKIP_DOCKER") == "1":
        pytest.skip("NNRUN_SKIP_DOCKER=1")
    url = podman_base_url()
    if shutil.which("podman") is None:
        if os.getuid() == 0:
            pytest.fail("podman is not installed: run scripts/ensure-podman.sh (scripts/test.sh does it)")
        pytest.skip("podman is not installed (scripts/ensure-podman.sh installs it, as root)")
    # Can Podman start a container at all, with the lower rlimits it needs here?
    smoke = _podman("run", "--rm", "--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit",
                    "nproc=1024:1024", "--entrypoint", "true", IMAGE)
    if smoke.returncode != 0 and "image not known" not in smoke.stderr and "no such image" not in smoke.stderr.lower():
        pytest.skip(f"Podman cannot start containers here: {' '.join(smoke.stderr.split())[-400:]}")
    engine = DockerEngine(base_url=url, expect="podman")
    try:
        info = engine.info()
    except InfraError as err:
        if os.getuid() == 0:
            pytest.fail(f"{err.one_line()}: run scripts/ensure-podman.sh (scripts/test.sh does it)")
        pytest.skip(f"{err.one_line()} (start `podman system service`, or run scripts/ensure-podman.sh as root)")
    assert info.name == "podman"
    try:
        engine.image(IMAGE)
    except InfraError as err:
        pytest.fail(f"{err.one_line()}: run NNRUN_IMAGE={IMAGE} scripts/ensure-podman.sh")
    return url


def _podman_labelled(test_id: str) -> list[str]:
    return _podman("ps", "-aq", "--no-trunc", "--filter", f"label={TEST_LABEL}={test_id}").stdout.split()


def _podman_inspect(container_id: str) -> dict | None:
    proc = _podman("inspect", container_id)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


def test_ok_run_through_podman_with_the_same_settings(podman_ready, demo_raw, tmp_path, monkeypatch):
    """An ok demo run; its container, inspected with `podman inspect` while it runs, has what nnrun's engine
    module asks for (build_spec -> host_config_kwargs), and the host monitor reads its libpod cgroup."""
    pre = tmp_path / "pre"
    test_id = os.environ["NNRUN_TEST_ID"]
    proc = subprocess.Popen(
        nnrun_cmd("preprocess", "-d", "501", "--mem", "4g", "--raw", str(demo_raw), "--preprocessed", str(pre),
                  *ENGINE, *FAST, "-np", "2", "-npfp", "2", "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)
    inspected, cgroup_dir, pid1_status = None, None, ""
    try:
        deadline = time.time() + 120
        while inspected is None and time.time() < deadline and proc.poll() is None:
            for cid in _podman_labelled(test_id):
                data = _podman_inspect(cid)
                if data and data["State"]["Running"]:
                    inspected, cgroup_dir = data, find_container_cgroup(CGROUP_ROOT, data["Id"])
                    try:     # the supervisor (PID 1) as the kernel sees it
                        pid1_status = Path(f"/proc/{data['State']['Pid']}/status").read_text()
                    except OSError:
                        pass
            time.sleep(0.2)
    finally:
        stdout, stderr = proc.communicate(timeout=600)
    result = NnrunResult(proc.returncode, parse_single_json(stdout), stderr, stdout)
    report = _assert_report(result, "ok", 0)
    assert inspected is not None, f"nnrun's container was never seen running in Podman:\n{stderr[-2000:]}"

    # The verdict's evidence came from the host reading Podman's container cgroup.
    assert report["oom_kills"] == 0 and report["oom_source"] == "cgroup"
    assert report["cgroup_reader"] == "host" and report["runtime"] == "podman"
    assert 0 < report["peak_anon_bytes"] < report["limit_bytes"] == 4 * 2**30
    print(f"\npodman container cgroup: {cgroup_dir}")
    assert cgroup_dir is not None and "libpod" in str(cgroup_dir)
    run_dir = Path(report["run_dir"])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["engine"]["name"] == "podman" and manifest["engine"]["base_url"] == podman_base_url()
    assert json.loads((run_dir / "status.json").read_text())["returncode"] == 0
    out = pre / "Dataset501_Demo"
    for rel in ("dataset_fingerprint.json", "nnUNetPlans.json", "gt_segmentations/case000.nii.gz",
                "nnUNetPlans_3d_fullres/case005.pkl", "nnUNetPlans_3d_fullres/case005.b2nd"):
        assert (out / rel).is_file(), rel
    assert (out / "nnUNetPlans.json").stat().st_uid == os.getuid()

    # What nnrun asked for (its own code), against what Podman applied.
    opts = PreprocessOptions(dataset_id=501, configurations=tuple(FAST[1:]), np=(2,), npfp=2)
    dataset = load_raw_dataset(demo_raw, 501)
    uid, gid, _ = container_user(pre)
    spec = build_spec(opts, RunSettings(mem="4g", image=IMAGE), dataset, out, run_dir, parse_mem("4g"),
                      report["run_id"], (uid, gid))
    kw = host_config_kwargs(spec, engine="podman")
    host, config = inspected["HostConfig"], inspected["Config"]
    print(f"HostConfig: Memory={host['Memory']} MemorySwap={host['MemorySwap']} NetworkMode={host['NetworkMode']} "
          f"ReadonlyRootfs={host['ReadonlyRootfs']} CapDrop={host['CapDrop']} SecurityOpt={host['SecurityOpt']} "
          f"PidsLimit={host['PidsLimit']} ShmSize={host['ShmSize']} Tmpfs={host['Tmpfs']} Ulimits={host['Ulimits']} "
          f"User={config['User']}")
    assert host["Memory"] == host["MemorySwap"] == kw["mem_limit"] == kw["memswap_limit"]
    assert host["NetworkMode"] == kw["network_mode"] == "none"
    assert host["ReadonlyRootfs"] is kw["read_only"] is True
    # Podman spells "ALL" out as the capabilities it drops.
    assert kw["cap_drop"] == ["ALL"] and {"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_SETUID", "CAP_KILL"} <= set(host["CapDrop"])
    assert host.get("CapAdd") in (None, [])
    fields = dict(line.split(":", 1) for line in pid1_status.splitlines() if ":" in line)
    assert fields["CapEff"].strip() == fields["CapBnd"].strip() == "0" * 16    # no capability at all
    assert fields["NoNewPrivs"].strip() == "1"
    assert host["SecurityOpt"] == kw["security_opt"]
    assert host["PidsLimit"] == kw["pids_limit"]
    assert host["ShmSize"] == kw["shm_size"]
    for target, options in kw["tmpfs"].items():      # Podman appends its own mount options
        assert host["Tmpfs"][target].startswith(options)
    ulimits = {u["Name"]: (u["Soft"], u["Hard"]) for u in host["Ulimits"]}
    for u in kw["ulimits"]:
        assert ulimits["RLIMIT_" + u["name"].upper()] == (u["soft"], u["hard"])
    nproc = next(u for u in kw["ulimits"] if u["name"] == "nproc")
    assert nproc["hard"] >= kw["pids_limit"]
    assert config["User"] == kw["user"] == f"{uid}:{gid}" and uid != 0
    assert host.get("Init") in (None, False)
    for key, value in kw["labels"].items():
        assert config["Labels"][key] == value
    mounts = {m["Destination"]: (m["Source"], m["RW"]) for m in inspected["Mounts"]}
    for source, bind in kw["volumes"].items():
        assert mounts[bind["bind"]] == (source, bind["mode"] == "rw")


def test_worker_oom_through_podman(podman_ready, demo_raw, tmp_path):
    """A worker OOM-killed in Podman's container: Podman's OOMKilled flag misses it, the cgroup counter not."""
    pre = tmp_path / "pre"
    common = ["preprocess", "-d", "501", "--raw", str(demo_raw), "--preprocessed", str(pre), *ENGINE, *FAST,
              "-npfp", "1"]
    _assert_report(run_nnrun(*common, "--mem", "4g", "--no_pp"), "ok", 0)
    result = run_nnrun(*common, "--mem", "1200m", "-np", "4", env={"NNRUN_TEST_OOM_VICTIM": "worker"})
    report = _assert_report(result, "oom", 3)
    print(f"\nengine_oom_killed={report['engine_oom_killed']} oom_kills={report['oom_kills']} "
          f"container_exit_code={report['container_exit_code']}")
    assert report["victim"] == "worker"
    assert report["phase"] == "preprocessing" and report["configuration"] == "3d_fullres"
    assert report["oom_source"] == "cgroup" and report["oom_kills"] >= 1 and report["cgroup_reader"] == "host"
    assert report["victims"][0]["role"] == "worker" and isinstance(report["victims"][0]["pid"], int)
    assert report["limit_bytes"] == 1200 * 2**20
    assert report["peak_anon_bytes"] > 0.8 * report["limit_bytes"]
    assert report["cases_exact"] is True
    argv = report["recommendation_argv"]
    assert argv[:2] == ["nnrun", "preprocess"]
    # Fewer workers, same cap: at most half of 4, fewer when the estimate fits fewer side by side.
    assert 1 <= int(argv[argv.index("-np") + 1]) <= 2 and argv[argv.index("--mem") + 1] == "1200m"
    assert argv[argv.index("--runtime") + 1] == "podman"         # the advice runs on the same engine
    assert "worker process" in result.stderr and "next:" in result.stderr
    out = pre / "Dataset501_Demo"
    assert not (out / "nnUNetPlans_3d_fullres").exists()
    assert (out / "dataset_fingerprint.json").is_file() and (out / "nnUNetPlans.json").is_file()


def test_doctor_probe_through_podman_and_docker_host_detection(podman_ready):
    """`nnrun doctor --engine podman` runs its OOM probe in Podman; DOCKER_HOST at the Podman socket is
    recognised as Podman without --engine."""
    proc = subprocess.run(nnrun_cmd("doctor", "--engine", "podman", "--image", IMAGE, "--json"),
                          capture_output=True, text=True, cwd=REPO, timeout=180)
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["docker daemon"]["data"]["engine"] == "podman", checks["docker daemon"]
    assert checks["oom probe"]["status"] == "ok", checks["oom probe"]
    assert checks["oom probe"]["data"]["oom_kill"] >= 1
    proc = subprocess.run(nnrun_cmd("doctor", "--image", IMAGE, "--no-probe", "--json"), capture_output=True,
                          text=True, cwd=REPO, timeout=120, env={**os.environ, "DOCKER_HOST": podman_ready})
    checks = {c["name"]: c for c in json.loads(proc.stdout)["checks"]}
    assert checks["docker daemon"]["data"]["engine"] == "podman"
    assert checks["image"]["status"] == "ok"
