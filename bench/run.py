#!/usr/bin/env python3
"""nnrun benchmark: one command, synthetic datasets, real Docker, real nnU-Net, real OOM kills.

    python bench/run.py                 # full run (~15 min on 2 cores): bench/results/<date>.json + docs/benchmarks.md
    python bench/run.py --quick         # fewer repetitions, smaller sweep (a few minutes)
    python bench/run.py --quick --tiny --out DIR   # tiny datasets: the smoke test (tests/integration/test_bench_smoke.py)

Sections (see bench/README.md): overhead, detection latency, capped throughput,
estimate accuracy, monitor cost.  Comparisons are interleaved in this one
invocation and reported as ratios of medians.  Needs root for /dev/kmsg (the
kernel's OOM-kill timestamps); without it the latency section says so.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from runner import __version__  # noqa: E402
from runner.demo import DEMO_CASES, CaseSpec, make_dataset  # noqa: E402

IMAGE = os.environ.get("NNRUN_IMAGE", f"nnrun:{__version__}")
MiB = 2 ** 20
GiB = 2 ** 30
# nnrun runs the container as the owner of the preprocessed folder when root runs it; the plain
# docker runs use the same uid so both write the same way.
RUN_UID, RUN_GID = (1000, 1000) if os.getuid() == 0 else (os.getuid(), os.getgid())
DEAD_WORKER = "6 feet under"
KILL_RE = re.compile(r"Killed process (\d+)")
# "oom-kill:constraint=CONSTRAINT_MEMCG,...,oom_memcg=/docker/<id>,task_memcg=/docker/<id>,task=python3,pid=69,..."
OOM_KILL_RE = re.compile(r"oom-kill:.*?task_memcg=([^,]*),task=([^,]*),pid=(\d+)")


def log(msg: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def mono() -> float:
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def rnd(x, n=3):
    return None if x is None else round(x, n)


# --------------------------------------------------------------------------- kernel log

class Kmsg:
    """Records appended to /dev/kmsg after open(): (seconds on the kernel clock, message)."""

    def __init__(self) -> None:
        self.fd = None
        self.error = None
        try:
            self.fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
            os.lseek(self.fd, 0, os.SEEK_END)
        except OSError as e:
            self.error = f"/dev/kmsg: {e.strerror}"

    def read(self) -> list[tuple[float, str]]:
        out = []
        if self.fd is None:
            return out
        while True:
            try:
                rec = os.read(self.fd, 8192)
            except BlockingIOError:
                break
            except OSError:          # EPIPE: records overwritten while we read; go on
                continue
            if not rec:
                break
            head, _, msg = rec.decode(errors="replace").partition(";")
            parts = head.split(",")
            if len(parts) >= 3:
                out.append((int(parts[2]) / 1e6, msg.split("\n")[0]))
        return out

    def kills(self, containers: set[str] | None = None) -> list[dict]:
        """The kernel's OOM kills since the last read; with ``containers`` (full ids), only theirs.

        Other runs on the machine (tests, other users) OOM-kill too: their records name other
        memory cgroups.  Without "oom-kill:" records (an older kernel) every kill counts.
        """
        records = self.read()
        tagged = [(t, msg, m) for t, msg in records if (m := OOM_KILL_RE.search(msg))]
        if tagged:
            return [{"t": t, "pid": int(m.group(3)), "memcg": m.group(1), "msg": msg[:200]} for t, msg, m in tagged
                    if containers is None or any(c and c in m.group(1) for c in containers)]
        return [{"t": t, "pid": int(m.group(1)), "msg": msg[:160]} for t, msg in records
                if (m := KILL_RE.search(msg)) and "out of memory" in msg.lower()]

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)


def clock_check() -> dict:
    """kmsg stamps use the kernel's local clock; compare CLOCK_MONOTONIC with /proc/uptime and a fresh kmsg record."""
    m = mono()
    up = float(Path("/proc/uptime").read_text().split()[0])
    out = {"clock_monotonic_s": round(m, 3), "proc_uptime_s": up,
           "boottime_minus_monotonic_s": round(time.clock_gettime(time.CLOCK_BOOTTIME) - m, 3)}
    try:    # the newest record's stamp must not be later than "now" on CLOCK_MONOTONIC
        fd = os.open("/dev/kmsg", os.O_RDONLY | os.O_NONBLOCK)
        last = None
        while True:
            try:
                rec = os.read(fd, 8192)
            except BlockingIOError:
                break
            except OSError:
                continue
            last = rec
        os.close(fd)
        now = mono()
        if last:
            out["newest_kmsg_s"] = int(last.decode(errors="replace").split(",")[2]) / 1e6
            out["newest_kmsg_not_after_monotonic"] = out["newest_kmsg_s"] <= now + 0.01
    except OSError as e:
        out["kmsg_error"] = e.strerror
    return out


# --------------------------------------------------------------------------- docker events

