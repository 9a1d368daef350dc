"""The command line's conventions, command by command: results on stdout, progress and errors on stderr,
-h everywhere, --version, readable help placeholders, --runtime, names that must match; no Docker.

Driven through runner.cli.app.main as tests/unit/test_cli.py does.
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

from runner.cli import app as cli
from runner.diagnosis.report import RunReport, dumps
from runner.errors import Outcome

GIB = 1 << 30
MIB = 1 << 20


def run(argv, capsys) -> tuple[int, str, str]:
    code = cli.main(argv)
    out, err = capsys.readouterr()
    return code, out, err


class FakeEngine:
    """Enough of an engine for `nnrun estimate`: the host's memory (the baseline is faked separately)."""

    def info(self):
        return SimpleNamespace(name="docker", mem_total_bytes=64 * GIB)


@pytest.fixture
def fake_estimate_engine(monkeypatch):
    from runner.estimate.baseline import Baseline
    seen: list[str] = []

    def factory(name):
        seen.append(name)
        return FakeEngine

    monkeypatch.setattr("runner.engines.docker.engine_factory", factory)
    monkeypatch.setattr("runner.cli.estimate.measure_baseline",
                        lambda engine_factory, image, cache_dir: Baseline(400 * MIB, 400 * MIB, "x", True))
    return seen


# -- 1. results on stdout, progress and diagnostics on stderr --------------------------------

def write_run_folder(tmp_path, report: RunReport):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "report.json").write_text(dumps(report))
    (run_dir / "manifest.json").write_text("{}")
    return run_dir


def test_report_prints_the_report_on_stdout(tmp_path, capsys):
    run_dir = write_run_folder(tmp_path, RunReport(outcome=Outcome.OOM, message="fake oom", log_path="/x/nnunet.log"))
    code, out, err = run(["report", str(run_dir)], capsys)
    assert code == 0 and err == ""
    assert out.startswith("nnrun: oom (out of memory): fake oom\n")
    assert f"manifest.json: {run_dir / 'manifest.json'}" in out


def test_report_json_is_one_object_on_stdout(tmp_path, capsys):
    run_dir = write_run_folder(tmp_path, RunReport(outcome=Outcome.OK, message="fake ok"))
    code, out, err = run(["report", str(run_dir), "--json"], capsys)
    assert code == 0 and json.loads(out)["outcome"] == "ok" and out.count("\n") == 1


def test_report_of_a_missing_folder_is_one_line_on_stderr(tmp_path, capsys):
    code, out, err = run(["report", str(tmp_path / "nothing")], capsys)
    assert code == 2 and out == "" and err.startswith("nnrun: bad_input: no report.json") and err.count("\n") == 1


def test_estimate_prints_the_estimate_on_stdout(tiny_raw, fake_estimate_engine, capsys):
    code, out, err = run(["estimate", "-d", "501", "--mem", "4g", "--raw", str(tiny_raw)], capsys)
    assert code == 0, err
    assert out.startswith("memory cap ") and "largest -np that fits" in out
    assert err == ""


def test_estimate_json_keeps_the_human_text_on_stderr(tiny_raw, fake_estimate_engine, capsys):
    code, out, err = run(["estimate", "-d", "501", "--mem", "4g", "--raw", str(tiny_raw), "--json"], capsys)
    assert code == 0, err
    assert json.loads(out)["cap_bytes"] == 4 * GIB and out.count("\n") == 1
    assert err.startswith("memory cap ")


@pytest.fixture
def no_docker(monkeypatch, tmp_path):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    monkeypatch.setenv("nnUNet_raw", str(tmp_path))
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path))


def test_doctor_prints_its_checks_on_stdout(no_docker, capsys):
    code, out, err = run(["doctor", "--no-probe"], capsys)
    assert code != 0                                     # no daemon
    assert "docker daemon" in out and "nonexistent.sock" in out
    assert err == ""


def test_doctor_json_keeps_the_checks_on_stderr(no_docker, capsys):
    code, out, err = run(["doctor", "--no-probe", "--json"], capsys)
    data = json.loads(out)
    assert out.count("\n") == 1 and data["exit_code"] == code
    assert "docker daemon" in err


# -- 2. --version, -h everywhere, shell completion -------------------------------------------

COMMANDS = [[], ["preprocess"], ["merge"], ["estimate"], ["report"], ["doctor"], ["make-demo"], ["version"],
            ["slurm"], ["slurm", "submit"], ["slurm", "status"], ["k8s"], ["k8s", "manifest"], ["k8s", "diagnose"],
            ["image"], ["image", "build"]]


