#!/usr/bin/env python3
"""MRI- and CT-like head phantoms (nnU-Net raw datasets) for calibrating and evaluating the memory estimate.

runner/demo.py's volumes fill their whole grid (noise everywhere, CT air at
-1000), so nnU-Net's crop to the nonzero region never removes anything.  Real
skull-stripped or registered MRI is different: a head of real size (about
150 x 190 x 180 mm) in a field of view with wide margins of exactly zero.
These phantoms have that:

* ``mri``: a head with a bumpy (low-frequency perturbed) ellipsoidal outline,
  smooth tissue inside (gaussian-smoothed brain / ventricle / lesion
  ellipsoids with a linear bias-field gradient and mild noise), exact 0
  outside; channel 0 int16, further channels float32 other contrasts of the
  same anatomy;
* ``ct``: the same anatomy as CT: air -1000 HU everywhere outside the head (so
  nothing is cropped), a bright skull shell;

with labels whose foreground fraction differs from case to case (a whole
brain, a ventricle-sized structure, or only a small lesion).  Shapes and
spacings are given per case (e.g. 256 x 256 x 180 at 0.6-1.5 mm, or
0.6 x 0.6 x 2 mm anisotropic).  Deterministic for a seed; written like
runner/demo.py (``.nii.gz``, dataset.json), idempotently (a stamp file).

    python scripts/head_phantoms.py --raw /tmp/raw --id 740 --kind mri --shape 256 256 180 --spacing 1 1 1 --cases 3
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from runner.formats.nifti import write_nifti  # noqa: E402

STAMP_NAME = ".nnrun-phantom.json"
GENERATOR_VERSION = 1
FILE_ENDING = ".nii.gz"
LABELS = {"background": 0, "structure": 1, "lesion": 2}


@dataclass(frozen=True)
class HeadSpec:
    shape: tuple[int, int, int]           # x, y, z voxels
    spacing: tuple[float, float, float]   # mm
    labels: str = "brain"                 # "brain" (large foreground), "structure" (medium), "lesion" (small)


def _axes_mm(shape, spacing, offset_mm):
    """Open grids of physical coordinates (mm) centred on the field of view, shifted by ``offset_mm``."""
    return [((np.arange(n, dtype=np.float32) - (n - 1) / 2) * np.float32(s) - np.float32(o)).reshape(
        [-1 if i == a else 1 for i in range(3)]) for a, (n, s, o) in enumerate(zip(shape, spacing, offset_mm))]


def _ellipsoid(grids, center, radii) -> np.ndarray:
    """Normalised squared distance (< 1 inside) of an axis-aligned ellipsoid, in mm."""
    d = np.zeros(np.broadcast_shapes(*(g.shape for g in grids)), dtype=np.float32)
    for g, c, r in zip(grids, center, radii):
        d += ((g - np.float32(c)) / np.float32(r)) ** 2
    return d


def _smooth(vol: np.ndarray, sigma_mm: float, spacing) -> np.ndarray:
    from scipy.ndimage import gaussian_filter
    return gaussian_filter(vol, [sigma_mm / s for s in spacing], mode="nearest", truncate=3.0)


def head_case(spec: HeadSpec, kind: str, channels: int, rng: np.random.Generator) -> tuple[list[np.ndarray], np.ndarray]:
    """(channel volumes, label volume) of one head, indexed (x, y, z)."""
    shape, spacing = tuple(spec.shape), tuple(spec.spacing)
    # a real head: ~72-80 mm half-width, ~90-100 mm half-length, ~85-95 mm half-height, off centre a little
    radii = (rng.uniform(70, 80), rng.uniform(88, 100), rng.uniform(82, 95))
    offset = (rng.uniform(-8, 8), rng.uniform(-10, 10), rng.uniform(-15, 5))
    g = _axes_mm(shape, spacing, offset)
    d_head = _ellipsoid(g, (0, 0, 0), radii)
    # a bumpy outline: low-frequency noise on the radius (coarse grid, smoothed, upsampled by repetition)
    coarse = rng.standard_normal(tuple(max(2, int(n * s / 12)) for n, s in zip(shape, spacing))).astype(np.float32)
    from scipy.ndimage import gaussian_filter, zoom
    coarse = gaussian_filter(coarse, 1.0)
    bump = zoom(coarse, [n / c for n, c in zip(shape, coarse.shape)], order=1, mode="nearest")[
        :shape[0], :shape[1], :shape[2]]
    bump = np.pad(bump, [(0, n - b) for n, b in zip(shape, bump.shape)], mode="edge")
    head = d_head < (1.0 + 0.08 * bump)
    del bump, coarse
    brain_r = tuple(r * rng.uniform(0.78, 0.85) for r in radii)
    brain = _ellipsoid(g, (0, 0, 3), brain_r) < 1.0
    vent_c = (rng.uniform(-5, 5), rng.uniform(-10, 5), rng.uniform(0, 15))
    vent_r = (rng.uniform(12, 20), rng.uniform(25, 35), rng.uniform(12, 18))
    vent = _ellipsoid(g, vent_c, vent_r) < 1.0
    les_c = (rng.uniform(-35, 35), rng.uniform(-40, 40), rng.uniform(-20, 30))
    les_r = float(rng.uniform(6, 12))
    lesion = (_ellipsoid(g, les_c, (les_r,) * 3) < 1.0) & brain
    seg = np.zeros(shape, dtype=np.uint8)
    if spec.labels == "brain":
        seg[brain & head] = 1
    elif spec.labels == "structure":
        seg[vent & head] = 1
    seg[lesion & head] = 2

    vols = []
    bias = (1.0 + 0.15 * g[0] / radii[0] + 0.1 * g[2] / radii[2]).astype(np.float32)
    for c in range(channels):
        if kind == "ct":
            skull = head & ~(_ellipsoid(g, (0, 0, 0), tuple(r - 7 for r in radii)) < 1.0)
            tissue = np.where(brain, 35.0, 20.0).astype(np.float32)
            tissue[vent] = 8.0
            tissue[lesion] = 60.0
            tissue = _smooth(tissue, 1.0, spacing)
            tissue[skull] = 900.0
            tissue += rng.standard_normal(shape, dtype=np.float32) * np.float32(8.0)
            vol = np.where(head, tissue, np.float32(-1000.0))
            vols.append(np.clip(np.rint(vol), -1024, 3071).astype(np.int16) if c == 0 else vol.astype(np.float32))
            continue
        # MRI contrasts: (scalp/fat, brain, ventricle, lesion)
        scalp_v, brain_v, vent_v, les_v = ((350.0, 600.0, 150.0, 900.0), (250.0, 450.0, 800.0, 600.0))[c % 2]
        tissue = np.full(shape, scalp_v, dtype=np.float32)
        tissue[brain] = brain_v
        tissue[vent] = vent_v
        tissue[lesion] = les_v
        tissue = _smooth(tissue, 1.5, spacing) * bias
        tissue += np.abs(rng.standard_normal(shape, dtype=np.float32)) * np.float32(12.0) + np.float32(5.0)
        vol = np.where(head, tissue, np.float32(0.0))       # exact zero outside the head (skull-stripped / masked)
        vols.append(np.rint(vol).astype(np.int16) if c == 0 else vol.astype(np.float32))
    return vols, seg


def make_head_dataset(raw_root, dataset_id: int, name: str, cases: list[HeadSpec], kind: str = "mri",
                      channels: int = 1, seed: int = 0) -> Path:
    """Write ``DatasetXXX_<name>`` of head phantoms under raw_root (idempotent); return its path."""
    if kind not in ("mri", "ct"):
        raise ValueError("kind is mri or ct")
    root = Path(raw_root)
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"Dataset{dataset_id:03d}_{name}"
    stamp = {"generator_version": GENERATOR_VERSION, "dataset_id": dataset_id, "name": name, "kind": kind,
             "channels": channels, "seed": seed,
             "cases": [{"shape": list(c.shape), "spacing": list(c.spacing), "labels": c.labels} for c in cases]}
    try:
        if json.loads((folder / STAMP_NAME).read_text()) == stamp:
            return folder
    except (OSError, ValueError):
        pass
    tmp = Path(tempfile.mkdtemp(prefix=f".nnrun-tmp-{folder.name}-", dir=root))
    try:
        data = tmp / "data"
        (data / "imagesTr").mkdir(parents=True)
        (data / "labelsTr").mkdir()
        for i, spec in enumerate(cases):
            rng = np.random.default_rng([seed, i])
            vols, seg = head_case(spec, kind, channels, rng)
            for c, vol in enumerate(vols):
                write_nifti(data / "imagesTr" / f"case{i:03d}_{c:04d}{FILE_ENDING}", vol, spec.spacing)
            write_nifti(data / "labelsTr" / f"case{i:03d}{FILE_ENDING}", seg, spec.spacing)
        names = ["CT" if kind == "ct" else "T1", "T2"] + [f"MR{c}" for c in range(2, channels)]
        (data / "dataset.json").write_text(json.dumps({
            "name": name, "description": f"synthetic {kind.upper()} head phantoms (scripts/head_phantoms.py)",
            "channel_names": {str(c): names[c] for c in range(channels)}, "labels": dict(LABELS),
            "numTraining": len(cases), "file_ending": FILE_ENDING}, indent=2) + "\n")
        (data / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        data.rename(folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--raw", required=True)
    ap.add_argument("--id", type=int, required=True)
    ap.add_argument("--name", default="Heads")
    ap.add_argument("--kind", choices=("mri", "ct"), default="mri")
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--shape", type=int, nargs=3, default=(256, 256, 180))
    ap.add_argument("--spacing", type=float, nargs=3, default=(1.0, 1.0, 1.0))
    ap.add_argument("--cases", type=int, default=3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    kinds = ("brain", "structure", "lesion")
    cases = [HeadSpec(tuple(args.shape), tuple(args.spacing), kinds[i % 3]) for i in range(args.cases)]
    print(make_head_dataset(args.raw, args.id, args.name, cases, args.kind, args.channels, args.seed))
    return 0


if __name__ == "__main__":
    sys.exit(main())