class DockerEvents:
    """Container start/die times of the bench image (from `docker events`), for start-up and teardown."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.proc = subprocess.Popen(["docker", "events", "--filter", "type=container", "--filter", "event=start",
                                      "--filter", "event=die", "--format", "{{json .}}"],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        threading.Thread(target=self._pump, daemon=True).start()
        time.sleep(0.3)

    def _pump(self) -> None:
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            attrs = (ev.get("Actor") or {}).get("Attributes", {})
            self.events.append({"status": ev.get("status") or ev.get("Action"), "id": ev.get("id"),
                                "t": ev.get("timeNano", 0) / 1e9, "name": attrs.get("name"),
                                "image": attrs.get("image") or ev.get("from")})

    def window(self, t0: float, t1: float) -> dict:
        time.sleep(0.2)      # let the last event arrive
        evs = [e for e in self.events if t0 <= e["t"] <= t1 + 0.5 and e["image"] == IMAGE]
        starts = [e["t"] for e in evs if e["status"] == "start"]
        dies = [e["t"] for e in evs if e["status"] == "die"]
        return {"start_s": rnd(starts[0] - t0) if starts else None,
                "teardown_s": rnd(t1 - dies[-1]) if dies else None,
                "in_container_s": rnd(dies[-1] - starts[0]) if starts and dies else None}

    def ids(self, names: list[str]) -> set[str]:
        """Full ids of the containers of these names (started during the benchmark)."""
        time.sleep(0.2)
        return {e["id"] for e in self.events if e.get("name") in names and e.get("id")}

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


# --------------------------------------------------------------------------- running things

def timed(cmd: list[str], env: dict | None = None, marks: dict[str, str] | None = None, timeout: float = 900,
          events: DockerEvents | None = None, container: str | None = None) -> dict:
    """Run cmd; wall time, exit code, output, and the monotonic time each mark (substring) first appeared."""
    marks = marks or {}
    seen: dict[str, float] = {}
    buf = {"stdout": [], "stderr": []}
    t0w, t0 = time.time(), mono()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, **(env or {})}, cwd=REPO)

    def pump(stream, name):
        for line in stream:
            t = mono()
            buf[name].append(line)
            for key, text in marks.items():
                if key not in seen and text in line:
                    seen[key] = t

    threads = [threading.Thread(target=pump, args=(proc.stdout, "stdout"), daemon=True),
               threading.Thread(target=pump, args=(proc.stderr, "stderr"), daemon=True)]
    for th in threads:
        th.start()
    try:
        rc = proc.wait(timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        if container:
            subprocess.run(["docker", "rm", "-f", container], capture_output=True)
        rc = proc.wait()
    t1, t1w = mono(), time.time()
    for th in threads:
        th.join(10)
    out = {"wall_s": round(t1 - t0, 3), "rc": rc, "t0": t0, "t_end": t1, "marks": seen,
           "stdout": "".join(buf["stdout"]), "stderr": "".join(buf["stderr"])}
    if events:
        out["docker"] = events.window(t0w, t1w)
    return out


def fresh(folder: Path) -> Path:
    if folder.exists():
        shutil.rmtree(folder)
    folder.mkdir(parents=True)
    os.chmod(folder, 0o755)
    if os.getuid() == 0:
        os.chown(folder, RUN_UID, RUN_GID)
    return folder


def chown_tree(folder: Path) -> None:
    if os.getuid() != 0:
        return
    for root, _dirs, files in os.walk(folder):
        os.chown(root, RUN_UID, RUN_GID)
        for f in files:
            os.chown(os.path.join(root, f), RUN_UID, RUN_GID)


def native(ds: Path, pre: Path, mem: str, entry: str, args: list[str], **kw) -> dict:
    """The same image and nnU-Net command with a plain `docker run` and the same cap."""
    out = fresh(pre / ds.name) if not (pre / ds.name).exists() else pre / ds.name
    name = f"nnrun-bench-{uuid.uuid4().hex[:10]}"
    cmd = ["docker", "run", "--rm", "--name", name, "--memory", mem, "--memory-swap", mem,
           "--user", f"{RUN_UID}:{RUN_GID}", "-v", f"{ds}:/data/raw/{ds.name}:ro",
           "-v", f"{out}:/data/preprocessed/{ds.name}", "--entrypoint", entry, IMAGE,
           "-d", str(dataset_id(ds)), *args]
    r = timed(cmd, container=name, **kw)
    r["cmd"] = cmd
    r["container_names"] = [name]
    return r


def nnrun(ds: Path, pre: Path, mem: str, args: list[str], **kw) -> dict:
    cmd = [sys.executable, "-m", "runner.cli", "preprocess", "-d", str(dataset_id(ds)), "--mem", mem,
           "--raw", str(ds.parent), "--preprocessed", str(pre), "--image", IMAGE, "--json", *args]
    r = timed(cmd, **kw)
    r["cmd"] = cmd
    try:
        r["report"] = json.loads(r["stdout"].strip().splitlines()[-1])
    except (ValueError, IndexError):
        r["report"] = None
    rep = r["report"] or {}
    run_ids = [a.get("run_id") for a in rep.get("attempts") or []] or [rep.get("run_id")]
    r["container_names"] = [f"nnrun-{i}" for i in run_ids if i]
    return r


def dataset_id(ds: Path) -> int:
    return int(ds.name[len("Dataset"):len("Dataset") + 3])


def _estimate_cmd(ds: Path, pre: Path, mem: str) -> list[str]:
    return [sys.executable, "-m", "runner.cli", "estimate", "-d", str(dataset_id(ds)), "--mem", mem,
            "-c", "3d_fullres", "--raw", str(ds.parent), "--preprocessed", str(pre), "--image", IMAGE, "--json"]


def estimate(ds: Path, pre: Path, mem: str) -> dict | None:
    p = subprocess.run(_estimate_cmd(ds, pre, mem), capture_output=True, text=True, cwd=REPO, timeout=300)
    try:
        return {**json.loads(p.stdout), "_rc": p.returncode}     # rc 2: nnrun would refuse this cap
    except ValueError:
        log(f"estimate failed: {p.stderr[-500:]}")
        return None


def copy_plans(src: Path, dst_pre: Path) -> None:
    """Fingerprint and plans only (no preprocessed cases, no .nnrun): the sweep measures preprocessing."""
    dst = fresh(dst_pre / src.name)
    for name in ("dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json"):
        if (src / name).is_file():
            shutil.copy2(src / name, dst / name)
    chown_tree(dst)


def summary(r: dict) -> dict:
    rep = r.get("report") or {}
    return {k: v for k, v in {
        "wall_s": r["wall_s"], "rc": r["rc"], "outcome": rep.get("outcome"), "duration_s": rep.get("duration_s"),
        "oom_kills": rep.get("oom_kills"), "workers": rep.get("workers"),
        "attempts": len(rep.get("attempts") or []) or (1 if rep else None),
        "docker": r.get("docker")}.items() if v is not None}


def oom_mem_fmt(b: int) -> str:
    return f"{-(-b // MiB)}m"


# --------------------------------------------------------------------------- datasets

def datasets(raw: Path, tiny: bool) -> tuple[Path, Path, list[int]]:
    if tiny:
        demo = make_dataset(raw, 501, "Demo", [CaseSpec((64, 64, 24), (0.8, 0.8, 2.5)),
                                               CaseSpec((80, 72, 28), (0.8, 0.8, 3.0)),
                                               CaseSpec((72, 80, 20), (0.8, 0.8, 2.5))])
        small = CaseSpec((64, 64, 24), (0.8, 0.8, 1.5))
        large = CaseSpec((128, 128, 40), (0.8, 0.8, 3.0))
        large_at = [2]
        cases = [large if i in large_at else small for i in range(6)]
    else:
        demo = make_dataset(raw, 501, "Demo", list(DEMO_CASES))
        # /work/shared/notes/benchmark-scenarios.md, "Measured example": 12 cases, 2 large (300 x 320 x 320
        # voxels, z first) at positions 3 and 8, 10 small (60 x 160 x 160), in-plane 0.8 mm, z spacing
        # alternating 1.5 / 3.0 mm (target 2.25 mm: every case is resampled).
        large_at = [3, 8]
        cases = [CaseSpec((320, 320, 300) if i in large_at else (160, 160, 60), (0.8, 0.8, 1.5 if i % 2 == 0 else 3.0))
                 for i in range(12)]
    mixed = make_dataset(raw, 502, "Mixed", cases)
    return demo, mixed, large_at


# --------------------------------------------------------------------------- sections

def bench_overhead(demo: Path, work: Path, reps: int, ev: DockerEvents) -> dict:
    mem = "4g"
    args = ["-c", "3d_fullres", "-np", "2", "-npfp", "2"]
    variants = {"native": None, "nnrun_no_plot": ["--no-plot"], "nnrun_plot": []}
    runs: dict[str, list[dict]] = {k: [] for k in variants}
    # The per-worker baseline is measured once per image id and cached (a throw-away container): the
    # cost of a first-ever run, timed here apart (`nnrun estimate` with an empty user cache, then again).
    first_est = timed(_estimate_cmd(demo, fresh(work / "overhead" / "estimate"), mem),
                      env={"XDG_CACHE_HOME": str(work / "xdg" / "baseline")})
    again_est = timed(_estimate_cmd(demo, work / "overhead" / "estimate", mem),
                      env={"XDG_CACHE_HOME": str(work / "xdg" / "baseline")})
    baseline_cache = work / "xdg" / "baseline" / "nnrun" / "baseline"
    log(f"overhead: nnrun estimate {first_est['wall_s']:.1f} s with an empty user cache (the baseline measured), "
        f"{again_est['wall_s']:.1f} s with it cached")
    for rep in range(reps):
        order = list(variants) if rep % 2 == 0 else list(reversed(variants))   # A B C, C B A, ...
        for name in order:
            pre = fresh(work / "overhead" / f"{name}-{rep}")
            if variants[name] is None:
                r = native(demo, pre, mem, "nnUNetv2_plan_and_preprocess", args, events=ev)
            else:
                # A fresh user cache holding only the image's baseline: nnrun reads every file to the end,
                # as on the first run of a dataset (it skips files it verified before in later runs).
                xdg = work / "xdg" / f"{name}-{rep}"
                if baseline_cache.is_dir():
                    shutil.copytree(baseline_cache, xdg / "nnrun" / "baseline", dirs_exist_ok=True)
                r = nnrun(demo, pre, mem, [*args, *variants[name]], events=ev, env={"XDG_CACHE_HOME": str(xdg)})
            ok = r["rc"] == 0
            log(f"overhead rep {rep + 1}/{reps} {name}: {r['wall_s']:.1f} s rc={r['rc']}")
            if not ok:
                log(r["stderr"][-1500:])
            runs[name].append(r)
    out: dict = {"dataset": demo.name, "mem": mem, "nnunet_args": args, "repetitions": reps,
                 "file_check": "on (nnrun default; --skip-file-check not used)", "runs": {},
                 "baseline": "cached (measured once per image id)",
                 "first_ever_estimate_s": rnd(first_est["wall_s"]), "cached_estimate_s": rnd(again_est["wall_s"])}
    for name, rs in runs.items():
        out["runs"][name] = [summary(r) for r in rs]
        walls = [r["wall_s"] for r in rs if r["rc"] == 0]
        out[f"median_wall_s_{name}"] = rnd(med(walls))
        out[f"median_start_s_{name}"] = rnd(med([(r.get("docker") or {}).get("start_s") for r in rs]))
        out[f"median_teardown_s_{name}"] = rnd(med([(r.get("docker") or {}).get("teardown_s") for r in rs]))
        out[f"median_in_container_s_{name}"] = rnd(med([(r.get("docker") or {}).get("in_container_s") for r in rs]))
    nat = out["median_wall_s_native"]
    for name in ("nnrun_no_plot", "nnrun_plot"):
        v = out[f"median_wall_s_{name}"]
        out[f"ratio_{name}"] = rnd(v / nat) if v and nat else None
        out[f"delta_s_{name}"] = rnd(v - nat) if v and nat else None
        s, sn = out[f"median_start_s_{name}"], out["median_start_s_native"]
        out[f"startup_delta_s_{name}"] = rnd(s - sn) if s is not None and sn is not None else None
        td, tdn = out[f"median_teardown_s_{name}"], out["median_teardown_s_native"]
        out[f"teardown_delta_s_{name}"] = rnd(td - tdn) if td is not None and tdn is not None else None
    out["_reports"] = [r["report"] for r in runs["nnrun_no_plot"] + runs["nnrun_plot"] if r.get("report")]
    out["_pre"] = str(work / "overhead" / "nnrun_plot-0")
    return out


def _latency_one(label: str, run, kmsg: Kmsg, mark_key: str, ev: DockerEvents) -> dict:
    kmsg.read()              # drop anything older
    r = run()
    kills = kmsg.kills(ev.ids(r["container_names"]))
    first = kills[0]["t"] if kills else None
    rep = r.get("report") or {}
    res = {"label": label, "wall_s": r["wall_s"], "rc": r["rc"], "kernel_kills": len(kills),
           "kill_after_start_s": rnd(first - r["t0"]) if first else None,
           "outcome": rep.get("outcome"), "victim": rep.get("victim"), "phase": rep.get("phase")}
    t_mark = r["marks"].get(mark_key)
    res["message_printed"] = t_mark is not None
    res["latency_s"] = rnd(t_mark - first) if (t_mark is not None and first is not None) else None
    res["exit_after_kill_s"] = rnd(r["t_end"] - first) if first is not None else None
    if not kills:
        log(f"latency {label}: no OOM kill in the kernel log (rc={r['rc']}); stderr tail:\n{r['stderr'][-800:]}")
    else:
        log(f"latency {label}: kill +{res['kill_after_start_s']} s, "
            f"message {'+' + str(res['latency_s']) + ' s after the kill' if res['latency_s'] is not None else 'never'}, "
            f"exit +{res['exit_after_kill_s']} s")
    return res


def bench_latency(demo: Path, work: Path, tiny: bool, ev: DockerEvents) -> dict:
    kmsg = Kmsg()
    out: dict = {"clock": clock_check(), "dataset": demo.name}
    if kmsg.error:
        out["error"] = kmsg.error + " (run as root to read the kernel's OOM-kill timestamps)"
        return out
    base = work / "latency"
    # Worker OOM: fingerprint and plans with room, then preprocessing with 4 workers under 1200m.
    pre_w = fresh(base / "worker-nnrun")
    fp = nnrun(demo, pre_w, "4g", ["-c", "3d_fullres", "--no_pp", "-npfp", "1"])
    if fp["rc"] != 0:
        out["error"] = f"fingerprint run failed: {fp['stderr'][-500:]}"
        return out
    pre_wn = base / "worker-native"
    copy_plans(pre_w / demo.name, pre_wn)
    worker_mem, worker_args = "1200m", ["-c", "3d_fullres", "-np", "4", "-npfp", "1"]
    main_mem = "1g" if tiny else "1200m"
    main_args = ["-c", "3d_fullres", "-np", "1", "-npfp", "1"]
    out["worker"] = {"mem": worker_mem, "args": worker_args}
    out["main"] = {"mem": main_mem, "args": main_args}
    out["worker"]["nnrun"] = _latency_one("worker/nnrun", lambda: nnrun(
        demo, pre_w, worker_mem, worker_args, env={"NNRUN_TEST_OOM_VICTIM": "worker"},
        marks={"diag": "nnrun: oom"}), kmsg, "diag", ev)
    out["worker"]["native"] = _latency_one("worker/native", lambda: native(
        demo, pre_wn, worker_mem, "nnUNetv2_plan_and_preprocess", worker_args,
        marks={"diag": DEAD_WORKER}), kmsg, "diag", ev)
    out["main"]["nnrun"] = _latency_one("main/nnrun", lambda: nnrun(
        demo, fresh(base / "main-nnrun"), main_mem, main_args, env={"NNRUN_TEST_OOM_VICTIM": "main"},
        marks={"diag": "nnrun: oom"}), kmsg, "diag", ev)
    out["main"]["native"] = _latency_one("main/native", lambda: native(
        demo, fresh(base / "main-native"), main_mem, "nnUNetv2_plan_and_preprocess", main_args,
        marks={"diag": DEAD_WORKER}), kmsg, "diag", ev)
    kmsg.close()
    out["note"] = ("latency = time the line appeared on the pipe (CLOCK_MONOTONIC) minus the first "
                   "'Killed process' record's stamp in /dev/kmsg. nnrun: first 'nnrun: oom' line on stderr "
                   "(NNRUN_TEST_OOM_VICTIM makes the victim certain); native: first '6 feet under' on its "
                   "output, or never (a main-process kill prints nothing; the victim of native runs is the "
                   "kernel's choice).")
    return out


NATIVE_SWEEP_ENTRY = "nnUNetv2_plan_and_preprocess"


def _sweep(mixed: Path, plans_src: Path, base: Path, mem: str, max_np: int, ev: DockerEvents,
           limit_s: float, reps: int = 1, np_auto: bool = True) -> dict:
    """Interleaved under one cap: native -np 1, nnrun default, native -np 2, nnrun -np auto, native -np 3 ...

    Native runs the command nnrun wraps (nnUNetv2_plan_and_preprocess, fingerprint reused, plans made
    again), so both sides do the same work.  ``reps`` rounds, each in the same order; medians.
    """
    plan = []
    extra = [("nnrun_default", []), ("nnrun_np_auto", ["-np", "auto"])][:2 if np_auto else 1]
    for n in range(1, max_np + 1):
        plan.append((f"native_np{n}", n))
        if extra:
            plan.append(extra.pop(0))
    plan.extend(extra)
    rounds: dict = {name: [] for name, _ in plan}
    kmsg = Kmsg()
    for rep in range(reps):
        for name, spec in plan:
            if rep and isinstance(spec, int) and not rounds[name][0]["ok"]:
                continue        # a native pool that failed (OOM) is not run again: it is not a candidate
            pre = base / f"{name}-{rep}"
            copy_plans(plans_src, pre)
            kmsg.read()
            if isinstance(spec, int):
                r = native(mixed, pre, mem, NATIVE_SWEEP_ENTRY, ["-c", "3d_fullres", "-np", str(spec)],
                           marks={"dead": DEAD_WORKER}, events=ev)
            else:
                r = nnrun(mixed, pre, mem, ["-c", "3d_fullres", *spec], events=ev)
            kills = kmsg.kills(ev.ids(r["container_names"]))
            s = summary(r)
            s["kernel_oom_kills"] = len(kills)
            s["ok"] = r["rc"] == 0 and not kills if isinstance(spec, int) else (
                (r.get("report") or {}).get("outcome") == "ok")
            if kills:
                s["first_kill_after_start_s"] = rnd(kills[0]["t"] - r["t0"])
            if "dead" in r["marks"]:
                s["six_feet_under_after_start_s"] = rnd(r["marks"]["dead"] - r["t0"])
            if not isinstance(spec, int):
                rep_json = r.get("report") or {}
                s["first_try_oom_free"] = bool(rep_json) and rep_json.get("outcome") == "ok" \
                    and len(rep_json.get("attempts") or []) <= 1 and not kills
                s["_report"] = rep_json
            rounds[name].append(s)
            log(f"throughput {mem} round {rep + 1}/{reps} {name}: {r['wall_s']:.1f} s rc={r['rc']} "
                f"kernel OOM kills={len(kills)}")
    kmsg.close()
    runs: dict = {}
    for name, rs in rounds.items():
        first = dict(rs[0])
        first["ok"] = all(x["ok"] for x in rs)
        first["kernel_oom_kills"] = sum(x["kernel_oom_kills"] for x in rs)
        if "first_try_oom_free" in first:
            first["first_try_oom_free"] = all(x.get("first_try_oom_free") for x in rs)
        first["walls_s"] = [x["wall_s"] for x in rs]
        first["wall_s"] = rnd(med([x["wall_s"] for x in rs]))
        runs[name] = first
    out: dict = {"mem": mem, "rounds": reps, "native_command": NATIVE_SWEEP_ENTRY}
    out["runs"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in runs.items()}
    ok_native = {k: v["wall_s"] for k, v in runs.items() if k.startswith("native") and v["ok"]}
    best = min(ok_native, key=ok_native.get) if ok_native else None
    out["best_fixed_np"] = best
    out["best_fixed_s"] = ok_native.get(best) if best else None
    for name in ("nnrun_default", "nnrun_np_auto"):
        r = runs.get(name)
        if r and r["ok"] and best:
            out[f"speedup_{name}"] = rnd(ok_native[best] / r["wall_s"])
            out[f"limit_over_{name}"] = rnd(limit_s / r["wall_s"])
        else:
            out[f"speedup_{name}"] = None
            out[f"limit_over_{name}"] = None
    out["_runs"] = {k: dict(v, _report=rounds[k][-1].get("_report")) for k, v in runs.items()}
    out["_all_reports"] = [x.get("_report") for rs in rounds.values() for x in rs if x.get("_report")]
    return out


def cap_limit(cases: list[dict], peaks: dict, cap_b: int, main_b: int, shared_b: int, cores: int) -> dict:
    """A lower bound on the case work of any schedule that stays under the cap, from measured numbers.

    Two cases conflict when their measured worker peaks side by side (each less the shared library pages,
    which the cgroup charges once) and the main process's baseline exceed the cap: optimistic for
    running together (the main process grows and page cache counts too), so the bound stays a lower
    bound.  Cases that pairwise conflict run one after the other: the heaviest such set (a maximum-weight
    clique of the conflict graph, exact), the longest case and the total over the cores each bound the
    time from below.
    """
    dur = {c["case"]: c["duration_s"] or 0.0 for c in cases}
    names = sorted(dur)
    conflict = {a: {b for b in names if b != a and main_b + (peaks[a] - shared_b) + (peaks[b] - shared_b) > cap_b}
                for a in names}
    best: list = [0.0, []]

    def grow(clique: list, weight: float, candidates: list) -> None:
        if weight > best[0]:
            best[0], best[1] = weight, list(clique)
        for i, c in enumerate(candidates):
            if weight + sum(dur[x] for x in candidates[i:]) <= best[0]:
                return
            grow(clique + [c], weight + dur[c], [x for x in candidates[i + 1:] if x in conflict[c]])

    grow([], 0.0, sorted(names, key=lambda c: -dur[c]))
    total = sum(dur.values())
    work = max(best[0], max(dur.values(), default=0.0), total / cores)
    return {"serial": sorted(best[1]), "serial_s": rnd(best[0]), "total_s": rnd(total), "work_s": rnd(work),
            "rule": "max(heaviest set of pairwise-conflicting cases, longest case, total / cores); two cases "
                    "conflict when main + both measured peaks less the shared pages exceed the cap"}


def bench_throughput(mixed: Path, large_at: list[int], work: Path, max_np: int, ev: DockerEvents,
                     tiny: bool, reps: int = 1) -> dict:
    base = work / "throughput"
    out: dict = {"dataset": mixed.name, "large_cases": [f"case{i:03d}" for i in large_at]}
    cores = os.cpu_count() or 1
    # 1. Reference: nnrun -np 1 with room: per-case peaks and durations, fingerprint and plans.
    ref_pre = fresh(base / "reference")
    ref = nnrun(mixed, ref_pre, "12g", ["-c", "3d_fullres", "-np", "1", "-npfp", "2", "--no-plot"], events=ev)
    log(f"throughput reference (nnrun -np 1, 12g): {ref['wall_s']:.1f} s rc={ref['rc']}")
    if ref["rc"] != 0 or not ref.get("report"):
        out["error"] = f"reference run failed: {ref['stderr'][-800:]}"
        return out
    cases = [c for c in ref["report"].get("cases") or [] if c.get("phase") == "preprocessing"
             and c.get("status") == "done"]
    peaks = {c["case"]: c["peak_rss_bytes"] for c in cases}
    large_ids = set(out["large_cases"])
    large_peak = max(v for k, v in peaks.items() if k in large_ids)
    small_peak = med([v for k, v in peaks.items() if k not in large_ids])
    est0 = estimate(mixed, ref_pre, "12g") or {}
    base0 = est0.get("baseline") or {}
    main_b = base0.get("main_bytes") or 420 * MiB
    shared_b = base0.get("shared_bytes") or 0
    cap_b = int(large_peak + small_peak / 2 + main_b)
    if tiny:
        cap_b = max(cap_b, int(1.6 * GiB))   # tiny cases: everything is baseline; keep the smoke run ok
    mem = oom_mem_fmt(cap_b)
    cpu_s = sum(c["duration_s"] or 0 for c in cases)
    out.update({"reference": summary(ref), "measured_peak_large_bytes": large_peak,
                "measured_peak_small_median_bytes": small_peak, "main_baseline_bytes": main_b,
                "shared_bytes": shared_b, "cap": mem, "cap_bytes": cap_b,
                "cap_rule": "large case's measured peak + half a small case's median peak + main-process baseline",
                "per_case_s": {c["case"]: c["duration_s"] for c in cases},
                "per_case_cpu_s_sum": rnd(cpu_s), "cores": cores,
                "physical_limit_s": rnd(cpu_s / cores),
                "physical_limit_note": "sum of per-case durations of an nnrun -np 1 run (one worker, "
                                       "single-threaded, so wall ~ CPU time per case) / cores; preprocessing only",
                "baseline_probe": {k: base0.get(k) for k in ("image_id", "main_bytes", "worker_bytes",
                                                              "shared_bytes")}})
    est = estimate(mixed, ref_pre, mem) or {}
    out["estimate_at_cap"] = {"max_np": est.get("max_np"), "too_large": est.get("too_large")}
    log(f"throughput cap {mem}: large peak {large_peak / GiB:.2f} GiB, small {small_peak / GiB:.2f} GiB, "
        f"main {main_b / GiB:.2f} GiB; estimate max_np {est.get('max_np')}")
    plans_src = ref_pre / mixed.name
    sweeps = {"rule_cap": _sweep(mixed, plans_src, base / "rule", mem, max_np, ev, out["physical_limit_s"], reps)}
    caps = {"rule_cap": cap_b}
    # `nnrun estimate` exits 2 when it would refuse the cap (a case predicted not to fit even alone).
    out["cap_refused_by_estimate"] = sweeps["rule_cap"]["runs"].get("nnrun_default", {}).get("outcome") == "bad_input"
    if out["cap_refused_by_estimate"]:
        # nnrun refuses this cap up front: sweep again at the smallest cap it accepts.
        fit_b = cap_b
        while fit_b < 4 * cap_b:
            fit_b += 32 * MiB
            e = estimate(mixed, ref_pre, oom_mem_fmt(fit_b)) or {}
            if e.get("_rc") == 0:
                break
        out["fit_cap"], out["fit_cap_bytes"] = oom_mem_fmt(fit_b), fit_b
        log(f"throughput: nnrun refuses {mem}; sweeping again at {oom_mem_fmt(fit_b)}, the smallest it accepts")
        sweeps["fit_cap"] = _sweep(mixed, plans_src, base / "fit", oom_mem_fmt(fit_b), max_np, ev,
                                   out["physical_limit_s"], reps)
        caps["fit_cap"] = fit_b
    head_name = "fit_cap" if "fit_cap" in sweeps else "rule_cap"
    # The ceiling under the cap: native's own fixed costs (its -np 1 wall time less the case work) plus the
    # shortest case schedule the cap allows (cap_limit).
    for name, sw in sweeps.items():
        # Per-case durations: the median over the single-worker nnrun runs (the reference and, interleaved
        # with native -np 1 under the same conditions, any -np auto run that chose one worker).
        solo = [ref["report"]] + [r for r in sw["_all_reports"] if (r.get("workers") or {}).get("schedule") == "fixed"
                                  and ((r.get("workers") or {}).get("np") or {}).get("3d_fullres") == 1]
        durations: dict = {}
        for r in solo:
            for c in r.get("cases") or []:
                if c.get("phase") == "preprocessing" and c.get("status") == "done" and c.get("duration_s"):
                    durations.setdefault(c["case"], []).append(c["duration_s"])
        sw_cases = [{"case": c, "duration_s": med(ds)} for c, ds in durations.items()]
        lim = cap_limit(sw_cases, peaks, caps[name], main_b, shared_b, cores)
        lim["duration_runs"] = len(solo)
        np1 = sw["runs"].get("native_np1") or {}
        if np1.get("ok"):
            fixed_s = np1["wall_s"] - sum(c["duration_s"] for c in sw_cases)
            lim["native_fixed_s"] = rnd(fixed_s)
            lim["limit_s"] = rnd(fixed_s + lim["work_s"])
            if sw.get("best_fixed_s"):
                lim["max_speedup"] = rnd(sw["best_fixed_s"] / lim["limit_s"])
            for run in ("nnrun_default", "nnrun_np_auto"):
                r = sw["runs"].get(run) or {}
                lim[f"limit_over_{run}"] = rnd(lim["limit_s"] / r["wall_s"]) if r.get("ok") else None
        sw["cap_limit"] = lim
    out["sweeps"] = {k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")} for k, v in sweeps.items()}
    # Headline: the sweep where nnrun ran (the fit cap when the rule cap was refused).
    for k in ("runs", "best_fixed_np", "best_fixed_s", "speedup_nnrun_default", "speedup_nnrun_np_auto",
              "limit_over_nnrun_default", "limit_over_nnrun_np_auto", "mem", "cap_limit", "rounds"):
        out[k] = out["sweeps"][head_name].get(k)
    out["_reports"] = [ref["report"]] + [x for sw in sweeps.values() for x in sw["_all_reports"]]
    out["_pre"] = str(ref_pre)
    out["note"] = ("T = wall time of the whole command (median of the rounds). nnrun's pre-flight file check "
                   "reads only files it has not verified before: the reference run verified them, so the sweep's "
                   "nnrun runs skip it (0.7 s on this dataset on a quiet machine), as a re-run on the same data would. "
                   "Both sides run "
                   f"{NATIVE_SWEEP_ENTRY} -c 3d_fullres on a copy of the reference's dataset.json, fingerprint "
                   "and plans (the fingerprint is reused, the plans are made again), nnrun with its defaults "
                   "(memory.png included). nnrun's estimate uses the worker baseline measured once per image "
                   "and cached (the benchmark's own `nnrun estimate` calls measured it before the sweep).")
    return out


ADVICE_MAX_RUNS = 4


def _follow(ds: Path, pre: Path, mem: str, args: list[str]) -> dict:
    """Run, then only ever the command in the report's recommendation_argv, until ok (at most
    ADVICE_MAX_RUNS runs): how many runs a user who follows nnrun's advice needs."""
    runs, argv = [], None
    for _ in range(ADVICE_MAX_RUNS):
        if argv is None:
            r = nnrun(ds, pre, mem, ["--no-plot", *args])
        else:
            cmd = [sys.executable, "-m", "runner.cli", *argv[1:], "--json"]
            r = timed(cmd)
            try:
                r["report"] = json.loads(r["stdout"].strip().splitlines()[-1])
            except (ValueError, IndexError):
                r["report"] = None
        rep = r.get("report") or {}
        runs.append({"outcome": rep.get("outcome"), "wall_s": rnd(r.get("wall_s"), 1),
                     "mem": (argv[argv.index("--mem") + 1] if argv and "--mem" in argv else mem)})
        if rep.get("outcome") == "ok":
            break
        argv = rep.get("recommendation_argv")
        if not argv:
            break
    ok = bool(runs) and runs[-1]["outcome"] == "ok"
    return {"start": f"--mem {mem} {' '.join(args) or '(nnrun chooses)'}", "runs": runs,
            "runs_to_ok": len(runs) if ok else None}


