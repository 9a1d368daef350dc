"""runner.cgroup additions for ``--runtime host``: a process's own memory cgroup and its effective limit.

Fixture trees are written under tmp_path.  v2 files follow the kernel's
cgroup-v2 documentation (Documentation/admin-guide/cgroup-v2.rst): the root
has ``cgroup.controllers`` and no ``memory.max``; ``memory.max`` holds
``max`` or a number of bytes; ``memory.events`` has the keys low, high, max,
oom and oom_kill.  v1 trees have ``memory.limit_in_bytes`` (the unlimited
sentinel is PAGE_COUNTER_MAX pages) and ``memory.stat`` with
``hierarchical_memory_limit``, the lowest limit on the way to the root.
"""
from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from runner.cgroup import V1_UNLIMITED_FROM, _v2_effective_limit, process_memory_cgroup, read_memory_counters
from runner.errors import CgroupReadError

V1_UNLIMITED = 9223372036854771712            # what an unlimited v1 cgroup reads on x86-64
GIB = 1024 ** 3
SLURM_V2_LEAF = "system.slice/slurmstepd.scope/job_42/step_0/user/task_0"
SLURM_V1_LEAF = "slurm/uid_1000/job_42/step_0/task_0"


# -- fixture trees -------------------------------------------------------------------------------

def v2_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup2"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpuset cpu io memory hugetlb pids rdma misc\n")
    (root / "cgroup.subtree_control").write_text("cpu io memory pids\n")
    # The root cgroup has memory.stat but neither memory.max nor memory.events.
    (root / "memory.stat").write_text("anon 0\nfile 0\nshmem 0\n")
    return root


def v2_cgroup(root: Path, rel: str, limits: dict[str, str] | None = None, oom: int = 0, oom_kill: int = 0) -> Path:
    """Every folder from root to rel is a memory cgroup; ``limits``: memory.max per relative folder (default max)."""
    limits = limits or {}
    parts = Path(rel).parts
    for depth in range(1, len(parts) + 1):
        sub = "/".join(parts[:depth])
        d = root / sub
        d.mkdir(exist_ok=True)
        (d / "memory.max").write_text(limits.get(sub, "max") + "\n")
        (d / "memory.current").write_text("1048576\n")
        (d / "memory.events").write_text(f"low 0\nhigh 0\nmax {oom}\noom {oom}\noom_kill {oom_kill}\n")
        (d / "memory.stat").write_text("anon 524288\nfile 262144\nshmem 0\n")
        (d / "cgroup.procs").write_text("")
    return root / rel


def v1_root(tmp_path: Path) -> Path:
    root = tmp_path / "cgroup1"
    (root / "memory").mkdir(parents=True)
    (root / "cpu,cpuacct").mkdir()
    return root


def v1_cgroup(root: Path, rel: str, limit: int = V1_UNLIMITED, hierarchical: int | None = V1_UNLIMITED,
              stat: bool = True) -> Path:
    d = root / "memory" / rel
    d.mkdir(parents=True, exist_ok=True)
    (d / "memory.usage_in_bytes").write_text("1048576\n")
    (d / "memory.limit_in_bytes").write_text(f"{limit}\n")
    (d / "memory.max_usage_in_bytes").write_text("2097152\n")
    (d / "memory.oom_control").write_text("oom_kill_disable 0\nunder_oom 0\noom_kill 0\n")
    if stat:
        lines = ["cache 4096", "rss 8192", "shmem 0", "total_cache 4096", "total_rss 8192", "total_shmem 0"]
        if hierarchical is not None:
            lines.append(f"hierarchical_memory_limit {hierarchical}")
        (d / "memory.stat").write_text("\n".join(lines) + "\n")
    return d


def proc_v1(path: str) -> str:
    return ("12:pids:/" + path + "\n11:cpu,cpuacct:/" + path + "\n4:memory:/" + path +
            "\n1:name=systemd:/system.slice/slurmd.service\n0::/system.slice/slurmd.service\n")


# -- process_memory_cgroup ----------------------------------------------------------------------------


