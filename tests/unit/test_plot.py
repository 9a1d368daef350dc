"""Pure tests of runner.plot: memory.png from plain data and from run-folder files."""
from __future__ import annotations

import json
import math
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runner.plot.data import CaseSpan, MemorySample, PhaseSpan, PlotData, plot_data_from_files
from runner.plot.render import draw_memory_figure, render_memory_png

pytest.importorskip("matplotlib")

TIMELINE_FIXTURES = Path(__file__).resolve().parent.parent / "fixtures" / "timeline"

MIB = 1024 ** 2
GIB = 1024 ** 3
T0 = 1795635017.61
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


# -- helpers -----------------------------------------------------------------------

def synthetic_run(hz: float = 10.0) -> PlotData:
    """fingerprint -> planning -> preprocessing 3d_fullres; 6 cases on 2 workers;
    one OOM kill at 52 s; case005 unfinished (killed)."""
    cap = int(1.2 * GIB)
    samples = []
    n = int(56 * hz)
    for i in range(n + 1):
        x = i / hz
        if x < 14:        # fingerprint: moderate, wavy
            anon = 250 * MIB + 120 * MIB * math.sin(x / 2.0) ** 2
        elif x < 20:      # planning: low
            anon = 180 * MIB
        else:             # preprocessing: climbs to the cap
            anon = 300 * MIB + (x - 20) / 32 * (cap - 300 * MIB) * (0.9 + 0.1 * math.sin(x))
            anon = min(anon, cap - 8 * MIB)
        if x > 52:
            anon = 200 * MIB
        file_ = min(60 * MIB + x * 4 * MIB, cap - anon)
        samples.append(MemorySample(t=T0 + x, anon_bytes=int(anon), file_bytes=int(file_),
                                    usage_bytes=int(anon + file_ + 12 * MIB)))
    phases = [
        PhaseSpan("fingerprint", None, T0 + 0.5, T0 + 14.0),
        PhaseSpan("planning", None, T0 + 14.0, T0 + 20.0),
        PhaseSpan("preprocessing", "3d_fullres", T0 + 20.0, T0 + 55.5),
    ]
    cases = [
        CaseSpan("case000", 35, T0 + 20.5, T0 + 29.0, 412_000_000),
        CaseSpan("case001", 36, T0 + 20.6, T0 + 33.0, 530_000_000),
        CaseSpan("case002", 35, T0 + 29.2, T0 + 38.5, 390_000_000),
        CaseSpan("case003", 36, T0 + 33.1, T0 + 44.0, 610_000_000),
        CaseSpan("case004", 35, T0 + 38.7, T0 + 47.5, None),
        CaseSpan("case005", 36, T0 + 44.2, None, None),
    ]
    return PlotData(samples=samples, phases=phases, cases=cases, oom_kill_times=[T0 + 52.0],
                    limit_bytes=cap, title="Dataset501_Demo  ·  outcome oom  ·  cap 1.2 GiB")


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def assert_png(path: Path, width: int, height: int, min_bytes: int = 10_000) -> None:
    assert path.is_file()
    w, h = png_size(path)
    assert abs(w - width) <= 2 and abs(h - height) <= 2, (w, h)
    assert path.stat().st_size > min_bytes


def image(path: Path):
    Image = pytest.importorskip("PIL.Image")
    return Image.open(path).convert("RGB")