def bench_advice(demo: Path, mixed: Path, work: Path, tiny: bool) -> dict:
    """Runs to ok when following the advice, from tight caps with pinned and with automatic workers."""
    starts = [(demo, "250m", ["-c", "3d_fullres"]),
              (demo, "1200m", ["-c", "3d_fullres", "-np", "1", "-npfp", "1"]),
              (mixed, "1g" if tiny else "1500m", ["-c", "3d_fullres", "-np", "2", "-npfp", "2"]),
              (mixed, "900m", ["-c", "3d_fullres"])]
    if tiny:    # the smoke test: one start runs _follow end to end (tests/integration/test_advice_real.py has 8)
        starts = starts[:1]
    rows = []
    for n, (ds, mem, args) in enumerate(starts):
        row = _follow(ds, fresh(work / "advice" / f"start{n}"), mem, args)
        row["dataset"] = ds.name
        log(f"advice {ds.name} {row['start']}: " + " -> ".join(f"{r['outcome']} ({r['mem']})" for r in row["runs"]))
        rows.append(row)
    counts = [r["runs_to_ok"] for r in rows]
    done = [c for c in counts if c is not None]
    return {"starts": rows, "reached_ok": len(done), "of": len(rows),
            "mean_runs_to_ok": rnd(sum(done) / len(done), 2) if done else None,
            "max_runs_to_ok": max(done) if done and len(done) == len(counts) else None}


