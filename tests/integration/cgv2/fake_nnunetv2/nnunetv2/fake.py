"""The stand-in's behaviour: read from ``fake-nnunet.json`` in the raw dataset folder.

The container gets only nnrun's own environment, so the test's wishes travel in
the (read-only) raw folder: ``{"cases": {"case001": {"alloc_mb": 600, "sleep_s": 2,
"die": "SIGKILL"}}, "main_alloc_mb": 0, "case_sleep_s": 0.5}``.
"""
import json
import os
import signal
import time

SPEC_FILE = "fake-nnunet.json"


def spec(dataset_folder: str) -> dict:
    try:
        with open(os.path.join(dataset_folder, SPEC_FILE)) as fh:
            return json.load(fh)
    except FileNotFoundError:
        return {}


def allocate(mb: int) -> bytearray:
    """Allocate and touch ``mb`` MiB (anonymous memory the cgroup charges), a page at a time."""
    block = bytearray(mb * 2**20)
    for i in range(0, len(block), 4096):
        block[i] = 1
    return block


def behave(dataset_folder: str, case: str) -> int:
    """One case's work: sleep, allocate, or die of a signal that is not the OOM killer's."""
    s = spec(dataset_folder)
    mine = s.get("cases", {}).get(case, {})
    time.sleep(float(mine.get("sleep_s", s.get("case_sleep_s", 0.2))))
    if mine.get("die"):
        os.kill(os.getpid(), getattr(signal, mine["die"]))
        time.sleep(5)
    block = allocate(int(mine.get("alloc_mb", 8)))
    time.sleep(float(mine.get("hold_s", 0.3)))
    return len(block)
