"""Drawing ``memory.png`` from :class:`runner.plot.data.PlotData`: matplotlib's Figure on the Agg canvas, never
pyplot; matplotlib is imported inside the functions, so importing this module stays cheap."""
from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Any

from runner.plot.data import Box, CaseSpan, MemorySample, PhaseSpan, PlacedLabel, PlotData, PlotLayout
from runner.units import GIB, MIB, format_bytes

_DPI = 100
_ANON_COLOR = "#4a7cc0"
_FILE_COLOR = "#b3d5ea"
_USAGE_COLOR = "#2b2b2b"
_CAP_COLOR = "#444444"
_OOM_COLOR = "#d62728"
_CASE_COLOR = "#5b8fd0"
_CASE_EDGE = "#1f4e8c"
_UNFINISHED_FACE = "#f4b6b6"
_PHASE_COLORS = {
    "verify": "#e8e0f0",
    "fingerprint": "#fdf1d6",
    "planning": "#e3f1e0",
    "preprocessing": "#e6edf7",
    "startup": "#ececec",
}
_PHASE_NAMES = {"startup": "start-up"}     # how a phase is written in its band
_OTHER_PHASE_COLORS = ("#eeeeee", "#f6e8e8", "#e8f4f4")
# Successive configurations of the same phase get alternating shades.
_PHASE_ALT_COLORS = {
    "preprocessing": "#f0e6f4",
    "fingerprint": "#fbe7c2",
    "planning": "#d5ead0",
    "verify": "#ddd2ea",
}
_FONT = 9
_LEFT_PX = 96                # left margin: the y label and tick labels ("pid 1234567", "12.5")
_HEADROOM = 1.3              # the y axis reaches this times the cap (or the data): room for the phase labels
_MAX_CASE_LABELS = 20        # with more cases than fit, label at most this many (plus the unfinished)
_MAX_PID_LANES = 24          # more distinct pids than this: pack cases into lanes instead


def _char_px(fontsize: float) -> float:
    """A generous estimate of the width of one character in pixels."""
    return 0.62 * fontsize * _DPI / 72.0


# -- rendering -------------------------------------------------------------------

def render_memory_png(data: PlotData, path: Path, width_px: int = 1400, height_px: int = 800) -> Path:
    """Render ``data`` as a PNG of ``width_px`` x ``height_px`` pixels at ``path``.

    The file is written atomically (a temporary file in the same folder, then
    ``os.replace``), so a reader never sees half a PNG.  Returns ``path``.
    """
    path = Path(path)
    fig, _ = draw_memory_figure(data, width_px, height_px)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            # zlib level 1: a few % larger file, a fraction of the encoding time (the default 6 took ~0.1 s)
            fig.savefig(fh, format="png", dpi=_DPI, pil_kwargs={"compress_level": 1})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp_name, 0o666 & ~umask)      # mkstemp makes 0600; the run's other files are 0644
        os.replace(tmp_name, path)
    except BaseException:
        try:
            os.unlink(tmp_name)
        except OSError:
            pass
        raise
    return path


