"""runner.incontainer.supervisor.PhaseTracker (and the supervisor's output pump) over nnU-Net's real output.

The logs in tests/fixtures/nnunet_logs/ are REAL output of
nnUNetv2_plan_and_preprocess from nnunetv2 2.8.1 (captured by nnrun's
supervisor on this machine; see the README there), including tqdm's
`\\r`-separated redraws.  The verify and multi-configuration sequences below
are not captured output: they are built from the print statements of nnunetv2
2.8.1 (verify_dataset_integrity.py, plan_and_preprocess_api.py), because no
captured run covered them.
"""
from __future__ import annotations

import json
import os
import re
import threading
from pathlib import Path

import pytest

from runner.incontainer.supervisor import PhaseTracker, Supervisor
from runner.rundir import EVENTS_FILE, NNUNET_LOG

LOGS = Path(__file__).resolve().parent.parent / "fixtures" / "nnunet_logs"
SIX_FEET = "RuntimeError: Some background worker is 6 feet under. Yuck."
BROADCAST = "ValueError: operands could not be broadcast together with shapes (1,20,64,64) (1,24,64,64)"


def real_log(name: str) -> bytes:
    return (LOGS / f"{name}.log").read_bytes()


def supervisor_lines(data: bytes) -> list[str]:
    """The lines as the supervisor's pump hands them to feed(): split at \\r and \\n."""
    return [raw.decode("utf-8", "replace") for raw in re.split(rb"[\r\n]", data)]


def track(lines, verify: bool = False) -> tuple[PhaseTracker, list[tuple[str, str | None]]]:
    tracker = PhaseTracker(verify)
    transitions = []
    for line in lines:
        if tracker.feed(line):
            transitions.append((tracker.phase, tracker.configuration))
    return tracker, transitions


# -- real logs ----------------------------------------------------------------------

def test_ok_run_goes_through_every_phase_in_order():
    tracker, transitions = track(supervisor_lines(real_log("ok_3d_fullres")))
    assert transitions == [("fingerprint", None), ("planning", None), ("preprocessing", None),
                           ("preprocessing", "3d_fullres")]
    assert tracker.completed_phases == ["fingerprint", "planning"]
    assert tracker.completed_configurations == []
    assert tracker.progress == {"Extracting dataset fingerprint": (6, 6), "Preprocessing cases": (6, 6)}
    assert tracker.last_exception_line is None


def test_finish_after_an_ok_run_completes_the_last_phase_and_configuration():
    tracker, _ = track(supervisor_lines(real_log("ok_3d_fullres")))
    tracker.finish()
    assert tracker.phase == "done" and tracker.configuration is None
    assert tracker.completed_phases == ["fingerprint", "planning", "preprocessing"]
    assert tracker.completed_configurations == ["3d_fullres"]


def test_worker_oom_log_ends_in_preprocessing_with_six_feet_under():
    tracker, _ = track(supervisor_lines(real_log("worker_oom_preprocessing")))
    assert (tracker.phase, tracker.configuration) == ("preprocessing", "3d_fullres")
    assert tracker.last_exception_line == SIX_FEET
    assert tracker.progress["Preprocessing cases"] == (0, 6)


@pytest.mark.parametrize("name", ["worker_oom_preprocessing", "main_oom_fingerprint"])
def test_tracker_state_matches_the_status_json_the_supervisor_wrote_for_that_run(name):
    status = json.loads((LOGS / f"{name}.status.json").read_text())
    tracker, _ = track(supervisor_lines(real_log(name)), verify="--verify_dataset_integrity" in status["command"])
    assert tracker.phase == status["phase"]
    assert tracker.configuration == status["configuration"]
    assert tracker.completed_phases == status["completed_phases"]
    assert tracker.completed_configurations == status["completed_configurations"]
    assert {k: list(v) for k, v in tracker.progress.items()} == status["progress"]
    assert tracker.last_exception_line == status["last_exception_line"]


