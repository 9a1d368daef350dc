"""memory.png's layout, checked on the figure's geometry (not on pixels): what a user saw wrong, fixed.

* case bars carry their case names (within the label budget), and no label covers another;
* phase labels stay inside their band and above the cap line, clear of the cap's own label;
* no band for a configuration nnU-Net skipped (3d_lowres when the plans have none);
* the start-up span is a labelled band.

Data: ``tests/fixtures/timeline/demo-run/`` is the run folder of a real
``nnrun preprocess -d 501 --mem 6g`` on the demo dataset (all three
configurations asked for; the plans have no 3d_lowres), and the older
``tests/fixtures/timeline/`` files; plus synthetic PlotData for the edge cases.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from runner.plot.data import CaseSpan, MemorySample, PhaseSpan, PlotData, PlotLayout, plot_data_from_files
from runner.plot.render import draw_memory_figure

pytest.importorskip("matplotlib")

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "timeline"
DEMO = FIXTURES / "demo-run"
MIB = 2**20
GIB = 2**30
T0 = 1_800_000_000.0


def demo_data() -> PlotData:
    report = json.loads((DEMO / "report.json").read_text())
    return plot_data_from_files(DEMO / "timeline.jsonl", DEMO / "events.jsonl", DEMO / "agent.jsonl",
                                report["limit_bytes"], "Dataset501_Demo  ·  outcome ok  ·  cap 6 GiB")


def fixture_data() -> PlotData:
    return plot_data_from_files(FIXTURES / "timeline.jsonl", FIXTURES / "events.jsonl", FIXTURES / "agent.jsonl",
                                int(1.2 * GIB), "fixture")


def overlap(a, b) -> bool:
    return a[0] < b[2] - 0.5 and b[0] < a[2] - 0.5 and a[1] < b[3] - 0.5 and b[1] < a[3] - 0.5


def inside(a, region, slack=1.0) -> bool:
    return (a[0] >= region[0] - slack and a[1] >= region[1] - slack
            and a[2] <= region[2] + slack and a[3] <= region[3] + slack)


def band_pixels(layout: PlotLayout, fig, phase: PhaseSpan, t0: float) -> tuple[float, float]:
    ax = fig.axes[0]
    x0 = ax.transData.transform((phase.start - t0, 0))[0]
    x1 = ax.transData.transform((phase.end - t0, 0))[0]
    return float(x0), float(x1)


def check_phase_labels(data: PlotData, fig, layout: PlotLayout) -> None:
    t0 = data.samples[0].t
    cap = next(label for label in layout.labels if label.kind == "cap")
    assert layout.cap_y is not None
    for label in layout.phase_labels():
        x0, x1 = band_pixels(layout, fig, label.key, t0)
        assert label.box[0] >= x0 - 1 and label.box[2] <= x1 + 1, (label.text, label.box, (x0, x1))
        assert label.box[1] > layout.cap_y, f"{label.text!r} reaches down to the cap line"
        assert not overlap(label.box, cap.box), f"{label.text!r} covers the cap label"
        assert inside(label.box, layout.memory_axes)


def named_cases(data: PlotData, layout: PlotLayout) -> set[int]:
    """The cases a label names (one bar's label, or one box for narrow bars side by side), checked by name."""
    named = set()
    for label in layout.case_labels():
        members = label.key if isinstance(label.key, tuple) else (label.key,)
        if len(members) == 1:
            assert label.text.startswith(data.cases[members[0]].case), label.text
        else:        # "case005, case001, case004": the bars in their order, in one lane
            assert label.text == ", ".join(data.cases[i].case for i in sorted(members,
                                                                               key=lambda i: data.cases[i].start))
        named.update(members)
    return named


def check_no_label_covers_another(layout: PlotLayout) -> None:
    labels = [label for label in layout.labels if label.kind in ("phase", "case", "cap")]
    for i, a in enumerate(labels):
        for b in labels[i + 1:]:
            assert not overlap(a.box, b.box), (a.text, b.text)


# -- the real demo run -----------------------------------------------------------------------------

def test_the_demo_run_fixture_is_what_the_tests_say():
    events = (DEMO / "events.jsonl").read_text()
    assert '"configuration": "3d_lowres"' in events       # nnU-Net announced 3d_lowres ...
    agent = [json.loads(line) for line in (DEMO / "agent.jsonl").read_text().splitlines() if line.strip()]
    assert not any(e.get("configuration") == "3d_lowres" for e in agent)      # ... and skipped it


def test_a_configuration_nnunet_skipped_gets_no_band():
    data = demo_data()
    drawn = [(p.phase, p.configuration) for p in data.phases]
    assert ("preprocessing", "3d_lowres") not in drawn
    assert ("preprocessing", None) not in drawn           # nnU-Net's bare "Preprocessing..." line
    assert ("preprocessing", "2d") in drawn and ("preprocessing", "3d_fullres") in drawn
    _, layout = draw_memory_figure(data)
    assert [(p.phase, p.configuration) for p in layout.bands] == drawn
    assert not any("3d_lowres" in label.text for label in layout.labels)


def test_start_up_is_a_labelled_band():
    data = demo_data()
    assert data.phases[0].phase == "startup"
    assert data.phases[0].start == data.samples[0].t
    assert data.phases[0].end == data.phases[1].start
    _, layout = draw_memory_figure(data)
    assert layout.bands[0].phase == "startup"
    assert [label.text for label in layout.phase_labels() if label.key.phase == "startup"] == ["start-up"]


def test_phase_labels_stay_in_their_band_above_the_cap_in_the_demo_run():
    data = demo_data()
    fig, layout = draw_memory_figure(data)
    check_phase_labels(data, fig, layout)
    named = {(label.key.phase, label.key.configuration) for label in layout.phase_labels()}
    assert ("fingerprint", None) in named and ("preprocessing", "3d_fullres") in named


def test_every_case_bar_of_the_demo_run_is_named():
    data = demo_data()
    _, layout = draw_memory_figure(data)
    assert len(data.cases) == 18        # within the budget (40): every bar gets its name
    assert named_cases(data, layout) == set(range(len(data.cases)))
    for label in layout.case_labels():
        assert inside(label.box, layout.case_axes)
    check_no_label_covers_another(layout)


def test_the_older_fixture_too():
    data = fixture_data()
    fig, layout = draw_memory_figure(data)
    check_phase_labels(data, fig, layout)
    check_no_label_covers_another(layout)
    assert named_cases(data, layout) == set(range(len(data.cases)))
    assert "start-up" in [label.text for label in layout.phase_labels()]


# -- synthetic edge cases --------------------------------------------------------------------------

def synthetic(phases: list[PhaseSpan], cases: list[CaseSpan], seconds: float = 60.0) -> PlotData:
    samples = [MemorySample(T0 + i / 2, int((0.3 + 0.4 * (i % 40) / 40) * GIB), 30 * MIB, None)
               for i in range(int(seconds * 2) + 1)]
    return PlotData(samples, phases, cases, [], int(1.2 * GIB), "synthetic")


def test_a_narrow_band_gets_a_short_or_upright_label_that_never_reaches_the_cap():
    phases = [PhaseSpan("startup", None, T0, T0 + 0.8),
              PhaseSpan("fingerprint", None, T0 + 0.8, T0 + 20),
              PhaseSpan("planning", None, T0 + 20, T0 + 20.4),
              PhaseSpan("preprocessing", "2d", T0 + 20.4, T0 + 21.5),
              PhaseSpan("preprocessing", "3d_fullres", T0 + 21.5, T0 + 60)]
    data = synthetic(phases, [])
    fig, layout = draw_memory_figure(data)
    check_phase_labels(data, fig, layout)
    check_no_label_covers_another(layout)
    by_phase = {(label.key.phase, label.key.configuration): label for label in layout.phase_labels()}
    # The wide bands are named in full, horizontally.
    assert by_phase[("preprocessing", "3d_fullres")].text == "preprocessing 3d_fullres"
    assert by_phase[("preprocessing", "3d_fullres")].rotation == 0
    # A narrow band that is named is named upright or by its configuration alone.
    for key in (("planning", None), ("preprocessing", "2d")):
        if key in by_phase:
            assert by_phase[key].rotation == 90 or by_phase[key].text == "2d"


def test_skipped_and_kept_configurations_from_agent_events(tmp_path):
    """No band: not started by the agent (skipped by nnU-Net), or complete from an earlier run without a case.
    A band: a case ran, or the agent started it and it never completed (a failure before its first case)."""
    def lines(path: Path, objs: list[dict]) -> Path:
        path.write_text("".join(json.dumps(o) + "\n" for o in objs))
        return path

    timeline = lines(tmp_path / "timeline.jsonl", [{"t": T0 + i, "anon": 100 * MIB, "file": MIB, "usage": 101 * MIB}
                                                   for i in range(40)])
    phase = [("fingerprint", None, 1), ("planning", None, 5), ("preprocessing", None, 6),
             ("preprocessing", "2d", 6.01), ("preprocessing", "3d_fullres", 10), ("preprocessing", "3d_lowres", 20),
             ("preprocessing", "3d_cascade", 21)]
    events = lines(tmp_path / "events.jsonl",
                   [{"t": T0 + t, "event": "phase", "phase": p, "configuration": c} for p, c, t in phase]
                   + [{"t": T0 + 39, "event": "child_exit", "returncode": 1}])
    agent = lines(tmp_path / "agent.jsonl", [
        {"t": T0 + 0.5, "event": "agent_start", "pid": 7},
        {"t": T0 + 6.02, "event": "phase_start", "pid": 7, "phase": "preprocessing", "configuration": "2d"},
        {"t": T0 + 6.5, "event": "case_start", "pid": 30, "case": "case000", "phase": "preprocessing",
         "configuration": "2d"},
        {"t": T0 + 8, "event": "case_end", "pid": 30, "case": "case000", "phase": "preprocessing",
         "configuration": "2d", "peak_rss_bytes": 90 * MIB},
        {"t": T0 + 9, "event": "configuration_complete", "pid": 7, "configuration": "2d", "cases": 1},
        # 3d_fullres: complete from an earlier run, no case started
        {"t": T0 + 10.1, "event": "phase_start", "pid": 7, "phase": "preprocessing", "configuration": "3d_fullres"},
        {"t": T0 + 10.2, "event": "configuration_complete", "pid": 7, "configuration": "3d_fullres", "cases": 1,
         "skipped": True},
        # 3d_lowres: never started (not in the plans); 3d_cascade: started, failed before its first case
        {"t": T0 + 21.1, "event": "phase_start", "pid": 7, "phase": "preprocessing",
         "configuration": "3d_cascade"},
    ])
    data = plot_data_from_files(timeline, events, agent, GIB, "t")
    assert [(p.phase, p.configuration) for p in data.phases] == [
        ("startup", None), ("fingerprint", None), ("planning", None), ("preprocessing", "2d"),
        ("preprocessing", "3d_cascade")]
    # Without an agent record nothing is known: every band stays.
    data = plot_data_from_files(timeline, events, None, GIB, "t")
    assert ("preprocessing", "3d_lowres") in [(p.phase, p.configuration) for p in data.phases]


def test_narrow_case_bars_are_named_within_the_budget():
    cases = [CaseSpan(f"case{k:03d}", 30 + k % 2, T0 + 20 + k * 0.4, T0 + 20 + k * 0.4 + 0.35, (k % 7 + 1) * 50 * MIB)
             for k in range(12)]
    data = synthetic([PhaseSpan("preprocessing", "3d_fullres", T0 + 19, T0 + 60)], cases)
    _, layout = draw_memory_figure(data)
    assert named_cases(data, layout) == set(range(len(cases)))       # narrow bars: named beside them
    for label in layout.case_labels():
        assert inside(label.box, layout.case_axes)
    check_no_label_covers_another(layout)


def test_the_label_budget_holds_with_many_cases():
    cases = [CaseSpan(f"case{k:03d}", 30 + k % 4, T0 + k * 0.5, T0 + k * 0.5 + 1.9, (k * 37 % 101) * MIB)
             for k in range(100)]
    cases[50] = CaseSpan("case050", 32, T0 + 25, None, None)
    data = synthetic([], cases)
    _, layout = draw_memory_figure(data)
    named = named_cases(data, layout)
    assert len(named) <= 20 + 1                          # the budget: the unfinished + the 20 largest peaks
    assert 50 in named                                   # the unfinished one comes first
    check_no_label_covers_another(layout)
