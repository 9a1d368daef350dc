"""The in-container agent: nnU-Net's own ``plan_and_preprocess``, with per-case events.

nnU-Net does not say which case a worker holds (its progress bars only
count).  This module runs nnU-Net's own entry point, with nnU-Net's own
classes and arguments (so outputs stay identical to native
``nnUNetv2_plan_and_preprocess``), after wrapping the three functions that
process one case each inside the worker pools:

* ``DatasetFingerprintExtractor.analyze_case`` (fingerprint extraction),
* ``DefaultPreprocessor.run_case_save`` (preprocessing, per configuration),
* ``verify_labels`` / ``check_cases`` of ``verify_dataset_integrity``.

Each wrapper appends ``case_start`` / ``case_end`` JSON lines to the file named
by ``NNRUN_AGENT_EVENTS`` with the worker's pid and the peak RSS of the worker
during that case (``VmHWM`` after resetting it through ``/proc/self/clear_refs``:
a worker's high-water mark otherwise covers its whole life).  When the kernel
kills a worker, the last ``case_start`` of that pid without a ``case_end`` is
the case it was processing.

Why this works in the workers: nnU-Net's pools use the ``spawn`` start method,
and a spawned child imports its parent's main module (here ``runner.incontainer.agent``,
run with ``python -m``) before it unpickles its task, so the patches below are
in place in every worker.  Task functions are pickled by reference
(module + qualified name), so the wrappers keep the originals' names.

Run as: ``python3 -m runner.incontainer.agent <nnUNetv2_plan_and_preprocess arguments>``.
"""
from __future__ import annotations

import functools
import os
import sys
import time

from runner.incontainer.events import (
    current_phase,
    emit,
    enable_faulthandler,
    peak_rss_bytes,
    reset_peak_rss,
    shm_fill_hook,
    thrash_hook,
)
from runner.rundir import AGENT_EVENTS_ENV, CONFIGURATION_ENV, FILE_ENDING_ENV, PHASE_ENV

NNUNET_COMMAND = "nnUNetv2_plan_and_preprocess"


def case_id_from_path(path: str) -> str:
    """The case id of a LABEL file name (``labelsTr/case003.nii.gz`` → ``case003``).

    Only label paths are passed here: an image's ``_0000`` channel suffix is not
    stripped, since a case id may itself end in ``_NNNN``.
    """
    name = os.path.basename(str(path))
    ending = os.environ.get(FILE_ENDING_ENV, "")
    if ending and name.endswith(ending):
        name = name[: -len(ending)]
    else:
        for known in (".nii.gz", ".nii", ".nrrd", ".mha", ".png", ".tif", ".tiff", ".b2nd"):
            if name.endswith(known):
                name = name[: -len(known)]
                break
    return name


def per_case(case_of):
    """Decorate a one-case function: events and the worker's peak RSS around each call."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            case = case_of(*args, **kwargs)
            phase, configuration = current_phase()
            reset_peak_rss()
            started = time.time()
            emit("case_start", case=case, phase=phase, configuration=configuration)
            shm_fill_hook()
            thrash_hook()
            try:
                result = fn(*args, **kwargs)
            except BaseException as err:
                emit("case_error", case=case, phase=phase, configuration=configuration,
                     error=f"{type(err).__name__}: {err}"[:500], peak_rss_bytes=peak_rss_bytes(),
                     duration_s=round(time.time() - started, 3))
                raise
            emit("case_end", case=case, phase=phase, configuration=configuration,
                 peak_rss_bytes=peak_rss_bytes(), duration_s=round(time.time() - started, 3))
            return result
        wrapped.__nnrun_events__ = True
        return wrapped
    return decorate


def in_phase(phase: str, configuration_arg: int | None = None):
    """Decorate a main-process step: workers it spawns inherit the phase through the environment."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapped(*args, **kwargs):
            configuration = None
            if configuration_arg is not None and len(args) > configuration_arg:
                configuration = args[configuration_arg]
            configuration = kwargs.get("configuration_name", configuration)
            saved = os.environ.get(PHASE_ENV), os.environ.get(CONFIGURATION_ENV)
            os.environ[PHASE_ENV] = phase
            os.environ[CONFIGURATION_ENV] = configuration or ""
            emit("phase_start", phase=phase, configuration=configuration)
            try:
                return fn(*args, **kwargs)
            finally:
                emit("phase_end", phase=phase, configuration=configuration)
                for key, value in zip((PHASE_ENV, CONFIGURATION_ENV), saved):
                    if value is None:
                        os.environ.pop(key, None)
                    else:
                        os.environ[key] = value
        wrapped.__nnrun_events__ = True
        return wrapped
    return decorate