def test_main_oom_log_has_no_exception_line_despite_the_warning():
    tracker, _ = track(supervisor_lines(real_log("main_oom_fingerprint")))
    assert tracker.phase == "fingerprint"
    assert tracker.last_exception_line is None       # "...resource_tracker.py:224: UserWarning: ..." is no exception


def test_shape_mismatch_log_picks_the_broadcast_error():
    tracker, _ = track(supervisor_lines(real_log("shape_mismatch_fingerprint")))
    assert tracker.phase == "fingerprint"
    assert tracker.last_exception_line == BROADCAST


def test_tqdm_redraws_in_one_physical_line_keep_the_latest_count():
    data = real_log("ok_3d_fullres")
    bar_line = next(ln for ln in data.split(b"\n") if b"Preprocessing cases" in ln)
    assert bar_line.count(b"\r") > 1                 # the fixture really has redraws
    tracker, transitions = track(supervisor_lines(bar_line))
    assert transitions == []
    assert tracker.progress == {"Preprocessing cases": (6, 6)}


# -- sequences built from nnU-Net 2.8.1's prints --------------------------------

VERIFY_RUN = [
    "Fingerprint extraction...",
    "Dataset501_Demo",
    "",
    "####################",
    "verify_dataset_integrity Done. ",
    "If you didn't see any error messages then your dataset is most likely OK!",
    "####################",
    "",
    "Using <class 'nnunetv2.imageio.simpleitk_reader_writer.SimpleITKIO'> as reader/writer",
    "Extracting dataset fingerprint:   0%|          | 0/6 [00:00<?, ?it/s]",
    "Extracting dataset fingerprint: 100%|##########| 6/6 [00:03<00:00,  1.9it/s]",
    "Experiment planning...",
]

MULTI_CONFIG = [
    "Preprocessing...",
    "Preprocessing dataset Dataset501_Demo",
    "Configuration: 2d...",
    "{'data_identifier': 'nnUNetPlans_2d', 'preprocessor_name': 'DefaultPreprocessor'}",
    "Preprocessing cases:  50%|#####     | 3/6 [00:01<00:01,  2.1it/s]",
    "Preprocessing cases: 100%|##########| 6/6 [00:02<00:00,  2.3it/s]",
    "Configuration: 3d_fullres...",
    "Preprocessing cases:  33%|###3      | 2/6 [00:02<00:04,  1.0s/it]",
    "Configuration: 3d_lowres...",
    "INFO: Configuration 3d_lowres not found in plans file nnUNetPlans.json of dataset Dataset501_Demo. Skipping.",
]


def test_verify_phase_comes_first_with_verify():
    tracker, transitions = track(VERIFY_RUN, verify=True)
    assert transitions == [("verify", None), ("fingerprint", None), ("planning", None)]
    assert tracker.completed_phases == ["verify", "fingerprint"]


def test_without_verify_the_same_lines_never_enter_verify():
    tracker, transitions = track(VERIFY_RUN, verify=False)
    assert transitions == [("fingerprint", None), ("planning", None)]
    assert "verify" not in tracker.completed_phases


def test_a_kill_during_verification_is_reported_in_verify():
    tracker, _ = track(VERIFY_RUN[:3], verify=True)
    assert tracker.phase == "verify"


def test_configuration_lines_move_through_the_configurations():
    tracker, transitions = track(["Fingerprint extraction...", "Experiment planning...", *MULTI_CONFIG])
    assert transitions[-4:] == [("preprocessing", None), ("preprocessing", "2d"), ("preprocessing", "3d_fullres"),
                                ("preprocessing", "3d_lowres")]
    assert tracker.completed_configurations == ["2d", "3d_fullres"]
    assert tracker.completed_phases == ["fingerprint", "planning"]
    assert tracker.progress["Preprocessing cases"] == (2, 6)
    tracker.finish()
    assert tracker.completed_configurations == ["2d", "3d_fullres", "3d_lowres"]
    assert tracker.completed_phases == ["fingerprint", "planning", "preprocessing"]