def accuracy(pairs: list[tuple[Path, Path, dict]]) -> dict:
    """Estimate (header-only, plans present) vs the worker's measured per-case VmHWM."""
    rows = []
    for ds, pre, report in pairs:
        est = estimate(ds, pre, "8g")
        if not est or not report:
            continue
        pred = {(p["case"], p["phase"]): p["predicted_peak_bytes"] for p in est.get("per_case", [])}
        for c in report.get("cases") or []:
            key = (c["case"], c.get("phase"))
            if c.get("status") == "done" and c.get("peak_rss_bytes") and key in pred:
                rows.append({"dataset": ds.name, "case": c["case"], "phase": c["phase"],
                             "predicted_bytes": pred[key], "measured_bytes": c["peak_rss_bytes"],
                             "abs_error": round(abs(pred[key] - c["peak_rss_bytes"]) / c["peak_rss_bytes"], 4)})
    out: dict = {"cases": rows}
    for phase in ("preprocessing", "fingerprint"):
        errs = [r["abs_error"] for r in rows if r["phase"] == phase]
        out[phase] = {"n": len(errs), "median_abs_error": rnd(med(errs), 4),
                      "max_abs_error": rnd(max(errs), 4) if errs else None}
    return out


def monitor_cost(reports: list[dict]) -> dict:
    vals = [(r.get("monitor") or {}) for r in reports if r]
    pct = [v.get("cpu_percent_of_one_core") for v in vals if v.get("cpu_percent_of_one_core") is not None]
    return {"runs": len(pct), "interval_s": (vals[0].get("interval_s") if vals else None),
            "median_cpu_percent_of_one_core": rnd(med(pct)), "max_cpu_percent_of_one_core": rnd(max(pct)) if pct else None,
            "note": "host-side sampler (runner/run/monitor.py), its own CPU time over its wall time, from every "
                    "nnrun report of this benchmark; the in-container supervisor's 50 ms sampling is part of "
                    "the overhead section"}