def test_version_option_prints_the_version(capsys):
    from runner import __version__
    code, out, err = run(["--version"], capsys)
    assert code == 0 and out == f"{__version__}\n" and err == ""


@pytest.mark.parametrize("command", COMMANDS, ids=lambda c: " ".join(c) or "nnrun")
def test_every_command_takes_h_like_help(command, capsys):
    code, out, err = run([*command, "-h"], capsys)
    assert code == 0, err
    assert out.startswith(f"Usage: {' '.join(['nnrun', *command])} ")
    assert "-h, --help" in out
    assert (code, out) == run([*command, "--help"], capsys)[:2]


def test_a_usage_error_points_at_the_help_of_its_own_command(capsys):
    code, out, err = run(["estimate", "--bogus", "--json"], capsys)
    assert code == 2
    assert json.loads(out)["hint"] == "see nnrun estimate --help"
    assert err.strip().endswith("(see nnrun estimate --help)")


def test_show_completion_prints_the_script_for_the_detected_shell(monkeypatch, capsys):
    import shellingham
    monkeypatch.setenv("SHELL", "/bin/bash")
    monkeypatch.setattr(shellingham, "detect_shell", lambda *a, **k: ("bash", "/bin/bash"))
    code, out, err = run(["--show-completion"], capsys)
    assert code == 0, err
    assert "_nnrun_completion" in out and "_NNRUN_COMPLETE" in out      # the bash completion function for nnrun


def test_the_shell_completer_itself_answers_through_main(monkeypatch, capsys):
    # What the installed completion script runs on <TAB>: the completion exits early, main() returns its code.
    monkeypatch.setenv("_NNRUN_COMPLETE", "complete_bash")
    monkeypatch.setenv("COMP_WORDS", "nnrun preprocess --ru")
    monkeypatch.setenv("COMP_CWORD", "2")
    code, out, _ = run([], capsys)
    assert code == 0 and out.split() == ["--runtime"]


# -- 3. help placeholders that read well ---------------------------------------------------------

def options_section(help_text: str) -> str:
    return help_text.split("\nOptions:\n", 1)[1]


@pytest.mark.parametrize("command", [c for c in COMMANDS if c not in ([], ["slurm"], ["k8s"], ["image"])],
                         ids=lambda c: " ".join(c))
def test_help_has_no_type_placeholders(command, capsys):
    code, out, _ = run([*command, "--help"], capsys)
    assert code == 0
    options = options_section(out)
    for bad in ("<list[", "range>", "<str>", "<int>", "<float>", "<path>", "[default: SIZE]"):
        assert bad not in options, (bad, options)


@pytest.mark.parametrize("command,expected", [
    (["preprocess"], ["-d ID ", "--mem SIZE ", "--retry N ", "--shm-size SIZE ", "--shard K/N ", "-c CONFIG...",
                      "--runtime docker|podman|host "]),
    (["estimate"], ["-d ID ", "--mem SIZE ", "--runtime docker|podman "]),
    (["doctor"], ["--runtime docker|podman ", "--image IMAGE "]),
    (["merge"], ["-d ID ", "--mem SIZE "]),
    (["report"], ["RUN_DIR"]),
    (["slurm", "submit"], ["-d ID ", "--mem SIZE ", "--shards N ", "--retry N "]),
    (["slurm", "status"], ["--interval SECONDS ", "JOBID|DIR"]),
    (["k8s", "manifest"], ["-d ID ", "--mem SIZE ", "--shards N ", "--run-as UID:GID "]),
    (["image", "build"], ["--tag IMAGE ", "--base-image IMAGE ", "--cache DIR ", "--runtime docker|podman "]),
], ids=lambda v: " ".join(v) if isinstance(v, list) and v and not v[0].startswith("-") else None)
def test_help_names_what_each_option_takes(command, expected, capsys):
    _, out, _ = run([*command, "--help"], capsys)
    for text in expected:
        assert text in out, (text, out)


def test_merge_mem_has_no_fake_default_and_the_command_says_size(tmp_path, capsys):
    _, out, _ = run(["merge", "--help"], capsys)
    mem_help = options_section(out).split("--mem SIZE", 1)[1].split("\n  -", 1)[0]
    assert "[default: SIZE]" not in mem_help and "--mem SIZE" in " ".join(mem_help.split())


def test_merge_refuses_a_mem_that_mem_would_refuse(tiny_raw, tmp_path, capsys):
    code, out, err = run(["merge", "-d", "501", "--raw", str(tiny_raw), "--preprocessed", str(tmp_path),
                          "--mem", "lots"], capsys)
    assert code == 2 and "--mem" in err and err.count("\n") == 1


