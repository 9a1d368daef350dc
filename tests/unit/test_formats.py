"""Every format nnU-Net 2.8.1 reads: real files written by SimpleITK, Pillow and tifffile, each valid, cut and garbage.

A valid file always passes the completeness proof and gives its geometry from
the header; a cut file (the first two thirds of its data) and a garbage file
(random bytes under the right name) are DamagedFileError naming the file.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from runner.errors import BadInputError, DamagedFileError
from runner.formats import headers
from runner.formats.check import check_files, check_one

sitk = pytest.importorskip("SimpleITK")
tifffile = pytest.importorskip("tifffile")
Image = pytest.importorskip("PIL.Image")

SHAPE_ZYX = (6, 20, 30)
SPACING_XYZ = (0.5, 0.75, 2.5)


def volume() -> np.ndarray:
    return (np.random.default_rng(1).random(SHAPE_ZYX) * 1000).astype(np.int16)


def write_sitk(path: Path, compress: bool) -> Path:
    img = sitk.GetImageFromArray(volume())
    img.SetSpacing(SPACING_XYZ)
    sitk.WriteImage(img, str(path), useCompression=compress)
    return path


def write_png(path: Path, rgb: bool = False) -> Path:
    shape = (40, 50, 3) if rgb else (40, 50)
    Image.fromarray((np.random.default_rng(2).random(shape) * 255).astype(np.uint8)).save(path)
    return path


def write_tif(path: Path, compress: bool, three_d: bool = True) -> Path:
    data = volume() if three_d else volume()[0]
    tifffile.imwrite(path, data, compression="zlib" if compress else None)
    return path


# (file name, writer, the file holding the voxels (for .mhd: the detached one), reader)
CASES = {
    "mha-raw": ("a.mha", lambda p: write_sitk(p, False), None, headers.SIMPLEITK),
    "mha-zlib": ("a.mha", lambda p: write_sitk(p, True), None, headers.SIMPLEITK),
    "mhd-raw": ("a.mhd", lambda p: write_sitk(p, False), "a.raw", headers.SIMPLEITK),
    "mhd-zlib": ("a.mhd", lambda p: write_sitk(p, True), "a.zraw", headers.SIMPLEITK),
    "nrrd-raw": ("a.nrrd", lambda p: write_sitk(p, False), None, headers.SIMPLEITK),
    "nrrd-gzip": ("a.nrrd", lambda p: write_sitk(p, True), None, headers.SIMPLEITK),
    "nhdr-raw": ("a.nhdr", lambda p: write_sitk(p, False), "a.raw", headers.SIMPLEITK),
    "nhdr-gzip": ("a.nhdr", lambda p: write_sitk(p, True), "a.raw.gz", headers.SIMPLEITK),
    "gipl": ("a.gipl", lambda p: write_sitk(p, False), None, headers.SIMPLEITK),
    "nii.gz": ("a.nii.gz", lambda p: write_sitk(p, True), None, headers.SIMPLEITK),
    "png-grey": ("a.png", write_png, None, headers.NATURAL_2D),
    "png-rgb": ("a.png", lambda p: write_png(p, rgb=True), None, headers.NATURAL_2D),
    "bmp": ("a.bmp", write_png, None, headers.NATURAL_2D),
    "tif-3d-raw": ("a.tif", lambda p: write_tif(p, False), None, headers.TIFF_3D),
    "tif-3d-zlib": ("a.tif", lambda p: write_tif(p, True), None, headers.TIFF_3D),
    "tif-2d-zlib": ("a.tif", lambda p: write_tif(p, True, three_d=False), None, headers.NATURAL_2D),
}


@pytest.fixture(params=sorted(CASES))
def written(request, tmp_path):
    name, writer, data_name, reader = CASES[request.param]
    path = writer(tmp_path / name)
    return request.param, path, (tmp_path / data_name if data_name else path), reader


def test_valid_file_passes_and_gives_its_geometry(written):
    kind, path, _, reader = written
    check_one(path)
    info = headers.read_info(path, reader)
    if reader == headers.NATURAL_2D and kind.startswith(("png", "bmp")):
        assert info.shape == (50, 40, 1) and info.is_2d
        assert info.spacing == headers.NATURAL_SPACING_XYZ
        assert info.components == (3 if kind == "png-rgb" else 1)
    elif kind == "tif-2d-zlib":
        assert info.shape == (30, 20, 1) and info.is_2d
    elif reader == headers.TIFF_3D:
        assert info.shape == (30, 20, 6) and info.spacing == (1.0, 1.0, 1.0)   # no spacing file: nnU-Net's 1, 1, 1
    else:
        assert info.shape == (30, 20, 6) and not info.is_2d
        assert np.allclose(info.spacing, SPACING_XYZ)
        assert info.itemsize == 2


def test_cut_file_is_damaged_and_named(written):
    _, path, data_path, _ = written
    raw = data_path.read_bytes()
    data_path.write_bytes(raw[: len(raw) * 2 // 3])
    with pytest.raises(DamagedFileError) as err:
        check_one(path)
    assert err.value.path in (str(path), str(data_path))
    assert "damaged input file" in err.value.message


def test_garbage_file_is_damaged(written):
    _, path, _, reader = written
    path.write_bytes(os.urandom(4096))
    with pytest.raises(DamagedFileError):
        check_one(path)
    with pytest.raises(DamagedFileError):
        headers.read_info(path, reader)


def test_flipped_bytes_in_a_compressed_stream_are_found(tmp_path):
    for name, compress in (("b.mha", True), ("b.nrrd", True)):
        path = write_sitk(tmp_path / name, compress)
        raw = bytearray(path.read_bytes())
        mid = len(raw) * 3 // 4
        raw[mid:mid + 32] = bytes(255 - b for b in raw[mid:mid + 32])
        path.write_bytes(bytes(raw))
        with pytest.raises(DamagedFileError, match="corrupt|truncated"):
            check_one(path)
    png = write_png(tmp_path / "c.png")
    raw = bytearray(png.read_bytes())
    raw[60] ^= 0xFF                           # inside IDAT: the chunk's CRC no longer matches
    png.write_bytes(bytes(raw))
    with pytest.raises(DamagedFileError, match="CRC|corrupt"):
        check_one(png)


def test_missing_detached_data_file(tmp_path):
    path = write_sitk(tmp_path / "a.mhd", False)
    (tmp_path / "a.raw").unlink()
    with pytest.raises(DamagedFileError, match="data file a.raw is missing"):
        check_one(path)


def test_check_files_in_parallel_names_every_bad_file(tmp_path):
    good = [write_sitk(tmp_path / "g.mha", True), write_png(tmp_path / "g.png")]
    bad = write_sitk(tmp_path / "bad.nrrd", True)
    bad.write_bytes(bad.read_bytes()[:-200])
    problems = check_files([*good, bad], workers=2)
    assert [p.path for p in problems] == [str(bad)]


# --------------------------------------------------------------------------- nnU-Net's reader choice

@pytest.mark.parametrize("ending, reader", [
    (".nii.gz", headers.SIMPLEITK), (".nii", headers.NIBABEL), (".nrrd", headers.SIMPLEITK),
    (".mha", headers.SIMPLEITK), (".gipl", headers.SIMPLEITK), (".png", headers.NATURAL_2D),
    (".bmp", headers.NATURAL_2D), (".tif", headers.NATURAL_2D), (".tiff", headers.TIFF_3D),
    (".PNG", headers.NATURAL_2D),
])
def test_reader_from_file_ending_like_nnunet(ending, reader):
    assert headers.reader_for({"file_ending": ending}) == reader


def test_reader_overwrite_and_unknown_ending():
    assert headers.reader_for({"file_ending": ".nii.gz", "overwrite_image_reader_writer": "NibabelIO"}) == \
        headers.NIBABEL
    # an unknown class: nnU-Net warns and falls back to the ending
    assert headers.reader_for({"file_ending": ".mha", "overwrite_image_reader_writer": "Nope"}) == headers.SIMPLEITK
    with pytest.raises(BadInputError, match="no reader for file ending '.jpg'"):
        headers.reader_for({"file_ending": ".jpg"})


def test_a_3d_tif_is_read_by_tiff3dio_a_2d_one_by_natural_image(tmp_path):
    three = write_tif(tmp_path / "x_0000.tif", True)
    two = write_tif(tmp_path / "y_0000.tif", True, three_d=False)
    assert headers.reader_for({"file_ending": ".tif"}, str(three)) == headers.TIFF_3D
    assert headers.reader_for({"file_ending": ".tif"}, str(two)) == headers.NATURAL_2D


def test_tiff3d_spacing_file_next_to_the_case(tmp_path):
    image = write_tif(tmp_path / "c1_0000.tif", True)
    label = write_tif(tmp_path / "c1.tif", True)
    (tmp_path / "c1.json").write_text(json.dumps({"spacing": [2.5, 0.75, 0.5]}))      # z, y, x
    assert headers.read_info(image, headers.TIFF_3D).spacing == (0.5, 0.75, 2.5)
    assert headers.read_info(label, headers.TIFF_3D, is_label=True).spacing == (0.5, 0.75, 2.5)
    (tmp_path / "c1.json").write_text("{not json")
    with pytest.raises(DamagedFileError, match="spacing file"):
        headers.read_info(image, headers.TIFF_3D)


def test_geometry_problem_names_the_case_and_both_shapes(tmp_path):
    img = headers.ImageInfo("c_0000.mha", headers.SIMPLEITK, (30, 20, 6), SPACING_XYZ, 2, 1, False)
    lab = headers.ImageInfo("c.mha", headers.SIMPLEITK, (30, 20, 7), SPACING_XYZ, 1, 1, False)
    assert headers.geometry_problem(headers.CaseInfo("c", (img,), img)) is None
    text = headers.geometry_problem(headers.CaseInfo("c", (img,), lab))
    assert text is not None and "case c" in text and "30x20x6" in text and "30x20x7" in text
    other = headers.ImageInfo("c.mha", headers.SIMPLEITK, (30, 20, 6), (0.5, 0.75, 3.0), 1, 1, False)
    text = headers.geometry_problem(headers.CaseInfo("c", (img,), other))
    assert text is not None and "spacing" in text
    # without --verify_dataset_integrity nnU-Net preprocesses a spacing mismatch: not refused then
    assert headers.geometry_problem(headers.CaseInfo("c", (img,), other), check_spacing=False) is None


# --------------------------------------------------------------------------- datasets: conventions and estimate

def _dataset(tmp_path, ending, dataset_id=531, **kw):
    from runner.dataset import load_raw_dataset
    from tests.format_datasets import make_format_dataset
    make_format_dataset(tmp_path, ending, dataset_id, cases=3, shape_zyx=(6, 24, 32), **kw)
    return load_raw_dataset(tmp_path, dataset_id)


@pytest.mark.parametrize("ending", [".mha", ".nrrd", ".png", ".tif", ".nii.gz"])
def test_every_format_gets_an_estimate_and_passes_the_pre_flight(tmp_path, ending):
    from runner.estimate.model import Baseline, dataset_geometry, estimate, load_model
    from runner.run.preflight import check_case_geometry
    ds = _dataset(tmp_path, ending)
    check_case_geometry(ds)
    assert check_files(ds.all_files()) == []
    geoms = dataset_geometry(ds)
    assert [g.case_id for g in geoms] == ["case000", "case001", "case002"]
    baseline = Baseline(main_bytes=400 << 20, worker_bytes=400 << 20, image_id="x", measured=True)
    est = estimate(ds, None, ("2d", "3d_fullres"), 8 << 30, baseline, load_model(), cpus=2)
    if ending == ".png":         # natural images: nnU-Net plans only 2d
        assert all(g.is_2d and g.shape[2] == 1 for g in geoms)
        assert set(est.max_np) == {"2d"} and any("only 2d" in n for n in est.notes)
    else:
        assert geoms[0].shape == (32, 24, 6) and set(est.max_np) == {"2d", "3d_fullres"}
        assert np.allclose(geoms[0].spacing, (0.8, 0.8, 2.0))     # .tif: from the CASE.json spacing file
    assert all(n >= 1 for n in est.max_np.values())


def test_label_of_another_shape_is_bad_input_naming_the_case(tmp_path):
    from runner.run.preflight import check_case_geometry
    from tests.format_datasets import write_case
    ds = _dataset(tmp_path, ".mha")
    image, label = volume(), np.zeros((7, 20, 30), np.uint8)
    write_case(Path(ds.path), "case001", ".mha", image, label)
    with pytest.raises(BadInputError) as err:
        check_case_geometry(ds)
    text = err.value.one_line()
    assert "case001" in text and "30x20x6" in text and "30x20x7" in text


def test_one_rgb_png_holds_three_declared_channels(tmp_path):
    from runner.dataset import load_raw_dataset
    from runner.run.preflight import check_case_geometry
    folder = Path(tmp_path) / "Dataset532_Rgb"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    write_png(folder / "imagesTr" / "c1_0000.png", rgb=True)
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(folder / "labelsTr" / "c1.png")
    dj = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "road": 1},
          "numTraining": 1, "file_ending": ".png"}
    (folder / "dataset.json").write_text(json.dumps(dj))
    ds = load_raw_dataset(tmp_path, 532)
    assert len(ds.cases[0].images) == 1
    check_case_geometry(ds)                        # 3 channels from one RGB file, as NaturalImage2DIO reads it
    dj["channel_names"] = {"0": "R", "1": "G"}
    (folder / "dataset.json").write_text(json.dumps(dj))
    with pytest.raises(BadInputError, match="hold 3 channel"):
        check_case_geometry(load_raw_dataset(tmp_path, 532))


def test_a_cut_file_recorded_by_the_old_existence_only_check_is_read_again(tmp_path):
    """Cache records of version 1 covered .mha files found only to exist: they must not be trusted."""
    from runner.formats import check_cache
    path = write_sitk(tmp_path / "cut.mha", True)
    path.write_bytes(path.read_bytes()[:-300])
    cache = tmp_path / "cache"
    record = check_cache.cache_file([path], cache)
    record.parent.mkdir(parents=True)
    key = check_cache._key(path)
    record.write_text(json.dumps({"version": 1, "files": {str(path.resolve()): key}}))
    problems = check_cache.check_files_once([path], cache_dir=cache)
    assert [p.path for p in problems] == [str(path)]


@pytest.mark.parametrize("mode", ["L", "I;16", "P", "RGBA", "1"])
def test_valid_png_of_every_pixel_kind_passes(tmp_path, mode):
    rng = np.random.default_rng(3)
    if mode == "I;16":
        im = Image.fromarray((rng.random((33, 47)) * 60000).astype(np.uint16))
    elif mode == "RGBA":
        im = Image.fromarray((rng.random((33, 47, 4)) * 255).astype(np.uint8))
    else:
        im = Image.fromarray((rng.random((33, 47)) * 255).astype(np.uint8)).convert(mode)
    path = tmp_path / "x.png"
    im.save(path)
    check_one(path)
    info = headers.read_info(path, headers.NATURAL_2D)
    assert info.shape == (47, 33, 1)


def _chunk(kind: bytes, data: bytes) -> bytes:
    import struct
    import zlib
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def test_interlaced_png_passes_and_a_short_one_does_not(tmp_path):
    """Adam7 (Pillow cannot write it): seven passes of filtered rows, built here; Pillow must decode it."""
    import struct
    import zlib
    width, height = 13, 9
    arr = (np.arange(width * height).reshape(height, width) % 251).astype(np.uint8)
    passes = ((0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2), (0, 1, 1, 2))
    raw = b"".join(b"\0" + arr[y, x0::dx].tobytes()
                   for x0, y0, dx, dy in passes if x0 < width for y in range(y0, height, dy))

    def write(data: bytes) -> Path:
        path = tmp_path / "i.png"
        ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 1)
        path.write_bytes(b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", zlib.compress(data))
                         + _chunk(b"IEND", b""))
        return path

    path = write(raw)
    with Image.open(path) as im:
        assert np.array_equal(np.asarray(im), arr)        # a real, valid interlaced PNG
    check_one(path)
    with pytest.raises(DamagedFileError, match="inflates to"):
        check_one(write(raw[:-5]))                        # CRCs fine, image data short


def test_a_missing_reader_library_is_infra_not_a_damaged_file(tmp_path, monkeypatch):
    """A host without nibabel (seen in the cgroup v2 guest, whose venv lagged behind pyproject.toml) must not
    call a good file damaged: it is nnrun's installation that is incomplete."""
    import builtins

    import nibabel

    from runner.errors import InfraError
    path = tmp_path / "case_0000.nii.gz"      # NIfTI-2: the standard-library header read leaves it to nibabel
    nibabel.save(nibabel.Nifti2Image(np.zeros((4, 3, 2), np.int16), np.eye(4)), path)
    nifti1 = write_sitk(tmp_path / "case_0001.nii.gz", compress=True)
    real_import = builtins.__import__

    def no_nibabel(name, *args, **kwargs):
        if name == "nibabel" or name.startswith("nibabel."):
            raise ModuleNotFoundError("No module named 'nibabel'", name="nibabel")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_nibabel)
    assert headers.read_info(nifti1, headers.SIMPLEITK).shape      # NIfTI-1 needs no nibabel
    with pytest.raises(InfraError) as err:
        headers.read_info(path, headers.SIMPLEITK)
    assert not isinstance(err.value, DamagedFileError)
    assert "'nibabel' is missing" in err.value.one_line() and "pip install nibabel" in err.value.one_line()


