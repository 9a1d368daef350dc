"""Sharding: which cases shard K of N preprocesses.

Fingerprint extraction and planning are global (run once, e.g. by a
``--no_pp`` run or a Slurm/Kubernetes "plan" step); preprocessing is per case,
so N tasks can each preprocess a share of the cases into the same staging
folder.  Every task must use the same case -> shard map, so it is computed
once and written to ``.nnrun/shards.<plans name>.json`` in the preprocessed
dataset folder (next to the plans, inside nnrun's own folder so that the
dataset folder stays identical to a single run's).

Shards are numbered 0..N-1, like Slurm array task ids and Kubernetes
completion indexes.  The map balances predicted memory (the estimate) when
the host has one, else voxel counts from the image headers: greedy
largest-first onto the lightest shard, deterministic for the same input.

Standard library only: the agent imports it inside the image, and on a
``--runtime host`` node.
"""
from __future__ import annotations

import fcntl
import json
import math
import os
import re
from dataclasses import dataclass

from runner.rundir import write_json_atomic

# The agent's environment (set by the host, or by a Slurm script / Kubernetes Job).
SHARD_INDEX_ENV = "NNRUN_SHARD_INDEX"      # K; with SHARD_LIST_ENV, an index into that list
SHARD_COUNT_ENV = "NNRUN_SHARD_COUNT"      # N
SHARD_LIST_ENV = "NNRUN_SHARD_LIST"        # optional "1,3": index i runs shard list[i] (resubmitting some shards)
SHARD_MAP_ENV = "NNRUN_SHARD_MAP"          # path of the map file (as the agent sees it)
SKIP_PLANNING_ENV = "NNRUN_SKIP_PLANNING"  # "1": fingerprint and plans exist; only preprocess
PLANS_NAME_ENV = "NNRUN_PLANS_NAME"        # the plans identifier to preprocess with when planning is skipped

SCHEMA_VERSION = 1
_SHARD_ARG = re.compile(r"^\s*(\d+)\s*/\s*(\d+)\s*$")


class ShardError(ValueError):
    """A shard spec or map that cannot be used (the caller turns it into a bad-input error)."""


@dataclass(frozen=True)
class Shard:
    index: int     # 0..count-1
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_shard(text: str) -> Shard:
    """'1/4' -> Shard(1, 4).  K from 0 to N-1."""
    m = _SHARD_ARG.match(str(text))
    if not m:
        raise ShardError(f"invalid --shard {text!r}: give K/N with K from 0 to N-1, e.g. 0/4")
    k, n = int(m.group(1)), int(m.group(2))
    if n < 1:
        raise ShardError(f"invalid --shard {text!r}: N must be at least 1")
    if not 0 <= k < n:
        raise ShardError(f"invalid --shard {text!r}: K must be from 0 to {n - 1}")
    return Shard(k, n)


def parse_shard_list(text: str, count: int) -> list[int]:
    """'1,3' -> [1, 3] (shards to resubmit), each within 0..count-1, no repeats."""
    try:
        shards = [int(s) for s in str(text).replace(" ", "").split(",") if s != ""]
    except ValueError:
        raise ShardError(f"invalid shard list {text!r}: give shard numbers like 1,3") from None
    if not shards:
        raise ShardError("the shard list is empty")
    bad = [s for s in shards if not 0 <= s < count]
    if bad:
        raise ShardError(f"shard {bad[0]} is not between 0 and {count - 1}")
    if len(set(shards)) != len(shards):
        raise ShardError(f"shard list {text!r} repeats a shard")
    return shards


def assign(weights: dict[str, int], count: int) -> dict[str, int]:
    """Greedy largest-first: each case to the currently lightest shard (ties: lowest index).

    Ties between equal weights are broken by case name, so the map depends only
    on the input.  With more shards than cases some shards are empty.
    """
    if count < 1:
        raise ShardError("the shard count must be at least 1")
    loads = [0] * count
    sizes = [0] * count
    out: dict[str, int] = {}
    for case in sorted(weights, key=lambda c: (-int(weights[c]), c)):
        k = min(range(count), key=lambda i: (loads[i], sizes[i], i))
        out[case] = k
        loads[k] += int(weights[case])
        sizes[k] += 1
    return dict(sorted(out.items()))


def map_path(preprocessed_dataset: str | os.PathLike, plans_name: str) -> str:
    return os.path.join(os.fspath(preprocessed_dataset), ".nnrun", f"shards.{plans_name}.json")


def build_map(weights: dict[str, int], count: int, plans_name: str, balanced_by: str) -> dict:
    assignment = assign(weights, count)
    loads = [0] * count
    for case, k in assignment.items():
        loads[k] += int(weights[case])
    return {"schema_version": SCHEMA_VERSION, "plans_name": plans_name, "shards": count,
            "balanced_by": balanced_by, "assignment": assignment, "shard_weights": loads,
            "weights": {c: int(w) for c, w in sorted(weights.items())}}


