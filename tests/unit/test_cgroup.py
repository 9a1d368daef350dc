"""Pure tests of runner.cgroup over fixture trees and files written in tmp_path."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import runner.cgroup as cgroup
from runner.cgroup import (
    MemoryCounters,
    container_cgroup_candidates,
    detect_cgroup_version,
    find_container_cgroup,
    list_cgroup_pids,
    own_cgroup_dir,
    parse_flat_keyed,
    parse_single_value,
    read_memory_counters,
)
from runner.errors import CgroupReadError

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "cgroup"

ID_V1_OOM = "d9a687bc2d5c6e28b9f64c58688cb049929db4f009db8154b3a387e19937a883"
ID_V1_OK = "84bca4f66f4082176cb69ff0d567ec71faa24e03a70d9de551f84a0f2539eebc"
ID_V1_OLD = "9983fa5b0a2212563c41d126be843067cb5e83bd2878afed492d4f6d79d15441"
ID_V1_SYSTEMD = "33bf693c69a8c16687e2b3ba5b49411e2df9688b054afde66db1e23ed2f7e1e6"
ID_PODMAN_V1 = "7610ee7b6c7446cf1ef0a7374a61bf6d6449d8ceec518b0c7f4b4463044a3074"
ID_V2_SYSTEMD = "35f95d053f6256a15931ba759eaadd3d9b59d74aa47e730a1cd95832a717472e"
ID_V2_CGROUPFS = "d41254dfe5bf4ecd4b67439e8a881f95b3d7689ab8f188f6aa8bd4d02ecc5f6a"
ID_V2_NO_PEAK = "b4877ab0ef904155060967edd32c744dc076bd76d0bdff962f18d86996eb28ee"
ID_PODMAN_V2 = "9521c771a5aa49856d1273e78a84c3e6ba5f6de729b6d877ca91ce24c71e22d8"

V1_UNLIMITED = 9223372036854771712


# -- parse_flat_keyed ------------------------------------------------------------

def test_parse_flat_keyed_reads_keys() -> None:
    assert parse_flat_keyed("oom_kill_disable 0\nunder_oom 0\noom_kill 2\n") == {
        "oom_kill_disable": 0,
        "under_oom": 0,
        "oom_kill": 2,
    }


@pytest.mark.parametrize(
    "text",
    ["", "\n", "low 0\n\n\nhigh 1\n", "low 0", "  \nlow 0\n  \n", "low\t0\n", "low 0 \n"],
)
def test_parse_flat_keyed_tolerates_blank_lines(text: str) -> None:
    parse_flat_keyed(text)


def test_parse_flat_keyed_keeps_huge_values() -> None:
    assert parse_flat_keyed(f"hierarchical_memory_limit {V1_UNLIMITED}\n") == {
        "hierarchical_memory_limit": V1_UNLIMITED
    }


@pytest.mark.parametrize(
    "text",
    [
        "low\n",                    # missing value
        "low \n",
        " 0\n",                     # missing key
        "low x\n",                  # not an integer
        "low 1.5\n",
        "low -1\n",                 # negative: the kernel never writes one here
        "low +1\n",
        "low 1_000\n",
        "low 0x10\n",
        "low ３\n",                 # non-ASCII digit int() would accept
        "low 1 2\n",                # extra field
        "low 0\nlow 1\n",           # duplicate key
        "lo\x00w 0\n",              # binary junk
        "\x7fELF\x02\x01\x01\n",
        "low 0\r\nhigh 0\r\n",
        "1low 0\n",
        "low\x1c0\n",               # a separator str.split() would accept
        "low " + "9" * 5000 + "\n",  # beyond int()'s digit limit
    ],
)
def test_parse_flat_keyed_rejects_garbage(text: str) -> None:
    with pytest.raises(CgroupReadError):
        parse_flat_keyed(text)


def test_parse_flat_keyed_error_names_the_source() -> None:
    with pytest.raises(CgroupReadError, match="memory.stat line 2"):
        parse_flat_keyed("cache 0\nrss oops\n", source="/x/memory.stat")


# -- parse_single_value -------------------------------------------------------------

@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0\n", 0),
        ("2621440000\n", 2621440000),
        ("2621440000", 2621440000),
        (f"{V1_UNLIMITED}\n", V1_UNLIMITED),
        ("max\n", None),
        ("max", None),
    ],
)
def test_parse_single_value(text: str, expected: int | None) -> None:
    assert parse_single_value(text) == expected


@pytest.mark.parametrize(
    "text",
    ["", "\n", "  ", "abc\n", "-1\n", "1.5\n", "1 2\n", "1\n2\n", "MAX\n", "max max\n",
     "+5\n", "5_0\n", "\x00\n", "٣\n", "9" * 5000],
)
def test_parse_single_value_rejects_garbage(text: str) -> None:
    with pytest.raises(CgroupReadError):
        parse_single_value(text)


# -- hypothesis: only CgroupReadError, whatever the input ---------------------------

def _only_cgroup_errors(parse, text: str) -> None:
    try:
        parse(text)
    except CgroupReadError:
        pass


@given(st.text())
def test_parsers_raise_only_cgroup_read_error_on_text(text: str) -> None:
    _only_cgroup_errors(parse_flat_keyed, text)
    _only_cgroup_errors(parse_single_value, text)
    _only_cgroup_errors(cgroup.parse_pid_list, text)


@given(st.binary(), st.sampled_from(["latin-1", "utf-8"]))
def test_parsers_raise_only_cgroup_read_error_on_decoded_bytes(raw: bytes, encoding: str) -> None:
    text = raw.decode(encoding, errors="replace")
    _only_cgroup_errors(parse_flat_keyed, text)
    _only_cgroup_errors(parse_single_value, text)
    _only_cgroup_errors(cgroup.parse_pid_list, text)


_KEYS = st.from_regex(r"[a-z_][a-z0-9_]{0,30}", fullmatch=True)


@given(st.dictionaries(_KEYS, st.integers(min_value=0, max_value=2**64)))
def test_parse_flat_keyed_round_trips(counters: dict[str, int]) -> None:
    text = "".join(f"{key} {value}\n" for key, value in counters.items())
    assert parse_flat_keyed(text) == counters


@given(raw=st.binary(max_size=200))
def test_reader_raises_only_cgroup_read_error_on_junk_files(tmp_path_factory, raw: bytes) -> None:
    folder = tmp_path_factory.mktemp("junk")
    (folder / "memory.usage_in_bytes").write_bytes(b"1000\n")
    for name in ("memory.stat", "memory.oom_control", "memory.limit_in_bytes", "cgroup.procs"):
        (folder / name).write_bytes(raw)
    for read in (read_memory_counters, list_cgroup_pids):
        try:
            read(folder)
        except CgroupReadError:
            pass


# -- fixture trees: every layout -----------------------------------------------------

def _container(tree: str, container_id: str) -> Path:
    found = find_container_cgroup(FIXTURES / tree, container_id)
    assert found is not None, f"{container_id} not found in {tree}"
    return found


def test_v1_cgroupfs_with_oom_kill() -> None:
    folder = _container("v1_docker_cgroupfs", ID_V1_OOM)
    assert folder == FIXTURES / "v1_docker_cgroupfs" / "memory" / "docker" / ID_V1_OOM
    counters = read_memory_counters(folder)
    assert counters == MemoryCounters(
        version=1,
        usage_bytes=1893695488,
        peak_usage_bytes=2621440000,
        limit_bytes=2621440000,
        anon_bytes=1478557696,
        file_bytes=415137792,
        shmem_bytes=1048576,
        oom_events=None,
        oom_kill=1,
        under_oom=False,
        major_faults=12,
        refaults=1173,
    )


def test_v1_cgroupfs_without_oom_kill() -> None:
    counters = read_memory_counters(_container("v1_docker_cgroupfs", ID_V1_OK))
    assert counters.oom_kill == 0
    assert counters.under_oom is False
    # The good run's peak usage still reached its cap: page cache counts.
    assert counters.peak_usage_bytes == counters.limit_bytes == 3145728000
    assert counters.anon_bytes == 1475346432


def test_v1_prefers_total_keys(tmp_path: Path) -> None:
    (tmp_path / "memory.usage_in_bytes").write_text("4096\n")
    (tmp_path / "memory.stat").write_text(
        "cache 1\nrss 2\nshmem 3\ntotal_cache 10\ntotal_rss 20\ntotal_shmem 30\n"
    )
    counters = read_memory_counters(tmp_path)
    assert (counters.file_bytes, counters.anon_bytes, counters.shmem_bytes) == (10, 20, 30)


def test_v1_falls_back_to_local_keys(tmp_path: Path) -> None:
    (tmp_path / "memory.usage_in_bytes").write_text("4096\n")
    (tmp_path / "memory.stat").write_text("cache 1\nrss 2\nshmem 3\n")
    counters = read_memory_counters(tmp_path)
    assert (counters.file_bytes, counters.anon_bytes, counters.shmem_bytes) == (1, 2, 3)


def test_v1_systemd_unlimited() -> None:
    folder = _container("v1_docker_systemd", ID_V1_SYSTEMD)
    assert folder.name == f"docker-{ID_V1_SYSTEMD}.scope"
    assert folder.parent.name == "system.slice"
    counters = read_memory_counters(folder)
    assert counters.version == 1
    assert counters.limit_bytes is None
    assert counters.oom_kill == 0


def test_v1_old_kernel_has_no_oom_kill_count() -> None:
    counters = read_memory_counters(_container("v1_old_kernel", ID_V1_OLD))
    assert counters.version == 1
    assert counters.oom_kill is None  # unknown, not zero
    assert counters.under_oom is True
    assert counters.shmem_bytes is None
    assert counters.anon_bytes == 801112064


def test_podman_v1() -> None:
    folder = _container("podman_v1_cgroupfs", ID_PODMAN_V1)
    assert folder.name == f"libpod-{ID_PODMAN_V1}"
    counters = read_memory_counters(folder)
    assert counters.version == 1
    assert counters.oom_kill == 1
    assert counters.limit_bytes == 943718400


def test_v2_systemd_with_oom_kill() -> None:
    folder = _container("v2_systemd", ID_V2_SYSTEMD)
    assert folder == FIXTURES / "v2_systemd" / "system.slice" / f"docker-{ID_V2_SYSTEMD}.scope"
    counters = read_memory_counters(folder)
    assert counters == MemoryCounters(
        version=2,
        usage_bytes=1911046144,
        peak_usage_bytes=2621440000,
        limit_bytes=2621440000,
        anon_bytes=1478557696,
        file_bytes=415137792,
        shmem_bytes=1048576,
        oom_events=3,
        oom_kill=1,
        under_oom=None,
        major_faults=12,
        refaults=1173,
    )


def test_v2_cgroupfs_without_oom_kill() -> None:
    folder = _container("v2_cgroupfs", ID_V2_CGROUPFS)
    assert folder == FIXTURES / "v2_cgroupfs" / "docker" / ID_V2_CGROUPFS
    counters = read_memory_counters(folder)
    assert counters.version == 2
    assert (counters.oom_events, counters.oom_kill) == (0, 0)
    assert counters.limit_bytes == 3145728000


def test_v2_without_memory_peak() -> None:
    counters = read_memory_counters(_container("v2_no_peak", ID_V2_NO_PEAK))
    assert counters.version == 2
    assert counters.peak_usage_bytes is None
    assert counters.limit_bytes is None  # memory.max is "max"
    assert counters.usage_bytes == 861929472
    assert counters.oom_kill == 0


def test_podman_v2_prefers_the_scope_over_its_container_child() -> None:
    folder = _container("podman_v2_systemd", ID_PODMAN_V2)
    assert folder.name == f"libpod-{ID_PODMAN_V2}.scope"
    counters = read_memory_counters(folder)
    assert counters.limit_bytes == 943718400  # the limit lives on the scope
    assert counters.oom_kill == 1
    assert list_cgroup_pids(folder) == []
    assert list_cgroup_pids(folder / "container") == [7702, 7730]


def test_to_dict_has_every_field() -> None:
    counters = read_memory_counters(_container("v2_systemd", ID_V2_SYSTEMD))
    as_dict = counters.to_dict()
    assert as_dict["oom_kill"] == 1
    assert as_dict["under_oom"] is None
    assert set(as_dict) == {
        "version", "usage_bytes", "peak_usage_bytes", "limit_bytes", "anon_bytes",
        "file_bytes", "shmem_bytes", "oom_events", "oom_kill", "under_oom", "major_faults", "refaults",
        "pressure_full_us",
    }


@pytest.mark.parametrize(
    ("tree", "container_id", "expected"),
    [
        ("v1_docker_cgroupfs", ID_V1_OOM, [48211, 48275, 48276]),
        ("v1_docker_systemd", ID_V1_SYSTEMD, [3310]),
        ("v2_systemd", ID_V2_SYSTEMD, [48211, 48275, 48276]),
        ("v2_cgroupfs", ID_V2_CGROUPFS, [51007, 51066]),
        ("podman_v1_cgroupfs", ID_PODMAN_V1, [7702, 7730]),
    ],
)
def test_list_cgroup_pids_from_fixtures(tree: str, container_id: str, expected: list[int]) -> None:
    assert list_cgroup_pids(_container(tree, container_id)) == expected


# -- finding cgroups -----------------------------------------------------------------

@pytest.mark.parametrize(
    ("tree", "version"),
    [
        ("v1_docker_cgroupfs", 1), ("v1_docker_systemd", 1), ("v1_old_kernel", 1),
        ("podman_v1_cgroupfs", 1), ("v2_systemd", 2), ("v2_cgroupfs", 2), ("v2_no_peak", 2),
        ("podman_v2_systemd", 2),
    ],
)
def test_detect_version_and_own_cgroup_dir(tree: str, version: int) -> None:
    root = FIXTURES / tree
    assert detect_cgroup_version(root) == version
    assert own_cgroup_dir(root) == (root if version == 2 else root / "memory")


def test_find_returns_none_for_an_unknown_container() -> None:
    assert find_container_cgroup(FIXTURES / "v1_docker_cgroupfs", "0" * 64) is None
    assert find_container_cgroup(FIXTURES / "v2_systemd", ID_V1_OOM) is None


def test_candidates_cover_every_layout() -> None:
    root = Path("/sys/fs/cgroup")
    cid = ID_V1_OOM
    candidates = container_cgroup_candidates(root, cid)
    for expected in [
        root / "memory" / "docker" / cid,
        root / "memory" / "system.slice" / f"docker-{cid}.scope",
        root / "system.slice" / f"docker-{cid}.scope",
        root / "docker" / cid,
        root / "memory" / "libpod_parent" / f"libpod-{cid}",
        root / "machine.slice" / f"libpod-{cid}.scope",
        root / "machine.slice" / f"libpod-{cid}.scope" / "container",
    ]:
        assert expected in candidates
    scope = candidates.index(root / "machine.slice" / f"libpod-{cid}.scope")
    assert scope < candidates.index(root / "machine.slice" / f"libpod-{cid}.scope" / "container")


@pytest.mark.parametrize("bad_id", ["", "d9a687bc2d5c", ID_V1_OOM.upper(), "../" + ID_V1_OOM[3:], ID_V1_OOM + "0"])
def test_candidates_need_the_full_id(bad_id: str) -> None:
    with pytest.raises(ValueError):
        container_cgroup_candidates(Path("/sys/fs/cgroup"), bad_id)


# -- vanished and broken folders -------------------------------------------------------

def test_missing_folder_raises(tmp_path: Path) -> None:
    with pytest.raises(CgroupReadError, match="does not exist"):
        read_memory_counters(tmp_path / "gone")


def test_folder_without_memory_files_raises(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("1\n")
    with pytest.raises(CgroupReadError, match="not a memory cgroup"):
        read_memory_counters(tmp_path)


def test_folder_removed_after_a_container_died(tmp_path: Path) -> None:
    copy = tmp_path / "cg"
    shutil.copytree(_container("v1_docker_cgroupfs", ID_V1_OOM), copy)
    read_memory_counters(copy)
    shutil.rmtree(copy)
    with pytest.raises(CgroupReadError):
        read_memory_counters(copy)
    with pytest.raises(CgroupReadError):
        list_cgroup_pids(copy)


@pytest.mark.parametrize("tree,container_id", [("v1_docker_cgroupfs", ID_V1_OOM), ("v2_systemd", ID_V2_SYSTEMD)])
def test_folder_vanishing_mid_read_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, tree: str, container_id: str
) -> None:
    copy = tmp_path / "cg"
    shutil.copytree(_container(tree, container_id), copy)
    real_read_text = cgroup._read_text
    calls = {"n": 0}

    def read_then_vanish(path: Path) -> str | None:
        calls["n"] += 1
        if calls["n"] == 2 and copy.exists():
            shutil.rmtree(copy)
        return real_read_text(path)

    monkeypatch.setattr(cgroup, "_read_text", read_then_vanish)
    with pytest.raises(CgroupReadError, match="vanished"):
        read_memory_counters(copy)


def test_os_error_while_reading_raises(tmp_path: Path) -> None:
    (tmp_path / "memory.usage_in_bytes").mkdir()  # reading it gives EISDIR
    with pytest.raises(CgroupReadError, match="cannot read"):
        read_memory_counters(tmp_path)


def test_non_ascii_file_raises(tmp_path: Path) -> None:
    (tmp_path / "memory.usage_in_bytes").write_text("4096\n")
    (tmp_path / "memory.stat").write_bytes(b"cache \xff\xfe\n")
    with pytest.raises(CgroupReadError, match="not ASCII"):
        read_memory_counters(tmp_path)


@pytest.mark.parametrize("name", ["memory.stat", "memory.oom_control"])
def test_empty_flat_keyed_file_raises(tmp_path: Path, name: str) -> None:
    (tmp_path / "memory.usage_in_bytes").write_text("4096\n")
    (tmp_path / name).write_text("")
    with pytest.raises(CgroupReadError, match="empty"):
        read_memory_counters(tmp_path)


def test_empty_single_value_file_raises(tmp_path: Path) -> None:
    (tmp_path / "memory.current").write_text("")
    with pytest.raises(CgroupReadError, match="empty"):
        read_memory_counters(tmp_path)


def test_v1_usage_max_is_garbage(tmp_path: Path) -> None:
    (tmp_path / "memory.usage_in_bytes").write_text("max\n")
    with pytest.raises(CgroupReadError, match="max"):
        read_memory_counters(tmp_path)


# -- edge cases written into tmp_path ----------------------------------------------------

def test_v1_minimal_folder_gives_none_for_missing_files(tmp_path: Path) -> None:
    (tmp_path / "memory.usage_in_bytes").write_text("8192\n")
    assert read_memory_counters(tmp_path) == MemoryCounters(
        version=1, usage_bytes=8192, peak_usage_bytes=None, limit_bytes=None, anon_bytes=None,
        file_bytes=None, shmem_bytes=None, oom_events=None, oom_kill=None, under_oom=None,
    )


def test_v2_events_only_folder(tmp_path: Path) -> None:
    (tmp_path / "memory.events").write_text("low 0\nhigh 0\nmax 5\noom 1\n")  # pre-4.13: no oom_kill
    counters = read_memory_counters(tmp_path)
    assert counters.version == 2
    assert (counters.oom_events, counters.oom_kill, counters.usage_bytes) == (1, None, None)


@pytest.mark.parametrize(
    ("limit_text", "expected"),
    [
        (f"{V1_UNLIMITED}\n", None),
        (f"{2**60}\n", None),
        (f"{2**60 - 4096}\n", 2**60 - 4096),
        ("2621440000\n", 2621440000),
    ],
)
def test_v1_unlimited_limit(tmp_path: Path, limit_text: str, expected: int | None) -> None:
    (tmp_path / "memory.usage_in_bytes").write_text("4096\n")
    (tmp_path / "memory.limit_in_bytes").write_text(limit_text)
    assert read_memory_counters(tmp_path).limit_bytes == expected


def test_v2_root_style_folder_without_memory_max(tmp_path: Path) -> None:
    (tmp_path / "memory.current").write_text("123456\n")
    (tmp_path / "memory.stat").write_text("anon 100\nfile 200\nshmem 0\n")
    counters = read_memory_counters(tmp_path)
    assert (counters.limit_bytes, counters.anon_bytes, counters.file_bytes) == (None, 100, 200)


def test_garbled_file_in_a_fixture_copy_raises(tmp_path: Path) -> None:
    copy = tmp_path / "cg"
    shutil.copytree(_container("v2_cgroupfs", ID_V2_CGROUPFS), copy)
    (copy / "memory.events").write_text("low 0\nhigh 0\nmax 37\noom\noom_kill 0\n")
    with pytest.raises(CgroupReadError, match="memory.events line 4"):
        read_memory_counters(copy)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", []), ("\n", []), ("12\n13\n", [12, 13]), ("12\n13\n12\n", [12, 13]), ("0\n5\n", [5])],
)
def test_list_cgroup_pids_edge_cases(tmp_path: Path, text: str, expected: list[int]) -> None:
    (tmp_path / "cgroup.procs").write_text(text)
    assert list_cgroup_pids(tmp_path) == expected


@pytest.mark.parametrize("text", ["abc\n", "-1\n", "1 2\n", "1.0\n"])
def test_list_cgroup_pids_rejects_garbage(tmp_path: Path, text: str) -> None:
    (tmp_path / "cgroup.procs").write_text(text)
    with pytest.raises(CgroupReadError):
        list_cgroup_pids(tmp_path)


def test_list_cgroup_pids_missing_file_raises(tmp_path: Path) -> None:
    with pytest.raises(CgroupReadError):
        list_cgroup_pids(tmp_path)


# -- this machine ----------------------------------------------------------------------

REAL_V1_MEMORY = Path("/sys/fs/cgroup/memory")


@pytest.mark.skipif(not (REAL_V1_MEMORY / "memory.usage_in_bytes").exists(), reason="no cgroup v1 memory hierarchy")
def test_reads_this_machines_v1_memory_root() -> None:
    counters = read_memory_counters(REAL_V1_MEMORY)
    assert counters.version == 1
    assert counters.usage_bytes is not None and counters.usage_bytes > 0
    assert counters.anon_bytes is not None