# --------------------------------------------------------------------------- machine, table

def machine() -> dict:
    mem_kb = next((int(ln.split()[1]) for ln in Path("/proc/meminfo").read_text().splitlines()
                   if ln.startswith("MemTotal:")), 0)
    info = subprocess.run(["docker", "info", "--format", "{{json .}}"], capture_output=True, text=True).stdout
    try:
        d = json.loads(info)
    except ValueError:
        d = {}
    return {"date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
            "cores": int(subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip() or 0),
            "mem_total_bytes": mem_kb * 1024, "mem_total_gib": round(mem_kb / 2 ** 20, 1),
            "kernel": platform.release(), "cgroup_version": d.get("CgroupVersion"),
            "cgroup_driver": d.get("CgroupDriver"), "docker": d.get("ServerVersion"), "image": IMAGE,
            "nnrun": __version__}


def fmt(v, unit="", nd=2):
    if v is None:
        return "n/a"
    if isinstance(v, float):
        return f"{v:.{nd}f}{unit}"
    return f"{v}{unit}"


def table(res: dict) -> str:
    m, o, lat, t, a, c = (res.get(k) or {} for k in ("machine", "overhead", "latency", "throughput", "accuracy",
                                                  "monitor"))
    adv = res.get("advice") or {}
    mode = "quick" + (" tiny" if res.get("tiny") else "") if res.get("quick") else "full"
    lines = [f"Machine: {m.get('cores')} cores, {m.get('mem_total_gib')} GiB, cgroup v{m.get('cgroup_version')} "
             f"({m.get('cgroup_driver')}), Docker {m.get('docker')}, kernel {m.get('kernel')}; {m.get('date')}; "
             f"mode: {mode}; benchmark took {fmt(res.get('duration_s'), ' s', 0)}", "",
             "| # | measure | value | target | met |", "|---|---|---|---|---|"]

    skip = {n for n, sec in ((1, o), (2, lat), (3, t), (7, adv)) if not sec}   # sections not run (--only)

    def row(n, what, val, target, met):
        if n in skip:
            return
        lines.append(f"| {n} | {what} | {val} | {target} | {'n/a' if met is None else ('yes' if met else 'NO')} |")

    def lt(v, x):
        return None if v is None else v <= x

    reps = o.get("repetitions")
    row(1, f"overhead: median wall nnrun / plain docker run, --no-plot ({reps} reps, demo, -np 2 -npfp 2)",
        f"{fmt(o.get('ratio_nnrun_no_plot'), '', 3)} ({fmt(o.get('median_wall_s_nnrun_no_plot'), ' s', 1)} vs "
        f"{fmt(o.get('median_wall_s_native'), ' s', 1)})", "≤ 1.03", lt(o.get("ratio_nnrun_no_plot"), 1.03))
    row(1, "overhead: same, with memory.png", f"{fmt(o.get('ratio_nnrun_plot'), '', 3)} "
        f"({fmt(o.get('median_wall_s_nnrun_plot'), ' s', 1)})", "≤ 1.03", lt(o.get("ratio_nnrun_plot"), 1.03))
    row(1, "start-up delta (launch → container start, nnrun − docker run), --no-plot / plot",
        f"{fmt(o.get('startup_delta_s_nnrun_no_plot'), ' s')} / {fmt(o.get('startup_delta_s_nnrun_plot'), ' s')}",
        "—", None)
    row(1, "teardown delta (container die → command exit), --no-plot / plot",
        f"{fmt(o.get('teardown_delta_s_nnrun_no_plot'), ' s')} / {fmt(o.get('teardown_delta_s_nnrun_plot'), ' s')}",
        "—", None)
    if o.get("first_ever_estimate_s") is not None:
        row(1, "once per image id (not in the rows above): `nnrun estimate` with an empty user cache "
            "(measures the per-worker baseline in a throw-away container) / with it cached",
            f"{fmt(o.get('first_ever_estimate_s'), ' s', 1)} / {fmt(o.get('cached_estimate_s'), ' s', 1)}", "—", None)
    for victim in ("worker", "main"):
        v = lat.get(victim) or {}
        nn, nat = v.get("nnrun") or {}, v.get("native") or {}
        row(2, f"detection latency, {victim} OOM ({v.get('mem')}): kernel kill → `nnrun: oom` printed",
            fmt(nn.get("latency_s"), " s"), "< 1 s", None if nn.get("latency_s") is None else nn["latency_s"] < 1)
        nat_val = (f"'6 feet under' after {fmt(nat.get('latency_s'), ' s')}" if nat.get("message_printed") else
                   f"never (exit {nat.get('rc')} after {fmt(nat.get('exit_after_kill_s'), ' s')})"
                   if nat.get("kernel_kills") else f"no OOM kill (exit {nat.get('rc')})")
        row(2, "native nnU-Net, same command and cap (victim: the kernel's pick): reports", nat_val, "—", None)
    runs = t.get("runs") or {}
    for sw_name, sw in (t.get("sweeps") or {}).items():
        for name, r in (sw.get("runs") or {}).items():
            extra = ""
            if r.get("first_kill_after_start_s") is not None:
                extra = f", first OOM kill +{r['first_kill_after_start_s']} s"
            if r.get("six_feet_under_after_start_s") is not None:
                extra += f", '6 feet under' +{r['six_feet_under_after_start_s']} s"
            if r.get("outcome") and r.get("outcome") != "ok":
                extra += f", nnrun outcome {r['outcome']}"
            if r.get("workers"):
                extra += f", workers {json.dumps(r['workers'])}"
            walls = r.get("walls_s") or []
            each = f" [{' / '.join(f'{w:.1f}' for w in walls)}]" if len(walls) > 1 else ""
            row(3, f"throughput {t.get('dataset')} cap {sw.get('mem')} ({sw_name.replace('_', ' ')}): {name}",
                f"{fmt(r.get('wall_s'), ' s', 1)}{each} ({'ok' if r.get('ok') else 'failed'}; kernel OOM kills "
                f"{r.get('kernel_oom_kills')}{extra})", "—", None)
    row(3, "physical limit Σ(per-case CPU)/cores", fmt(t.get("physical_limit_s"), " s", 1), "—", None)
    lim = t.get("cap_limit") or {}
    row(3, f"[cap {t.get('mem')}] ceiling under the cap: native's fixed costs + max(cases that cannot share the "
        f"cap, one after the other ({', '.join(lim.get('serial') or []) or 'none'}: "
        f"{fmt(lim.get('serial_s'), ' s', 1)}), all case work / {t.get('cores')} cores "
        f"({fmt(lim.get('total_s'), ' s', 1)} / {t.get('cores')}))",
        f"{fmt(lim.get('limit_s'), ' s', 1)} (fixed {fmt(lim.get('native_fixed_s'), ' s', 1)}); "
        f"best possible speedup T({t.get('best_fixed_np')}) / ceiling = {fmt(lim.get('max_speedup'))}", "—", None)
    d_auto = runs.get("nnrun_np_auto") or {}
    row(3, f"[cap {t.get('mem')}] speedup -np auto = T({t.get('best_fixed_np')}) / T(nnrun -np auto); OOM-free first try",
        f"{fmt(t.get('speedup_nnrun_np_auto'))}; {d_auto.get('first_try_oom_free')}", "≥ 1.0, zero OOMs",
        None if t.get("speedup_nnrun_np_auto") is None else
        t["speedup_nnrun_np_auto"] >= 1.0 and bool(d_auto.get("first_try_oom_free")))
    d_def = runs.get("nnrun_default") or {}
    row(3, f"[cap {t.get('mem')}] speedup memory schedule = T({t.get('best_fixed_np')}) / T(nnrun default); OOM-free first try",
        f"{fmt(t.get('speedup_nnrun_default'))}; {d_def.get('first_try_oom_free')}", "≥ 1.0, zero OOMs",
        None if t.get("speedup_nnrun_default") is None else
        t["speedup_nnrun_default"] >= 1.0 and bool(d_def.get("first_try_oom_free")))
    row(3, "T(ceiling under the cap) / T(nnrun default)  (1.0 = the ceiling reached; above 1: nnrun's own fixed "
        "costs are below native's, e.g. its warm first worker)", fmt(lim.get("limit_over_nnrun_default")), "≥ 0.95",
        None if lim.get("limit_over_nnrun_default") is None else lim["limit_over_nnrun_default"] >= 0.95)
    row(3, "T(physical limit Σ/cores) / T(nnrun default)", fmt(t.get("limit_over_nnrun_default")), "—", None)
    for phase in ("preprocessing", "fingerprint"):
        p = a.get(phase) or {}
        row(4, f"estimate error, per-case peak, {phase} (n={p.get('n')}): median / max",
            f"{fmt(100 * p['median_abs_error'] if p.get('median_abs_error') is not None else None, ' %', 1)} / "
            f"{fmt(100 * p['max_abs_error'] if p.get('max_abs_error') is not None else None, ' %', 1)}", "—", None)
    row(5, f"monitor cost at {fmt(1 / c['interval_s'] if c.get('interval_s') else None, ' Hz', 0)} "
        f"(median / max over {c.get('runs')} runs)",
        f"{fmt(c.get('median_cpu_percent_of_one_core'), ' %')} / {fmt(c.get('max_cpu_percent_of_one_core'), ' %')} "
        f"of one core", "—", None)
    row(7, f"runs to ok when following the advice (recommendation_argv), over {adv.get('of')} tight starting "
        f"points: mean / max (reached ok: {adv.get('reached_ok')} of {adv.get('of')})",
        f"{fmt(adv.get('mean_runs_to_ok'))} / {adv.get('max_runs_to_ok')}", "max 2 (one more run)",
        None if adv.get("max_runs_to_ok") is None and not adv else (adv.get("max_runs_to_ok") or 99) <= 2)
    return "\n".join(lines) + "\n"