def draw_memory_figure(data: PlotData, width_px: int = 1400, height_px: int = 800) -> tuple[Any, PlotLayout]:
    """The figure of ``data`` (a matplotlib Figure on an Agg canvas) and where its bands and labels went.

    Nothing is written.  The layout is computed once, with every artist but
    the labels inside the axes, and then frozen, so the label positions in
    the returned :class:`PlotLayout` are those of the saved PNG.
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch
    from matplotlib.transforms import blended_transform_factory

    width_px = max(int(width_px), 200)
    height_px = max(int(height_px), 150)

    samples = sorted((s for s in data.samples if _finite(s.t)), key=lambda s: s.t)
    phases = [p for p in data.phases if _finite(p.start) and _finite(p.end) and p.end > p.start]
    cases = [c for c in data.cases if _finite(c.start)]
    ooms = sorted(t for t in data.oom_kill_times if _finite(t))
    limit = data.limit_bytes if data.limit_bytes and data.limit_bytes > 0 else None

    # The time origin: the first sample, or else the first thing known.
    starts = [s.t for s in samples[:1]] + [p.start for p in phases] + [c.start for c in cases] + ooms
    t0 = samples[0].t if samples else (min(starts) if starts else 0.0)
    ends = (
        [s.t for s in samples[-1:]] + [p.end for p in phases] + [c.start for c in cases]
        + [c.end for c in cases if c.end is not None and _finite(c.end)] + ooms
    )
    t_last = max(ends) if ends else t0
    x_min = min([0.0] + [v - t0 for v in starts])
    x_max = t_last - t0
    if x_max - x_min < 1e-9:
        x_max = x_min + 1.0
    pad = 0.01 * (x_max - x_min)
    xlim = (x_min - pad, x_max + pad)

    # Memory unit: GiB from 1 GiB of cap (or observed memory) upwards, MiB below.
    observed = [v for s in samples for v in (s.usage_bytes, _stack(s)) if v is not None]
    reference = limit if limit is not None else (max(observed) if observed else 0)
    unit, unit_name = (GIB, "GiB") if reference >= GIB else (MIB, "MiB")

    fig = Figure(figsize=(width_px / _DPI, height_px / _DPI), dpi=_DPI)
    FigureCanvasAgg(fig)
    if width_px >= 600 and height_px >= 400:
        # Fixed margins in pixels (room for the title, the legends, the tick and lane labels): matplotlib's
        # constrained layout found about the same ones, for 0.14 s of the 0.33 s a render took.
        gap = 44.0
        fig.subplots_adjust(left=_LEFT_PX / width_px, right=1 - 16 / width_px, top=1 - 66 / height_px,
                            bottom=50 / height_px, hspace=2 * gap / (height_px - 66 - 50 - gap))
    # (smaller, e.g. the plot job's warm-up: matplotlib's default margins)

    lanes, lane_labels = _lanes(cases)
    if cases:
        lower_ratio = min(2.4, 0.9 + 0.22 * len(lane_labels))
        ax, axc = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3.0, lower_ratio]})
    else:
        ax, axc = fig.subplots(1, 1), None
    if data.title:
        fig.suptitle(data.title, fontsize=_FONT + 3, fontweight="bold")

    # -- memory areas
    legend_handles: list[Any] = []
    anon = [(s.t - t0, s.anon_bytes / unit) for s in samples if s.anon_bytes is not None]
    both = [(s.t - t0, s.anon_bytes / unit, (s.anon_bytes + s.file_bytes) / unit)
            for s in samples if s.anon_bytes is not None and s.file_bytes is not None]
    usage = [(s.t - t0, s.usage_bytes / unit) for s in samples if s.usage_bytes is not None]
    few = len(samples) <= 2
    if both:
        xb, lo, hi = (np.asarray(v, dtype=float) for v in zip(*both))
        ax.fill_between(xb, lo, hi, color=_FILE_COLOR, linewidth=0, zorder=2)
        if few:
            ax.plot(xb, hi, "o", color=_FILE_COLOR, markersize=5, zorder=2)
        legend_handles.append(Patch(facecolor=_FILE_COLOR, label="page cache (file)"))
    if anon:
        xa, ya = (np.asarray(v, dtype=float) for v in zip(*anon))
        ax.fill_between(xa, 0, ya, color=_ANON_COLOR, linewidth=0, zorder=3)
        ax.plot(xa, ya, color=_CASE_EDGE, linewidth=0.8, marker="o" if few else None, markersize=5, zorder=3)
        legend_handles.insert(0, Patch(facecolor=_ANON_COLOR, label="anonymous memory (anon)"))
    if usage:
        xu, yu = (np.asarray(v, dtype=float) for v in zip(*usage))
        ax.plot(xu, yu, color=_USAGE_COLOR, linewidth=0.9, alpha=0.8,
                marker="o" if few else None, markersize=3, zorder=4)
        legend_handles.append(Line2D([], [], color=_USAGE_COLOR, linewidth=0.9, label="total usage"))
    if not samples:
        ax.text(0.5, 0.5, "no memory samples", transform=ax.transAxes, ha="center", va="center",
                fontsize=_FONT + 2, color="#777777")

    # Peak of anonymous memory.
    peak_text = None
    if anon:
        i_peak = int(np.argmax(ya))
        peak_bytes = max(s.anon_bytes for s in samples if s.anon_bytes is not None)
        label = f"peak anon {format_bytes(peak_bytes)}"
        if limit:
            label += f" ({100.0 * peak_bytes / limit:.0f} % of cap)"
        ax.plot([xa[i_peak]], [ya[i_peak]], marker="v", color=_CASE_EDGE, markersize=6, zorder=6,
                linestyle="none")
        near_right = (xa[i_peak] - xlim[0]) / (xlim[1] - xlim[0]) > 0.7
        # Next to the peak, below it when the cap line runs just above.
        below = bool(limit) and peak_bytes > 0.85 * limit
        peak_text = ax.annotate(label, (xa[i_peak], ya[i_peak]), xytext=(-8 if near_right else 8, -8 if below else 6),
                                textcoords="offset points", ha="right" if near_right else "left",
                                va="top" if below else "bottom",
                                fontsize=_FONT - 1, color=_CASE_EDGE, zorder=7,
                                bbox={"boxstyle": "round,pad=0.2", "facecolor": "white", "alpha": 0.75,
                                      "linewidth": 0})

    # -- y range: room above the cap (or the data) for the phase labels
    top_data = max([v for v in observed] + [0]) / unit
    top = max(top_data, (limit or 0) / unit)
    if top <= 0:
        top = 1.0
    ax.set_ylim(0, top * _HEADROOM)
    ax.set_xlim(*xlim)
    ax.set_ylabel(f"cgroup memory ({unit_name})", fontsize=_FONT + 1)
    ax.grid(axis="y", color="#dddddd", linewidth=0.6, zorder=0)
    ax.set_axisbelow(True)
    ax.tick_params(labelsize=_FONT)

    # -- cap
    cap_text = None
    if limit:
        cap_label = f"cap {format_bytes(limit)}"
        ax.axhline(limit / unit, color=_CAP_COLOR, linestyle=(0, (6, 3)), linewidth=1.4, zorder=5)
        # At the left end: OOM kills (and their labels) are usually at the right.
        cap_text = ax.text(0.005, limit / unit, cap_label,
                           transform=blended_transform_factory(ax.transAxes, ax.transData),
                           ha="left", va="bottom", fontsize=_FONT, color=_CAP_COLOR, fontweight="bold", zorder=7,
                           bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.8, "linewidth": 0})
        legend_handles.append(Line2D([], [], color=_CAP_COLOR, linestyle=(0, (6, 3)), linewidth=1.4,
                                     label=cap_label))
    else:
        ax.text(0.995, 0.985, "no memory cap", transform=ax.transAxes, ha="right", va="top",
                fontsize=_FONT, color=_CAP_COLOR)

    # -- phases
    bands: list[PhaseSpan] = []
    previous_phase = None
    alternate = False
    for i, p in enumerate(sorted(phases, key=lambda p: p.start)):
        alternate = (not alternate) if p.phase == previous_phase else False
        previous_phase = p.phase
        color = (_PHASE_ALT_COLORS if alternate else _PHASE_COLORS).get(
            p.phase, _OTHER_PHASE_COLORS[i % len(_OTHER_PHASE_COLORS)])
        a, b = p.start - t0, p.end - t0
        for target in (ax, axc):
            if target is not None:
                target.axvspan(a, b, color=color, alpha=1.0, linewidth=0, zorder=0.5)
                target.axvline(a, color="#bbbbbb", linewidth=0.6, zorder=0.6)
        bands.append(p)

    # -- OOM kills
    if ooms:
        clusters = _clusters([t - t0 for t in ooms], gap=0.015 * (xlim[1] - xlim[0]))
        top_t = blended_transform_factory(ax.transData, ax.transAxes)
        for x in (t - t0 for t in ooms):
            for target in (ax, axc):
                if target is not None:
                    target.axvline(x, color=_OOM_COLOR, linewidth=1.6, zorder=8)
        for cluster in clusters:
            x = cluster[0]
            ax.plot([x], [1.0], marker="v", markersize=9, color=_OOM_COLOR, transform=top_t,
                    clip_on=False, zorder=9, linestyle="none")
            text = "OOM kill" if len(cluster) == 1 else f"OOM kill ×{len(cluster)}"
            right = (x - xlim[0]) / (xlim[1] - xlim[0]) > 0.85
            ax.text(x, 0.5, f" {text} ", transform=top_t, rotation=90, ha="right" if right else "left",
                    va="center", fontsize=_FONT, color=_OOM_COLOR, fontweight="bold", zorder=9,
                    bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.85, "linewidth": 0})
        legend_handles.append(Line2D([], [], color=_OOM_COLOR, linewidth=1.6, marker="v",
                                     label=f"OOM kill ({len(ooms)})"))

    if legend_handles:
        ax.legend(handles=legend_handles, loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=len(legend_handles),
                  fontsize=_FONT, frameon=False, borderaxespad=0.2, handlelength=1.8, columnspacing=1.4)

    # -- cases (the bars; their labels once the layout is known)
    if axc is not None:
        chosen, many = _draw_case_bars(axc, cases, lanes, lane_labels, t0, t_last)
        axc.set_xlabel("time since the first memory sample (s)", fontsize=_FONT + 1)
        axc.tick_params(labelsize=_FONT)
        axc.set_xlim(*xlim)
    else:
        chosen, many = set(), False
        ax.set_xlabel("time since the first memory sample (s)", fontsize=_FONT + 1)

    # -- the margins are fixed (above): the labels below are placed by measuring them, no layout pass first
    renderer = fig.canvas.get_renderer()
    placer = _Placer(renderer)
    layout = PlotLayout(bands=bands, labels=[], memory_axes=_box(ax.get_window_extent(renderer)),
                        case_axes=_box(axc.get_window_extent(renderer)) if axc is not None else None)
    if cap_text is not None:
        cap_box = placer.measure(cap_text, pad=2.0)
        placer.take(cap_box)
        layout.labels.append(PlacedLabel("cap", None, cap_text.get_text(), cap_box))
        layout.cap_y = float(ax.transData.transform((0.0, limit / unit))[1]) if limit else None
    if peak_text is not None:
        placer.take(placer.measure(peak_text, pad=2.0))
    floor_y = float(ax.transData.transform((0.0, top))[1])        # the cap line, or the top of the data
    for p in bands:
        _phase_label(ax, p, p.start - t0, p.end - t0, xlim, floor_y, placer, layout)
    if axc is not None:
        _case_labels(axc, cases, lanes, len(lane_labels), chosen, many, t0, t_last, placer, layout)
    return fig, layout


def _finite(x: Any) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


def _stack(s: MemorySample) -> int | None:
    """anon + page cache, the height of the stacked areas (None when anon is unknown)."""
    if s.anon_bytes is None:
        return None
    return s.anon_bytes + (s.file_bytes or 0)


def _clusters(xs: list[float], gap: float) -> list[list[float]]:
    """Sorted values grouped where consecutive ones are closer than ``gap``."""
    groups: list[list[float]] = []
    for x in sorted(xs):
        if groups and x - groups[-1][-1] < gap:
            groups[-1].append(x)
        else:
            groups.append([x])
    return groups


def _box(bbox) -> Box:
    return (float(bbox.x0), float(bbox.y0), float(bbox.x1), float(bbox.y1))


def _overlap(a: Box, b: Box) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _inside(a: Box, region: Box, slack: float = 0.5) -> bool:
    return (a[0] >= region[0] - slack and a[1] >= region[1] - slack
            and a[2] <= region[2] + slack and a[3] <= region[3] + slack)


class _Placer:
    """Labels that must not cover each other: measure a text, check a place, take it."""

    def __init__(self, renderer) -> None:
        self.renderer = renderer
        self.taken: list[Box] = []

    def measure(self, text, pad: float = 0.0) -> Box:
        x0, y0, x1, y1 = _box(text.get_window_extent(self.renderer))
        return (x0 - pad, y0 - pad, x1 + pad, y1 + pad)

    def free(self, box: Box, region: Box, avoid: list[Box] = ()) -> bool:   # type: ignore[assignment]
        return (_inside(box, region) and not any(_overlap(box, other) for other in self.taken)
                and not any(_overlap(box, other) for other in avoid))

    def take(self, box: Box) -> None:
        self.taken.append(box)


def _phase_label(ax, p: PhaseSpan, a: float, b: float, xlim, floor_y: float, placer: _Placer,
                 layout: PlotLayout) -> None:
    """Write the phase's name in its band, above the cap line (or the data), in the first form that fits.

    Forms, in order: ``preprocessing 3d_fullres`` on one line, on two lines,
    the configuration alone, then the same turned upright (narrow bands), a
    size smaller; none when nothing fits (the legend of the bands is the
    x axis: the band is still there).
    """
    from matplotlib.transforms import blended_transform_factory

    lo, hi = max(a, xlim[0]), min(b, xlim[1])
    if hi <= lo:
        return
    x_lo = float(ax.transData.transform((lo, 0.0))[0])
    x_hi = float(ax.transData.transform((hi, 0.0))[0])
    axes = layout.memory_axes or (0.0, 0.0, 0.0, 0.0)
    region = (x_lo + 1.0, floor_y + 2.0, x_hi - 1.0, axes[3] - 1.0)
    if region[2] - region[0] < 6 or region[3] - region[1] < 6:
        return
    name = _PHASE_NAMES.get(p.phase, p.phase)
    one = f"{name} {p.configuration}" if p.configuration else name
    forms: list[tuple[str, float, float]] = [(one, 0, _FONT)]
    if p.configuration:
        forms += [(f"{name}\n{p.configuration}", 0, _FONT), (p.configuration, 0, _FONT)]
    forms += [(one, 90, _FONT)]
    if p.configuration:
        forms += [(p.configuration, 90, _FONT)]
    forms += [(p.configuration or name, 90, _FONT - 1.5)]
    transform = blended_transform_factory(ax.transData, ax.transAxes)
    mid = (lo + hi) / 2
    for text, rotation, size in forms:
        artist = ax.text(mid, 0.985, text, transform=transform, ha="center", va="top", rotation=rotation,
                         fontsize=size, color="#444444", zorder=1, fontstyle="italic", linespacing=1.1)
        box = placer.measure(artist, pad=1.0)
        if placer.free(box, region):
            placer.take(box)
            layout.labels.append(PlacedLabel("phase", p, text, box, rotation))
            return
        artist.remove()


def _lanes(cases: list[CaseSpan]) -> tuple[list[int], list[str]]:
    """The lane of every case and the lanes' labels.

    One lane per worker pid (sorted) while there are few pids; otherwise the
    cases are packed into as few lanes as their overlaps allow.
    """
    pids = sorted({c.pid for c in cases})
    if len(pids) <= _MAX_PID_LANES:
        index = {pid: i for i, pid in enumerate(pids)}
        return [index[c.pid] for c in cases], [f"pid {pid}" for pid in pids]
    lane_end: list[float] = []
    lanes = [0] * len(cases)
    for i in sorted(range(len(cases)), key=lambda i: cases[i].start):
        c = cases[i]
        end = c.end if c.end is not None else math.inf
        for lane, free_from in enumerate(lane_end):
            if free_from <= c.start:
                lanes[i] = lane
                lane_end[lane] = end
                break
        else:
            lanes[i] = len(lane_end)
            lane_end.append(end)
    return lanes, [f"lane {i + 1}" for i in range(len(lane_end))]


_BAR_HEIGHT = 0.62          # the rest of a lane is room for the names of bars too narrow to hold them


def _draw_case_bars(axc, cases: list[CaseSpan], lanes: list[int], lane_labels: list[str],
                    t0: float, t_last: float) -> tuple[set[int], bool]:
    """The case bars, the lanes and the legend; returns which cases get a label (the budget) and whether many."""
    from matplotlib.patches import Patch

    n_lanes = len(lane_labels)
    fontsize = _case_fontsize(n_lanes)
    finished = [(i, c) for i, c in enumerate(cases) if c.end is not None and _finite(c.end)]
    unfinished = [(i, c) for i, c in enumerate(cases) if not (c.end is not None and _finite(c.end))]
    if finished:
        _bars(axc, [(lanes[i], c.start - t0, max(c.end - c.start, 0.0)) for i, c in finished],
              facecolor=_CASE_COLOR, edgecolor=_CASE_EDGE, linewidth=0.6)
    if unfinished:
        _bars(axc, [(lanes[i], c.start - t0, max(t_last - c.start, 0.0)) for i, c in unfinished],
              facecolor=_UNFINISHED_FACE, edgecolor=_OOM_COLOR, linewidth=1.0, hatch="///")

    # Which bars get a label (the budget): all of them while there are few, else the
    # unfinished ones and the largest by peak RSS.
    chosen: set[int]
    many = len(cases) > 2 * _MAX_CASE_LABELS
    if not many:
        chosen = set(range(len(cases)))
    else:
        by_peak = sorted((i for i, c in enumerate(cases) if c.peak_rss_bytes is not None),
                         key=lambda i: cases[i].peak_rss_bytes, reverse=True)
        chosen = {i for i, _ in unfinished} | set(by_peak[:_MAX_CASE_LABELS])

    axc.set_yticks(range(n_lanes))
    axc.set_yticklabels(lane_labels, fontsize=fontsize)
    axc.set_ylim(n_lanes - 0.5, -0.5)
    axc.set_ylabel("worker", fontsize=_FONT + 1)
    axc.grid(axis="x", color="#dddddd", linewidth=0.6, zorder=0)
    axc.set_axisbelow(True)
    handles = [Patch(facecolor=_CASE_COLOR, edgecolor=_CASE_EDGE, label=f"case (finished: {len(finished)})")]
    if unfinished:
        handles.append(Patch(facecolor=_UNFINISHED_FACE, edgecolor=_OOM_COLOR, hatch="///",
                             label=f"unfinished ({len(unfinished)})"))
    if many:
        handles.append(Patch(facecolor="none", edgecolor="none",
                             label=f"{len(cases)} cases; labelled: unfinished + {_MAX_CASE_LABELS} largest peaks"))
    axc.legend(handles=handles, loc="lower right", bbox_to_anchor=(1.0, 1.0), ncol=len(handles),
               fontsize=_FONT - 1, frameon=False, borderaxespad=0.1, handlelength=1.6)
    return chosen, many


def _bars(axc, bars: list[tuple[int, float, float]], **style) -> None:
    """Horizontal bars (lane, left, width) as one collection: barh's one Rectangle artist per bar took
    0.9 s to draw 1,000 cases (a 500-case dataset), the collection a few milliseconds.  The axes' limits
    are set by the caller."""
    from matplotlib.collections import PolyCollection
    half = _BAR_HEIGHT / 2
    verts = [[(left, lane - half), (left + width, lane - half), (left + width, lane + half), (left, lane + half)]
             for lane, left, width in bars]
    axc.add_collection(PolyCollection(verts, zorder=3, **style), autolim=False)


def _case_fontsize(n_lanes: int) -> float:
    return _FONT if n_lanes <= 8 else (_FONT - 1 if n_lanes <= 14 else _FONT - 2)


def _case_labels(axc, cases: list[CaseSpan], lanes: list[int], n_lanes: int, chosen: set[int], many: bool,
                 t0: float, t_last: float, placer: _Placer, layout: PlotLayout) -> None:
    """Name the chosen case bars, covering no other label.

    Inside the bar when the name fits there.  A bar too narrow for it gets a
    small box with its name over the bar, or just above or below it (between
    the lanes), or beside it, covering no other bar; failing that, the bare
    name over the bar and its neighbours'.  Several narrow bars side by side
    in one lane (short cases one after the other) share one box that names
    them in their order: ``case005, case001, case004``.
    """
    fontsize = _case_fontsize(n_lanes)
    region = layout.case_axes or (0.0, 0.0, 0.0, 0.0)
    region = (region[0] + 1.0, region[1] + 1.0, region[2] - 1.0, region[3] - 1.0)
    half = _BAR_HEIGHT / 2
    to_data = axc.transData.inverted()

    def end_of(c: CaseSpan) -> float:
        return c.end if c.end is not None and _finite(c.end) else t_last

    def finished(c: CaseSpan) -> bool:
        return c.end is not None and _finite(c.end)

    bars: dict[int, Box] = {}
    for i, c in enumerate(cases):
        (x0, y0), (x1, y1) = axc.transData.transform([(c.start - t0, lanes[i] + half),
                                                      (end_of(c) - t0, lanes[i] - half)])
        bars[i] = (float(min(x0, x1)), float(min(y0, y1)), float(max(x0, x1)), float(max(y0, y1)))
    layout.case_bars = bars

    def priority(i: int) -> tuple:
        c = cases[i]
        return (finished(c), -(c.peak_rss_bytes or 0), c.start)

    def peak_of(c: CaseSpan) -> str:
        return f" · {format_bytes(c.peak_rss_bytes)}" if c.peak_rss_bytes is not None else ""

    def inside(i: int) -> bool:
        c = cases[i]
        done = finished(c)
        bar = bars[i]
        inner = (bar[0] + 2.0, bar[1] - 1.0, bar[2] - 2.0, bar[3] + 1.0)
        if inner[2] - inner[0] < 8:
            return False
        flag = "" if done else " (unfinished)"
        for text in dict.fromkeys((f"{c.case}{peak_of(c)}{flag}", f"{c.case}{peak_of(c)}", c.case)):
            artist = axc.text((c.start + end_of(c)) / 2 - t0, lanes[i], text, ha="center", va="center",
                              fontsize=fontsize, color="white" if done else "#8b0000",
                              fontweight="normal" if done else "bold", zorder=9, clip_on=True,
                              bbox=None if done else {"boxstyle": "round,pad=0.1", "facecolor": "white",
                                                      "alpha": 0.8, "linewidth": 0})
            box = placer.measure(artist, pad=0.0 if done else 1.5)
            if _inside(box, inner) and placer.free(box, region):
                placer.take(box)
                layout.labels.append(PlacedLabel("case", i, text, box))
                return True
            artist.remove()
        return False

    def boxed(members: list[int], texts: list[str], last_resort: str) -> bool:
        """A boxed label for these bars (one, or several side by side in one lane)."""
        lane = lanes[members[0]]
        a = min(cases[i].start for i in members) - t0
        b = max(end_of(cases[i]) for i in members) - t0
        own = [bars[i] for i in members]
        others = [box for j, box in bars.items() if j not in members]
        done = all(finished(cases[i]) for i in members)
        a_px, b_px = (float(v) for v in axc.transData.transform([(a, 0.0), (b, 0.0)])[:, 0])
        right = float(to_data.transform((b_px + 4.0, 0.0))[0])
        left = float(to_data.transform((a_px - 4.0, 0.0))[0])
        mid = (a + b) / 2
        over = (mid, lane, "center", "center", others)
        spots = [(mid, lane - half - 0.03, "center", "bottom", others + own),
                 (mid, lane + half + 0.03, "center", "top", others + own),
                 (right, lane, "left", "center", others + own),
                 (left, lane, "right", "center", others + own)]
        # One bar: its name over it first; several: beside them first (a box over them would hide them).
        spots.insert(0 if len(members) == 1 else 2, over)
        tries = [(spot, text) for spot in spots for text in texts] + [((mid, lane, "center", "center", []),
                                                                       last_resort)]
        for (x, y, ha, va, avoid), text in tries:
            artist = axc.text(x, y, text, ha=ha, va=va, fontsize=fontsize - 1,
                              color=_CASE_EDGE if done else "#8b0000", zorder=9, clip_on=True,
                              bbox={"boxstyle": "round,pad=0.15", "facecolor": "white", "alpha": 0.85,
                                    "linewidth": 0.4, "edgecolor": _CASE_EDGE if done else _OOM_COLOR})
            box = placer.measure(artist, pad=1.0)
            # Kept inside the axes: shift it sideways when it sticks out at an end (not beside the bars).
            shift = max(0.0, region[0] - box[0]) - max(0.0, box[2] - region[2])
            if shift and ha == "center":
                x_px = float(axc.transData.transform((x, 0.0))[0]) + shift
                artist.set_x(float(to_data.transform((x_px, 0.0))[0]))
                box = (box[0] + shift, box[1], box[2] + shift, box[3])
            if placer.free(box, region, avoid=avoid):
                placer.take(box)
                key: Any = members[0] if len(members) == 1 else tuple(members)
                layout.labels.append(PlacedLabel("case", key, text, box))
                return True
            artist.remove()
        return False

    pending = [i for i in sorted(chosen, key=priority) if not inside(i)]

    # Narrow bars side by side in one lane: closer than a name is wide.
    name_px = max((len(cases[i].case) for i in pending), default=0) * _char_px(fontsize - 1)
    groups: list[list[int]] = []
    for lane in sorted({lanes[i] for i in pending}):
        row = sorted((i for i in pending if lanes[i] == lane), key=lambda i: bars[i][0])
        for i in row:
            if groups and lanes[groups[-1][-1]] == lane and bars[i][0] - bars[groups[-1][-1]][2] < name_px:
                groups[-1].append(i)
            else:
                groups.append([i])
    # Crowded places first (they have the fewest places to go), then by the cases' priority.
    for group in sorted(groups, key=lambda g: (len(g) == 1, min(priority(i) for i in g))):
        if len(group) == 1:
            c = cases[group[0]]
            boxed(group, list(dict.fromkeys((f"{c.case}{peak_of(c)}", c.case))), c.case)
        else:
            names = ", ".join(cases[i].case for i in sorted(group, key=lambda i: cases[i].start))
            if not boxed(group, [names], names):
                for i in group:
                    boxed([i], [cases[i].case], cases[i].case)


# -- reading the run folder --------------------------------------------------------

