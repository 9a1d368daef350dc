"""Helper for tests/unit/test_agent.py: a per-case task run by a real ``spawn`` pool.

Mimics what runner.incontainer.agent does to nnU-Net: the one-case function is wrapped
with ``per_case`` when this module is imported, so a spawned worker, which
imports the module to unpickle its task by reference, runs the wrapped
function.  Not a test module (the leading underscore keeps pytest away).
"""
from __future__ import annotations

import os

from runner.incontainer.agent import case_id_from_path, in_phase, per_case


def process_case(image_file: str, label_file: str, fail: bool = False) -> int:
    """Allocate a little, fail on request, and return the worker's pid."""
    block = bytearray(8 * 2**20)          # touch 8 MiB so the case has a visible peak RSS
    block[::4096] = b"x" * len(block[::4096])
    if fail:
        raise ValueError(f"cannot process {os.path.basename(label_file)}")
    return os.getpid()


# Applied at import time, as the agent applies its patches when a spawned
# worker imports it (the name stays the same, so pickling by reference works).
process_case = per_case(lambda image_file, label_file, *a, **k: case_id_from_path(label_file))(process_case)


def run_pool(tasks: list[tuple[str, str, bool]], processes: int = 2) -> list:
    """What nnU-Net does in the main process: a spawn pool, one async task per case."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Pool(processes) as pool:
        pending = [pool.starmap_async(process_case, (task,)) for task in tasks]
        results = []
        for r in pending:
            try:
                results.append(r.get(timeout=60)[0])
            except ValueError as err:
                results.append(err)
        return results


@in_phase("preprocessing", configuration_arg=1)
def run_pool_in_phase(tasks: list[tuple[str, str, bool]], configuration_name: str, processes: int = 2) -> list:
    """The main-process step, wrapped as the agent wraps DefaultPreprocessor.run (its workers inherit the phase)."""
    return run_pool(tasks, processes)
