"""Synthetic nnU-Net raw datasets (numpy only): the bundled demo and custom test data.

Each case is a CT-like volume: air (-1000 HU) around a noisy soft-tissue body
ellipsoid, an "organ" ellipsoid (label 1) and a "lesion" sphere inside it
(label 2), both brighter than the body, plus an unlabelled bright bone-like
blob so labels are not just thresholds.  Channel 0 is int16 CT; further
channels are float32 MR-like contrasts of the same anatomy.

Datasets are deterministic for a given seed and written idempotently: a small
``.nnrun-demo.json`` stamp in the dataset folder (nnU-Net ignores unknown files
there) records the spec, and a matching stamp means "already there".
Otherwise the dataset is built in a hidden temporary folder next to the target
and renamed into place.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runner.errors import BadInputError
from runner.formats.nifti import write_nifti

STAMP_NAME = ".nnrun-demo.json"
# Bump when the generated content changes, so old stamped datasets get rebuilt.
GENERATOR_VERSION = 1
FILE_ENDING = ".nii.gz"
LABELS = {"background": 0, "organ": 1, "lesion": 2}


@dataclass(frozen=True)
class CaseSpec:
    shape: tuple[int, int, int]  # (x, y, z) voxels, as NIfTI stores them
    spacing: tuple[float, float, float]  # mm, (x, y, z)
    label_shape: tuple[int, int, int] | None = None  # set to make a deliberately mismatched label


# The bundled demo: mixed sizes, in-plane 0.8 mm, z spacing 2.5 / 3.0 / 4.0 mm.
# The z/in-plane ratio is > 3, so nnU-Net resamples with its separate-z path.
DEMO_CASES: tuple[CaseSpec, ...] = (
    CaseSpec((96, 96, 40), (0.8, 0.8, 2.5)),
    CaseSpec((128, 112, 48), (0.8, 0.8, 3.0)),
    CaseSpec((160, 160, 64), (0.8, 0.8, 4.0)),
    CaseSpec((192, 176, 80), (0.8, 0.8, 2.5)),
    CaseSpec((112, 128, 56), (0.8, 0.8, 3.0)),
    CaseSpec((176, 192, 72), (0.8, 0.8, 4.0)),
)
DEMO_ID = 501
DEMO_NAME = "Demo"


# --------------------------------------------------------------------------- volumes

def _channel_names(channels: int) -> dict[str, str]:
    names = ["CT", "MR"] + [f"MR{c}" for c in range(2, channels)]
    return {str(c): names[c] for c in range(channels)}


def _anatomy(rng: np.random.Generator) -> dict:
    """Random structure positions in normalised coordinates (-1..1), drawn once per case."""
    organ_center = rng.uniform(-0.25, 0.25, 3) + np.array([0.15, 0.0, 0.0])
    organ_radii = rng.uniform(0.3, 0.42, 3)
    # lesion inside the organ: offset well within the organ radii
    lesion_center = organ_center + rng.uniform(-0.4, 0.4, 3) * organ_radii
    lesion_radius = float(rng.uniform(0.1, 0.15))
    bone_center = np.array([rng.uniform(-0.5, -0.3), rng.uniform(-0.2, 0.2), 0.0])
    return {
        "body_radii": rng.uniform(0.8, 0.9, 3),
        "organ": (organ_center, organ_radii),
        "lesion": (lesion_center, lesion_radius),
        "bone": (bone_center, 0.12),
    }


def _grids(shape):
    """Normalised open coordinate grids (-1..1 along each axis), broadcastable."""
    return [np.linspace(-1.0, 1.0, n, dtype=np.float32).reshape([-1 if i == a else 1 for i in range(3)])
            for a, n in enumerate(shape)]


def _inside(grids, center, radii) -> np.ndarray:
    radii = np.broadcast_to(np.asarray(radii, dtype=np.float32), (3,))
    d = sum(((g - np.float32(c)) / np.float32(r)) ** 2 for g, c, r in zip(grids, center, radii))
    return d <= 1.0


def _label_volume(shape, anatomy) -> np.ndarray:
    grids = _grids(shape)
    body = _inside(grids, (0, 0, 0), anatomy["body_radii"])
    seg = np.zeros(shape, dtype=np.uint8)
    seg[_inside(grids, *anatomy["organ"]) & body] = 1
    seg[_inside(grids, *anatomy["lesion"]) & body] = 2
    return seg


# Intensities per channel: (air, body, organ, lesion, bone, noise sd).
_CT = (-1000.0, 40.0, 90.0, 150.0, 700.0, 20.0)
_MR = (0.0, 300.0, 450.0, 200.0, 80.0, 25.0)


def _image_volume(shape, anatomy, seg: np.ndarray, channel: int, rng: np.random.Generator) -> np.ndarray:
    grids = _grids(shape)
    air, body_v, organ_v, lesion_v, bone_v, sd = _CT if channel == 0 else _MR
    img = np.full(shape, air, dtype=np.float32)
    img[_inside(grids, (0, 0, 0), anatomy["body_radii"])] = body_v
    img[_inside(grids, *anatomy["bone"])] = bone_v
    img[seg == 1] = organ_v
    img[seg == 2] = lesion_v
    img += rng.standard_normal(shape, dtype=np.float32) * np.float32(sd * (1 + 0.2 * channel))
    if channel == 0:
        return np.clip(np.rint(img), -1024, 3071).astype(np.int16)
    return img


# --------------------------------------------------------------------------- datasets

def _spec_stamp(dataset_id: int, name: str, cases, channels: int, seed: int) -> dict:
    return {
        "generator_version": GENERATOR_VERSION,
        "dataset_id": dataset_id,
        "name": name,
        "channels": channels,
        "seed": seed,
        "cases": [{"shape": list(c.shape), "spacing": list(c.spacing),
                   "label_shape": list(c.label_shape) if c.label_shape else None} for c in cases],
    }


def _case_id(index: int) -> str:
    return f"case{index:03d}"


def _expected_files(cases, channels: int) -> list[str]:
    files = ["dataset.json"]
    for i in range(len(cases)):
        files += [f"imagesTr/{_case_id(i)}_{c:04d}{FILE_ENDING}" for c in range(channels)]
        files.append(f"labelsTr/{_case_id(i)}{FILE_ENDING}")
    return files


def _is_up_to_date(folder: Path, stamp: dict, cases, channels: int) -> bool:
    try:
        if json.loads((folder / STAMP_NAME).read_text()) != stamp:
            return False
    except (OSError, ValueError):
        return False
    # A stamp with deleted files is not up to date (cheap: stat only).
    for rel in _expected_files(cases, channels):
        p = folder / rel
        if not p.is_file() or p.stat().st_size == 0:
            return False
    return True


def _write_dataset(folder: Path, name: str, cases, channels: int, seed: int, stamp: dict) -> None:
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i, spec in enumerate(cases):
        # One generator per case: each case depends only on (seed, index).
        rng = np.random.default_rng([seed, i])
        anatomy = _anatomy(rng)
        seg = _label_volume(spec.shape, anatomy)
        for c in range(channels):
            write_nifti(folder / "imagesTr" / f"{_case_id(i)}_{c:04d}{FILE_ENDING}",
                        _image_volume(spec.shape, anatomy, seg, c, rng), spec.spacing)
        label = seg if spec.label_shape is None else _label_volume(tuple(spec.label_shape), anatomy)
        write_nifti(folder / "labelsTr" / f"{_case_id(i)}{FILE_ENDING}", label, spec.spacing)
    dataset_json = {
        "name": name,
        "description": "synthetic CT-like data generated by nnrun (runner/demo.py)",
        "channel_names": _channel_names(channels),
        "labels": dict(LABELS),
        "numTraining": len(cases),
        "file_ending": FILE_ENDING,
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    # The stamp goes last: it marks a complete dataset.
    (folder / STAMP_NAME).write_text(json.dumps(stamp, indent=2) + "\n")


def make_dataset(raw_root, dataset_id: int, name: str, cases, channels: int = 1, seed: int = 0) -> Path:
    """Write ``DatasetXXX_<name>`` under raw_root (idempotent); return its path.

    Refuses (BadInputError) to replace a folder that nnrun did not generate, or
    to add a second folder for an id that another dataset already uses.
    """
    if not 1 <= dataset_id <= 999:
        raise BadInputError(f"dataset id {dataset_id} is out of range: nnU-Net dataset ids are 1..999")
    if channels < 1:
        raise ValueError("channels must be >= 1")
    if not cases:
        raise ValueError("at least one case is needed")
    cases = [CaseSpec(tuple(c.shape), tuple(float(s) for s in c.spacing),
                      tuple(c.label_shape) if c.label_shape else None) for c in cases]
    root = Path(raw_root)
    if root.exists() and not root.is_dir():
        raise BadInputError(f"the raw folder {root} exists and is not a folder", hint="give --raw a folder")
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise BadInputError(f"cannot create the raw folder {root}: {err.strerror}") from None
    folder_name = f"Dataset{dataset_id:03d}_{name}"
    folder = root / folder_name
    others = [e.name for e in root.iterdir()
              if e.name.startswith(f"Dataset{dataset_id:03d}") and e.name != folder_name and e.is_dir()]
    if others:
        raise BadInputError(f"cannot create {folder_name}: dataset id {dataset_id} is already used by "
                            f"{', '.join(sorted(others))} under {root}")
    stamp = _spec_stamp(dataset_id, name, cases, channels, seed)
    if folder.exists():
        if _is_up_to_date(folder, stamp, cases, channels):
            return folder
        if not (folder / STAMP_NAME).is_file():
            raise BadInputError(f"{folder} exists and was not generated by nnrun; refusing to overwrite it",
                                hint="choose another --id or remove the folder")

    # Build next to the target (same file system, so rename is atomic); the
    # hidden name does not start with "Dataset", so nnU-Net never sees it.
    tmp = Path(tempfile.mkdtemp(prefix=f".nnrun-tmp-{folder_name}-", dir=root))
    try:
        _write_dataset(tmp / "data", name, cases, channels, seed, stamp)
        if folder.exists():
            old = tmp / "old"
            os.rename(folder, old)  # a directory cannot be replaced in one step
        os.rename(tmp / "data", folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def make_demo(raw_root, dataset_id: int = DEMO_ID) -> Path:
    """The bundled demo dataset (Dataset501_Demo by default)."""
    return make_dataset(raw_root, dataset_id, DEMO_NAME, list(DEMO_CASES))


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m runner.demo",
                                     description="Write the synthetic nnrun demo dataset (nnU-Net raw format).")
    parser.add_argument("--raw", default=os.environ.get("nnUNet_raw"),
                        help="nnU-Net raw data folder (default: $nnUNet_raw)")
    parser.add_argument("--id", type=int, default=DEMO_ID, help=f"dataset id (default {DEMO_ID})")
    args = parser.parse_args(argv)
    if not args.raw:
        parser.error("--raw DIR is required (or set nnUNet_raw)")
    try:
        path = make_demo(args.raw, args.id)
    except BadInputError as e:
        print(f"error: {e.one_line()}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
