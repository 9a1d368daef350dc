"""The CLI of sharding and of ``--runtime``: bad input is one line and exit 2, ``nnrun merge`` end to end.

Driven through runner.cli.app.main as tests/unit/test_cli.py does; no Docker (the
preprocess tests replace Preprocess by the recorder of tests/conftest.py, and
``nnrun merge`` only reads files).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import blosc2
import jsonschema
import numpy as np
import pytest

from runner.cli import app as cli
from runner.cli import preprocess as cli_preprocess
from runner.dataset import load_raw_dataset
from runner.demo import CaseSpec, make_dataset
from runner.diagnosis.report import load_schema
from runner.engines.host import HostEngine
from runner.run.locks import acquire, owner_info, scope_for_run
from runner.shards import Shard, build_map, cases_of, map_path


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


def one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


def one_json_object(stdout: str) -> dict:
    data = json.loads(stdout)                # fails on two objects or trailing text
    assert isinstance(data, dict)
    assert stdout.endswith("\n") and stdout.count("\n") == 1
    return data


# -- preprocess: --shard and --runtime ---------------------------------------------------------------------

BASE = ["preprocess", "-d", "501", "--mem", "4g"]


@pytest.mark.parametrize("value,mentions", [
    ("3/2", "3/2"), ("2/2", "2/2"), ("abc", "abc"), ("1/0", "1/0"), ("-1/4", "-1/4"), ("1", "K/N"),
])
def test_bad_shard_is_one_line_bad_input(value: str, mentions: str, fake_preprocess, capsys) -> None:
    code, out, err = run([*BASE, "--shard", value], capsys)
    assert code == 2 and out == ""
    line = one_clean_line(err)
    assert line.startswith("nnrun: bad_input: ") and "--shard" in line and mentions in line
    assert fake_preprocess.calls == []          # nothing was started


@pytest.mark.parametrize("flag", ["--runtime", "--engine"])
def test_bad_runtime_is_one_line_bad_input(flag: str, fake_preprocess, capsys) -> None:
    code, out, err = run([*BASE, flag, "foo"], capsys)
    assert code == 2 and out == ""
    line = one_clean_line(err)
    assert line.startswith("nnrun: bad_input: ") and "--runtime" in line and "'foo'" in line
    for runtime in cli_preprocess.RUNTIMES:
        assert runtime in line                  # the choices are named
    assert fake_preprocess.calls == []


@pytest.mark.parametrize("extra", [["--shard", "3/2"], ["--shard", "abc"], ["--runtime", "foo"]])
def test_bad_shard_or_runtime_with_json_prints_one_object(extra, fake_preprocess, capsys) -> None:
    code, out, err = run([*BASE, *extra, "--json"], capsys)
    assert code == 2
    data = one_json_object(out)
    jsonschema.Draft202012Validator(load_schema()).validate(data)
    assert data["outcome"] == "bad_input" and data["exit_code"] == 2
    assert extra[1] in data["message"]
    one_clean_line(err)


def test_shard_runtime_and_host_python_reach_the_run(fake_preprocess, capsys, tmp_path) -> None:
    python = str(tmp_path / "venv" / "bin" / "python")
    code, _, err = run([*BASE, "--shard", "1/4", "--runtime", "host", "--host-python", python], capsys)
    assert code == 0, err
    settings = fake_preprocess.settings
    assert settings.shard == Shard(1, 4)
    assert settings.runtime == "host"
    # The flags are kept for the commands nnrun prints (retry, resubmit).
    argv = settings.passthrough_argv
    assert argv[argv.index("--shard") + 1] == "1/4"
    assert argv[argv.index("--runtime") + 1] == "host"
    assert argv[argv.index("--host-python") + 1] == python
    # The engine behind --runtime host is the host engine with that Python (created only when called).
    engine_factory = fake_preprocess.calls[-1][2]
    engine = engine_factory()
    assert isinstance(engine, HostEngine) and engine.python == python


def test_engine_alias_of_runtime(fake_preprocess, capsys) -> None:
    code, _, _ = run([*BASE, "--engine", "host"], capsys)
    assert code == 0 and fake_preprocess.settings.runtime == "host"


def test_defaults_no_shard_docker_runtime(fake_preprocess, capsys) -> None:
    code, _, _ = run(BASE, capsys)
    assert code == 0
    settings = fake_preprocess.settings
    assert settings.shard is None and settings.runtime == "docker"
    assert "--shard" not in settings.passthrough_argv and "--runtime" not in settings.passthrough_argv


def test_engine_factory_for_host_uses_the_default_python(monkeypatch) -> None:
    monkeypatch.delenv("NNRUN_HOST_PYTHON", raising=False)
    engine = cli_preprocess.engine_factory_for("host")()
    assert isinstance(engine, HostEngine) and engine.python == sys.executable


def test_parse_shard_helper() -> None:
    assert cli_preprocess.parse_shard_arg(None) is None
    assert cli_preprocess.parse_shard_arg("0/3") == Shard(0, 3)
    from runner.errors import BadInputError
    with pytest.raises(BadInputError):
        cli_preprocess.parse_shard_arg("3/3")


# -- nnrun merge -------------------------------------------------------------------------------------------

PLANS = "nnUNetPlans"
CONFIGS = ("2d", "3d_fullres")


def _write_case(folder: Path, case: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    blosc2.asarray(np.zeros((2, 3, 4), np.float32), urlpath=str(folder / f"{case}.b2nd"), mode="w")
    blosc2.asarray(np.ones((2, 3, 4), np.int8), urlpath=str(folder / f"{case}_seg.b2nd"), mode="w")
    (folder / f"{case}.pkl").write_bytes(b"\x80\x04}\x94.")


@pytest.fixture
def sharded(tmp_path: Path):
    """raw + preprocessed roots of a complete dataset preprocessed in 2 shards; returns (raw, pre_root, pre, map)."""
    raw = tmp_path / "raw"
    make_dataset(raw, 501, "Tiny", [CaseSpec((6, 5, 4), (1.0, 1.0, 1.0)), CaseSpec((5, 5, 4), (1.0, 1.0, 1.0)),
                                    CaseSpec((4, 6, 5), (1.0, 1.0, 1.0)), CaseSpec((5, 4, 4), (1.0, 1.0, 1.0))])
    ds = load_raw_dataset(raw, 501)
    pre_root = tmp_path / "preprocessed"
    pre = pre_root / ds.name
    pre.mkdir(parents=True)
    (pre / "dataset_fingerprint.json").write_text("{}")
    (pre / "dataset.json").write_text(json.dumps(ds.dataset_json))
    (pre / f"{PLANS}.json").write_text(json.dumps(
        {"configurations": {c: {"data_identifier": f"{PLANS}_{c}"} for c in CONFIGS}}))
    cases = sorted(c.case_id for c in ds.cases)
    (pre / "gt_segmentations").mkdir()
    for case in cases:
        (pre / "gt_segmentations" / f"{case}{ds.file_ending}").write_bytes(b"gt")
        for c in CONFIGS:
            _write_case(pre / f"{PLANS}_{c}", case)
    shard_map = build_map({c: i + 1 for i, c in enumerate(cases)}, 2, PLANS, "voxels")
    path = Path(map_path(pre, PLANS))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(shard_map))
    return raw, pre_root, pre, shard_map


def _merge_argv(raw: Path, pre_root: Path, *extra: str) -> list[str]:
    return ["merge", "-d", "501", "--raw", str(raw), "--preprocessed", str(pre_root), *extra]


def test_merge_complete_exits_0(sharded, capsys) -> None:
    raw, pre_root, pre, _ = sharded
    code, out, err = run(_merge_argv(raw, pre_root), capsys)
    assert code == 0, err
    assert err == ""                                 # the result is on stdout
    first = out.splitlines()[0]
    assert first.startswith("nnrun: ok: ") and pre.name in first and "(2 shards)" in first


def test_merge_missing_case_exits_2_naming_shard_and_command(sharded, capsys) -> None:
    raw, pre_root, pre, shard_map = sharded
    victim = cases_of(shard_map, 1)[0]
    (pre / f"{PLANS}_3d_fullres" / f"{victim}.pkl").unlink()
    code, out, err = run(_merge_argv(raw, pre_root, "--mem", "8g"), capsys)
    assert code == 2 and err == ""                   # an incomplete dataset is merge's result: stdout
    lines = out.splitlines()
    assert lines[0].startswith("nnrun: bad_input: ") and "1 case(s) missing" in lines[0]
    assert any(line.strip() == f"shard 1/2: {victim}" for line in lines), out
    assert "nnrun preprocess -d 501 --mem 8g --shard 1/2" in out
    assert "--shard 0/2" not in out                  # only the shard that needs it


def test_merge_json_complete(sharded, capsys) -> None:
    raw, pre_root, _, _ = sharded
    code, out, _ = run(_merge_argv(raw, pre_root, "--json"), capsys)
    assert code == 0
    data = one_json_object(out)
    assert data["outcome"] == "ok" and data["complete"] is True and data["exit_code"] == 0
    assert data["next"] is None and data["shards"] == 2
    assert sorted(c["configuration"] for c in data["configurations"]) == list(CONFIGS)


def test_merge_json_incomplete(sharded, capsys) -> None:
    raw, pre_root, pre, shard_map = sharded
    victim = cases_of(shard_map, 0)[-1]
    raw_bytes = (pre / f"{PLANS}_2d" / f"{victim}_seg.b2nd").read_bytes()
    (pre / f"{PLANS}_2d" / f"{victim}_seg.b2nd").write_bytes(raw_bytes[: len(raw_bytes) // 2])   # cut short
    code, out, err = run(_merge_argv(raw, pre_root, "--json"), capsys)
    assert code == 2
    data = one_json_object(out)
    assert data["outcome"] == "bad_input" and data["exit_code"] == 2 and data["complete"] is False
    assert data["incomplete_by_shard"] == {"0": [victim]}
    assert data["next"] == "nnrun preprocess -d 501 --mem SIZE --shard 0/2"
    assert "Traceback" not in err


def test_merge_without_preprocessed_dataset_is_one_line(sharded, tmp_path, capsys) -> None:
    raw, _, _, _ = sharded
    empty = tmp_path / "empty_root"
    empty.mkdir()
    code, out, err = run(_merge_argv(raw, empty), capsys)
    assert code == 2 and out == ""
    line = one_clean_line(err)
    assert line.startswith("nnrun: bad_input: ") and "does not exist" in line


def test_merge_without_preprocessed_dataset_json(sharded, tmp_path, capsys) -> None:
    raw, _, _, _ = sharded
    empty = tmp_path / "empty_root"
    empty.mkdir()
    code, out, err = run(_merge_argv(raw, empty, "--json"), capsys)
    assert code == 2
    data = one_json_object(out)
    assert data["outcome"] == "bad_input" and data["exit_code"] == 2 and "does not exist" in data["message"]
    one_clean_line(err)


def test_merge_before_planning_is_bad_input(sharded, capsys) -> None:
    raw, pre_root, pre, _ = sharded
    (pre / "dataset_fingerprint.json").unlink()
    code, _, err = run(_merge_argv(raw, pre_root), capsys)
    assert code == 2
    line = one_clean_line(err)
    assert "dataset_fingerprint.json" in line and "--no_pp" in line


def test_merge_without_raw_folder(sharded, monkeypatch, capsys) -> None:
    _, pre_root, _, _ = sharded
    monkeypatch.delenv("nnUNet_raw", raising=False)
    code, _, err = run(["merge", "-d", "501", "--preprocessed", str(pre_root)], capsys)
    assert code == 2
    assert "nnUNet_raw" in one_clean_line(err)


def test_merge_refused_while_a_shard_runs(sharded, capsys) -> None:
    raw, pre_root, pre, _ = sharded
    # A shard run of this dataset holds its locks (shard 2 of 2 in the lock module's 1-based numbering).
    held = acquire(pre, scope_for_run(("2d", "3d_fullres", "3d_lowres"), no_pp=False, shard=(2, 2)),
                   owner_info("shard-run-xyz"))
    try:
        code, out, err = run(_merge_argv(raw, pre_root), capsys)
    finally:
        held.release()
    assert code == 2 and out == ""
    line = one_clean_line(err)
    assert line.startswith("nnrun: bad_input: ")
    assert "shard-run-xyz" in line                   # the holder is named
    # Once the shard run is gone, merge runs.
    code, _, err = run(_merge_argv(raw, pre_root), capsys)
    assert code == 0, err


def test_merge_with_a_map_that_is_not_a_map_is_not_an_internal_error(sharded, capsys, monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))      # the crash log goes there, not to ~
    raw, pre_root, pre, _ = sharded
    Path(map_path(pre, PLANS)).write_text("{}")
    code, _, err = run(_merge_argv(raw, pre_root), capsys)
    assert "internal error" not in err
    assert code in (0, 2)
