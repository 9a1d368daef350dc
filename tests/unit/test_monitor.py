"""The host-side sampler against cgroup fixture trees (v1 and v2 layouts)."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from runner.run.monitor import CgroupMonitor

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "cgroup"


def _container(tree: str) -> tuple[Path, str, Path]:
    """(root, container id, cgroup dir) of the first container folder in a fixture tree."""
    root = FIXTURES / tree
    for path in sorted(root.rglob("*")):
        name = path.name.removeprefix("docker-").removeprefix("libpod-").removesuffix(".scope")
        if path.is_dir() and len(name) == 64:
            return root, name, path
    raise AssertionError(f"no container folder in {tree}")


@pytest.mark.parametrize("tree", ["v1_docker_cgroupfs", "v1_docker_systemd", "v2_systemd", "v2_cgroupfs",
                                  "v2_no_peak", "podman_v1_cgroupfs"])
def test_monitor_reads_every_layout(tree):
    root, cid, cgroup_dir = _container(tree)
    monitor = CgroupMonitor(cid, cgroup_root=root, interval_s=0.01).start()
    summary = monitor.stop()
    assert summary.readable and summary.samples >= 1
    assert Path(summary.cgroup_dir).is_relative_to(root)
    assert summary.cgroup_version == (2 if "v2" in tree else 1)
    assert summary.peak_anon_bytes and summary.peak_anon_bytes > 0
    assert summary.oom_kill_last is not None


def test_monitor_keeps_the_highest_counter_and_peak(tmp_path):
    root, cid, cgroup_dir = _container("v1_docker_cgroupfs")
    copy_root = tmp_path / "cg"
    shutil.copytree(root, copy_root)
    target = copy_root / cgroup_dir.relative_to(root)
    monitor = CgroupMonitor(cid, cgroup_root=copy_root)
    assert monitor.sample()
    first_anon = monitor.peak_anon
    stat = (target / "memory.stat").read_text().splitlines()
    bumped = [f"total_rss {first_anon * 2}" if line.startswith("total_rss ") else line for line in stat]
    (target / "memory.stat").write_text("\n".join(bumped) + "\n")
    (target / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 3\n")
    assert monitor.sample()
    (target / "memory.stat").write_text("\n".join(stat) + "\n")   # usage drops again
    assert monitor.final_sample()
    summary = monitor.stop()
    assert summary.peak_anon_bytes == first_anon * 2
    assert summary.oom_kill_last == 3 and summary.final_reading


def test_monitor_without_a_cgroup_says_why(tmp_path):
    monitor = CgroupMonitor("a" * 64, cgroup_root=tmp_path, interval_s=0.01, locate_timeout_s=0.05).start()
    import time
    time.sleep(0.2)
    summary = monitor.stop()
    assert not summary.readable and summary.samples == 0
    assert "no memory cgroup" in summary.error
