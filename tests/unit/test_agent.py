"""runner.incontainer.agent, the in-container agent, on the host (no nnU-Net, no Docker).

* ``case_id_from_path``: the case id from an image or label file name, with
  and without the dataset's file ending (``NNRUN_FILE_ENDING``).
* ``per_case``: ``case_start`` / ``case_end`` (or ``case_error``, re-raising)
  lines with the pid and the peak RSS of that case in the events file named by
  ``NNRUN_AGENT_EVENTS``.
* ``in_phase``: the phase environment variables set around a main-process
  step and restored after it (its spawned workers inherit them).
* Pickling: wrapped functions still pickle by reference, and a REAL ``spawn``
  pool runs a wrapped function (tests/unit/_agent_spawn_target.py, wrapped at
  import time as the agent wraps nnU-Net) whose events come from the workers.
"""
from __future__ import annotations

import json
import os
import pickle

import pytest

from runner.incontainer.agent import AGENT_EVENTS_ENV, case_id_from_path, in_phase, per_case
from runner.run.telemetry import case_records
from runner.rundir import CONFIGURATION_ENV, FILE_ENDING_ENV, PHASE_ENV, read_jsonl

MIB = 2**20


def _emitter_modules():
    """The module(s) holding the agent's cached events descriptor ``_fd`` (runner.incontainer.agent, or
    runner.incontainer.events where emit() lives after the split)."""
    import importlib

    found = []
    for name in ("runner.incontainer.agent", "runner.incontainer.events"):
        try:
            module = importlib.import_module(name)
        except ImportError:
            continue
        if hasattr(module, "_fd"):
            found.append(module)
    assert found, "no module of the agent caches an events descriptor (_fd)"
    return found


def _reset_emitter(monkeypatch) -> None:
    """emit() opens the events file once per process and keeps the descriptor: start afresh."""
    for module in _emitter_modules():
        monkeypatch.setattr(module, "_fd", None)


@pytest.fixture
def events_file(tmp_path, monkeypatch):
    """A fresh agent events file; the agent's cached descriptor is reset before and closed after."""
    path = tmp_path / "agent.jsonl"
    monkeypatch.setenv(AGENT_EVENTS_ENV, str(path))
    monkeypatch.delenv(PHASE_ENV, raising=False)
    monkeypatch.delenv(CONFIGURATION_ENV, raising=False)
    _reset_emitter(monkeypatch)
    yield path
    for module in _emitter_modules():
        if module._fd is not None:
            os.close(module._fd)
            module._fd = None