# -- 4. --runtime everywhere (--engine: its old name) -------------------------------------------

@pytest.mark.parametrize("flag", ["--runtime", "--engine"])
def test_estimate_takes_runtime_and_its_old_name(flag, tiny_raw, fake_estimate_engine, capsys):
    code, out, err = run(["estimate", "-d", "501", "--mem", "4g", "--raw", str(tiny_raw), flag, "podman"], capsys)
    assert code == 0, err
    assert fake_estimate_engine == ["podman"]


@pytest.mark.parametrize("value", ["bogus", "host"])
def test_estimate_bad_runtime_names_runtime_and_not_image(value, tiny_raw, fake_estimate_engine, capsys):
    code, out, err = run(["estimate", "-d", "501", "--mem", "4g", "--raw", str(tiny_raw), "--runtime", value,
                          "--json"], capsys)
    assert code == 2
    data = json.loads(out)
    assert data["outcome"] == "bad_input" and "--runtime" in data["message"] and f"'{value}'" in data["message"]
    assert "--image" not in out + err
    assert err.count("\n") == 1 and fake_estimate_engine == []


def test_doctor_takes_runtime(no_docker, monkeypatch, capsys):
    seen = []

    def factory(name):
        seen.append(name)
        raise SystemError("stop here")

    monkeypatch.setattr("runner.engines.docker.engine_factory", factory)
    code, _, err = run(["doctor", "--runtime", "podman"], capsys)
    assert seen == ["podman"] and code == 1 and "stop here" in err
    code, _, err = run(["doctor", "--runtime", "lxc"], capsys)
    assert code == 2 and "--runtime" in err and "'lxc'" in err


def test_runtime_and_engine_that_disagree_are_bad_input(fake_preprocess, capsys):
    code, _, err = run(["preprocess", "-d", "501", "--mem", "4g", "--runtime", "docker", "--engine", "podman"],
                       capsys)
    assert code == 2 and "--engine is the old name of --runtime" in err and fake_preprocess.calls == []


def test_engine_is_hidden_from_the_help(capsys):
    for command in (["preprocess"], ["estimate"], ["doctor"]):
        _, out, _ = run([*command, "--help"], capsys)
        assert "--engine" not in out and "--runtime" in out


# -- 5. names and values that used to be silently wrong ----------------------------------------

def never_called_engine():
    pytest.fail("the container engine was touched although the input is bad")


@pytest.fixture
def no_engine(monkeypatch):
    """The real Preprocess (pre-flight included), with an engine factory that must not be used."""
    from runner.run.preprocess import Preprocess as RealPreprocess

    def build(opts, settings, engine_factory, sink=None):
        return RealPreprocess(opts, settings, never_called_engine, sink)
    monkeypatch.setattr("runner.cli.preprocess.Preprocess", build)


def test_a_dataset_name_that_is_not_the_folder_is_bad_input(tiny_raw, tmp_path, no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "Dataset501_Wrong", "--mem", "4g", "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre"), "--json"], capsys)
    assert code == 2
    data = json.loads(out)
    assert data["outcome"] == "bad_input"
    assert "Dataset501_Wrong" in data["message"] and "Dataset501_Tiny" in data["message"]    # the folder that exists
    assert err.count("\n") == 1 and "Dataset501_Tiny" in err
    assert not (tmp_path / "pre").exists()


def test_the_right_dataset_name_or_a_bare_id_still_run(tiny_raw, tmp_path, no_engine, capsys, monkeypatch):
    # Past the dataset, the run reaches the engine: that it does shows the name was accepted.
    reached = []

    def stop(*a, **k):
        reached.append(True)
        raise SystemError("engine reached")
    monkeypatch.setattr(__name__ + ".never_called_engine", stop)
    for name in ("Dataset501_Tiny", "501", "Dataset501"):
        code, _, err = run(["preprocess", "-d", name, "--mem", "4g", "--raw", str(tiny_raw),
                            "--preprocessed", str(tmp_path / "pre"), "--skip-file-check", "-q"], capsys)
        assert code == 1 and "engine reached" in err, (name, err)
    assert len(reached) == 3


@pytest.mark.parametrize("command", [["estimate", "--mem", "4g"], ["merge"],
                                     ["slurm", "submit", "--mem", "4g", "--shards", "2"]])
