"""The host command line: the typer app, one module per command, shared options and progress.

The only package that prints.  May import every other host package; nothing imports it.
"""
