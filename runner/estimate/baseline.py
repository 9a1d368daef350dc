"""The process baseline of the image: what nnU-Net's main process and one worker hold before any case.

Measured once per image in a throw-away container (through the engine seam)
and cached by image id in nnrun's cache folder.
"""
from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from runner.estimate.model import Baseline
from runner.rundir import write_json_atomic

_PROBE = r'''
import json, os, sys
os.environ.setdefault("NNRUN_AGENT_EVENTS", "/tmp/nnrun-baseline-events.jsonl")
import runner.incontainer.agent            # what every nnU-Net worker imports under nnrun: installs the wrappers (nnunetv2)


def status():
    out = {}
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(("VmRSS:", "VmHWM:", "RssAnon:", "RssFile:")):
                out[line.split(":")[0]] = int(line.split()[1]) * 1024
    return out


def probe():
    return status()


if __name__ == "__main__":
    import multiprocessing
    from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry  # noqa: F401
    from nnunetv2.experiment_planning.plan_and_preprocess_api import extract_fingerprints, plan_experiments  # noqa
    workers = []
    for _ in range(2):
        with multiprocessing.get_context("spawn").Pool(1) as p:
            workers.append(p.apply(probe))
    print("NNRUN_BASELINE " + json.dumps({"main": status(), "workers": workers}))
'''
_BOOT = ("import subprocess, sys; open('/tmp/nnrun_baseline_probe.py', 'w').write(sys.argv[1]); "
         "sys.exit(subprocess.call([sys.executable, '/tmp/nnrun_baseline_probe.py']))")


def _run_probe_container(engine, image: str, script: str, mem_bytes: int = 4 << 30,
                         timeout_s: float = 180) -> str:
    """Run ``script`` with the image's python3 in a throw-away hardened container (the engine seam)."""
    result = engine.run_throwaway(image, ["python3", "-c", _BOOT], [script], mem_bytes, timeout_s,
                                  "estimate-baseline", tmpfs={"/tmp": "rw,exec,size=64m"})
    if result["timed_out"]:
        raise RuntimeError(f"baseline probe container still running after {timeout_s} s")
    if result["container_exit_code"] != 0:
        raise RuntimeError(f"baseline probe failed (exit {result['container_exit_code']}): "
                           f"{result['stderr'].strip()[-500:]}")
    return result["stdout"]


def parse_probe_output(stdout: str) -> tuple[int, int, dict]:
    """(main_bytes, worker_bytes, raw) from the probe's NNRUN_BASELINE line."""
    for line in stdout.splitlines():
        if line.startswith("NNRUN_BASELINE "):
            raw = json.loads(line[len("NNRUN_BASELINE "):])
            main = int(raw["main"]["VmRSS"])
            worker = max(int(w["VmHWM"]) for w in raw["workers"])
            return main, worker, raw
    raise RuntimeError("baseline probe printed no NNRUN_BASELINE line")


def measure_baseline(engine_factory: Callable, image: str, cache_dir: Path,
                     run_probe: Callable[[str, str], str] | None = None) -> Baseline:
    """The per-worker and main-process baseline in ``image``, measured once per image id and cached.

    A real container runs what nnU-Net runs under nnrun: a main process with
    nnU-Net's plan-and-preprocess entry point imported that opens
    ``multiprocessing.get_context("spawn").Pool(1)`` (twice); the worker imports
    ``runner.incontainer.agent`` (hence nnunetv2's fingerprint, preprocessing and
    verification modules, torch included) as every nnU-Net worker does under
    nnrun.  Worker: the larger VmHWM of the two; main: VmRSS after the pools.
    Cached as ``cache_dir/baseline-<image id>.json``.
    """
    engine = engine_factory()
    image_id = engine.image(image).image_id
    cache_dir = Path(cache_dir)
    # An image id (sha256:...) or, for --runtime host, a Python's path: a plain file name either way.
    cache = cache_dir / f"baseline-{re.sub(r'[^A-Za-z0-9._-]+', '-', image_id).strip('-')}.json"
    try:
        data = json.loads(cache.read_text())
        return Baseline(int(data["main_bytes"]), int(data["worker_bytes"]), data["image_id"], True,
                        _shared_bytes(data.get("raw") or {}))
    except (OSError, ValueError, KeyError):
        pass
    started = time.time()
    stdout = run_probe(image, _PROBE) if run_probe else _run_probe_container(engine, image, _PROBE)
    main, worker, raw = parse_probe_output(stdout)
    baseline = Baseline(main_bytes=main, worker_bytes=worker, image_id=image_id, measured=True,
                        shared_bytes=_shared_bytes(raw))
    cache_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(cache, {**asdict(baseline), "image": image, "raw": raw,
                              "measured_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                              "probe_s": round(time.time() - started, 1)})
    return baseline


def _shared_bytes(raw: dict) -> int:
    """The workers' file-backed RSS (RssFile) from the probe's raw numbers; 0 when not recorded."""
    files = [int(w["RssFile"]) for w in raw.get("workers", []) if "RssFile" in w]
    return min(files) if files else 0


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "nnrun" / "baseline"