def check_map(shard_map: dict, count: int, cases: list[str], path: str = "the shard map") -> None:
    """Refuse a map made for another shard count or another set of cases."""
    if shard_map.get("schema_version") != SCHEMA_VERSION or not isinstance(shard_map.get("assignment"), dict):
        raise ShardError(f"{path} is not an nnrun shard map (schema {shard_map.get('schema_version')!r})")
    if int(shard_map.get("shards", -1)) != count:
        raise ShardError(f"{path} splits the cases into {shard_map.get('shards')} shards, not {count}: "
                         f"use --shard K/{shard_map.get('shards')}, or delete the map once no shard runs")
    mapped, wanted = set(shard_map["assignment"]), set(cases)
    if mapped != wanted:
        extra = sorted(wanted - mapped)[:3] or sorted(mapped - wanted)[:3]
        raise ShardError(f"{path} was made for other cases than the dataset has now (e.g. {', '.join(extra)}): "
                         f"delete it once no shard runs, and rerun every shard")


def cases_of(shard_map: dict, index: int) -> list[str]:
    return sorted(c for c, k in shard_map["assignment"].items() if int(k) == index)


def read_map(path: str | os.PathLike) -> dict | None:
    try:
        with open(path) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as err:
        raise ShardError(f"cannot read the shard map {os.fspath(path)}: {err}") from None


def load_or_create(path: str | os.PathLike, count: int, cases: list[str], make_weights, plans_name: str) -> dict:
    """The map at ``path``; made (under an flock, written atomically) when no task made it yet.

    ``make_weights()`` returns ``(weights, balanced_by)`` and is called only
    when the map is made here.  Concurrent tasks serialise on ``<path>.lock``
    so exactly one map is ever written; once written it never changes, so a
    task that finds it reads it without the lock (the lock file may belong to
    another user, e.g. root on the host while the container runs as uid 1000).
    """
    path = os.fspath(path)
    existing = read_map(path)
    if existing is not None:
        check_map(existing, count, cases, path)
        return existing
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            os.fchmod(fd, 0o666)        # whoever runs the next task (host user or container user) can lock it
        except OSError:
            pass
        fcntl.flock(fd, fcntl.LOCK_EX)
        existing = read_map(path)
        if existing is not None:
            check_map(existing, count, cases, path)
            return existing
        weights, balanced_by = make_weights()
        weights = {**{c: 0 for c in cases}, **{c: w for c, w in weights.items() if c in set(cases)}}
        shard_map = build_map(weights, count, plans_name, balanced_by)
        write_json_atomic(path, shard_map, mode=0o644)     # read by other shards' container users
        return shard_map
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _env_int(env, name: str) -> int:
    value = env.get(name)
    if value is None or not str(value).strip().lstrip("-").isdigit():
        raise ShardError(f"{name} must be a whole number (got {value!r})")
    return int(value)


def shard_from_env(environ: dict | None = None) -> Shard | None:
    """The agent's shard: NNRUN_SHARD_INDEX/NNRUN_SHARD_COUNT, through NNRUN_SHARD_LIST when set."""
    env = os.environ if environ is None else environ
    count = env.get(SHARD_COUNT_ENV)
    if not count:
        return None
    count_i = _env_int(env, SHARD_COUNT_ENV)
    index = _env_int(env, SHARD_INDEX_ENV)
    if count_i < 1:
        raise ShardError(f"{SHARD_COUNT_ENV}={count_i}: the shard count must be at least 1")
    if env.get(SHARD_LIST_ENV):
        shards = parse_shard_list(env[SHARD_LIST_ENV], count_i)
        if not 0 <= index < len(shards):
            raise ShardError(f"{SHARD_INDEX_ENV}={index} but {SHARD_LIST_ENV} has {len(shards)} entries")
        index = shards[index]
    if not 0 <= index < count_i:
        raise ShardError(f"{SHARD_INDEX_ENV}={index} is not between 0 and {count_i - 1}")
    return Shard(index, count_i)


def header_weights(images: dict[str, list[str]]) -> dict[str, int]:
    """Voxels x channels of each case, from the image headers (every format nnU-Net reads); else file sizes."""
    from runner.formats.headers import read_info, reader_for

    def ending(name: str) -> str:
        return ".nii.gz" if name.lower().endswith(".nii.gz") else os.path.splitext(name)[1]

    weights = {}
    for case, files in images.items():
        total = 0
        for f in files:
            try:
                info = read_info(f, reader_for({"file_ending": ending(f)}, f))
                total += math.prod(info.shape) * info.components
            except Exception:  # noqa: BLE001 - unreadable: its size still orders the cases
                try:
                    total += os.path.getsize(f)
                except OSError:
                    pass
        weights[case] = total
    return weights