def test_a_datasets_headers_are_read_once_per_run(tmp_path, monkeypatch):
    """The pre-flight geometry check and the estimate both need every case's headers: read once (the
    dataset's header_memo), not once each (1,000 files a pass on a 500-case dataset)."""
    from runner.estimate.model import dataset_geometry
    from runner.run.preflight import check_case_geometry
    ds = _dataset(tmp_path, ".nii.gz")
    reads = []
    real = headers.read_info
    monkeypatch.setattr(headers, "read_info", lambda path, *a, **kw: reads.append(path) or real(path, *a, **kw))
    check_case_geometry(ds)
    geoms = dataset_geometry(ds)
    assert sorted(reads) == sorted(ds.all_files())          # each file once, for both
    assert [g.case_id for g in geoms] == ["case000", "case001", "case002"]
    fresh = _dataset(tmp_path / "again", ".nii.gz")            # another load of the data: read again
    dataset_geometry(fresh)
    assert len(reads) == 2 * len(ds.all_files())


@pytest.mark.parametrize("kind", ["Nifti1Image", "Nifti2Image"])
@pytest.mark.parametrize("ending", [".nii", ".nii.gz"])
@pytest.mark.parametrize("shape,dtype,zooms", [((7, 6, 5), "<i2", (0.5, 0.7, 2.5)), ((7, 6, 5), ">f4", (1.0, -0.9, 3.0)),
                                               ((9, 8), "<u1", (0.3, 0.4)), ((6, 5, 4, 2), "<f8", (1.0, 1.0, 2.0, 1.0)),
                                               ((6, 5, 4), ">u2", (0.8, 0.8, 0.8))])