def test_other_commands_check_the_dataset_name_too(command, tiny_raw, tmp_path, fake_estimate_engine, monkeypatch,
                                                   capsys):
    monkeypatch.setenv("NNRUN_SLURM_PYTHON", "/usr/bin/python3")
    (tmp_path / "pre" / "Dataset501_Tiny").mkdir(parents=True)
    code, out, err = run([*command, "-d", "Dataset501_Wrong", "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre"), "--dry-run" if "slurm" in command else "--json"],
                         capsys)
    assert code == 2
    assert "Dataset501_Wrong" in err and "Dataset501_Tiny" in err


def test_k8s_manifest_checks_the_dataset_name_against_the_raw_folder(tiny_raw, capsys):
    code, out, err = run(["k8s", "manifest", "-d", "Dataset501_Wrong", "--mem", "4g", "--shards", "2",
                          "--raw", str(tiny_raw), "--raw-claim", "r", "--preprocessed-claim", "p"], capsys)
    assert code == 2 and out == ""
    assert "Dataset501_Wrong" in err and "Dataset501_Tiny" in err


@pytest.mark.parametrize("command", [["estimate", "--mem", "4g", "--preprocessed", "."],
                                     ["merge", "--preprocessed", "."],
                                     ["k8s", "manifest", "--mem", "4g", "--shards", "2", "--raw-claim", "r",
                                      "--preprocessed-claim", "p"]])
def test_two_datasets_are_bad_input_everywhere(command, tiny_raw, tmp_path, fake_estimate_engine, capsys):
    code, out, err = run([*command, "-d", "501", "502", "--raw", str(tiny_raw)], capsys)
    assert code == 2 and out == ""
    assert "one dataset" in err and "501 502" in err and err.count("\n") == 1
    assert fake_estimate_engine == []


@pytest.mark.parametrize("shm", ["lots", "0", "1k", ""])
def test_bad_shm_size_is_refused_up_front(shm, tiny_raw, tmp_path, no_engine, capsys):
    code, out, err = run(["preprocess", "-d", "501", "--mem", "4g", "--shm-size", shm, "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre"), "--json"], capsys)
    assert code == 2
    data = json.loads(out)
    assert data["outcome"] == "bad_input" and "--shm-size" in data["message"] and "--mem" not in data["message"]
    assert err.count("\n") == 1


def test_bad_shm_size_is_checked_before_the_dataset(tmp_path, no_engine, capsys):
    code, out, _ = run(["preprocess", "-d", "501", "--mem", "4g", "--shm-size", "lots",
                        "--raw", str(tmp_path / "missing"), "--json"], capsys)
    assert code == 2 and "--shm-size" in json.loads(out)["message"]


def test_make_demo_into_a_file_is_one_line_bad_input(tmp_path, capsys):
    target = tmp_path / "a-file"
    target.write_text("x")
    code, out, err = run(["make-demo", "--raw", str(target)], capsys)
    assert code == 2 and out == ""
    assert err.startswith("nnrun: bad_input: ") and str(target) in err and err.count("\n") == 1
    code, _, err = run(["make-demo", "--raw", str(target / "below")], capsys)
    assert code == 2 and err.startswith("nnrun: bad_input: ") and err.count("\n") == 1


def test_make_demo_refusing_a_foreign_folder_is_bad_input(tmp_path, capsys):
    (tmp_path / "Dataset501_Demo").mkdir()                 # not made by nnrun
    code, out, err = run(["make-demo", "--raw", str(tmp_path)], capsys)
    assert code == 2 and out == "" and "refusing to overwrite" in err and err.count("\n") == 1


# -- 6. hints that work for an installed nnrun and name only what exists ---------------------------

def test_an_unreachable_docker_daemon_gets_advice_that_works_without_a_checkout(tiny_raw, tmp_path, monkeypatch,
                                                                                capsys):
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent.sock")
    code, out, err = run(["preprocess", "-d", "501", "--mem", "1g", "--raw", str(tiny_raw),
                          "--preprocessed", str(tmp_path / "pre"), "--json", "-q"], capsys)
    assert code == 6
    message = json.loads(out)["message"]
    assert "systemctl start docker" in message and "DOCKER_HOST" in message
    assert "scripts/" not in message and "scripts/" not in err


def test_no_user_facing_text_sends_users_to_the_scripts_of_a_checkout():
    import io
    import tokenize
    from pathlib import Path

    import runner
    forbidden = ("run scripts/", "scripts/setup.sh", "ensure-podman.sh", "ensure-docker.sh", "ensure-slurm.sh",
                 "host-env.sh")
    found = []
    for path in Path(runner.__file__).parent.rglob("*.py"):
        for tok in tokenize.generate_tokens(io.StringIO(path.read_text()).readline):
            if tok.type == tokenize.STRING and any(f in tok.string for f in forbidden):
                found.append(f"{path.name}:{tok.start[0]}: {tok.string[:80]}")
    assert found == []