def test_v2_path_from_the_0_line(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    assert process_memory_cgroup(f"0::/{SLURM_V2_LEAF}\n", root) == root / SLURM_V2_LEAF


def test_v2_root_cgroup(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    assert process_memory_cgroup("0::/\n", root) == root


def test_v2_path_may_contain_colons(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    assert process_memory_cgroup("0::/a:b/c\n", root) == root / "a:b" / "c"


def test_v1_path_from_the_memory_line(tmp_path: Path) -> None:
    root = v1_root(tmp_path)
    assert process_memory_cgroup(proc_v1(SLURM_V1_LEAF), root) == root / "memory" / SLURM_V1_LEAF


def test_v1_memory_co_mounted_with_other_controllers(tmp_path: Path) -> None:
    root = v1_root(tmp_path)
    text = "5:cpu,memory:/job_7\n3:pids:/other\n"
    assert process_memory_cgroup(text, root) == root / "memory" / "job_7"


def test_v1_ignores_a_controller_merely_named_like_memory(tmp_path: Path) -> None:
    root = v1_root(tmp_path)
    text = "9:memory_fake:/wrong\n4:memory:/right\n"
    assert process_memory_cgroup(text, root) == root / "memory" / "right"


def test_hybrid_host_uses_the_v1_memory_controller(tmp_path: Path) -> None:
    # Hybrid (systemd's default on older distributions): the root is v1 (no cgroup.controllers there),
    # the unified hierarchy is mounted elsewhere, and /proc/self/cgroup has both kinds of lines.
    root = v1_root(tmp_path)
    (root / "unified").mkdir()
    (root / "unified" / "cgroup.controllers").write_text("")
    text = "0::/user.slice/session-1.scope\n4:memory:/user.slice/user-1000.slice\n"
    assert process_memory_cgroup(text, root) == root / "memory" / "user.slice" / "user-1000.slice"


def test_v2_ignores_v1_lines_of_a_named_hierarchy(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    text = "1:name=systemd:/elsewhere\n0::/mine\n"
    assert process_memory_cgroup(text, root) == root / "mine"


def test_garbage_lines_are_skipped(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    text = "\n  \nnot a cgroup line\n0::/job\n"
    assert process_memory_cgroup(text, root) == root / "job"


def test_v2_without_a_0_line_raises(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    with pytest.raises(CgroupReadError, match="0::"):
        process_memory_cgroup("4:memory:/x\n", root)


def test_v1_without_a_memory_line_raises(tmp_path: Path) -> None:
    root = v1_root(tmp_path)
    with pytest.raises(CgroupReadError, match="memory"):
        process_memory_cgroup("0::/x\n12:pids:/x\n", root)


@settings(max_examples=100, deadline=None)
@given(parts=st.lists(st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_.-@", min_size=1, max_size=10)
                      .filter(lambda s: s not in (".", "..")), min_size=0, max_size=6))
def test_v2_any_path_maps_under_the_root(tmp_path_factory, parts: list[str]) -> None:
    root = v2_root(tmp_path_factory.mktemp("h"))
    rel = "/".join(parts)
    assert process_memory_cgroup(f"0::/{rel}\n", root) == root.joinpath(*parts)


# -- v2: memory.max of the folder and its parents -----------------------------------------------------------


def test_v2_limit_only_on_a_parent(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    job = "system.slice/slurmstepd.scope/job_42"
    leaf = v2_cgroup(root, SLURM_V2_LEAF, {job: str(3 * GIB)})
    assert _v2_effective_limit(leaf) == 3 * GIB
    assert read_memory_counters(leaf).limit_bytes == 3 * GIB


def test_v2_lowest_limit_on_the_way_up_wins(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    leaf = v2_cgroup(root, SLURM_V2_LEAF, {
        "system.slice": str(64 * GIB),
        "system.slice/slurmstepd.scope/job_42": str(8 * GIB),
        "system.slice/slurmstepd.scope/job_42/step_0": str(6 * GIB),
        SLURM_V2_LEAF: str(7 * GIB),
    })
    assert read_memory_counters(leaf).limit_bytes == 6 * GIB


def test_v2_leaf_limit_lower_than_its_parents(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    leaf = v2_cgroup(root, "a/b/c", {"a": str(10 * GIB), "a/b/c": str(2 * GIB)})
    assert read_memory_counters(leaf).limit_bytes == 2 * GIB


def test_v2_no_limit_anywhere_is_none(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    leaf = v2_cgroup(root, SLURM_V2_LEAF)
    assert read_memory_counters(leaf).limit_bytes is None


def test_v2_root_cgroup_itself_is_unlimited(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    (root / "memory.current").write_text("123\n")        # the root has no memory.max
    assert read_memory_counters(root).limit_bytes is None


def test_v2_walk_stops_at_the_first_folder_that_is_not_a_memory_cgroup(tmp_path: Path) -> None:
    # A memory.max above the hierarchy's root (no memory.max there) is not a parent cgroup.
    (tmp_path / "memory.max").write_text(f"{GIB}\n")
    root = v2_root(tmp_path)
    leaf = v2_cgroup(root, "job/step", {"job": str(5 * GIB)})
    assert read_memory_counters(leaf).limit_bytes == 5 * GIB


def test_v2_counters_from_memory_events(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    leaf = v2_cgroup(root, "job/step", {"job": str(GIB)}, oom=4, oom_kill=3)
    c = read_memory_counters(leaf)
    assert c.version == 2 and c.oom_events == 4 and c.oom_kill == 3
    assert c.usage_bytes == 1048576 and c.anon_bytes == 524288


def test_v2_garbage_memory_max_in_a_parent_raises(tmp_path: Path) -> None:
    root = v2_root(tmp_path)
    leaf = v2_cgroup(root, "job/step", {"job": "lots"})
    with pytest.raises(CgroupReadError, match="memory.max"):
        read_memory_counters(leaf)


@settings(max_examples=100, deadline=None)
@given(limits=st.lists(st.one_of(st.none(), st.integers(1, 2 ** 50)), min_size=1, max_size=6))
def test_v2_effective_limit_is_the_minimum_of_the_chain(tmp_path_factory, limits: list[int | None]) -> None:
    root = v2_root(tmp_path_factory.mktemp("chain"))
    names = [f"l{i}" for i in range(len(limits))]
    rel = "/".join(names)
    per_folder = {"/".join(names[:i + 1]): ("max" if v is None else str(v)) for i, v in enumerate(limits)}
    leaf = v2_cgroup(root, rel, per_folder)
    present = [v for v in limits if v is not None]
    assert _v2_effective_limit(leaf) == (min(present) if present else None)


# -- v1: min(memory.limit_in_bytes, hierarchical_memory_limit) ---------------------------------------------


def test_v1_limit_only_on_a_parent_shows_in_hierarchical_limit(tmp_path: Path) -> None:
    root = v1_root(tmp_path)
    leaf = v1_cgroup(root, SLURM_V1_LEAF, limit=V1_UNLIMITED, hierarchical=4 * GIB)
    assert read_memory_counters(leaf).limit_bytes == 4 * GIB


@pytest.mark.parametrize("own,hierarchical,expected", [
    (2 * GIB, 4 * GIB, 2 * GIB),          # its own is lower
    (4 * GIB, 2 * GIB, 2 * GIB),          # a parent's is lower
    (3 * GIB, 3 * GIB, 3 * GIB),
    (V1_UNLIMITED, V1_UNLIMITED, None),   # both unlimited
    (5 * GIB, V1_UNLIMITED, 5 * GIB),
    (5 * GIB, None, 5 * GIB),             # an old kernel's memory.stat without the key
    (V1_UNLIMITED_FROM, V1_UNLIMITED_FROM + 1, None),
])
def test_v1_effective_limit(tmp_path: Path, own: int, hierarchical: int | None, expected: int | None) -> None:
    leaf = v1_cgroup(v1_root(tmp_path), "job", limit=own, hierarchical=hierarchical)
    assert read_memory_counters(leaf).limit_bytes == expected


def test_v1_without_memory_stat_uses_its_own_limit(tmp_path: Path) -> None:
    leaf = v1_cgroup(v1_root(tmp_path), "job", limit=GIB, stat=False)
    assert read_memory_counters(leaf).limit_bytes == GIB


def test_v1_hierarchical_limit_without_limit_file(tmp_path: Path) -> None:
    leaf = v1_cgroup(v1_root(tmp_path), "job", hierarchical=7 * GIB)
    (leaf / "memory.limit_in_bytes").unlink()
    assert read_memory_counters(leaf).limit_bytes == 7 * GIB


@settings(max_examples=100, deadline=None)
@given(own=st.integers(0, 2 ** 63), hierarchical=st.integers(0, 2 ** 63))
def test_v1_effective_limit_property(tmp_path_factory, own: int, hierarchical: int) -> None:
    leaf = v1_cgroup(v1_root(tmp_path_factory.mktemp("v1")), "job", limit=own, hierarchical=hierarchical)
    real = [v for v in (own, hierarchical) if v < V1_UNLIMITED_FROM]
    assert read_memory_counters(leaf).limit_bytes == (min(real) if real else None)
