"""runner.cli.app.main: exit codes, one JSON object with --json, one-line errors; no Docker.

Where a run would need a container engine, runner.cli.preprocess.Preprocess is replaced:
either by the recorder of tests/conftest.py (``fake_preprocess``), or by the
real Preprocess with an engine factory that fails the test if it is called
(everything before the engine, pre-flight included, is real).
"""
from __future__ import annotations

import json
import signal

import jsonschema
import pytest

from runner.cli import app as cli
from runner.diagnosis.report import RunReport, load_schema
from runner.errors import Outcome, RunInterrupted
from runner.run.preprocess import Preprocess as RealPreprocess

TINY_ID = 501   # tests/conftest.py: tiny_raw holds Dataset501_Tiny


def never_called_engine():
    pytest.fail("the container engine was touched although the input is bad")


@pytest.fixture
def no_engine(monkeypatch):
    """The real Preprocess (pre-flight included), with an engine factory that must not be used."""
    def build(opts, settings, engine_factory, sink=None):
        return RealPreprocess(opts, settings, never_called_engine, sink)
    monkeypatch.setattr("runner.cli.preprocess.Preprocess", build)


def one_json_object(stdout: str) -> dict:
    """stdout holds exactly one JSON object (and nothing else but the final newline)."""
    data = json.loads(stdout)                       # fails on two objects or on extra text
    assert isinstance(data, dict)
    assert stdout.endswith("\n") and stdout.count("\n") == 1
    jsonschema.Draft202012Validator(load_schema()).validate(data)
    return data


def assert_one_clean_line(stderr: str) -> str:
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("nnrun:")
    return lines[0]


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


# -- bad input ---------------------------------------------------------------

@pytest.mark.parametrize("mem", ["abc", "0", "-1g", "", "16x", "1k"])
def test_bad_mem_is_bad_input_with_one_json_object(mem, no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "501", "--mem", mem, "--json"], capsys)
    assert code == 2
    data = one_json_object(out)
    assert data["outcome"] == "bad_input" and data["exit_code"] == 2
    assert "--mem" in data["message"]
    line = assert_one_clean_line(err)
    assert "bad_input" in line and "--mem" in line


def test_bad_mem_without_json_prints_nothing_on_stdout(no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "501", "--mem", "abc"], capsys)
    assert code == 2 and out == ""
    assert_one_clean_line(err)


@pytest.mark.parametrize("argv", [
    ["preprocess", "-d", "501", "--mem", "4g", "--bogus"],
    ["preprocess", "-d", "501", "--mem", "4g", "-x"],
    ["preprocess", "--mem", "4g"],                                   # -d missing
    ["preprocess", "-d", "501"],                                     # --mem missing
    ["preprocess", "-d", "501", "--mem", "4g", "-np", "two"],
    ["preprocess", "-d", "501", "--json", "--mem"],                 # --mem without its value
    ["no-such-command"],
])
def test_usage_errors_are_bad_input_with_one_json_object(argv, no_engine, capsys):
    code, out, err = run(argv if "--json" in argv else [*argv, "--json"], capsys)
    assert code == 2
    data = one_json_object(out)
    assert data["outcome"] == "bad_input"
    assert_one_clean_line(err)


def test_unknown_option_names_the_option(no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "--bogus", "--json"], capsys)
    assert code == 2
    assert "--bogus" in one_json_object(out)["message"]
    assert "--bogus" in err


def test_two_datasets_are_bad_input(no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "501", "502", "--mem", "4g", "--json"], capsys)
    assert code == 2
    data = one_json_object(out)
    assert "501" in data["message"] and "502" in data["message"]
    assert_one_clean_line(err)


@pytest.mark.parametrize("extra,word", [
    (["-np", "0"], "-np"), (["-np", "-1"], "-np"), (["-c", "2d", "2d"], "twice"),
    (["-c", "2d", "3d_fullres", "-np", "1", "2", "3"], "-np"), (["-pl", "not-a-class"], "-pl"),
    (["-overwrite_target_spacing", "1", "0.5"], "-overwrite_target_spacing"),
    (["-overwrite_plans_name", "--help"], "-overwrite_plans_name"),
])
def test_invalid_nnunet_options_are_bad_input(extra, word, no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g", *extra, "--json"], capsys)
    assert code == 2
    assert word in one_json_object(out)["message"]
    assert_one_clean_line(err)


def test_wrong_dataset_id_names_the_ids_found(tiny_raw, tmp_path, no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "502", "--mem", "4g", "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre"), "--json"], capsys)
    assert code == 2
    data = one_json_object(out)
    assert "502" in data["message"] and "501" in data["message"]
    line = assert_one_clean_line(err)
    assert "501" in line
    assert not (tmp_path / "pre").exists()                          # nothing was created