def test_nifti_header_only_read_matches_nibabel_load(tmp_path, kind, ending, shape, dtype, zooms):
    """The standard-library NIfTI-1 header read gives what nibabel.load's header gives (both byte orders, 2D to
    4D, several voxel types); NIfTI-2 falls back to nibabel."""
    import nibabel
    img = getattr(nibabel, kind)(np.zeros(shape, np.dtype(dtype)), np.eye(4))
    img.header.set_zooms([abs(z) for z in zooms])
    path = tmp_path / f"x{ending}"
    nibabel.save(img, path)
    info = headers._nibabel_info(str(path), headers.NIBABEL)
    loaded = nibabel.load(path)
    expect = tuple((list(loaded.shape) + [1, 1])[:3])
    assert info.shape == expect
    assert np.allclose(info.spacing[:len(shape[:3])], [abs(z) for z in loaded.header.get_zooms()][:3])
    assert info.itemsize == loaded.get_data_dtype().itemsize
    assert info.components == (shape[3] if len(shape) > 3 else 1) and info.is_2d == (len(shape) == 2)
    assert (headers._nifti1_struct(str(path)) is None) == (kind == "Nifti2Image")


def test_nifti_header_read_does_not_import_nibabel(tmp_path):
    """Start-up cost: reading NIfTI-1 geometry must not import nibabel (0.18 s with numpy)."""
    import subprocess
    import sys

    import nibabel
    path = tmp_path / "x.nii.gz"
    nibabel.save(nibabel.Nifti1Image(np.zeros((4, 3, 2), np.int16), np.eye(4)), path)
    code = (f"import sys; from runner.formats import headers; i = headers.read_info({str(path)!r}, headers.NIBABEL); "
            "print(i.shape, 'nibabel' in sys.modules, 'numpy' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["(4,", "3,", "2)", "False", "False"], out


def test_a_broken_nifti_header_falls_back_to_nibabel_and_is_named(tmp_path):
    """A header the standard-library read refuses (here dim[0] = 0) goes to nibabel, whose error names the file."""
    path = tmp_path / "bad.nii"
    raw = bytearray(348 + 4 + 8)
    raw[:4] = (348).to_bytes(4, "little")
    raw[344:348] = b"n+1\0"
    path.write_bytes(bytes(raw))
    assert headers._nifti1_struct(str(path)) is None
    with pytest.raises(Exception) as err:
        headers.read_info(path, headers.NIBABEL)
    assert "bad.nii" in str(err.value) or "bad.nii" in getattr(err.value, "one_line", lambda: "")()


def test_shape_mismatches_reads_the_files_again_not_the_runs_memo(tmp_path):
    """After nnU-Net failed, the explanation reads the headers as they are now: a label replaced since the
    pre-flight (which filled the memo) is seen."""
    import nibabel

    from runner.run.preflight import check_case_geometry, shape_mismatches
    ds = _dataset(tmp_path, ".nii.gz")
    check_case_geometry(ds)
    assert ds.header_memo and shape_mismatches(ds) == []
    label = ds.cases[1].label
    nibabel.save(nibabel.Nifti1Image(np.zeros((32, 24, 5), np.uint8), np.eye(4)), label)
    found = shape_mismatches(ds)
    assert len(found) == 1 and found[0].startswith(ds.cases[1].case_id), found
