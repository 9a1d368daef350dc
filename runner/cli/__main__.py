"""`python -m runner.cli`: the same as the `nnrun` command."""
from runner.cli.app import entry

entry()
