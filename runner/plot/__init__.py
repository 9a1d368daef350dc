"""The run's ``memory.png``: cgroup memory over time, phases, cap, OOM kills, cases.

Rendered once, at the end of a run, from plain data: no cgroup, no Docker
here.  ``plot_data_from_files`` builds that data from the run folder's JSON
lines files (``timeline.jsonl`` from the host sampler, ``events.jsonl`` from
the in-container supervisor, ``agent.jsonl`` from the per-case agent);
``render_memory_png`` draws it.

matplotlib is imported inside ``render_memory_png`` only, so that importing
this module (and the rest of nnrun) stays cheap and needs no matplotlib.  The
figure is built with ``matplotlib.figure.Figure`` and the Agg canvas, never
pyplot: no display, no global figure state, nothing shown.

Figure layout (time on x, seconds since the first memory sample):

* upper panel: anonymous memory (bottom) and page cache (on top of it) as
  stacked areas, total cgroup usage as a thin line, the cap as a dashed
  horizontal line labelled ``cap 1.2 GiB``, one shaded band per phase with its
  name (and configuration) written in it (``start-up`` for the time before
  nnU-Net's first phase; no band for a configuration nnU-Net skipped), OOM
  kills as red vertical lines marked ``OOM kill``, and the anonymous peak;
* lower panel (only when there are cases, same x axis): one lane per worker
  pid, one bar per case from its start to its end, labelled with the case id
  and its peak RSS when known; unfinished cases (killed, or in flight at the
  end) are red and hatched and run to the end of the data.  With many cases
  only the unfinished ones and the ~20 largest by peak RSS are labelled.

Labels are placed where they fit, measured after the layout is done
(:func:`draw_memory_figure` returns where each went, as :class:`PlotLayout`):
a phase label stays inside its band and above the cap line, clear of the
cap's own label (a shorter form, or none, when it does not fit); a case bar
too narrow for its name gets the name in a small box over the bar, or just
above or below it, where that covers no other label or bar.

Modules: :mod:`runner.plot.data` (the plain data and its reading from the run
folder's files) and :mod:`runner.plot.render` (the drawing and label layout).
"""
