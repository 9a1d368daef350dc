"""Which reader nnU-Net 2.8.1 uses for a dataset, and what each file's header says (no voxel data).

The reader choice mirrors ``nnunetv2/imageio/reader_writer_registry.py``:
``overwrite_image_reader_writer`` in dataset.json wins when it names a known
class; otherwise the first class of ``LIST_OF_IO_CLASSES`` (NaturalImage2DIO,
SimpleITKIO, Tiff3DIO, NibabelIO, NibabelIOWithReorient) whose
``supported_file_endings`` holds the (lower-cased) file ending *and* that can
read the dataset's first image.  The only ending where the example file
decides is ``.tif``: NaturalImage2DIO (skimage) fails on a 3D stack (its last
axis is not 3 or 4 colours), SimpleITKIO does not list ``.tif``, so such a
dataset is read by Tiff3DIO.

Headers are read by the libraries made for the formats, imported lazily (a
run without such files never imports them): SimpleITK's
``ImageFileReader.ReadImageInformation`` (MetaImage, NRRD, GIPL), nibabel
(NIfTI, for NibabelIO and SimpleITKIO alike: 60 times faster than SimpleITK on
a .nii.gz), Pillow (NaturalImage2DIO) and tifffile (Tiff3DIO).  Every :class:`ImageInfo` is in the header's (x, y, z) axis order,
the order the memory model works in (nnU-Net's arrays are z, y, x).
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.errors import BadInputError, DamagedFileError, InfraError

SIMPLEITK = "SimpleITKIO"
SIMPLEITK_REORIENT = "SimpleITKIOWithReorient"
NIBABEL = "NibabelIO"
NIBABEL_REORIENT = "NibabelIOWithReorient"
NATURAL_2D = "NaturalImage2DIO"
TIFF_3D = "Tiff3DIO"

# nnU-Net 2.8.1's supported_file_endings, in LIST_OF_IO_CLASSES order.
SUPPORTED_ENDINGS: dict[str, tuple[str, ...]] = {
    NATURAL_2D: (".png", ".bmp", ".tif"),
    SIMPLEITK: (".nii.gz", ".nrrd", ".mha", ".gipl"),
    TIFF_3D: (".tif", ".tiff"),
    NIBABEL: (".nii", ".nii.gz"),
    NIBABEL_REORIENT: (".nii", ".nii.gz"),
}
KNOWN_READERS = (NATURAL_2D, SIMPLEITK, TIFF_3D, NIBABEL, NIBABEL_REORIENT, SIMPLEITK_REORIENT)

# nnU-Net's NaturalImage2DIO spacing for every 2D image (z, y, x): (999, 1, 1).
NATURAL_SPACING_XYZ = (1.0, 1.0, 999.0)


@dataclass(frozen=True)
class ImageInfo:
    """One file's geometry as nnU-Net's reader will see it (x, y, z; 3 values each).

    ``components`` is the number of channels this one file gives nnU-Net (3
    for an RGB PNG, the 4th axis of a 4D SimpleITK image), ``itemsize`` the
    bytes per component as stored, ``is_2d`` true for a single slice.
    """

    path: str
    reader: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    itemsize: int
    components: int
    is_2d: bool

    def shape_text(self) -> str:
        return "x".join(str(s) for s in self.shape)


def reader_for(dataset_json: dict, example_file: str | None = None) -> str:
    """The reader class name nnU-Net 2.8.1 picks for this dataset (see the module docstring)."""
    wanted = dataset_json.get("overwrite_image_reader_writer")
    if wanted not in (None, "None"):
        if wanted in KNOWN_READERS:
            return str(wanted)
        # nnU-Net prints a warning and falls back to the file ending; so do we.
    ending = str(dataset_json.get("file_ending", "")).lower()
    for reader, endings in SUPPORTED_ENDINGS.items():
        if ending not in endings:
            continue
        if reader == NATURAL_2D and ending == ".tif" and example_file is not None \
                and not _tif_is_natural_2d(example_file):
            continue
        return reader
    raise BadInputError(f"nnU-Net 2.8.1 has no reader for file ending {ending!r}",
                        hint="use one of .nii.gz .nii .nrrd .mha .gipl .png .bmp .tif .tiff, or set "
                             "overwrite_image_reader_writer in dataset.json")


def _tif_is_natural_2d(path: str) -> bool:
    """What skimage.io.imread + NaturalImage2DIO accept: a 2D image, or 3D with 3 or 4 colours last."""
    try:
        import tifffile
        with tifffile.TiffFile(path) as tif:
            shape = tif.series[0].shape
    except Exception:  # noqa: BLE001 - unreadable: nnU-Net's NaturalImage2DIO would fail on it as well
        return False
    dims = [s for s in shape if s != 1] if len(shape) > 3 else list(shape)
    return len(dims) == 2 or (len(dims) == 3 and dims[-1] in (3, 4))


def read_info(path, reader: str, is_label: bool = False) -> ImageInfo:
    """Header-only geometry of ``path`` as ``reader`` will read it.  Raises DamagedFileError.

    ``is_label`` matters only for Tiff3DIO (which spacing file belongs to the file)."""
    path = str(path)
    if not Path(path).is_file():
        raise DamagedFileError(path, "missing or not a regular file")
    try:
        if reader == NATURAL_2D:
            return _natural_info(path)
        if reader == TIFF_3D:
            return _tiff3d_info(path, is_label)
        if reader in (NIBABEL, NIBABEL_REORIENT):
            return _nibabel_info(path, reader)
        if path.lower().endswith((".nii", ".nii.gz")):
            # NIfTI under SimpleITKIO: the same header fields (dim, pixdim, datatype) through nibabel,
            # 0.5 ms a file where SimpleITK's ReadImageInformation takes 30 ms on a .nii.gz (measured)
            info = _nibabel_info(path, reader)
            if info.is_2d:
                sx, sy = info.spacing[0], info.spacing[1]
                info = replace(info, spacing=(sx, sy, max(sx, sy) * 999))
            return info
        return _sitk_info(path, reader)
    except DamagedFileError:
        raise
    except ImportError as e:
        # The host lacks the reader's library: nnrun's installation is incomplete, the file may be fine.
        missing = e.name or str(e)
        raise InfraError(f"cannot read {reader} headers on this host: the Python package {missing!r} is missing",
                         hint=f"install nnrun with its dependencies, e.g. pip install {missing}") from None
    except Exception as e:  # noqa: BLE001 - every library has its own exceptions; all mean "cannot read"
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise DamagedFileError(path, f"{reader} cannot read its header: {text}") from None


def _bits(text: str) -> int:
    m = re.search(r"(\d+)-bit", text)
    return int(m.group(1)) if m else 32


def _sitk_info(path: str, reader: str) -> ImageInfo:
    import SimpleITK as sitk
    r = sitk.ImageFileReader()
    r.SetFileName(path)
    r.ReadImageInformation()
    size = [int(s) for s in r.GetSize()]
    spacing = [abs(float(s)) for s in r.GetSpacing()]
    components = int(r.GetNumberOfComponents())
    itemsize = max(1, _bits(sitk.GetPixelIDValueAsString(r.GetPixelID())) // 8)
    if len(size) == 2:
        # SimpleITKIO: a 2D image gets the out-of-plane spacing max(spacing) * 999
        return ImageInfo(path, reader, (size[0], size[1], 1), (spacing[0], spacing[1], max(spacing) * 999),
                         itemsize, components, True)
    if len(size) == 4:   # 4D: several modalities in one file (the 4th axis)
        components *= size[3]
    return ImageInfo(path, reader, (size[0], size[1], size[2]), (spacing[0], spacing[1], spacing[2]),
                     itemsize, components, False)


# NIfTI-1 datatype codes -> bytes per voxel (nifti1.h); anything else goes to nibabel.
_NIFTI1_ITEMSIZE = {2: 1, 4: 2, 8: 4, 16: 4, 32: 8, 64: 8, 128: 3, 256: 1, 512: 2, 768: 4, 1024: 8, 1280: 8,
                    1536: 16, 1792: 16, 2048: 32, 2304: 4}


def _nifti1_struct(path: str) -> tuple[list[int], list[float], int] | None:
    """(shape, zooms, bytes per voxel) from a NIfTI-1 header with the standard library alone; None when the
    file is not a plain NIfTI-1 (NIfTI-2, an odd header): nibabel reads those.

    Importing nibabel (and numpy with it) took 0.18 s of every run's start-up, for 348 bytes per file."""
    import struct
    import zlib
    try:
        with open(path, "rb") as fh:
            if not path.lower().endswith(".gz"):
                raw = fh.read(348)
            else:   # the first bytes of the gzip stream only (zlib directly: GzipFile costs ~0.1 ms a file)
                inflate, raw = zlib.decompressobj(wbits=31), b""
                while len(raw) < 348:
                    data = inflate.unconsumed_tail or fh.read(4096)    # what the last call left, else more
                    if not data:
                        break
                    raw += inflate.decompress(data, 348 - len(raw))
    except (OSError, zlib.error):
        return None
    if len(raw) < 348:
        return None
    for end in "<>":
        if struct.unpack(end + "i", raw[:4])[0] == 348:
            break
    else:
        return None
    dim = struct.unpack(end + "8h", raw[40:56])
    datatype = struct.unpack(end + "h", raw[70:72])[0]
    pixdim = struct.unpack(end + "8f", raw[76:108])
    ndim = dim[0]
    if not 1 <= ndim <= 7 or raw[344:348] not in (b"n+1\0", b"ni1\0") or datatype not in _NIFTI1_ITEMSIZE:
        return None
    shape = [int(d) for d in dim[1:ndim + 1]]
    if any(d < 1 for d in shape):
        return None
    return shape, [float(z) for z in pixdim[1:ndim + 1]], _NIFTI1_ITEMSIZE[datatype]


