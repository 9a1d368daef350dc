"""Non-NIfTI datasets through the real image: an ok `nnrun preprocess` (memory-aware admission, from the
estimate) whose outputs are identical to native nnU-Net's (same paths, byte-equal files, `.b2nd` equal decoded),
and a cut file refused before any container starts."""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.format_datasets import make_format_dataset
from tests.integration.conftest import IMAGE, run_nnrun
from tests.integration.treecompare import compare_trees

pytestmark = pytest.mark.docker


def _native(dataset: Path, dataset_id: int, preprocessed: Path, *nnunet_args: str) -> None:
    (preprocessed / dataset.name).mkdir(parents=True, exist_ok=True)
    subprocess.run(
        ["docker", "run", "--rm", "--user", f"{os.getuid()}:{os.getgid()}", "--memory", "8g",
         "-v", f"{dataset}:/data/raw/{dataset.name}:ro",
         "-v", f"{preprocessed / dataset.name}:/data/preprocessed/{dataset.name}",
         "--entrypoint", "nnUNetv2_plan_and_preprocess", IMAGE, "-d", str(dataset_id), *nnunet_args],
        check=True, capture_output=True, timeout=600)


@pytest.mark.parametrize("ending, dataset_id, configuration, shape", [
    (".mha", 521, "3d_fullres", (16, 40, 48)),
    (".png", 522, "2d", (4, 160, 192)),
])
def test_ok_run_is_identical_to_native_nnunet(docker_ready, tmp_path, ending, dataset_id, configuration, shape):
    raw = tmp_path / "raw"
    dataset = make_format_dataset(raw, ending, dataset_id, cases=4, shape_zyx=shape)
    pre = tmp_path / "pre"
    result = run_nnrun("preprocess", "-d", str(dataset_id), "--mem", "3g", "--raw", str(raw),
                       "--preprocessed", str(pre), "-c", configuration)
    report = result.report
    assert report is not None and report["outcome"] == "ok", (result.stderr[-3000:])
    # the estimate was made (no fallback to nnU-Net's fixed pools) and admitted cases by memory
    assert "no estimate" not in result.stderr and "(memory-aware admission)" in result.stderr, result.stderr[-2000:]
    out = pre / dataset.name
    assert (out / configuration_folder(configuration)).is_dir()
    native = tmp_path / "native"
    _native(dataset, dataset_id, native, "-c", configuration, "-np", "2", "-npfp", "2")
    assert compare_trees(out, native / dataset.name) == []


def configuration_folder(configuration: str) -> str:
    return f"nnUNetPlans_{configuration}"


def test_cut_file_is_refused_before_any_container(docker_ready, tmp_path):
    raw = tmp_path / "raw"
    dataset = make_format_dataset(raw, ".mha", 523, cases=2, shape_zyx=(8, 24, 24))
    victim = dataset / "labelsTr" / "case001.mha"
    victim.write_bytes(victim.read_bytes()[:-100])
    pre = tmp_path / "pre"
    result = run_nnrun("preprocess", "-d", "523", "--mem", "2g", "--raw", str(raw), "--preprocessed", str(pre))
    assert result.returncode == 2 and result.report is not None and result.report["outcome"] == "bad_input"
    assert str(victim) in result.report["message"]
    assert not (pre / dataset.name).exists()