def test_the_image_hint_names_a_way_that_exists(capsys):
    from runner import __version__
    from runner.doctor import IMAGE_ADVICE, image_advice
    from runner.engines.docker import IMAGE_HINT, _image_hint
    default = f"nnrun:{__version__}"
    for text in (IMAGE_HINT, IMAGE_ADVICE, _image_hint("docker", default), image_advice(default)):
        assert "--image" in text and "`nnrun image build`" in text and "scripts/" not in text
    # Another tag: the command that builds that tag.
    for text in (_image_hint("docker", "nnrun:x"), image_advice("nnrun:x")):
        assert "`nnrun image build --tag nnrun:x`" in text and "--image" in text
    assert "`nnrun image build --tag nnrun:x --runtime podman`" in _image_hint("podman", "nnrun:x")
    # The command exists and takes those options.
    code, out, _ = run(["image", "build", "--help"], capsys)
    assert code == 0 and "--tag IMAGE" in out and "--runtime docker|podman" in out


def damage(raw, case="case000"):
    image = next((raw / "Dataset501_Tiny" / "imagesTr").glob(f"{case}_0000.*"))
    image.write_bytes(image.read_bytes()[:20])                     # too short for a header
    return image


def test_estimate_hint_for_a_damaged_file_names_no_option_estimate_lacks(tiny_raw, fake_estimate_engine, capsys):
    image = damage(tiny_raw)
    code, out, err = run(["estimate", "-d", "501", "--mem", "4g", "--raw", str(tiny_raw), "--json"], capsys)
    assert code == 2
    data = json.loads(out)
    assert str(image) in data["message"] and "--skip-file-check" not in data["message"] + (data["hint"] or "")
    assert "--skip-file-check" not in err


def test_preprocess_still_names_skip_file_check_for_its_file_check(tiny_raw, tmp_path, no_engine, capsys):
    image = damage(tiny_raw)
    code, out, _ = run(["preprocess", "-d", "501", "--mem", "4g", "--raw", str(tiny_raw),
                        "--preprocessed", str(tmp_path / "pre"), "--json"], capsys)
    data = json.loads(out)
    assert code == 2 and str(image) in data["message"] and "--skip-file-check" in data["hint"]


class SmallHost:
    """An engine on a host with 23.5 GiB of memory: a larger --mem is refused before anything runs."""

    name = "docker"

    def info(self):
        return SimpleNamespace(name="docker", mem_total_bytes=int(23.5 * GIB))


def test_a_mem_above_the_host_is_answered_with_a_mem_value_that_parses(tiny_raw, tmp_path, monkeypatch, capsys):
    from runner.run.preprocess import Preprocess as RealPreprocess
    from runner.units import parse_mem
    monkeypatch.setattr("runner.cli.preprocess.Preprocess",
                        lambda opts, settings, engine_factory, sink=None: RealPreprocess(opts, settings, SmallHost, sink))
    code, out, _ = run(["preprocess", "-d", "501", "--mem", "32g", "--raw", str(tiny_raw),
                        "--preprocessed", str(tmp_path / "pre"), "--skip-file-check", "--json"], capsys)
    data = json.loads(out)
    assert code == 2 and "23.5 GiB" in data["message"]
    assert data["hint"] == "give --mem 23g or less"
    assert parse_mem("23g") <= 23.5 * GIB


def test_estimate_mem_above_the_host_gets_the_same_hint(tiny_raw, fake_estimate_engine, capsys):
    code, out, _ = run(["estimate", "-d", "501", "--mem", "100g", "--raw", str(tiny_raw), "--json"], capsys)
    data = json.loads(out)
    assert code == 2 and "64 GiB" in data["message"] and data["hint"] == "give --mem 64g or less"


def test_estimate_prints_the_cap_as_every_other_report_does(tiny_raw, fake_estimate_engine, capsys):
    from runner.units import format_bytes, parse_mem
    code, out, err = run(["estimate", "-d", "501", "--mem", "1200m", "--raw", str(tiny_raw)], capsys)
    cap = format_bytes(parse_mem("1200m"))
    assert cap == "1.2 GiB"
    assert out.startswith(f"memory cap {cap};")                  # as the run's report and the refusal below say it
    assert "1.17" not in out + err
    assert "per-worker baseline 400 MiB" in out
    if code == 2:                                                # what preprocess would refuse: the same cap
        assert f"{cap} cap" in err
    else:
        assert code == 0