def install() -> None:
    """Wrap nnU-Net's per-case functions (idempotent; runs in the main process and every worker)."""
    from nnunetv2.experiment_planning import verify_dataset_integrity as verify
    from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import DatasetFingerprintExtractor
    from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor

    # Atomic writes, staging and scheduling first: the event wrappers below go around them.
    from runner.incontainer import preprocess as agent_preprocess
    agent_preprocess.install()
    if getattr(DefaultPreprocessor.run_case_save, "__nnrun_events__", False):
        return
    # Fingerprint: analyze_case(image_files, segmentation_file, reader_writer_class, num_samples)
    original = DatasetFingerprintExtractor.analyze_case
    DatasetFingerprintExtractor.analyze_case = staticmethod(
        per_case(lambda image_files, segmentation_file, *a, **k: case_id_from_path(segmentation_file))(original))
    DatasetFingerprintExtractor.run = in_phase("fingerprint")(DatasetFingerprintExtractor.run)
    # Preprocessing: run_case_save(self, output_filename_truncated, image_files, seg_file, ...)
    DefaultPreprocessor.run_case_save = per_case(
        lambda self, output_filename_truncated, *a, **k: os.path.basename(output_filename_truncated))(
        DefaultPreprocessor.run_case_save)
    # run(self, dataset_name_or_id, configuration_name, plans_identifier, num_processes)
    DefaultPreprocessor.run = in_phase("preprocessing", configuration_arg=2)(DefaultPreprocessor.run)
    # Dataset verification: verify_labels(label_file, ...), check_cases(image_files, label_file, ...)
    verify.verify_labels = per_case(lambda label_file, *a, **k: case_id_from_path(label_file))(verify.verify_labels)
    verify.check_cases = per_case(lambda image_files, label_file, *a, **k: case_id_from_path(label_file))(
        verify.check_cases)
    verify.verify_dataset_integrity = in_phase("verify")(verify.verify_dataset_integrity)
    # plan_and_preprocess_api imported verify_dataset_integrity by name: patch that reference too.
    from nnunetv2.experiment_planning import plan_and_preprocess_api as api
    api.verify_dataset_integrity = verify.verify_dataset_integrity


def main(argv: list[str] | None = None) -> None:
    from nnunetv2.experiment_planning.plan_and_preprocess_entrypoints import plan_and_preprocess_entry

    sys.argv = [NNUNET_COMMAND, *(sys.argv[1:] if argv is None else argv)]
    emit("agent_start", argv=sys.argv)
    plan_and_preprocess_entry()


# The main process only, before the imports below: the workers the host asked to start early
# (warm.json) import nnU-Net at the same time as this process does.
if __name__ == "__main__" and os.environ.get(AGENT_EVENTS_ENV):
    from runner.incontainer.schedule import prestart
    prestart()

# Runs on import too: spawned workers import this module as __mp_main__ before
# they unpickle a task, which is what puts the wrappers in place there.
if os.environ.get(AGENT_EVENTS_ENV):
    enable_faulthandler()
    try:
        install()
    except ImportError:   # not inside the nnU-Net image (e.g. unit tests on the host)
        pass

if __name__ == "__main__":
    main()