def _nibabel_info(path: str, reader: str) -> ImageInfo:
    parsed = _nifti1_struct(path)
    if parsed is not None:
        shape, zooms, itemsize = parsed
    else:
        import nibabel
        hdr: Any = nibabel.load(path).header            # lazy: the header only
        shape = [int(s) for s in hdr.get_data_shape()]
        zooms = [float(z) for z in hdr.get_zooms()]
        itemsize = int(hdr.get_data_dtype().itemsize)
    zooms = [abs(z) for z in zooms]
    components = shape[3] if len(shape) > 3 else 1
    shape3 = (shape + [1, 1, 1])[:3]
    spacing3 = (zooms + [1.0, 1.0, 1.0])[:3]
    return ImageInfo(path, reader, (shape3[0], shape3[1], shape3[2]), (spacing3[0], spacing3[1], spacing3[2]),
                     itemsize, components, len(shape) == 2)


_PIL_ITEMSIZE = {"1": 1, "L": 1, "P": 1, "RGB": 1, "RGBA": 1, "LA": 1, "I;16": 2, "I;16B": 2, "I;16L": 2,
                 "I": 4, "F": 4}


def _natural_info(path: str) -> ImageInfo:
    if path.lower().endswith((".tif", ".tiff")):
        import tifffile
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            shape = [s for s in series.shape]
            itemsize = series.dtype.itemsize
        if len(shape) == 3 and shape[-1] in (3, 4):
            height, width, comps = shape
        elif len(shape) == 2:
            (height, width), comps = shape, 1
        else:
            raise DamagedFileError(path, f"NaturalImage2DIO reads 2D images only; this TIFF has shape {tuple(shape)}")
    else:
        from PIL import Image
        with Image.open(path) as im:      # reads the header only
            width, height = im.size
            mode = im.mode
            comps = len(im.getbands()) if mode not in ("P", "1") else 1
            if mode == "P":      # imageio (skimage) gives a grey palette as grey, others as RGB(A)
                palette = im.getpalette() or []
                grey = all(palette[i] == palette[i + 1] == palette[i + 2] for i in range(0, len(palette) - 2, 3))
                comps = 1 if grey else (4 if "transparency" in im.info else 3)
            itemsize = _PIL_ITEMSIZE.get(mode, 1)
        if comps == 2:        # LA: skimage gives (H, W, 2), which NaturalImage2DIO refuses
            raise DamagedFileError(path, "a grey+alpha image: NaturalImage2DIO needs grey, RGB or RGBA")
    return ImageInfo(path, NATURAL_2D, (int(width), int(height), 1), NATURAL_SPACING_XYZ, int(itemsize),
                     int(comps), True)


