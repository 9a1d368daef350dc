"""The container nnrun runs is locked down, and what it writes belongs to the caller: real Docker, real runs.

Expected values come from nnrun's own code (``runner.run.contract.build_spec`` and
``runner.engines.docker.host_config_kwargs``, ``RunSettings``' defaults), not
from constants copied here, so the test follows the code and still catches an
engine that does not apply what nnrun asked for.

One ok demo run (``-c 3d_fullres -np 1 -npfp 1 --mem 4g``, about 20 s) serves
the module: its container is inspected while it runs, and its outputs and
report are checked afterwards.  It carries its own test id and checks its own
cleanup (the per-test registry fixture only starts inside each test).
"""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.engines.docker import DockerEngine, host_config_kwargs
from runner.options import PreprocessOptions
from runner.run.contract import CONTAINER_RAW, build_spec, container_user, hand_over
from runner.run.outputs import new_run_dir
from runner.run.settings import RunSettings
from runner.rundir import HOST_ACK_FILE, MANIFEST_FILE
from runner.units import parse_mem
from tests.integration.conftest import IMAGE, REPO, NnrunResult, nnrun_cmd, parse_single_json
from tests.integration.test_preprocess_real import FAST, _assert_report

pytestmark = pytest.mark.docker
DEMO = "Dataset501_Demo"
MEM = "4g"
WORKERS = ["-np", "1", "-npfp", "1"]
TEST_LABEL = "io.nnrun.test-id"


def _containers_labelled(test_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-aq", "--no-trunc", "--filter", f"label={TEST_LABEL}={test_id}"],
                         capture_output=True, text=True).stdout
    return out.split()


def _inspect(container_id: str) -> dict | None:
    proc = subprocess.run(["docker", "inspect", container_id], capture_output=True, text=True)
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else None


@dataclasses.dataclass
class ObservedRun:
    inspect: dict            # `docker inspect` of nnrun's container while it ran
    result: NnrunResult
    raw: Path
    pre: Path

    @property
    def report(self) -> dict:
        return self.result.report


@pytest.fixture(scope="module")
def observed_run(docker_ready, demo_raw, tmp_path_factory) -> ObservedRun:
    test_id = "hardening-" + uuid.uuid4().hex[:12]
    pre = tmp_path_factory.mktemp("hardening") / "pre"
    proc = subprocess.Popen(
        nnrun_cmd("preprocess", "-d", "501", "--mem", MEM, "--raw", str(demo_raw), "--preprocessed", str(pre),
                  "--image", IMAGE, *FAST, *WORKERS, "--json"),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO,
        env={**os.environ, "NNRUN_TEST_ID": test_id})
    inspected = None
    try:
        deadline = time.time() + 90
        while inspected is None and time.time() < deadline and proc.poll() is None:
            for cid in _containers_labelled(test_id):
                data = _inspect(cid)
                if data and data["State"]["Running"]:
                    inspected = data
            time.sleep(0.2)
    finally:
        stdout, stderr = proc.communicate(timeout=300)
        left = _containers_labelled(test_id)
        if left:
            subprocess.run(["docker", "rm", "-f", *left], capture_output=True)
    assert not left, f"the run left container(s) behind: {left}"
    assert inspected is not None, f"nnrun's container was never seen running:\n{stderr[-2000:]}"
    result = NnrunResult(proc.returncode, parse_single_json(stdout), stderr, stdout)
    assert result.report is not None, stderr[-2000:]
    return ObservedRun(inspected, result, demo_raw, pre)


def _expected_spec(run: ObservedRun):
    """What nnrun asks the engine for, for this run (from nnrun's own code)."""
    opts = PreprocessOptions(dataset_id=501, configurations=tuple(FAST[1:]), np=(1,), npfp=1)
    settings = RunSettings(mem=MEM, image=IMAGE, raw_root=str(run.raw), preprocessed_root=str(run.pre))
    dataset = load_raw_dataset(run.raw, 501)
    uid, gid, _ = container_user(run.pre)
    spec = build_spec(opts, settings, dataset, run.pre / DEMO, Path(run.report["run_dir"]), parse_mem(MEM),
                      run.report["run_id"], (uid, gid))
    return spec, host_config_kwargs(spec), dataset


