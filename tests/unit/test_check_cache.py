"""runner.formats.check_cache: every file is read to the end once per version; changed or damaged files always again."""
from __future__ import annotations

import os
import time

import numpy as np
import pytest

from runner.formats import check_cache
from runner.formats.check_cache import check_files_once
from runner.formats.nifti import write_nifti


@pytest.fixture
def files(tmp_path):
    paths = []
    for i in range(3):
        p = tmp_path / "raw" / f"case{i:03d}_0000.nii.gz"
        p.parent.mkdir(exist_ok=True)
        write_nifti(p, np.full((8, 8, 4), i, dtype=np.int16), (1.0, 1.0, 2.0))
        paths.append(p)
    return paths


@pytest.fixture
def read(monkeypatch):
    """The files check_files really read, per call."""
    calls: list[list[str]] = []
    real = check_cache.check_files

    def spy(paths, workers=2, progress=None, **kw):
        calls.append(sorted(os.path.basename(str(p)) for p in paths))
        return real(paths, workers=workers, progress=progress, **kw)
    monkeypatch.setattr(check_cache, "check_files", spy)
    return calls


def test_unchanged_files_are_read_once(files, read, tmp_path):
    cache = tmp_path / "cache"
    progress = []
    assert check_files_once(files, cache_dir=cache) == []
    assert check_files_once(files, cache_dir=cache, progress=lambda d, t: progress.append((d, t))) == []
    assert read == [["case000_0000.nii.gz", "case001_0000.nii.gz", "case002_0000.nii.gz"]]
    assert progress[-1] == (3, 3)


def test_a_changed_file_is_read_again_even_with_its_old_size_and_mtime(files, read, tmp_path):
    cache = tmp_path / "cache"
    check_files_once(files, cache_dir=cache)
    st = os.stat(files[1])
    time.sleep(0.01)
    data = bytearray(files[1].read_bytes())
    data[-20] ^= 0xFF                                   # same size, damaged gzip stream
    files[1].write_bytes(bytes(data))
    os.utime(files[1], ns=(st.st_atime_ns, st.st_mtime_ns))    # mtime set back: ctime still changed
    problems = check_files_once(files, cache_dir=cache)
    assert read[-1] == ["case001_0000.nii.gz"]
    assert len(problems) == 1 and problems[0].path == str(files[1])
    # a damaged file is never recorded: read again next time too
    check_files_once(files, cache_dir=cache)
    assert read[-1] == ["case001_0000.nii.gz"]


def test_a_replaced_file_is_read_again(files, read, tmp_path):
    cache = tmp_path / "cache"
    check_files_once(files, cache_dir=cache)
    tmp = files[0].with_name("new.nii.gz")
    write_nifti(tmp, np.zeros((8, 8, 4), dtype=np.int16), (1.0, 1.0, 2.0))
    os.replace(tmp, files[0])
    assert check_files_once(files, cache_dir=cache) == []
    assert read[-1] == ["case000_0000.nii.gz"]


def test_an_unwritable_cache_only_means_reading_again(files, read, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("x")
    assert check_files_once(files, cache_dir=blocker / "cache") == []
    assert check_files_once(files, cache_dir=blocker / "cache") == []
    assert len(read) == 2


def test_no_files():
    assert check_files_once([]) == []