def test_no_raw_folder_is_bad_input(tmp_path, no_engine, capsys, monkeypatch):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "--json"], capsys)
    assert code == 2
    assert "nnUNet_raw" in one_json_object(out)["message"]


def test_mem_is_checked_before_the_dataset(tmp_path, no_engine, capsys):
    code, out, _ = run(["preprocess", "-d", "501", "--mem", "abc", "--raw", str(tmp_path / "missing"), "--json"],
                       capsys)
    assert code == 2 and "--mem" in one_json_object(out)["message"]


# -- help, version ---------------------------------------------------------------

@pytest.mark.parametrize("argv", [["preprocess", "--help"], ["preprocess", "-h"], ["--help"]])
def test_help_exits_0(argv, capsys):
    code, out, _ = run(argv, capsys)
    assert code == 0
    assert "Usage" in out


def test_bare_nnrun_prints_readable_help(capsys):
    code, out, err = run([], capsys)
    assert code in (0, 2)
    text = out + err
    assert "Usage:" in text
    assert "\n" in text.split("Usage:", 1)[1].strip()                # the help keeps its lines
    assert "bad_input" not in text


def test_version_prints_the_version(capsys):
    from runner import __version__
    code, out, _ = run(["version"], capsys)
    assert code == 0 and out.strip() == __version__


# -- the run itself (fake Preprocess) ----------------------------------------------

def test_options_and_settings_reach_preprocess(fake_preprocess, capsys):
    code, _, _ = run(["preprocess", "-d", "Dataset501_Demo", "--mem", "2.5g", "-c", "2d", "3d_fullres",
                      "-np", "8", "2", "-npfp", "1", "--verify_dataset_integrity", "--clean",
                      "-overwrite_target_spacing", "3", "0.8", "0.8", "--raw", "/r", "--preprocessed", "/p",
                      "--skip-file-check", "--shm-size", "512m", "-q"], capsys)
    assert code == 0
    opts, settings = fake_preprocess.opts, fake_preprocess.settings
    assert opts.dataset_id == 501
    assert opts.configurations == ("2d", "3d_fullres") and opts.np == (8, 2) and opts.npfp == 1
    assert opts.verify_dataset_integrity and opts.clean and not opts.no_pp
    assert opts.overwrite_target_spacing == (3.0, 0.8, 0.8)
    assert settings.mem == "2.5g" and settings.raw_root == "/r" and settings.preprocessed_root == "/p"
    assert settings.skip_file_check and settings.shm_size == "512m"
    assert settings.passthrough_argv == ["--raw", "/r", "--preprocessed", "/p", "--shm-size", "512m"]


def test_args_after_double_dash_reach_extra_args_verbatim(fake_preprocess, capsys):
    tail = ["-x", "--json", "a b", "--", "-c", "2d", "3d_fullres", ""]
    code, out, _ = run(["preprocess", "-d", "501", "--mem", "4g", "-q", "--", *tail], capsys)
    assert code == 0
    assert fake_preprocess.opts.extra_args == tuple(tail)
    assert fake_preprocess.opts.configurations == ("2d", "3d_fullres", "3d_lowres")   # -c after -- is not ours
    assert out == ""                                                 # --json after -- is not ours either


def test_json_after_double_dash_is_not_ours_even_for_a_usage_error(no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "--bogus", "--", "--json"], capsys)
    assert code == 2
    assert out == ""
    assert_one_clean_line(err)


def test_no_pbar_goes_to_nnunet_first(fake_preprocess, capsys):
    run(["preprocess", "-d", "501", "--mem", "4g", "--no_pbar", "-q", "--", "--verbose"], capsys)
    assert fake_preprocess.opts.extra_args == ("--no_pbar", "--verbose")


def test_extra_args_do_not_leak_into_the_next_invocation(fake_preprocess, capsys):
    run(["preprocess", "-d", "501", "--mem", "4g", "-q", "--", "-x"], capsys)
    run(["preprocess", "-d", "501", "--mem", "4g", "-q"], capsys)
    assert fake_preprocess.opts.extra_args == ()


@pytest.mark.parametrize("outcome,code", [
    (Outcome.OK, 0), (Outcome.OOM, 3), (Outcome.ERROR, 4), (Outcome.KILLED, 5), (Outcome.INFRA, 6),
])
def test_exit_code_and_json_follow_the_report(outcome, code, fake_preprocess, capsys):
    fake_preprocess.report = RunReport(outcome=outcome, message=f"fake {outcome.value}",
                                       victim="worker" if outcome is Outcome.OOM else None,
                                       victims=[{"role": "worker", "pid": 1, "case": None}]
                                       if outcome is Outcome.OOM else [],
                                       oom_kills=1 if outcome is Outcome.OOM else 0, log_path="/x/nnunet.log")
    c, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "--json", "-q"], capsys)
    assert c == code
    data = one_json_object(out)
    assert data["outcome"] == outcome.value and data["exit_code"] == code
    if outcome is Outcome.OK:
        assert err == ""                                             # -q: no report when ok
    else:
        assert f"fake {outcome.value}" in err


