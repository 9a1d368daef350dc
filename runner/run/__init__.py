"""Host-side orchestration of one `nnrun preprocess` run: settings, the container contract
(paths, labels, command, environment), pre-flight, the run loop, monitor, locks, outputs and the plot job.

May import the core modules, `runner.diagnosis.classify`, `runner.engines` (types only at module level) and `runner.rundir`.
"""