def red_pixels(img) -> int:
    """Pixels of the OOM red (#d62728) or close to it."""
    import numpy as np

    a = np.asarray(img).astype(int)
    return int(((a[..., 0] > 190) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum())


# -- rendering ---------------------------------------------------------------------

def test_synthetic_run_renders_a_png_of_the_requested_size(tmp_path):
    out = render_memory_png(synthetic_run(), tmp_path / "memory.png", width_px=1400, height_px=800)
    assert out == tmp_path / "memory.png"
    assert_png(out, 1400, 800)
    img = image(out)
    assert len(img.getcolors(maxcolors=1 << 20)) > 20
    assert red_pixels(img) > 200          # the OOM kill line (both panels), marker, label


def test_other_sizes_are_respected(tmp_path):
    out = render_memory_png(synthetic_run(hz=2), tmp_path / "small.png", width_px=900, height_px=500)
    assert_png(out, 900, 500, min_bytes=5_000)


def test_the_oom_kill_is_drawn_where_it_happened(tmp_path):
    """The red vertical line is a column of red pixels; without an OOM kill there is none."""
    data = synthetic_run(hz=2)
    with_kill = render_memory_png(data, tmp_path / "kill.png")
    without = render_memory_png(PlotData(data.samples, data.phases, data.cases, [], data.limit_bytes, data.title),
                                tmp_path / "nokill.png")
    columns = _red_per_column(image(with_kill))
    h = image(with_kill).size[1]
    best = int(columns.argmax())
    assert columns[best] > 0.4 * h            # one long red vertical line
    # ... to the right of the middle (52 s of 56)
    assert best > len(columns) * 0.6
    assert _red_per_column(image(without)).max() < 0.4 * h


def _red_per_column(img):
    import numpy as np

    a = np.asarray(img).astype(int)
    return ((a[..., 0] > 190) & (a[..., 1] < 80) & (a[..., 2] < 80)).sum(axis=0)


def test_the_file_is_replaced_atomically_and_no_temp_file_is_left(tmp_path):
    target = tmp_path / "memory.png"
    target.write_bytes(b"old")
    render_memory_png(synthetic_run(hz=2), target)
    assert target.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.png"]


def test_a_failed_render_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    from matplotlib.figure import Figure

    target = tmp_path / "memory.png"
    target.write_bytes(b"old")

    def boom(self, *args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(Figure, "savefig", boom)
    with pytest.raises(RuntimeError):
        render_memory_png(synthetic_run(hz=2), target)
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["memory.png"]


def test_the_parent_folder_is_created(tmp_path):
    out = render_memory_png(synthetic_run(hz=2), tmp_path / "a" / "b" / "memory.png")
    assert out.is_file()


@pytest.mark.parametrize(
    "data",
    [
        PlotData([], [], [], [], None, ""),
        PlotData([], [], [], [], 1 * GIB, "nothing at all"),
        PlotData([MemorySample(T0, 100 * MIB, 20 * MIB, 130 * MIB)], [], [], [], 1 * GIB, "one sample"),
        PlotData([MemorySample(T0, None, None, None)], [], [], [], None, "one empty sample"),
        PlotData([MemorySample(T0, 100 * MIB, 20 * MIB, 130 * MIB),
                  MemorySample(T0 + 0.1, 110 * MIB, 20 * MIB, 140 * MIB)], [], [], [], None, "two samples"),
        PlotData([MemorySample(T0 + i, None if i % 3 == 0 else i * MIB, None if i % 4 == 0 else MIB,
                               None if i % 5 == 0 else (i + 2) * MIB) for i in range(50)],
                 [], [], [], None, "None values scattered"),
        PlotData([], [PhaseSpan("fingerprint", None, T0, T0 + 3)],
                 [CaseSpan("case000", 7, T0 + 1, None, None)], [T0 + 2], 512 * MIB, "no samples, but events"),
        PlotData([MemorySample(T0 + i, 5 * GIB, GIB, 6 * GIB) for i in range(10)], [], [], [], None,
                 "no cap, GiB"),
        PlotData([MemorySample(T0 + i, 5 * MIB, MIB, 6 * MIB) for i in range(10)],
                 [PhaseSpan("x", None, T0 + 5, T0 + 5),           # empty span: skipped
                  PhaseSpan("y", None, T0 + 6, T0 + 2)],          # backwards: skipped
                 [CaseSpan("c", 1, T0 + 3, T0 + 2, None)],        # ends before it starts
                 [float("nan")], 0, "degenerate spans, zero cap"),
    ],
    ids=["empty", "empty-capped", "one-sample", "one-empty-sample", "two-samples", "nones",
         "no-samples", "no-cap-gib", "degenerate"],
)
def test_edge_cases_render(tmp_path, data):
    out = render_memory_png(data, tmp_path / "memory.png", width_px=800, height_px=450)
    assert_png(out, 800, 450, min_bytes=3_000)


def test_no_cases_no_phases_no_cap(tmp_path):
    data = synthetic_run(hz=2)
    out = render_memory_png(PlotData(data.samples, [], [], [], None, "bare"), tmp_path / "memory.png")
    assert_png(out, 1400, 800)


def test_hundreds_of_cases_render_and_label_only_some(tmp_path):
    samples = [MemorySample(T0 + i / 10, 3 * GIB, GIB, 4 * GIB) for i in range(6000)]
    cases = []
    for k in range(400):
        lane = k % 8
        start = T0 + (k // 8) * 12.0
        end = None if k in (397, 398) else start + 11.5
        cases.append(CaseSpan(f"case{k:03d}", 100 + lane, start, end, (k * 7919) % 997 * MIB))
    data = PlotData(samples, [PhaseSpan("preprocessing", "3d_fullres", T0, T0 + 600)], cases,
                    [T0 + 598], 8 * GIB, "400 cases")
    out = render_memory_png(data, tmp_path / "memory.png")
    assert_png(out, 1400, 800)
    _, layout = draw_memory_figure(data)
    case_labels = [label.text for label in layout.case_labels()]
    assert 2 <= len(case_labels) <= 22         # the budget: the unfinished ones and the 20 largest peaks
    assert any(s.startswith("case397") for s in case_labels)
    assert any(s.startswith("case398") for s in case_labels)
    biggest = max(cases, key=lambda c: c.peak_rss_bytes or 0)
    assert any(s.startswith(biggest.case) for s in case_labels)


def test_many_distinct_pids_are_packed_into_lanes(tmp_path):
    # maxtasksperchild-like: every case on a fresh pid
    cases = [CaseSpan(f"case{k:03d}", 1000 + k, T0 + k * 0.5, T0 + k * 0.5 + 1.8, 100 * MIB) for k in range(120)]
    samples = [MemorySample(T0 + i / 10, 200 * MIB, 50 * MIB, 260 * MIB) for i in range(700)]
    out = render_memory_png(PlotData(samples, [], cases, [], GIB, "fresh pids"), tmp_path / "memory.png")
    assert_png(out, 1400, 800)


def test_18000_samples_render_quickly(tmp_path):
    """10 Hz for 30 minutes."""
    samples = [MemorySample(T0 + i / 10, int((1 + math.sin(i / 300)) * GIB), 200 * MIB,
                            int((1.3 + math.sin(i / 300)) * GIB)) for i in range(18000)]
    cases = [CaseSpan(f"case{k:03d}", 30 + k % 4, T0 + k * 18, T0 + k * 18 + 70, (k % 9 + 1) * 100 * MIB)
             for k in range(100)]
    phases = [PhaseSpan("fingerprint", None, T0, T0 + 300),
              PhaseSpan("planning", None, T0 + 300, T0 + 320),
              PhaseSpan("preprocessing", "2d", T0 + 320, T0 + 1000),
              PhaseSpan("preprocessing", "3d_fullres", T0 + 1000, T0 + 1800)]
    data = PlotData(samples, phases, cases, [T0 + 1700.0, T0 + 1700.2], int(2.5 * GIB), "30 minutes")
    render_memory_png(data, tmp_path / "warmup.png", width_px=600, height_px=400)  # font cache etc.
    start = time.perf_counter()
    out = render_memory_png(data, tmp_path / "memory.png")
    elapsed = time.perf_counter() - start
    assert_png(out, 1400, 800)
    assert elapsed < 5.0, elapsed


def test_importing_runner_plot_does_not_import_matplotlib():
    code = "import sys, runner.plot.data, runner.plot.render; print('matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parents[2])
    assert result.stdout.strip() == "False"


# -- plot_data_from_files ----------------------------------------------------------

def test_plot_data_from_fixture_files():
    data = plot_data_from_files(TIMELINE_FIXTURES / "timeline.jsonl", TIMELINE_FIXTURES / "events.jsonl",
                                TIMELINE_FIXTURES / "agent.jsonl", int(1.2 * GIB), "fixture")
    assert data.limit_bytes == int(1.2 * GIB)
    assert data.title == "fixture"

    # timeline: 12 good lines, the cut last one skipped; nulls kept as None
    assert len(data.samples) == 12
    assert [s.t for s in data.samples] == sorted(s.t for s in data.samples)
    assert data.samples[0] == MemorySample(1795635017.6, 104857600, 20971520, 130023424)
    assert data.samples[3].anon_bytes is None and data.samples[3].file_bytes is None
    assert data.samples[3].usage_bytes is None

    # phases: start-up from the first sample to the first phase, done not drawn; the last one ends at child_exit
    assert [(p.phase, p.configuration) for p in data.phases] == [
        ("startup", None), ("fingerprint", None), ("planning", None), ("preprocessing", "3d_fullres")]
    assert data.phases[0].start == 1795635017.6 and data.phases[0].end == 1795635017.7
    assert data.phases[1].start == 1795635017.7 and data.phases[1].end == 1795635018.1
    assert data.phases[2].end == data.phases[3].start == 1795635018.3
    assert data.phases[3].end == 1795635018.9            # child_exit

    # OOM: the counter rose at 1795635018.7; the supervisor's event 0.1 s later is the same kill
    assert data.oom_kill_times == [1795635018.7]

    # cases: paired by (pid, case, phase, configuration)
    by_key = {(c.case, c.pid, c.start): c for c in data.cases}
    assert len(data.cases) == 6
    fp = by_key[("case000", 7, 1795635017.8)]
    assert fp.end == 1795635017.9 and fp.peak_rss_bytes == 50_000_000       # fingerprint of case000
    pp = by_key[("case000", 35, 1795635018.35)]
    assert pp.end == 1795635018.5 and pp.peak_rss_bytes == 412_000_000      # preprocessing of case000
    err = by_key[("case001", 36, 1795635018.35)]
    assert err.end == 1795635018.45                                          # case_error ends it too
    assert err.peak_rss_bytes == 800_000_000          # highest rss of ns_pid 36 while it ran
    killed = by_key[("case002", 35, 1795635018.55)]
    assert killed.end is None
    assert killed.peak_rss_bytes == 700_000_000       # from the timeline's per-process rss (ns_pid 35)
    inflight = by_key[("case003", 36, 1795635018.5)]
    assert inflight.end is None and inflight.peak_rss_bytes == 300_000_000
    # an end without a start: started duration_s before it ended
    (orphan,) = [c for c in data.cases if c.case == "case004"]
    assert orphan.start == pytest.approx(1795635018.6) and orphan.end == 1795635018.8
    assert orphan.peak_rss_bytes == 123_000_000


def test_plot_data_from_fixture_files_renders(tmp_path):
    data = plot_data_from_files(TIMELINE_FIXTURES / "timeline.jsonl", TIMELINE_FIXTURES / "events.jsonl",
                                TIMELINE_FIXTURES / "agent.jsonl", int(1.2 * GIB), "fixture")
    assert_png(render_memory_png(data, tmp_path / "memory.png"), 1400, 800)


def test_missing_files_give_empty_lists(tmp_path):
    data = plot_data_from_files(tmp_path / "nope.jsonl", None, tmp_path / "nope2.jsonl", None, "t")
    assert data == PlotData([], [], [], [], None, "t")
    data = plot_data_from_files(tmp_path / "nope.jsonl", tmp_path / "x.jsonl", None, 5, "t")
    assert (data.samples, data.phases, data.cases, data.oom_kill_times) == ([], [], [], [])


def _write_lines(path: Path, objs: list, tail: str = "") -> Path:
    path.write_text("".join(json.dumps(o) + "\n" for o in objs) + tail)
    return path


def test_timeline_oom_counter_rises_and_dedup_with_events(tmp_path):
    timeline = _write_lines(tmp_path / "timeline.jsonl", [
        {"t": 10.0, "anon": 1, "file": 1, "usage": 2, "oom_kill": 0},
        {"t": 10.1, "anon": 1, "file": 1, "usage": 2, "oom_kill": None},   # unreadable: no change
        {"t": 10.2, "anon": 1, "file": 1, "usage": 2, "oom_kill": 1},      # rise
        {"t": 10.3, "anon": 1, "file": 1, "usage": 2, "oom_kill": 1},
        {"t": 12.0, "anon": 1, "file": 1, "usage": 2, "oom_kill": 3},      # rise (two kills in one poll)
    ], tail='{"t": 12.1, "anon": 1, "fi')
    events = _write_lines(tmp_path / "events.jsonl", [
        {"t": 10.0, "event": "phase", "phase": "startup", "configuration": None},
        {"t": 10.05, "event": "phase", "phase": "verify", "configuration": None},
        {"t": 10.25, "event": "oom_kill", "count": 1},       # same kill as 10.2
        {"t": 11.0, "event": "oom_kill", "count": 2},        # another one, only the supervisor saw it
        {"t": 12.3, "event": "oom_kill", "count": 3},        # same as 12.0 (within 0.5 s)
        "not an object",
    ], tail="{garbage\n")
    data = plot_data_from_files(timeline, events, None, None, "t")
    assert data.oom_kill_times == [10.2, 11.0, 12.0]
    assert len(data.samples) == 5
    # no child_exit: the last phase ends with the last thing known; start-up runs from the first sample
    assert [(p.phase, p.start, p.end) for p in data.phases] == [("startup", 10.0, 10.05), ("verify", 10.05, 12.3)]


def test_first_sample_with_a_risen_counter_counts_as_a_kill(tmp_path):
    timeline = _write_lines(tmp_path / "timeline.jsonl", [
        {"t": 1.0, "anon": 1, "file": 1, "usage": 2, "oom_kill": 1},
        {"t": 1.1, "anon": 1, "file": 1, "usage": 2, "oom_kill": 1},
    ])
    assert plot_data_from_files(timeline, None, None, None, "").oom_kill_times == [1.0]


def test_agent_pairs_repeated_cases_in_order(tmp_path):
    agent = _write_lines(tmp_path / "agent.jsonl", [
        {"t": 1.0, "event": "case_start", "case": "a", "pid": 5, "phase": "preprocessing", "configuration": "2d"},
        {"t": 1.0, "event": "case_start", "case": "a", "pid": 5, "phase": "preprocessing",
         "configuration": "3d_fullres"},
        {"t": 2.0, "event": "case_end", "case": "a", "pid": 5, "phase": "preprocessing",
         "configuration": "3d_fullres", "peak_rss_bytes": 9},
        {"t": 3.0, "event": "case_end", "case": "a", "pid": 5, "phase": "preprocessing", "configuration": "2d",
         "peak_rss_bytes": 8},
        {"t": 4.0, "event": "case_start", "case": "b", "pid": "6", "phase": "fingerprint", "configuration": None},
        {"t": 4.5, "event": "case_start", "case": "c", "pid": None},          # no pid: skipped
    ], tail='{"t": 5.0, "event": "case_end", "case": "b", "pid": 6, "phase": "fingerp')
    data = plot_data_from_files(tmp_path / "none.jsonl", None, agent, None, "")
    got = sorted((c.case, c.pid, c.start, c.end, c.peak_rss_bytes) for c in data.cases)
    assert got == [("a", 5, 1.0, 2.0, 9), ("a", 5, 1.0, 3.0, 8), ("b", 6, 4.0, None, None)]


# -- the example render (for humans) -----------------------------------------------

def test_example_render_for_humans(tmp_path):
    """Also writes /tmp/nnrun_plot_example.png, to look at."""
    out = render_memory_png(synthetic_run(), tmp_path / "memory.png")
    try:
        Path("/tmp/nnrun_plot_example.png").write_bytes(out.read_bytes())
    except OSError:
        pass
    assert_png(out, 1400, 800)
