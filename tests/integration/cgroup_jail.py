"""A memory cgroup with a hard limit for ``--runtime host`` tests: what a Slurm job gives its tasks.

Root only.  v1: ``/sys/fs/cgroup/memory/<name>`` with ``memory.limit_in_bytes``
(and the memsw limit when swap accounting exists); v2: ``/sys/fs/cgroup/<name>``
with ``memory.max`` and ``memory.swap.max`` 0.  A command runs inside it via
``sh -c 'echo $$ > cgroup.procs; exec "$@"'``.
"""
from __future__ import annotations

import os
import secrets
import time
from contextlib import contextmanager
from pathlib import Path

from runner.cgroup import DEFAULT_ROOT, detect_cgroup_version


@contextmanager
def memory_cgroup(limit_bytes: int | None, root: Path = DEFAULT_ROOT):
    """Yield (cgroup folder, argv prefix that runs a command in it); removed afterwards."""
    name = f"nnrun-test-{secrets.token_hex(4)}"
    v2 = detect_cgroup_version(root) == 2
    folder = (root / name) if v2 else (root / "memory" / name)
    folder.mkdir()
    try:
        if limit_bytes is not None:
            if v2:
                (folder / "memory.max").write_text(str(limit_bytes))
                if (folder / "memory.swap.max").exists():
                    (folder / "memory.swap.max").write_text("0")
            else:
                (folder / "memory.limit_in_bytes").write_text(str(limit_bytes))
                memsw = folder / "memory.memsw.limit_in_bytes"
                if memsw.exists():
                    memsw.write_text(str(limit_bytes))
        prefix = ["sh", "-c", f'echo $$ > {folder}/cgroup.procs && exec "$@"', "sh"]
        yield folder, prefix
    finally:
        for _ in range(50):          # the processes may take a moment to leave
            try:
                os.rmdir(folder)
                break
            except OSError:
                time.sleep(0.1)
