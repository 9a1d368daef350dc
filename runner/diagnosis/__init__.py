"""What happened and what to do next: typed facts from the run folder, classification,
every sentence the user reads about an outcome, the early line and the report.

Pure: imports only core modules and `runner.rundir`; never an engine, never the CLI.
"""