def test_ok_without_quiet_prints_the_report_on_stdout(fake_preprocess, capsys):
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g"], capsys)
    assert code == 0
    assert out == "nnrun: ok: fake run: ok\n"                        # the result: `nnrun preprocess ... > file`
    assert "fake run" not in err                                     # progress only


def test_the_report_of_a_failed_run_is_the_result_on_stdout(fake_preprocess, capsys):
    fake_preprocess.report = RunReport(outcome=Outcome.OOM, message="fake oom", log_path="/x/nnunet.log")
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "-q"], capsys)
    assert code == 3
    assert out.startswith("nnrun: oom (out of memory): fake oom\n") and "/x/nnunet.log" in out
    assert err == ""


def test_with_json_the_report_goes_to_stderr_and_stdout_is_one_json_object(fake_preprocess, capsys):
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "--json"], capsys)
    assert code == 0
    assert one_json_object(out)["outcome"] == "ok"
    assert "nnrun: ok: fake run: ok" in err


@pytest.mark.parametrize("signum,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupt_during_the_run_exits_128_plus_signal(signum, code, fake_preprocess, capsys):
    fake_preprocess.exc = RunInterrupted(signum)
    c, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "--json"], capsys)
    assert c == code
    data = one_json_object(out)
    assert data["outcome"] == "interrupted" and data["exit_code"] == code


def test_signal_handlers_are_restored_after_the_run(fake_preprocess, capsys):
    before = (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM))
    run(["preprocess", "-d", "501", "--mem", "4g", "-q"], capsys)
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before


# -- bugs in nnrun -----------------------------------------------------------------

def test_unexpected_exception_is_exit_1_with_one_line_and_a_crash_log(fake_preprocess, capsys, tmp_path,
                                                                      monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    fake_preprocess.exc = ZeroDivisionError("boom\nsecond line")
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "--json"], capsys)
    assert code == 1
    line = assert_one_clean_line(err)
    assert "ZeroDivisionError" in line
    logs = list((tmp_path / "cache" / "nnrun").glob("crash-*.log"))
    assert len(logs) == 1
    assert str(logs[0]) in line
    assert "Traceback" in logs[0].read_text() and "ZeroDivisionError: boom" in logs[0].read_text()
    data = one_json_object(out)
    assert data["outcome"] == "bug" and data["exit_code"] == 1 and data["log_path"] == str(logs[0])


# -- infra -------------------------------------------------------------------------

def test_unreachable_docker_daemon_is_infra_with_one_line(tiny_raw, tmp_path, monkeypatch, capsys):
    # The real DockerEngine: it fails to connect to a socket that does not exist (no daemon needed).
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    code, out, err = run(["preprocess", "-d", str(TINY_ID), "--mem", "1g", "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre"), "--json", "-q"], capsys)
    assert code == 6
    data = one_json_object(out)
    assert data["outcome"] == "infra"
    assert "nonexistent.sock" in data["message"]
    line = assert_one_clean_line(err)
    assert "infra" in line and "nonexistent.sock" in line


def test_unreachable_docker_daemon_without_quiet_ends_with_the_one_line_report(tiny_raw, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    code, out, err = run(["preprocess", "-d", str(TINY_ID), "--mem", "1g", "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre")], capsys)
    assert code == 6 and out == ""
    assert "Traceback" not in err
    assert err.splitlines()[-1].startswith("nnrun: infra:")
    assert "checking" in err                                          # the progress before it


def test_make_demo_without_raw_folder_is_bad_input(monkeypatch, capsys):
    monkeypatch.delenv("nnUNet_raw", raising=False)
    code, out, err = run(["make-demo"], capsys)
    assert code == 2
    assert_one_clean_line(err)


def test_the_nnrun_process_exits_with_its_code_and_complete_output_when_piped(tmp_path):
    # entry() ends with os._exit (no interpreter finalization): stdout must still be flushed whole.
    import subprocess
    import sys
    proc = subprocess.run([sys.executable, "-m", "runner.cli", "preprocess", "-d", "1", "--mem", "abc", "--json"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["outcome"] == "bad_input"
    assert proc.stderr.strip().startswith("nnrun: bad_input: invalid --mem 'abc'")
    version = subprocess.run([sys.executable, "-m", "runner.cli", "--version"], capture_output=True, text=True,
                             timeout=60)
    assert (version.returncode, version.stdout.strip()) == (0, __import__("runner").__version__)
