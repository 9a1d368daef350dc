"""-c and the configurations nnU-Net 2.8.1 really plans, on a tiny 2D (.png) dataset (well under a minute).

nnU-Net's planner makes only 2d for 2D images; its preprocessing skips the 3d configurations of its default
`-c 2d 3d_fullres 3d_lowres` and exits 0.  The ok report must list only 2d as preprocessed and the two 3d
configurations as skipped, read from the plans nnU-Net wrote; with those plans in place, a -c nnU-Net
would skip is bad_input before any container starts.
"""
from __future__ import annotations

import json

import jsonschema
import pytest

from runner.diagnosis.report import load_schema
from tests.format_datasets import make_format_dataset
from tests.integration.conftest import nnrun_containers, run_nnrun

pytestmark = pytest.mark.docker


def test_a_2d_dataset_reports_its_3d_configurations_as_skipped(docker_ready, tmp_path):
    raw, pre = tmp_path / "raw", tmp_path / "pre"
    dataset = make_format_dataset(raw, ".png", 524, cases=2, shape_zyx=(4, 48, 56))
    folders = ["--raw", str(raw), "--preprocessed", str(pre)]
    result = run_nnrun("preprocess", "-d", "524", "--mem", "3g", *folders, "-np", "1", "-npfp", "1")
    report = result.report
    assert report is not None and report["outcome"] == "ok", result.stderr[-3000:]
    jsonschema.validate(report, load_schema())
    plans = json.loads((pre / dataset.name / "nnUNetPlans.json").read_text())
    assert list(plans["configurations"]) == ["2d"]                  # what nnU-Net really planned
    assert report["configurations"] == ["2d"]
    assert [s["configuration"] for s in report["configurations_skipped"]] == ["3d_fullres", "3d_lowres"]
    assert all("2D" in s["reason"] for s in report["configurations_skipped"])
    preprocessed = report["message"].split("preprocessed (", 1)[1].split(";", 1)[0]
    assert preprocessed == "2d", report["message"]
    assert (pre / dataset.name / "nnUNetPlans_2d").is_dir()
    assert not (pre / dataset.name / "nnUNetPlans_3d_fullres").exists()

    # Now the plans exist: a configuration they lack, or no configuration at all, is refused up front.
    before = set(nnrun_containers())
    for name, words in (("3d_fullres", "-c 3d_fullres: nnUNetPlans.json has none"),
                        ("nonsense", "unknown configuration 'nonsense'")):
        refused = run_nnrun("preprocess", "-d", "524", "--mem", "3g", *folders, "-c", name)
        assert refused.returncode == 2 and refused.report is not None, refused.stderr[-2000:]
        assert refused.report["outcome"] == "bad_input" and words in refused.report["message"]
        assert "valid" in refused.report["message"] and "Traceback" not in refused.stderr
        lines = [ln for ln in refused.stderr.splitlines() if ln.startswith("nnrun:")]
        assert lines == [f"nnrun: bad_input: {refused.report['message']}"], refused.stderr[-2000:]
    assert set(nnrun_containers()) == before                        # nothing started
