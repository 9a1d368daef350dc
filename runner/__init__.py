"""nnrun: nnU-Net v2 preprocessing under a hard memory cap, with OOM diagnosis.

This package is imported both on the host (CLI, engine, monitor) and inside the
container (the supervisor).  Keep this file free of third-party imports: the
supervisor runs with the standard library only.
"""

__version__ = "0.1.0"