DOC_HEAD = """# Benchmarks

Produced by `python bench/run.py` (see `bench/README.md` for what each number means and how it is
measured). Each full run replaces this file; the raw numbers are in `bench/results/<date>.json`.
Comparisons were interleaved in one invocation; ratios are of medians.

"""

DOC_NOTES = """
## How to read it

- Every T is the wall time of the whole command as a user sees it: nnrun's pre-flight, estimate,
  container, report and `memory.png` included (the plot is drawn while the container is removed and
  is on disk when the command returns).  Caches: the overhead runs start with a user cache that
  holds only the image's per-worker baseline (every file read to the end, as on a first run of a
  dataset; the baseline's one-time measurement is timed in its own row).  In the throughput sweep nnrun skips re-reading
  the files its reference run verified (~0.7 s here), and the per-worker baseline (~5 s, once per
  image) was measured by the benchmark's own `nnrun estimate` calls: a first-ever run pays both.
- Throughput: native and nnrun run the same nnU-Net command (`nnUNetv2_plan_and_preprocess`, the
  fingerprint reused, the plans made again) on copies of the same fingerprint and plans.  nnrun's
  own gains come from (a) memory-aware admission: the large case that needs the cap alone runs on
  one worker, the others side by side on two; (b) warm workers: with the fingerprint present, the
  first worker starts with nnU-Net's main process instead of after it (-np auto gains only this).
- The ceiling row bounds what any scheduler can reach at this cap: cases that cannot share the cap
  run one after the other.  On this dataset the two large cases are ~80 % of the work and cannot
  share the cap, so the 1.3x target for the memory schedule is above the ceiling.
- OOM kills are counted from the kernel log for the run's own container only.
""" + (Path(__file__).resolve().parent / "estimate_error.md").read_text()

