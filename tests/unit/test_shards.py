"""runner.shards: shard specs, the case -> shard assignment, the shared map file and its race.

The balance properties are checked with hypothesis against what the greedy
rule must guarantee for *any* input (every case exactly once, loads within
the largest weight of each other, independent of the input's order), not
against a particular assignment copied from the code.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import os
import random
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from runner import shards
from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.shards import (
    SHARD_COUNT_ENV,
    SHARD_INDEX_ENV,
    SHARD_LIST_ENV,
    Shard,
    ShardError,
    assign,
    build_map,
    cases_of,
    check_map,
    header_weights,
    load_or_create,
    map_path,
    parse_shard,
    parse_shard_list,
    read_map,
    shard_from_env,
)

# -- parse_shard -----------------------------------------------------------------------------


@pytest.mark.parametrize("k,n", [(0, 1), (0, 4), (3, 4), (17, 100)])
def test_parse_shard_accepts_k_from_0_to_n_minus_1(k: int, n: int) -> None:
    shard = parse_shard(f"{k}/{n}")
    assert shard == Shard(k, n)
    assert str(shard) == f"{k}/{n}"          # prints back as it was given (Slurm/k8s style)


def test_parse_shard_tolerates_spaces() -> None:
    assert parse_shard(" 1 / 4 ") == Shard(1, 4)


@pytest.mark.parametrize("text", ["4/4", "3/2", "5/1", "1/0", "0/0"])
def test_parse_shard_rejects_k_out_of_range(text: str) -> None:
    with pytest.raises(ShardError) as info:
        parse_shard(text)
    assert text in str(info.value)
    assert "\n" not in str(info.value)


def test_parse_shard_out_of_range_names_the_valid_range() -> None:
    with pytest.raises(ShardError, match=r"0 to 1\b"):
        parse_shard("2/2")
    with pytest.raises(ShardError, match=r"0 to 6\b"):
        parse_shard("9/7")


@pytest.mark.parametrize("text", ["abc", "", "1", "1/", "/4", "-1/4", "1/-4", "1/4/5", "1.0/4", "1 4", "a/b", "K/N"])
def test_parse_shard_rejects_garbage(text: str) -> None:
    with pytest.raises(ShardError, match="K/N|N must|K must"):
        parse_shard(text)


def test_shard_error_is_a_value_error() -> None:
    # Callers that validate options catch ValueError; ShardError must be one.
    assert issubclass(ShardError, ValueError)


@given(n=st.integers(1, 500), data=st.data())
def test_parse_shard_round_trips(n: int, data) -> None:
    k = data.draw(st.integers(0, n - 1))
    assert parse_shard(str(Shard(k, n))) == Shard(k, n)


# -- parse_shard_list -------------------------------------------------------------------------


@pytest.mark.parametrize("text,count,expected", [
    ("1,3", 4, [1, 3]),
    ("3,1", 4, [3, 1]),              # order kept: index i of the resubmission runs list[i]
    (" 1 , 3 ", 4, [1, 3]),
    ("0", 1, [0]),
    ("2,", 3, [2]),
])
def test_parse_shard_list(text: str, count: int, expected: list[int]) -> None:
    assert parse_shard_list(text, count) == expected


@pytest.mark.parametrize("text,count,match", [
    ("", 4, "empty"),
    (",", 4, "empty"),
    ("4", 4, "between 0 and 3"),
    ("0,7", 2, "shard 7 is not between 0 and 1"),
    ("-1", 4, "not between"),
    ("1,1", 4, "repeats"),
    ("a,b", 4, "shard numbers"),
    ("1;3", 4, "shard numbers"),
])
def test_parse_shard_list_rejects(text: str, count: int, match: str) -> None:
    with pytest.raises(ShardError, match=match):
        parse_shard_list(text, count)


# -- assign: properties ------------------------------------------------------------------------

case_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_", min_size=1, max_size=8)
weights_st = st.dictionaries(case_names, st.integers(0, 10 ** 9), min_size=0, max_size=40)


@settings(max_examples=300, deadline=None)
@given(weights=weights_st, count=st.integers(1, 12))
def test_assign_every_case_exactly_once_to_a_valid_shard(weights: dict[str, int], count: int) -> None:
    out = assign(weights, count)
    assert set(out) == set(weights)                     # every case, and nothing else
    assert all(isinstance(k, int) and 0 <= k < count for k in out.values())
    # The shards partition the cases: each case in exactly one cases_of list.
    shard_map = build_map(weights, count, "nnUNetPlans", "voxels")
    per_shard = [cases_of(shard_map, k) for k in range(count)]
    flat = [c for cases in per_shard for c in cases]
    assert sorted(flat) == sorted(weights) and len(flat) == len(set(flat))


@settings(max_examples=300, deadline=None)
@given(weights=weights_st.filter(bool), count=st.integers(1, 12))
def test_assign_loads_differ_by_at_most_the_largest_weight(weights: dict[str, int], count: int) -> None:
    out = assign(weights, count)
    loads = [0] * count
    for case, k in out.items():
        loads[k] += weights[case]
    assert max(loads) - min(loads) <= max(weights.values())


@settings(max_examples=200, deadline=None)
@given(n_cases=st.integers(1, 40), w=st.one_of(st.just(0), st.integers(1, 1000)), count=st.integers(1, 12))
@example(n_cases=5, w=0, count=3)      # all weights zero (no headers readable): loads tie everywhere
def test_assign_equal_weights_spreads_case_counts_evenly(n_cases: int, w: int, count: int) -> None:
    # Zero weights included: the case count breaks load ties, so nothing piles onto shard 0.
    weights = {f"case{i:03d}": w for i in range(n_cases)}
    sizes = [0] * count
    for k in assign(weights, count).values():
        sizes[k] += 1
    assert max(sizes) - min(sizes) <= 1


@settings(max_examples=200, deadline=None)
@given(weights=weights_st, count=st.integers(1, 12), seed=st.integers(0, 2 ** 32 - 1))
def test_assign_is_deterministic_and_independent_of_input_order(weights: dict[str, int], count: int,
                                                               seed: int) -> None:
    items = list(weights.items())
    random.Random(seed).shuffle(items)
    shuffled = dict(items)
    first = assign(weights, count)
    assert assign(shuffled, count) == first
    assert assign(dict(weights), count) == first
    # And the map file is byte-identical whatever the order (every task must compute the same map).
    a = json.dumps(build_map(weights, count, "p", "voxels"))
    b = json.dumps(build_map(shuffled, count, "p", "voxels"))
    assert a == b


@settings(max_examples=200, deadline=None)
@given(weights=weights_st.filter(bool), extra=st.integers(0, 10))
def test_assign_more_shards_than_cases_gives_one_case_per_shard(weights: dict[str, int], extra: int) -> None:
    count = len(weights) + extra
    out = assign(weights, count)
    used = list(out.values())
    assert len(used) == len(set(used))                 # no shard has two cases
    # the first len(cases) shards are the ones used: no holes before empty shards
    assert set(used) == set(range(len(weights)))


def test_assign_puts_heaviest_cases_apart() -> None:
    # Two heavy cases and several light ones on two shards: the heavy ones must not share a shard.
    weights = {"big_a": 1000, "big_b": 1000, **{f"small{i}": 1 for i in range(6)}}
    out = assign(weights, 2)
    assert out["big_a"] != out["big_b"]
    loads = [sum(w for c, w in weights.items() if out[c] == k) for k in range(2)]
    assert loads[0] == loads[1]


def test_assign_greedy_example_is_balanced_better_than_round_robin() -> None:
    # Sorted-name round robin would give {a,c}=18 vs {b,d}=2; largest-first balances 10/10.
    weights = {"a": 9, "b": 1, "c": 9, "d": 1}
    out = assign(weights, 2)
    loads = [sum(w for c, w in weights.items() if out[c] == k) for k in range(2)]
    assert sorted(loads) == [10, 10]


@pytest.mark.parametrize("count", [0, -1])
def test_assign_rejects_no_shards(count: int) -> None:
    with pytest.raises(ShardError):
        assign({"a": 1}, count)


def test_assign_empty_dataset() -> None:
    assert assign({}, 3) == {}


# -- build_map / check_map / cases_of ------------------------------------------------------------


def test_build_map_records_the_loads_and_weights() -> None:
    weights = {"c": 5, "a": 7, "b": 2, "d": 0}
    m = build_map(weights, 3, "MyPlans", "predicted_memory")
    assert m["plans_name"] == "MyPlans" and m["shards"] == 3 and m["balanced_by"] == "predicted_memory"
    assert m["schema_version"] == shards.SCHEMA_VERSION
    assert m["weights"] == weights
    assert len(m["shard_weights"]) == 3
    for k in range(3):
        assert m["shard_weights"][k] == sum(weights[c] for c in cases_of(m, k))
    assert sum(m["shard_weights"]) == sum(weights.values())
    json.dumps(m)                                      # it is written as JSON


def test_cases_of_is_sorted_and_accepts_string_indexes() -> None:
    m = {"assignment": {"z": 1, "a": "1", "m": 0}}
    assert cases_of(m, 1) == ["a", "z"]
    assert cases_of(m, 0) == ["m"]
    assert cases_of(m, 2) == []


def test_check_map_accepts_its_own_map() -> None:
    cases = ["a", "b", "c"]
    check_map(build_map({c: 1 for c in cases}, 2, "p", "voxels"), 2, cases)


def test_check_map_refuses_another_shard_count() -> None:
    m = build_map({"a": 1, "b": 1, "c": 1}, 3, "p", "voxels")
    with pytest.raises(ShardError) as info:
        check_map(m, 2, ["a", "b", "c"], path="/x/shards.p.json")
    msg = str(info.value)
    assert "/x/shards.p.json" in msg and "3 shards, not 2" in msg
    assert "--shard K/3" in msg                       # what to use instead


def test_check_map_refuses_other_cases_naming_a_new_case() -> None:
    m = build_map({"a": 1, "b": 1}, 2, "p", "voxels")
    with pytest.raises(ShardError, match="other cases.*e.g. new_case"):
        check_map(m, 2, ["a", "b", "new_case"])


def test_check_map_refuses_other_cases_naming_a_removed_case() -> None:
    m = build_map({"a": 1, "b": 1, "gone": 1}, 2, "p", "voxels")
    with pytest.raises(ShardError, match="other cases.*e.g. gone"):
        check_map(m, 2, ["a", "b"])


@pytest.mark.parametrize("bad", [
    {},
    {"schema_version": 99, "shards": 2, "assignment": {}},
    {"schema_version": shards.SCHEMA_VERSION, "shards": 2, "assignment": ["a"]},
])
def test_check_map_refuses_what_is_not_a_map(bad: dict) -> None:
    with pytest.raises(ShardError, match="not an nnrun shard map"):
        check_map(bad, 2, [])


# -- read_map ------------------------------------------------------------------------------------


def test_map_path_is_inside_nnruns_folder(tmp_path: Path) -> None:
    p = Path(map_path(tmp_path / "Dataset501_X", "MyPlans"))
    assert p.parent == tmp_path / "Dataset501_X" / ".nnrun"
    assert "MyPlans" in p.name and p.suffix == ".json"


def test_read_map_missing_is_none(tmp_path: Path) -> None:
    assert read_map(tmp_path / "nothing.json") is None


@pytest.mark.parametrize("content", [b"{not json", b"", b"\xff\xfe"])
def test_read_map_garbage_is_a_shard_error_naming_the_file(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "shards.p.json"
    path.write_bytes(content)
    with pytest.raises(ShardError, match="shards.p.json"):
        read_map(path)


def test_read_map_unreadable_is_a_shard_error(tmp_path: Path) -> None:
    path = tmp_path / "a_folder.json"
    path.mkdir()                                       # IsADirectoryError: an OSError, not "missing"
    with pytest.raises(ShardError):
        read_map(path)


# -- load_or_create --------------------------------------------------------------------------------

CASES = [f"case{i:03d}" for i in range(9)]


def _weights_of(cases):
    return {c: (i * 37) % 11 + 1 for i, c in enumerate(cases)}


def test_load_or_create_writes_the_map_once_and_reuses_it(tmp_path: Path) -> None:
    path = tmp_path / "pre" / ".nnrun" / "shards.p.json"          # folders made on the way
    calls = []

    def make():
        calls.append(1)
        return _weights_of(CASES), "voxels"

    first = load_or_create(path, 3, CASES, make, "p")
    assert calls == [1]
    assert json.loads(path.read_text()) == first
    assert first["assignment"] == assign(_weights_of(CASES), 3)
    again = load_or_create(path, 3, list(reversed(CASES)), make, "p")
    assert calls == [1]                                 # not recomputed
    assert again == first
    assert not [p for p in path.parent.iterdir() if ".tmp." in p.name]   # no temporary file left


def test_load_or_create_refuses_an_existing_map_for_another_count(tmp_path: Path) -> None:
    path = tmp_path / "shards.p.json"
    load_or_create(path, 3, CASES, lambda: (_weights_of(CASES), "voxels"), "p")
    before = path.read_bytes()
    with pytest.raises(ShardError, match="3 shards, not 4"):
        load_or_create(path, 4, CASES, lambda: pytest.fail("must not recompute"), "p")
    assert path.read_bytes() == before                  # never rewritten


def test_load_or_create_refuses_an_existing_map_for_other_cases(tmp_path: Path) -> None:
    path = tmp_path / "shards.p.json"
    load_or_create(path, 2, CASES, lambda: (_weights_of(CASES), "voxels"), "p")
    with pytest.raises(ShardError, match="other cases"):
        load_or_create(path, 2, CASES + ["case999"], lambda: pytest.fail("must not recompute"), "p")


def test_load_or_create_fills_missing_weights_and_drops_unknown_cases(tmp_path: Path) -> None:
    path = tmp_path / "shards.p.json"
    m = load_or_create(path, 2, ["a", "b", "c"], lambda: ({"a": 5, "zzz": 100}, "voxels"), "p")
    assert m["weights"] == {"a": 5, "b": 0, "c": 0}
    assert set(m["assignment"]) == {"a", "b", "c"}
    assert m["balanced_by"] == "voxels"


def test_load_or_create_failing_weights_leave_no_map_and_release_the_lock(tmp_path: Path) -> None:
    path = tmp_path / "shards.p.json"

    def boom():
        raise RuntimeError("estimate failed")

    with pytest.raises(RuntimeError):
        load_or_create(path, 2, CASES, boom, "p")
    assert not path.exists()
    # The lock was released: the next task makes the map (would block forever otherwise).
    m = load_or_create(path, 2, CASES, lambda: (_weights_of(CASES), "predicted_memory"), "p")
    assert m["balanced_by"] == "predicted_memory"


def test_load_or_create_refuses_a_garbled_map(tmp_path: Path) -> None:
    path = tmp_path / "shards.p.json"
    path.write_text("{garbled")
    with pytest.raises(ShardError, match="cannot read the shard map"):
        load_or_create(path, 2, CASES, lambda: pytest.fail("must not overwrite"), "p")


def _race_one(args):
    """One task of the race: wait for everyone, then load-or-create; record whether it computed."""
    path, count, cases, barrier, log = args
    barrier.wait(timeout=30)

    def make():
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        # Widen the window in which a second maker could sneak in if the lock were missing.
        import time
        time.sleep(0.2)
        # Weights that differ per process: two makers would write two different maps.
        return {c: (hash((c, os.getpid())) % 1000) + 1 for c in cases}, f"voxels-{os.getpid()}"

    m = load_or_create(path, count, cases, make, "p")
    return json.dumps(m, sort_keys=True)


def _race_worker(path, count, cases, barrier, log, queue):
    try:
        queue.put(("ok", _race_one((path, count, cases, barrier, log))))
    except BaseException as exc:  # noqa: BLE001 - report to the parent
        queue.put(("error", repr(exc)))


@pytest.mark.parametrize("n_procs", [6])
def test_load_or_create_race_between_processes_makes_one_map(tmp_path: Path, n_procs: int) -> None:
    ctx = multiprocessing.get_context("fork")
    path = str(tmp_path / "pre" / ".nnrun" / "shards.p.json")
    log = str(tmp_path / "makers.log")
    barrier = ctx.Barrier(n_procs)
    queue = ctx.Queue()
    procs = [ctx.Process(target=_race_worker, args=(path, 4, CASES, barrier, log, queue)) for _ in range(n_procs)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
        assert p.exitcode == 0
    assert all(status == "ok" for status, _ in results), results
    maps = {m for _, m in results}
    assert len(maps) == 1                               # everyone got the same map
    makers = Path(log).read_text().split()
    assert len(makers) == 1                             # and exactly one process computed it
    on_disk = json.loads(Path(path).read_text())
    assert json.dumps(on_disk, sort_keys=True) == maps.pop()
    assert on_disk["balanced_by"] == f"voxels-{makers[0]}"
    leftovers = [p.name for p in Path(path).parent.iterdir() if ".tmp." in p.name]
    assert leftovers == []


# -- shard_from_env ---------------------------------------------------------------------------------


def test_shard_from_env_without_a_count_is_no_shard() -> None:
    assert shard_from_env({}) is None
    assert shard_from_env({SHARD_COUNT_ENV: "", SHARD_INDEX_ENV: "1"}) is None


def test_shard_from_env_reads_index_and_count() -> None:
    assert shard_from_env({SHARD_INDEX_ENV: "2", SHARD_COUNT_ENV: "5"}) == Shard(2, 5)


def test_shard_from_env_defaults_to_the_process_environment(monkeypatch) -> None:
    monkeypatch.setenv(SHARD_INDEX_ENV, "1")
    monkeypatch.setenv(SHARD_COUNT_ENV, "3")
    monkeypatch.delenv(SHARD_LIST_ENV, raising=False)
    assert shard_from_env() == Shard(1, 3)


@pytest.mark.parametrize("index,listed,expected", [("0", "1,3", 1), ("1", "1,3", 3), ("0", "2", 2),
                                                   ("2", "3,0,2", 2), ("1", "3,0,2", 0)])
def test_shard_from_env_with_a_list_runs_list_entry_i(index: str, listed: str, expected: int) -> None:
    env = {SHARD_INDEX_ENV: index, SHARD_COUNT_ENV: "4", SHARD_LIST_ENV: listed}
    assert shard_from_env(env) == Shard(expected, 4)


def test_shard_from_env_list_index_past_its_end() -> None:
    env = {SHARD_INDEX_ENV: "2", SHARD_COUNT_ENV: "4", SHARD_LIST_ENV: "1,3"}
    with pytest.raises(ShardError, match=f"{SHARD_INDEX_ENV}=2.*2 entries"):
        shard_from_env(env)


def test_shard_from_env_list_with_a_shard_past_the_count() -> None:
    env = {SHARD_INDEX_ENV: "0", SHARD_COUNT_ENV: "2", SHARD_LIST_ENV: "5"}
    with pytest.raises(ShardError, match="between 0 and 1"):
        shard_from_env(env)


@pytest.mark.parametrize("index", ["4", "-1", "10"])
def test_shard_from_env_index_out_of_range(index: str) -> None:
    with pytest.raises(ShardError, match="between 0 and 3"):
        shard_from_env({SHARD_INDEX_ENV: index, SHARD_COUNT_ENV: "4"})


def test_shard_from_env_count_without_index_is_a_shard_error() -> None:
    with pytest.raises(ShardError, match=SHARD_INDEX_ENV):
        shard_from_env({SHARD_COUNT_ENV: "4"})


@pytest.mark.parametrize("env", [{SHARD_COUNT_ENV: "four", SHARD_INDEX_ENV: "0"},
                                 {SHARD_COUNT_ENV: "4", SHARD_INDEX_ENV: "x"}])
def test_shard_from_env_garbage_is_a_shard_error(env: dict) -> None:
    with pytest.raises(ShardError):
        shard_from_env(env)


# -- header_weights ---------------------------------------------------------------------------------


def test_header_weights_counts_voxels_of_every_channel(tmp_path: Path) -> None:
    specs = [CaseSpec((12, 10, 6), (1.0, 1.0, 1.0)), CaseSpec((7, 9, 5), (1.0, 1.0, 2.0))]
    make_dataset(tmp_path, 502, "Two", specs, channels=2)
    ds = load_raw_dataset(tmp_path, 502)
    weights = header_weights({c.case_id: list(c.images) for c in ds.cases})
    assert weights == {c.case_id: 2 * math.prod(s.shape) for c, s in zip(ds.cases, specs)}
    # Larger images weigh more, so they are spread first.
    assert weights[ds.cases[0].case_id] > weights[ds.cases[1].case_id]


def test_header_weights_falls_back_to_file_size(tmp_path: Path) -> None:
    a, b = tmp_path / "a_0000.png", tmp_path / "b_0000.png"
    a.write_bytes(b"x" * 300)
    b.write_bytes(b"y" * 45)
    assert header_weights({"a": [str(a)], "b": [str(b)], "none": []}) == {"a": 300, "b": 45, "none": 0}


def test_header_weights_missing_file_weighs_nothing(tmp_path: Path) -> None:
    real = tmp_path / "r.bin"
    real.write_bytes(b"z" * 10)
    assert header_weights({"c": [str(tmp_path / "gone.nii.gz"), str(real)]}) == {"c": 10}