def tiff3d_spacing_file(path: str, is_label: bool) -> str:
    """Tiff3DIO's spacing file: CASE.json next to CASE_0000.tif (images) or CASE.tif (labels)."""
    ending = "." + path.split(".")[-1]
    cut = len(ending) + (0 if is_label else 5)
    return path[:-cut] + ".json"


def read_tiff3d_spacing(json_path: str) -> tuple[float, float, float] | None:
    """The spacing (z, y, x) of a Tiff3DIO spacing file; None when there is none (nnU-Net assumes 1, 1, 1)."""
    p = Path(json_path)
    if not p.is_file():
        return None
    try:
        spacing = json.loads(p.read_text())["spacing"]
        values = tuple(float(s) for s in spacing)
    except (OSError, ValueError, KeyError, TypeError):
        raise DamagedFileError(json_path, "Tiff3DIO spacing file must be JSON like {\"spacing\": [z, y, x]}") \
            from None
    if len(values) != 3 or not all(math.isfinite(v) and v > 0 for v in values):
        raise DamagedFileError(json_path, f"Tiff3DIO needs 3 positive spacing values, got {list(values)}")
    return (values[0], values[1], values[2])


def _tiff3d_info(path: str, is_label: bool) -> ImageInfo:
    import tifffile
    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        shape = [int(s) for s in series.shape]
        itemsize = int(series.dtype.itemsize)
    squeezed = [s for s in shape if s != 1] if len(shape) > 3 else shape
    if len(squeezed) != 3:
        raise DamagedFileError(path, f"Tiff3DIO reads 3D images only; this TIFF has shape {tuple(shape)}")
    z, y, x = squeezed
    zyx = read_tiff3d_spacing(tiff3d_spacing_file(path, is_label)) or (1.0, 1.0, 1.0)
    return ImageInfo(path, TIFF_3D, (x, y, z), (zyx[2], zyx[1], zyx[0]), itemsize, 1, False)


