"""Small nnU-Net raw datasets in every format nnU-Net reads, written by SimpleITK, Pillow and tifffile.

Used by the unit tests, the integration tests (ok runs identical to native
nnU-Net) and to make the datasets of a report by hand:

    python -m tests.format_datasets RAW_ROOT .mha 505
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

FORMATS = (".mha", ".nrrd", ".png", ".tif", ".nii.gz")
NAMES = {".mha": "Mha", ".nrrd": "Nrrd", ".png": "Png", ".tif": "Tif", ".nii.gz": "Nii"}


def _volume(rng, shape_zyx):
    z, y, x = np.ogrid[:shape_zyx[0], :shape_zyx[1], :shape_zyx[2]]
    centre = [s / 2 + rng.uniform(-2, 2) for s in shape_zyx]
    radius = min(shape_zyx) / 3
    dist = ((z - centre[0]) / max(1, shape_zyx[0] / min(shape_zyx))) ** 2 + (y - centre[1]) ** 2 + (x - centre[2]) ** 2
    label = (dist < radius ** 2).astype(np.uint8)
    image = (rng.normal(100, 20, shape_zyx) + 200 * label).astype(np.int16)
    return image, label


def write_case(folder: Path, case: str, ending: str, image: np.ndarray, label: np.ndarray,
               spacing_xyz=(0.8, 0.8, 2.0)) -> None:
    img_path = folder / "imagesTr" / f"{case}_0000{ending}"
    lab_path = folder / "labelsTr" / f"{case}{ending}"
    if ending in (".mha", ".nrrd", ".nii.gz"):
        import SimpleITK as sitk
        for arr, path in ((image, img_path), (label, lab_path)):
            itk = sitk.GetImageFromArray(arr)
            itk.SetSpacing(spacing_xyz if arr.ndim == 3 else spacing_xyz[:2])
            sitk.WriteImage(itk, str(path), useCompression=True)
    elif ending == ".png":
        from PIL import Image
        Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(img_path)
        Image.fromarray(label.astype(np.uint8)).save(lab_path)
    elif ending == ".tif":
        import tifffile
        tifffile.imwrite(img_path, image, compression="zlib")
        tifffile.imwrite(lab_path, label, compression="zlib")
        spacing = {"spacing": [spacing_xyz[2], spacing_xyz[1], spacing_xyz[0]]}      # z, y, x
        for folder_, name in ((img_path.parent, case), (lab_path.parent, case)):
            (folder_ / f"{name}.json").write_text(json.dumps(spacing))
    else:
        raise ValueError(ending)


def make_format_dataset(raw_root: Path, ending: str, dataset_id: int, cases: int = 6,
                        shape_zyx=(24, 48, 56), seed: int = 0) -> Path:
    """``DatasetXXX_<Format>`` under raw_root: ``cases`` cases of one channel; 2D images for .png."""
    folder = Path(raw_root) / f"Dataset{dataset_id:03d}_{NAMES[ending]}"
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(cases):
        shape = (shape_zyx[0] + 2 * i, shape_zyx[1] + 4 * (i % 3), shape_zyx[2])
        image, label = _volume(rng, shape)
        if ending == ".png":
            image, label = image[shape[0] // 2], label[shape[0] // 2]
        write_case(folder, f"case{i:03d}", ending, image, label)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT" if ending != ".png" else "grey"},
        "labels": {"background": 0, "thing": 1},
        "numTraining": cases,
        "file_ending": ending,
    }, indent=2))
    return folder


if __name__ == "__main__":
    root, ending, dataset_id = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kw = {"shape_zyx": tuple(int(v) for v in sys.argv[4].split("x"))} if len(sys.argv) > 4 else {}
    print(make_format_dataset(Path(root), ending, dataset_id, **kw))