# --------------------------------------------------------------------------- 1. the container's settings

def test_container_runs_with_the_hardening_nnrun_asks_for(observed_run):
    run = observed_run
    _assert_report(run.result, "ok", 0)
    spec, kw, dataset = _expected_spec(run)
    host, config = run.inspect["HostConfig"], run.inspect["Config"]
    print(f"\nHostConfig: Memory={host['Memory']} MemorySwap={host['MemorySwap']} NetworkMode={host['NetworkMode']} "
          f"ReadonlyRootfs={host['ReadonlyRootfs']} CapDrop={host['CapDrop']} SecurityOpt={host['SecurityOpt']} "
          f"PidsLimit={host['PidsLimit']} Tmpfs={host['Tmpfs']} Init={host.get('Init')} ShmSize={host['ShmSize']} "
          f"User={config['User']}")
    # Memory == memory+swap == the cap: no swap.
    assert host["Memory"] == kw["mem_limit"] == parse_mem(MEM)
    assert host["MemorySwap"] == kw["memswap_limit"] == host["Memory"]
    assert host["NetworkMode"] == kw["network_mode"] == "none"
    assert host["ReadonlyRootfs"] is True and kw["read_only"] is True
    assert "ALL" in (host["CapDrop"] or []) and kw["cap_drop"] == ["ALL"]
    assert not host.get("CapAdd") and host.get("Privileged") is False
    assert "no-new-privileges" in (host["SecurityOpt"] or []) and "no-new-privileges" in kw["security_opt"]
    assert host["PidsLimit"] == kw["pids_limit"] and host["PidsLimit"] > 0
    assert "/tmp" in (host["Tmpfs"] or {}) and host["Tmpfs"]["/tmp"] == kw["tmpfs"]["/tmp"]
    assert host.get("Init") in (False, None) and kw["init"] is False      # the supervisor is PID 1
    # /dev/shm: the --shm-size default.
    shm_default = RunSettings(mem=MEM).shm_size
    assert host["ShmSize"] == kw["shm_size"] == parse_mem(shm_default) == 256 * 2**20
    # Never root inside.
    assert config["User"] == kw["user"]
    assert config["User"] not in ("", "0", "0:0", "root") and config["User"].split(":")[0] not in ("0", "root")
    # Mounts: the dataset's raw folder read-only; only its preprocessed folder and the run folder writable.
    mounts = {m["Destination"]: m for m in run.inspect["Mounts"]}
    raw_target = f"{CONTAINER_RAW}/{DEMO}"
    assert mounts[raw_target]["RW"] is False and mounts[raw_target]["Source"] == str(Path(dataset.path).resolve())
    writable = {m["Destination"]: m["Source"] for m in run.inspect["Mounts"] if m["RW"]}
    assert writable == {m.target: m.source for m in spec.mounts if not m.read_only}
    assert writable == {f"/data/preprocessed/{DEMO}": str(run.pre / DEMO), "/nnrun/run": run.report["run_dir"]}
    assert set(mounts) == {m.target for m in spec.mounts}


# --------------------------------------------------------------------------- 2. what the container can do

PROBE = r"""
import errno, json, os, socket
def attempt(fn):
    try:
        fn()
        return "ok"
    except OSError as err:
        return errno.errorcode.get(err.errno, str(err.errno))
def write(path):
    with open(path, "w") as fh:
        fh.write("x")
def connect():
    socket.create_connection(("127.0.0.1", 9), 2).close()
with open("/proc/net/dev") as fh:
    dev = sorted(line.split(":")[0].strip() for line in fh.readlines()[2:])
with open("/proc/net/route") as fh:
    routes = fh.read().splitlines()[1:]
print("NNRUN-PROBE " + json.dumps({
    "raw_write": attempt(lambda: write("%(raw)s/nnrun-probe")),
    "root_write": attempt(lambda: write("/nnrun-probe")),
    "tmp_write": attempt(lambda: write("/tmp/nnrun-probe")),
    "interfaces": sorted(os.listdir("/sys/class/net")),
    "proc_net_dev": dev,
    "routes": routes,
    "loopback_connect": attempt(connect),
    "uid": os.getuid(),
}), flush=True)
"""