@dataclass(frozen=True)
class CaseInfo:
    """The headers of one case: its channel files and its label."""

    case_id: str
    images: tuple[ImageInfo, ...]
    label: ImageInfo

    @property
    def channels(self) -> int:
        return sum(i.components for i in self.images)


def case_infos(dataset) -> list[CaseInfo]:
    """Header-only geometry of every case of a :class:`~runner.dataset.RawDataset`, with nnU-Net's reader."""
    if not dataset.cases:
        return []
    reader = reader_for(dataset.dataset_json, dataset.cases[0].images[0])
    return [case_info(case, reader, dataset.header_memo) for case in dataset.cases]


def case_info(case, reader: str, memo: dict | None = None) -> CaseInfo:
    """The headers of one :class:`~runner.dataset.Case`.  Raises DamagedFileError.  ``memo`` (a dataset's
    ``header_memo``) keeps what was read for the rest of the run."""
    key = (case.case_id, case.images, case.label, reader)
    if memo is not None and key in memo:
        return memo[key]
    info = CaseInfo(case.case_id, tuple(read_info(p, reader) for p in case.images),
                    read_info(case.label, reader, is_label=True))
    if memo is not None:
        memo[key] = info
    return info


def _close(a: tuple[float, ...], b: tuple[float, ...]) -> bool:
    return all(abs(x - y) <= 1e-5 * max(1.0, abs(x), abs(y)) for x, y in zip(a, b))


def channel_problem(info: CaseInfo, declared: int) -> str | None:
    """A case whose files give nnU-Net another number of channels than dataset.json declares."""
    if info.channels == declared:
        return None
    files = ", ".join(Path(i.path).name for i in info.images)
    return (f"case {info.case_id}: its image file(s) {files} hold {info.channels} channel(s) but dataset.json's "
            f"channel_names declares {declared}")


def geometry_problem(info: CaseInfo, check_spacing: bool = True) -> str | None:
    """What nnU-Net fails on: channels or label of another shape than the first channel, and, with
    ``check_spacing``, of another spacing.  nnU-Net 2.8.1 fails on a spacing mismatch only under
    --verify_dataset_integrity (``np.allclose``); without it, it preprocesses such a case on the image's
    spacing, so nnrun must not refuse it then (a dataset native nnU-Net takes must pass)."""
    first = info.images[0]
    for other in (*info.images[1:], info.label):
        what = "label" if other is info.label else f"channel {Path(other.path).name}"
        if other.shape != first.shape:
            return (f"case {info.case_id}: image {Path(first.path).name} is {first.shape_text()} but its {what} "
                    f"is {other.shape_text()}")
        if check_spacing and not _close(other.spacing, first.spacing):
            return (f"case {info.case_id}: image {Path(first.path).name} has spacing {list(first.spacing)} "
                    f"but its {what} has {list(other.spacing)}")
    return None