def test_feed_reports_a_change_only_once():
    tracker = PhaseTracker(verify=False)
    assert tracker.phase == "startup"
    assert tracker.feed("Fingerprint extraction...\n") is True
    assert tracker.feed("Fingerprint extraction...") is False
    assert tracker.feed("") is False and tracker.feed("   \r") is False
    assert tracker.feed("Dataset501_Demo") is False
    assert tracker.phase == "fingerprint"


@pytest.mark.parametrize("line,picked", [
    ("RuntimeError: Some background worker is 6 feet under. Yuck. ", SIX_FEET),
    (BROADCAST + " ", BROADCAST),
    ("KeyboardInterrupt", "KeyboardInterrupt"),
    ("torch.OutOfMemoryError: CUDA out of memory.", "torch.OutOfMemoryError: CUDA out of memory."),
    ("KeyError: 'labels'", "KeyError: 'labels'"),
    ("AssertionError", "AssertionError"),
])
def test_exception_lines_are_picked(line, picked):
    tracker = PhaseTracker(verify=False)
    tracker.feed(line)
    assert tracker.last_exception_line == picked


@pytest.mark.parametrize("line", [
    "multiprocessing.pool.RemoteTraceback: ",
    "    raise RuntimeError('Some background worker is 6 feet under. Yuck. \\n'",
    "/usr/lib/python3.11/multiprocessing/resource_tracker.py:224: UserWarning: resource_tracker: leaked",
    "Traceback (most recent call last):",
    "OK jokes aside.",
    "Error: Shape mismatch between segmentation and corresponding images.",
])
def test_other_lines_are_not_exception_lines(line):
    tracker = PhaseTracker(verify=False)
    tracker.feed(line)
    assert tracker.last_exception_line is None


def test_the_last_exception_line_wins():
    tracker, _ = track(["ValueError: first", "Traceback (most recent call last):", "RuntimeError: second"])
    assert tracker.last_exception_line == "RuntimeError: second"


# -- the supervisor's pump: chunks as they come from a pipe ------------------------

@pytest.mark.parametrize("chunk_size", [1, 7, 4096])
@pytest.mark.parametrize("name,phase,exception", [
    ("ok_3d_fullres", ("preprocessing", "3d_fullres"), None),
    ("worker_oom_preprocessing", ("preprocessing", "3d_fullres"), SIX_FEET),
    ("shape_mismatch_fingerprint", ("fingerprint", None), BROADCAST),
])
def test_pump_output_tracks_phases_from_arbitrary_chunks(tmp_path, capsysbinary, chunk_size, name, phase, exception):
    data = real_log(name)
    sup = Supervisor(tmp_path, ["nnUNetv2_plan_and_preprocess"], verify=False, test_oom_victim=None)
    read_fd, write_fd = os.pipe()

    def writer():
        with os.fdopen(write_fd, "wb", buffering=0) as w:
            for i in range(0, len(data), chunk_size):
                w.write(data[i:i + chunk_size])

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        with os.fdopen(read_fd, "rb", buffering=0) as stream, open(tmp_path / NNUNET_LOG, "wb") as log:
            sup.pump_output(stream, log)
    finally:
        thread.join(timeout=10)
        sup.events.close()

    expected, transitions = track(supervisor_lines(data))
    got = sup.tracker
    assert (got.phase, got.configuration) == (expected.phase, expected.configuration) == phase
    assert got.progress == expected.progress                       # the count after the last \r redraw
    assert got.completed_phases == expected.completed_phases
    assert got.last_exception_line == exception
    assert (tmp_path / NNUNET_LOG).read_bytes() == data           # the log is a byte-exact copy
    assert capsysbinary.readouterr().out == data                   # and so is the echo on stdout
    events = [json.loads(ln) for ln in (tmp_path / EVENTS_FILE).read_text().splitlines()]
    assert [(e["phase"], e["configuration"]) for e in events if e["event"] == "phase"] == transitions