def _events(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


# --------------------------------------------------------------------------- case ids

@pytest.mark.parametrize("path, case", [
    ("case003.nii.gz", "case003"),
    ("/data/raw/Dataset501_Demo/labelsTr/case003.nii.gz", "case003"),
    ("labelsTr/case.with.dots.nii.gz", "case.with.dots"),
    ("labelsTr/liver_7.nii", "liver_7"),
    ("labelsTr/p01.nrrd", "p01"),
    ("labelsTr/p01.mha", "p01"),
    ("labelsTr/slice_12.png", "slice_12"),
    ("labelsTr/slice_12.tif", "slice_12"),
    ("labelsTr/slice_12.tiff", "slice_12"),
    ("nnUNetPlans_3d_fullres/case003.b2nd", "case003"),
    ("labelsTr/noext", "noext"),
])
def test_case_id_from_path_without_file_ending(monkeypatch, path, case):
    monkeypatch.delenv(FILE_ENDING_ENV, raising=False)
    assert case_id_from_path(path) == case


def test_case_id_from_path_with_the_datasets_file_ending(monkeypatch):
    monkeypatch.setenv(FILE_ENDING_ENV, ".seg.nrrd")           # an ending nnrun does not know by itself
    assert case_id_from_path("/data/raw/D/labelsTr/case001.seg.nrrd") == "case001"
    monkeypatch.delenv(FILE_ENDING_ENV)
    assert case_id_from_path("/data/raw/D/labelsTr/case001.seg.nrrd") == "case001.seg"
    # The dataset's ending wins over the built-in list ...
    monkeypatch.setenv(FILE_ENDING_ENV, ".nii.gz")
    assert case_id_from_path("labelsTr/case002.nii.gz") == "case002"
    # ... and a name that does not end with it falls back to the built-in list.
    monkeypatch.setenv(FILE_ENDING_ENV, ".png")
    assert case_id_from_path("labelsTr/case002.nii.gz") == "case002"
    monkeypatch.setenv(FILE_ENDING_ENV, "")
    assert case_id_from_path("labelsTr/case002.mha") == "case002"


def test_case_id_from_a_label_ending_like_a_channel_stays_whole(monkeypatch):
    """Label paths only (documented): a case id may itself end in _NNNN, so nothing else is cut."""
    monkeypatch.setenv(FILE_ENDING_ENV, ".nii.gz")
    assert case_id_from_path("/data/raw/D/labelsTr/patient_0001.nii.gz") == "patient_0001"
    assert case_id_from_path("/data/raw/D/labelsTr/case003_0000.nii.gz") == "case003_0000"


# --------------------------------------------------------------------------- per_case

@per_case(lambda label_file, *a, **k: case_id_from_path(label_file))
def analyze(label_file: str, megabytes: int = 0, fail: bool = False):
    """A module-level one-case function, wrapped as the agent wraps nnU-Net's."""
    block = bytearray(megabytes * MIB)
    block[::4096] = b"x" * len(block[::4096])            # touch every page: counted in RSS
    if fail:
        raise KeyError(f"no label values in {label_file}")
    return ("analyzed", label_file, len(block))


def test_per_case_writes_start_and_end_with_pid_and_peak_rss(events_file, monkeypatch):
    monkeypatch.setenv(PHASE_ENV, "preprocessing")
    monkeypatch.setenv(CONFIGURATION_ENV, "3d_fullres")
    assert analyze("labelsTr/case007.nii.gz", megabytes=2) == ("analyzed", "labelsTr/case007.nii.gz", 2 * MIB)
    start, end = _events(events_file)
    for e in (start, end):
        assert e["pid"] == os.getpid() and e["case"] == "case007"
        assert e["phase"] == "preprocessing" and e["configuration"] == "3d_fullres"
        assert isinstance(e["t"], float)
    assert start["event"] == "case_start" and end["event"] == "case_end"
    assert end["t"] >= start["t"]
    assert isinstance(end["peak_rss_bytes"], int) and end["peak_rss_bytes"] > 2 * MIB
    assert isinstance(end["duration_s"], float) and end["duration_s"] >= 0
    # The wrapper keeps the original's names (what pickling by reference needs) and points to it.
    assert (analyze.__name__, analyze.__qualname__, analyze.__module__) == ("analyze", "analyze", __name__)
    assert analyze.__wrapped__.__qualname__ == "analyze"


def test_per_case_without_a_phase_records_nulls(events_file):
    analyze("labelsTr/case001.nii.gz")
    start, end = _events(events_file)
    assert start["phase"] is None and start["configuration"] is None and end["configuration"] is None


def test_per_case_peak_rss_is_the_peak_of_that_case(events_file):
    """VmHWM is reset at each case start: a small case after a big one reports a small peak."""
    analyze("labelsTr/big.nii.gz", megabytes=96)
    analyze("labelsTr/small.nii.gz", megabytes=0)
    ends = {e["case"]: e for e in _events(events_file) if e["event"] == "case_end"}
    assert ends["big"]["peak_rss_bytes"] - ends["small"]["peak_rss_bytes"] > 64 * MIB


def test_per_case_error_is_recorded_and_reraised(events_file):
    with pytest.raises(KeyError, match="no label values") as raised:
        analyze("labelsTr/case004.nii.gz", fail=True)
    assert type(raised.value) is KeyError
    start, error = _events(events_file)
    assert start["event"] == "case_start" and error["event"] == "case_error"
    assert error["case"] == "case004" and error["pid"] == os.getpid()
    assert error["error"].startswith("KeyError: ") and "no label values" in error["error"]
    assert isinstance(error["peak_rss_bytes"], int) and error["peak_rss_bytes"] > 0
    assert error["duration_s"] >= 0
    (record,) = case_records(_events(events_file))
    assert record.status == "error" and record.case == "case004"


def test_per_case_without_an_events_file_just_runs(tmp_path, monkeypatch):
    monkeypatch.delenv(AGENT_EVENTS_ENV, raising=False)
    _reset_emitter(monkeypatch)
    assert analyze("labelsTr/case000.nii.gz")[0] == "analyzed"
    assert all(m._fd is None for m in _emitter_modules()) and list(tmp_path.iterdir()) == []


def test_per_case_never_breaks_the_run_when_the_events_file_cannot_be_written(tmp_path, monkeypatch):
    monkeypatch.setenv(AGENT_EVENTS_ENV, str(tmp_path / "no-such-dir" / "agent.jsonl"))
    _reset_emitter(monkeypatch)
    assert analyze("labelsTr/case000.nii.gz")[0] == "analyzed"


# --------------------------------------------------------------------------- in_phase

def _step(dataset, configuration_name=None, fail=False):
    seen = (os.environ.get(PHASE_ENV), os.environ.get(CONFIGURATION_ENV))
    if fail:
        raise RuntimeError("Some background worker is 6 feet under. Yuck.")
    return seen


def test_in_phase_sets_and_restores_the_phase_environment(events_file, monkeypatch):
    step = in_phase("preprocessing", configuration_arg=1)(_step)
    assert step("Dataset501_Demo", "3d_fullres") == ("preprocessing", "3d_fullres")
    assert PHASE_ENV not in os.environ and CONFIGURATION_ENV not in os.environ      # unset before: unset after
    # Configuration by keyword; earlier values come back afterwards.
    monkeypatch.setenv(PHASE_ENV, "outer")
    monkeypatch.setenv(CONFIGURATION_ENV, "2d")
    assert step("Dataset501_Demo", configuration_name="3d_lowres") == ("preprocessing", "3d_lowres")
    assert (os.environ[PHASE_ENV], os.environ[CONFIGURATION_ENV]) == ("outer", "2d")
    # Restored when the step raises, too.
    with pytest.raises(RuntimeError, match="6 feet under"):
        step("Dataset501_Demo", "3d_fullres", fail=True)
    assert (os.environ[PHASE_ENV], os.environ[CONFIGURATION_ENV]) == ("outer", "2d")
    # A phase without a configuration: the configuration variable is empty inside.
    fingerprint = in_phase("fingerprint")(_step)
    assert fingerprint("Dataset501_Demo") == ("fingerprint", "")
    events = [(e["event"], e["phase"], e["configuration"]) for e in _events(events_file)]
    assert events == [("phase_start", "preprocessing", "3d_fullres"), ("phase_end", "preprocessing", "3d_fullres"),
                      ("phase_start", "preprocessing", "3d_lowres"), ("phase_end", "preprocessing", "3d_lowres"),
                      ("phase_start", "preprocessing", "3d_fullres"), ("phase_end", "preprocessing", "3d_fullres"),
                      ("phase_start", "fingerprint", None), ("phase_end", "fingerprint", None)]
    assert {e["pid"] for e in _events(events_file)} == {os.getpid()}


def test_per_case_inside_in_phase_records_the_phase(events_file):
    @in_phase("verify")
    def verify(labels):
        return [analyze(label) for label in labels]

    verify(["labelsTr/case000.nii.gz", "labelsTr/case001.nii.gz"])
    cases = [(e["event"], e.get("case"), e["phase"]) for e in _events(events_file)]
    assert cases == [("phase_start", None, "verify"), ("case_start", "case000", "verify"),
                     ("case_end", "case000", "verify"), ("case_start", "case001", "verify"),
                     ("case_end", "case001", "verify"), ("phase_end", None, "verify")]


# --------------------------------------------------------------------------- pickling

class Extractor:
    """Like nnU-Net's DatasetFingerprintExtractor / DefaultPreprocessor: patched on the class."""

    @staticmethod
    def analyze_case(image_files, segmentation_file):
        return segmentation_file

    def run_case_save(self, output_filename_truncated, image_files, seg_file):
        return output_filename_truncated


# The agent's way: replace the class attributes with wrapped versions after the fact.
Extractor.analyze_case = staticmethod(per_case(lambda image_files, segmentation_file, *a, **k:
                                               case_id_from_path(segmentation_file))(Extractor.analyze_case))
Extractor.run_case_save = per_case(lambda self, output_filename_truncated, *a, **k:
                                   os.path.basename(output_filename_truncated))(Extractor.run_case_save)


def test_wrapped_functions_pickle_by_reference(events_file):
    """A spawn pool pickles its task function by module + qualified name; the wrapper keeps both."""
    for fn in (analyze, Extractor.analyze_case, Extractor.run_case_save):
        data = pickle.dumps(fn)
        assert b"<lambda>" not in data and len(data) < 200      # a reference, not the code
        assert pickle.loads(data) is fn
    bound = pickle.loads(pickle.dumps(Extractor().run_case_save))
    assert bound("/out/case005", [], "") == "/out/case005"
    assert pickle.loads(pickle.dumps(Extractor.analyze_case))([], "labelsTr/case006.nii.gz") == \
        "labelsTr/case006.nii.gz"
    cases = [e["case"] for e in _events(events_file) if e["event"] == "case_end"]
    assert cases == ["case005", "case006"]


def test_a_real_spawn_pool_runs_the_wrapped_function_in_its_workers(events_file):
    import _agent_spawn_target as target

    tasks = [(f"imagesTr/case00{i}_0000.nii.gz", f"labelsTr/case00{i}.nii.gz", i == 2) for i in range(5)]
    results = target.run_pool_in_phase(tasks, "3d_fullres", processes=2)
    assert isinstance(results[2], ValueError) and "case002.nii.gz" in str(results[2])
    worker_pids = {r for r in results if isinstance(r, int)}
    assert worker_pids and os.getpid() not in worker_pids
    events = read_jsonl(events_file)
    case_events = [e for e in events if e["event"].startswith("case_")]
    assert len(case_events) == 10
    case_pids = {e["pid"] for e in case_events}
    assert os.getpid() not in case_pids                     # from the workers, not the parent
    assert worker_pids <= case_pids and len(case_pids) <= 2
    # The workers inherited the phase the main-process step set (through the environment).
    assert {(e["phase"], e["configuration"]) for e in case_events} == {("preprocessing", "3d_fullres")}
    # The phase events come from the parent.
    assert [(e["event"], e["pid"]) for e in events if e["event"].startswith("phase_")] == [
        ("phase_start", os.getpid()), ("phase_end", os.getpid())]
    records = {r.case: r for r in case_records(events)}
    assert sorted(records) == [f"case00{i}" for i in range(5)]
    assert records["case002"].status == "error" and "ValueError" in records["case002"].error
    for case, r in records.items():
        if case != "case002":
            assert r.status == "done" and r.pid in worker_pids
            assert r.peak_rss_bytes > 8 * MIB and r.duration_s >= 0