def test_container_cannot_write_raw_or_root_nor_reach_a_network(docker_ready, tmp_path):
    raw, pre_root = tmp_path / "raw", tmp_path / "pre"
    folder = make_dataset(raw, 501, "Sealed", [CaseSpec((32, 32, 12), (1.0, 1.0, 3.0))] * 2)
    folder.chmod(0o777)          # the permissions would allow it: only the read-only mount may stop the write
    dataset = load_raw_dataset(raw, 501)
    pre = pre_root / dataset.name
    pre.mkdir(parents=True)
    run_id = "probe-" + uuid.uuid4().hex[:8]
    run_dir = new_run_dir(pre, run_id)
    (run_dir / HOST_ACK_FILE).write_text("read\n")       # the supervisor need not wait for a host monitor
    uid, gid, _ = container_user(pre_root)
    if os.getuid() == 0:
        hand_over([pre], uid, gid)
    opts = PreprocessOptions(dataset_id=501, configurations=("3d_fullres",))
    spec = build_spec(opts, RunSettings(mem="512m", image=IMAGE), dataset, pre, run_dir, parse_mem("512m"), run_id,
                      (uid, gid))
    cut = spec.command.index("--")
    script = PROBE % {"raw": f"{CONTAINER_RAW}/{dataset.name}"}
    spec = dataclasses.replace(spec, command=[*spec.command[:cut + 1], "python3", "-c", script])
    engine = DockerEngine()
    container_id = engine.create(spec)
    try:
        engine.start(container_id)
        exit_code = engine.wait(container_id, timeout_s=120)
        output = b"".join(engine.logs(container_id)).decode("utf-8", "replace")
    finally:
        engine.remove(container_id)
    lines = [ln for ln in output.splitlines() if ln.startswith("NNRUN-PROBE ")]
    assert lines, f"no probe output (container exit {exit_code}):\n{output[-2000:]}"
    result = json.loads(lines[-1][len("NNRUN-PROBE "):])
    print(f"\nprobe: {result}")
    assert exit_code == 0
    assert result["uid"] == uid != 0
    assert result["raw_write"] == "EROFS"                         # read-only mount
    assert result["root_write"] in ("EROFS", "EACCES")            # read-only root file system
    assert result["tmp_write"] == "ok"                            # the tmpfs /tmp
    assert result["interfaces"] == ["lo"] and result["proc_net_dev"] == ["lo"]
    assert result["routes"] == []                                 # no route anywhere
    assert result["loopback_connect"] == "ECONNREFUSED"           # lo is up, nothing listens, nothing else
    assert not (folder / "nnrun-probe").exists()


# --------------------------------------------------------------------------- 3. outputs belong to the caller

def test_outputs_belong_to_the_caller_while_the_container_ran_unprivileged(observed_run):
    run = observed_run
    _assert_report(run.result, "ok", 0)
    manifest = json.loads((Path(run.report["run_dir"]) / MANIFEST_FILE).read_text())
    container_uid = int(manifest["user"].split(":")[0])
    print(f"\ncontainer user: {manifest['user']}; caller uid {os.getuid()}")
    assert manifest["user"] == run.inspect["Config"]["User"]
    assert container_uid != 0
    out = run.pre / DEMO
    assert (out / "nnUNetPlans_3d_fullres" / "case005.pkl").is_file()
    paths = [out, *out.rglob("*")]
    foreign = [f"{p.relative_to(run.pre)} ({p.lstat().st_uid}:{p.lstat().st_gid})" for p in paths
               if (p.lstat().st_uid, p.lstat().st_gid) != (os.getuid(), os.getgid())]
    assert not foreign, f"not the caller's: {foreign[:10]}"


# --------------------------------------------------------------------------- 4. /dev/shm

def test_peak_shm_is_recorded_and_well_below_the_default(observed_run):
    run = observed_run
    report = _assert_report(run.result, "ok", 0)
    default = parse_mem(RunSettings(mem=MEM).shm_size)
    peak = report["peak_shm_bytes"]
    print(f"\npeak_shm_bytes = {peak} ({(peak or 0) / 2**20:.2f} MiB of the {default / 2**20:.0f} MiB /dev/shm)")
    assert isinstance(peak, int) and 0 <= peak < default // 10
