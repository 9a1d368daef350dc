"""Compare two nnU-Net preprocessed folders the way the foundation issue defines "identical".

Same set of relative paths (nnrun's own ``.nnrun/`` folder excluded), every
file byte-identical except ``.b2nd`` files, which must decode to equal arrays
with equal dtype, shape, chunks, blocks and metadata (two native runs already
differ in ``.b2nd`` bytes: blosc2 frames are not reproducible byte for byte).
"""
from __future__ import annotations

import filecmp
from pathlib import Path

import numpy as np

NNRUN_DIR = ".nnrun"


def relative_files(root: Path) -> set[str]:
    out = set()
    for path in root.rglob("*"):
        rel = path.relative_to(root)
        if rel.parts and rel.parts[0] == NNRUN_DIR:
            continue
        if path.is_file():
            out.add(str(rel))
    return out


def b2nd_differences(a: Path, b: Path) -> list[str]:
    import blosc2

    x, y = blosc2.open(str(a), mode="r"), blosc2.open(str(b), mode="r")
    problems = []
    for attr in ("dtype", "shape", "chunks", "blocks"):
        if getattr(x, attr) != getattr(y, attr):
            problems.append(f"{attr}: {getattr(x, attr)} != {getattr(y, attr)}")
    if dict(x.schunk.meta) != dict(y.schunk.meta):
        problems.append("meta differs")
    if x.schunk.vlmeta.getall() != y.schunk.vlmeta.getall():
        problems.append("vlmeta differs")
    if not problems and not np.array_equal(x[...], y[...], equal_nan=True):
        problems.append("decoded arrays differ")
    return problems


def compare_trees(left: Path, right: Path) -> list[str]:
    """All differences between two preprocessed dataset folders (empty: identical)."""
    lf, rf = relative_files(left), relative_files(right)
    problems = [f"only in {left}: {p}" for p in sorted(lf - rf)]
    problems += [f"only in {right}: {p}" for p in sorted(rf - lf)]
    for rel in sorted(lf & rf):
        a, b = left / rel, right / rel
        if rel.endswith(".b2nd"):
            problems += [f"{rel}: {d}" for d in b2nd_differences(a, b)]
        elif not filecmp.cmp(a, b, shallow=False):
            problems.append(f"{rel}: bytes differ")
    return problems
