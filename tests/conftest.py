"""Shared helpers of the fast unit tests (no Docker anywhere).

* ``tiny_raw``: a nnU-Net raw folder with one small synthetic dataset,
  Dataset501_Tiny, written by runner.demo (a few milliseconds).
* ``fake_preprocess``: replaces ``runner.cli.preprocess.Preprocess`` with a recorder, so
  that the CLI can be driven end to end without a container engine.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runner.demo import CaseSpec, make_dataset
from runner.diagnosis.report import RunReport
from runner.errors import Outcome

FIXTURES = Path(__file__).parent / "fixtures"
NNUNET_LOGS = FIXTURES / "nnunet_logs"

TINY_ID = 501
TINY_NAME = "Tiny"
TINY_CASES = (
    CaseSpec((12, 10, 6), (0.8, 0.8, 3.0)),
    CaseSpec((10, 12, 5), (0.8, 0.8, 2.5)),
    CaseSpec((11, 11, 4), (0.8, 0.8, 4.0)),
)


@pytest.fixture
def tiny_raw(tmp_path) -> Path:
    """A raw folder holding Dataset501_Tiny (3 cases of a few hundred voxels)."""
    raw = tmp_path / "raw"
    make_dataset(raw, TINY_ID, TINY_NAME, list(TINY_CASES))
    return raw


@dataclass
class FakePreprocessControl:
    """What the fake Preprocess saw, and what it should do."""

    calls: list = field(default_factory=list)        # (opts, settings, engine_factory)
    report: RunReport | None = None                   # returned by run(); default: an ok report
    exc: BaseException | None = None                  # raised by run() instead

    @property
    def opts(self):
        assert self.calls, "Preprocess was never constructed"
        return self.calls[-1][0]

    @property
    def settings(self):
        assert self.calls, "Preprocess was never constructed"
        return self.calls[-1][1]


def make_fake_preprocess(control: FakePreprocessControl):
    class FakePreprocess:
        def __init__(self, opts, settings, engine_factory, sink=None):
            control.calls.append((opts, settings, engine_factory))

        def run(self) -> RunReport:
            if control.exc is not None:
                raise control.exc
            if control.report is not None:
                return control.report
            return RunReport(outcome=Outcome.OK, message="fake run: ok")

    return FakePreprocess


@pytest.fixture
def fake_preprocess(monkeypatch) -> FakePreprocessControl:
    control = FakePreprocessControl()
    monkeypatch.setattr("runner.cli.preprocess.Preprocess", make_fake_preprocess(control))
    return control
