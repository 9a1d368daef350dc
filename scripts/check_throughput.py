#!/usr/bin/env python3
"""Time and peak RSS of nnrun's pre-flight file check on a raw dataset folder (cold, then warm cache).

    python scripts/check_throughput.py RAW_DATASET_FOLDER [--workers 2]

Runs ``runner.formats.check_cache.check_files_once`` on every image and label
file of the folder with an empty cache (every file read to the end), then
again (the cache's record: nothing read).  Prints one JSON object: files,
bytes on disk, seconds and MB/s (on-disk bytes) of each pass, and the
process's peak RSS (``ru_maxrss``) before and after the cold pass.  Works with
any nnrun version that has ``check_files_once`` (to compare versions: run it
with ``PYTHONPATH`` pointing at each checkout).
"""
from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("folder", type=Path)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from runner.formats.check_cache import check_files_once
    files = sorted(p for sub in ("imagesTr", "labelsTr") for p in (args.folder / sub).iterdir() if p.is_file())
    size = sum(p.stat().st_size for p in files)
    rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        problems = check_files_once(files, workers=args.workers, cache_dir=Path(cache))
        cold = time.perf_counter() - t0
        rss1 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t1 = time.perf_counter()
        check_files_once(files, workers=args.workers, cache_dir=Path(cache))
        warm = time.perf_counter() - t1
    import runner
    print(json.dumps({
        "runner": str(Path(runner.__file__).parent), "files": len(files), "bytes_on_disk": size,
        "problems": len(problems), "workers": args.workers,
        "cold_s": round(cold, 2), "cold_mb_per_s": round(size / 1e6 / cold, 1), "warm_s": round(warm, 3),
        "peak_rss_before_bytes": rss0, "peak_rss_after_cold_bytes": rss1,
    }))
    return 0


if __name__ == "__main__":
    sys.exit(main())