QUICK_SECTIONS = ("overhead", "latency", "throughput", "advice")
FULL_SECTIONS = (*QUICK_SECTIONS, "scale", "capsweep")


def extra_sections(res: dict, docs_dir: Path) -> str:
    """The tables of the scale and capsweep sections of this run, with the cap sweep's plot beside the docs."""
    out = ""
    if res.get("capsweep"):
        from bench import capsweep
        sub = {"machine": res["machine"], "duration_s": res["duration_s"], "datasets": res["capsweep"]}
        capsweep.plot(sub, docs_dir / "capsweep.png")
        out += ("\n## Cap sweep and user journey (this run)\n\nPlot: [capsweep.png](capsweep.png). The sweep "
                "columns reuse the reference's fingerprint and plans; the journey and nnrun's first try start from "
                "an empty folder.\n\n" + capsweep.table(sub)
                + (Path(__file__).resolve().parent / "capsweep.md").read_text())
    if res.get("scale"):
        from bench import scale
        out += ("\n## Costs against the number and size of cases (this run)\n\n"
                + scale.table({"machine": res["machine"], "duration_s": res["duration_s"], **res["scale"]}))
    return out


# --------------------------------------------------------------------------- main

def write_results(res: dict, render, out: Path, suffix: str, started: float) -> tuple[str, Path]:
    """Duration, the rendered table, and ``out/<stamp><suffix>.json`` (bench/capsweep.py and bench/scale.py)."""
    res["duration_s"] = round(time.time() - started, 1)
    res["table_markdown"] = tab = render(res)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{_dt.datetime.now().strftime('%Y-%m-%dT%H%M%S')}{suffix}.json"
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    return tab, path


