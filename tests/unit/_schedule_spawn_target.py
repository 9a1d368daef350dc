"""Helper for tests/unit/test_agent_schedule.py: a picklable stand-in for nnU-Net's preprocessor.

``run_case_save(output, seconds, log, action)`` has nnU-Net's shape (the output name first) and
appends what it saw (case, worker pid, start, end, the phase in its environment) to ``log``.
Not a test module (the leading underscore keeps pytest away).
"""
from __future__ import annotations

import json
import os
import signal
import time


class FakePreprocessor:
    def run_case_save(self, output_filename_truncated: str, seconds: float, log: str, action: str | None = None):
        started = time.time()
        if action == "die":
            os.kill(os.getpid(), signal.SIGKILL)
        if action == "fail":
            raise ValueError(f"cannot process {os.path.basename(output_filename_truncated)}")
        time.sleep(seconds)
        record = {"case": os.path.basename(output_filename_truncated), "pid": os.getpid(), "start": started,
                  "end": time.time(), "phase": os.environ.get("NNRUN_AGENT_PHASE"),
                  "configuration": os.environ.get("NNRUN_AGENT_CONFIGURATION")}
        with open(log, "a") as fh:
            fh.write(json.dumps(record) + "\n")
        return output_filename_truncated