def compile_runner() -> None:
    """Byte-compile the checkout's package, as `pip install` does for users: the benchmark runs it
    from source, and with PYTHONDONTWRITEBYTECODE set (CI machines) every nnrun command measured
    would otherwise compile its modules again (0.15 s on `nnrun --version`)."""
    import compileall
    compileall.compile_dir(str(REPO / "runner"), quiet=2)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer repetitions and a smaller sweep (a few minutes)")
    ap.add_argument("--tiny", action="store_true", help="tiny synthetic datasets (smoke test; numbers meaningless)")
    ap.add_argument("--out", type=Path, default=REPO / "bench" / "results", help="folder for <date>.json")
    ap.add_argument("--work", type=Path, default=None, help="scratch folder for datasets and outputs")
    ap.add_argument("--reps", type=int, default=None, help="overhead repetitions (default 5; quick 2; tiny 1)")
    ap.add_argument("--max-np", type=int, default=None, help="sweep native -np 1..N (default cores+1; quick 2)")
    ap.add_argument("--tp-reps", type=int, default=None,
                    help="rounds of the throughput sweep, medians (default 3; quick and tiny 1)")
    ap.add_argument("--docs", type=Path, default=None,
                    help="markdown file to write the table to (default docs/benchmarks.md for a full run)")
    ap.add_argument("--only", default=None,
                    help="comma-separated sections to run (accuracy and monitor come from their runs); default: "
                         f"{','.join(FULL_SECTIONS)} for a full run, {','.join(QUICK_SECTIONS)} with --quick/--tiny")
    ap.add_argument("--caps", type=int, default=4, help="capsweep: caps per dataset (default 4)")
    ap.add_argument("--head-repeat", type=int, default=2,
                    help="capsweep: the six head phantom specs this many times (default 2: 12 cases)")
    ap.add_argument("--keep-work", action="store_true", help="keep the scratch folder")
    a = ap.parse_args(argv)
    compile_runner()
    started = time.time()
    cores = os.cpu_count() or 1
    reps = a.reps or (1 if a.tiny else 2 if a.quick else 5)
    max_np = a.max_np or (2 if a.quick else cores + 1)
    tp_reps = a.tp_reps or (1 if a.quick or a.tiny else 3)
    work = a.work or Path(f"/tmp/nnrun-bench-{uuid.uuid4().hex[:8]}")
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    only = set(a.only.split(",") if a.only else QUICK_SECTIONS if a.quick or a.tiny else FULL_SECTIONS)
    res: dict = {"schema": 1, "quick": a.quick, "tiny": a.tiny, "machine": machine(), "argv": sys.argv[1:]}
    ev = DockerEvents()
    try:
        raw = work / "raw"
        raw.mkdir(exist_ok=True)
        os.chmod(raw, 0o755)
        demo, mixed, large_at = datasets(raw, a.tiny)
        res["datasets"] = {"demo": demo.name, "mixed": mixed.name, "mixed_large_positions": large_at}
        reports: list[dict] = []
        acc_pairs = []
        if "overhead" in only:
            log(f"overhead: {reps} repetitions x (plain docker run, nnrun --no-plot, nnrun)")
            res["overhead"] = bench_overhead(demo, work, reps, ev)
            reports += res["overhead"].pop("_reports")
            if reports:
                acc_pairs.append((demo, Path(res["overhead"]["_pre"]), reports[-1]))
            res["overhead"].pop("_pre")
        if "latency" in only:
            log("detection latency")
            res["latency"] = bench_latency(demo, work, a.tiny, ev)
        if "throughput" in only:
            log(f"throughput: mixed sizes, native -np 1..{max_np}, nnrun default and -np auto, {tp_reps} round(s)")
            res["throughput"] = bench_throughput(mixed, large_at, work, max_np, ev, a.tiny, tp_reps)
            trs = res["throughput"].pop("_reports", [])
            reports += trs
            if trs:
                acc_pairs.append((mixed, Path(res["throughput"]["_pre"]), trs[0]))
            res["throughput"].pop("_pre", None)
        if "advice" in only:
            log("advice: runs to ok following recommendation_argv from tight caps")
            res["advice"] = bench_advice(demo, mixed, work, a.tiny)
        res["accuracy"] = accuracy(acc_pairs)
        res["monitor"] = monitor_cost(reports)
        if "scale" in only:     # bench/scale.py's sections: pre-flight vs gzip -t, overhead at 10-500 cases
            from bench import scale
            log("scale: pre-flight check vs gzip -t; overhead at 10, 100, 500 small and 10 large cases")
            res["scale"] = scale.run_scale(work / "scale", {"preflight", "overhead"}, 3,
                                           ["small10", "small100", "small500", "large10"], ev)
        if "capsweep" in only:  # bench/capsweep.py: cap sweep on both datasets, the journey on the heads
            from bench import capsweep
            log(f"capsweep: heads ({6 * a.head_repeat} cases) and mixed, {a.caps} caps each, journey on heads")
            res["capsweep"] = capsweep.run_capsweep(work / "capsweep", ["heads", "mixed"], a.caps, None, 1,
                                                    a.head_repeat, ["heads"], ev)
    finally:
        ev.close()
        if not a.keep_work:
            shutil.rmtree(work, ignore_errors=True)
    res["duration_s"] = round(time.time() - started, 1)
    tab = table(res)
    res["table_markdown"] = tab
    a.out.mkdir(parents=True, exist_ok=True)
    stamp = _dt.datetime.now().strftime("%Y-%m-%dT%H%M%S")
    path = a.out / f"{stamp}{'-quick' if a.quick else ''}.json"
    path.write_text(json.dumps(res, indent=1, default=str) + "\n")
    docs = a.docs if a.docs else (None if a.quick else REPO / "docs" / "benchmarks.md")
    if docs:
        docs.parent.mkdir(parents=True, exist_ok=True)
        docs.write_text(DOC_HEAD + tab + f"\nRaw results: `{os.path.relpath(path, REPO)}`.\n" + DOC_NOTES
                        + extra_sections(res, docs.parent))
    print(tab)
    print(f"results: {path}" + (f"; table: {docs}" if docs else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
