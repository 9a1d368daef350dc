"""runner.formats.nifti: header parsing, full-stream integrity checks, writing."""
from __future__ import annotations

import gzip
import struct

import numpy as np
import pytest

from runner.errors import BadInputError, DamagedFileError
from runner.formats.nifti import (
    ImageHeader,
    check_file_complete,
    check_files,
    nifti1_header_bytes,
    read_header,
    write_nifti,
)


def _volume(shape=(20, 16, 12), dtype=np.float32, seed=0):
    # Noise compresses badly, so cutting the .gz really loses data from the middle.
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 100).astype(dtype)


def _write(tmp_path, name="img.nii.gz", shape=(20, 16, 12), dtype=np.float32, spacing=(0.8, 0.9, 3.0)):
    path = tmp_path / name
    write_nifti(path, _volume(shape, dtype), spacing)
    return path


# --------------------------------------------------------------------------- round trip

@pytest.mark.parametrize("name", ["img.nii.gz", "img.nii"])
@pytest.mark.parametrize("dtype, expected", [
    (np.uint8, "|u1"), (np.int16, "<i2"), (np.int32, "<i4"), (np.float32, "<f4"), (np.float64, "<f8"),
])
def test_header_round_trip(tmp_path, name, dtype, expected):
    path = _write(tmp_path, name, shape=(30, 20, 10), dtype=dtype, spacing=(0.8, 0.75, 2.5))
    h = read_header(path)
    assert isinstance(h, ImageHeader)
    assert h.nifti_version == 1
    assert h.shape == (30, 20, 10)
    assert h.spacing == pytest.approx((0.8, 0.75, 2.5))
    assert h.dtype == expected
    assert h.bitpix == np.dtype(dtype).itemsize * 8
    assert h.vox_offset == 352
    assert h.data_bytes == 30 * 20 * 10 * np.dtype(dtype).itemsize
    assert h.byte_order == "little"
    assert check_file_complete(path) == h


def test_written_data_is_fortran_order(tmp_path):
    arr = np.arange(4 * 3 * 2, dtype=np.int16).reshape(4, 3, 2)
    path = tmp_path / "a.nii"
    write_nifti(path, arr, (1.0, 1.0, 1.0))
    data = np.frombuffer(path.read_bytes()[352:], dtype="<i2")
    assert np.array_equal(data, arr.ravel(order="F"))


def test_gz_is_real_gzip_and_matches_plain(tmp_path):
    arr = _volume((8, 8, 8), np.int16)
    write_nifti(tmp_path / "a.nii", arr, (1.0, 1.0, 1.0))
    write_nifti(tmp_path / "a.nii.gz", arr, (1.0, 1.0, 1.0))
    assert gzip.decompress((tmp_path / "a.nii.gz").read_bytes()) == (tmp_path / "a.nii").read_bytes()


def test_header_fields_follow_the_spec():
    hdr = nifti1_header_bytes((5, 6, 7), 16, 32, (0.5, 0.6, 3.0))
    assert len(hdr) == 348
    assert struct.unpack_from("<i", hdr, 0)[0] == 348
    assert hdr[344:348] == b"n+1\0"
    assert struct.unpack_from("<f", hdr, 108)[0] == 352.0          # vox_offset
    assert struct.unpack_from("<hh", hdr, 252) == (1, 1)            # qform_code, sform_code
    assert struct.unpack_from("<f", hdr, 76)[0] == 1.0             # pixdim[0] = qfac
    assert hdr[123] == 2                                            # xyzt_units: mm
    srow = struct.unpack_from("<12f", hdr, 280)  # srow_x, srow_y, srow_z
    assert srow == pytest.approx((0.5, 0, 0, 0, 0, 0.6, 0, 0, 0, 0, 3.0, 0))


def test_write_rejects_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="spacing"):
        write_nifti(tmp_path / "a.nii", np.zeros((2, 2, 2), np.uint8), (1.0, 1.0))
    with pytest.raises(ValueError, match="dtype"):
        write_nifti(tmp_path / "a.nii", np.zeros((2, 2, 2), np.complex64), (1.0, 1.0, 1.0))


def _big_endian_nifti1(shape, data: bytes) -> bytes:
    hdr = bytearray(348)
    struct.pack_into(">i", hdr, 0, 348)
    struct.pack_into(">8h", hdr, 40, len(shape), *shape, *([1] * (7 - len(shape))))
    struct.pack_into(">hh", hdr, 70, 4, 16)  # int16
    struct.pack_into(">8f", hdr, 76, 1.0, 2.0, 3.0, 4.0, 1, 1, 1, 1)
    struct.pack_into(">f", hdr, 108, 352.0)
    hdr[344:348] = b"n+1\0"
    return bytes(hdr) + b"\0" * 4 + data


def test_big_endian_header(tmp_path):
    path = tmp_path / "be.nii"
    path.write_bytes(_big_endian_nifti1((2, 3, 4), np.arange(24, dtype=">i2").tobytes()))
    h = check_file_complete(path)
    assert (h.shape, h.spacing, h.dtype, h.byte_order) == ((2, 3, 4), (2.0, 3.0, 4.0), ">i2", "big")


def test_nifti2_header(tmp_path):
    hdr = bytearray(540)
    struct.pack_into("<i", hdr, 0, 540)
    hdr[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into("<hh", hdr, 12, 2, 8)  # uint8
    struct.pack_into("<8q", hdr, 16, 4, 3, 4, 5, 2, 1, 1, 1)
    struct.pack_into("<8d", hdr, 104, 1.0, 0.5, 0.5, 2.0, 1.0, 1, 1, 1)
    struct.pack_into("<q", hdr, 168, 544)
    path = tmp_path / "n2.nii.gz"
    path.write_bytes(gzip.compress(bytes(hdr) + b"\0" * 4 + bytes(120)))
    h = check_file_complete(path)
    assert (h.nifti_version, h.shape, h.spacing, h.dtype) == (2, (3, 4, 5, 2), (0.5, 0.5, 2.0, 1.0), "|u1")
    assert (h.vox_offset, h.data_bytes) == (544, 120)


# --------------------------------------------------------------------------- damaged files

def test_file_cut_to_a_third_is_truncated_but_its_header_still_parses(tmp_path):
    path = _write(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 3])
    # The point of check_file_complete: the header alone looks perfectly fine
    # (and SimpleITK would read the file, filling zeros).
    assert read_header(path).shape == (20, 16, 12)
    with pytest.raises(DamagedFileError, match="truncated") as info:
        check_file_complete(path)
    assert "gzip stream ends early" in info.value.reason
    assert info.value.path == str(path)
    assert isinstance(info.value, BadInputError)


def test_plain_nii_cut_short(tmp_path):
    path = _write(tmp_path, "img.nii", dtype=np.int16)
    data = path.read_bytes()
    path.write_bytes(data[:-100])
    with pytest.raises(DamagedFileError, match=r"truncated: data has 7580 bytes, header says 7680"):
        check_file_complete(path)


def test_plain_nii_with_extra_bytes_is_fine(tmp_path):
    path = _write(tmp_path, "img.nii", dtype=np.int16)
    path.write_bytes(path.read_bytes() + b"\0" * 10)
    assert check_file_complete(path).shape == (20, 16, 12)


def test_flipped_byte_in_compressed_data(tmp_path):
    path = _write(tmp_path)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="corrupt"):
        check_file_complete(path)


def test_wrong_crc_in_trailer(tmp_path):
    path = _write(tmp_path)
    data = bytearray(path.read_bytes())
    data[-8] ^= 0x01  # first byte of the CRC32 in the gzip trailer
    path.write_bytes(bytes(data))
    with pytest.raises(DamagedFileError, match="CRC"):
        check_file_complete(path)


def test_trailing_garbage_after_gzip_stream(tmp_path):
    path = _write(tmp_path)
    path.write_bytes(path.read_bytes() + b"garbage!")
    with pytest.raises(DamagedFileError, match="trailing garbage: 8 bytes"):
        check_file_complete(path)


def test_multi_member_gzip_and_zero_padding_are_valid(tmp_path):
    raw = (tmp_path / "ref.nii")
    write_nifti(raw, _volume(dtype=np.int16), (1.0, 1.0, 1.0))
    data = raw.read_bytes()
    path = tmp_path / "multi.nii.gz"
    path.write_bytes(gzip.compress(data[:1000]) + gzip.compress(data[1000:]) + b"\0" * 16)
    assert check_file_complete(path).shape == (20, 16, 12)


def test_garbage_named_nii_gz(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(b"this is not an image at all\n" * 20)
    with pytest.raises(DamagedFileError, match="not a gzip file"):
        read_header(path)
    with pytest.raises(DamagedFileError, match="not a gzip file"):
        check_file_complete(path)


def test_gzipped_garbage_is_not_nifti(tmp_path):
    path = tmp_path / "garbage.nii.gz"
    path.write_bytes(gzip.compress(b"\x07" * 1000))
    with pytest.raises(DamagedFileError, match="not a NIfTI file"):
        read_header(path)


def test_gzip_file_named_nii(tmp_path):
    path = _write(tmp_path)
    renamed = tmp_path / "img.nii"
    path.rename(renamed)
    with pytest.raises(DamagedFileError, match="gzip-compressed"):
        read_header(renamed)


@pytest.mark.parametrize("name", ["empty.nii.gz", "empty.nii"])
def test_empty_file(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(b"")
    with pytest.raises(DamagedFileError, match="empty|too short"):
        check_file_complete(path)


def test_too_short_header(tmp_path):
    path = tmp_path / "short.nii"
    path.write_bytes(nifti1_header_bytes((2, 2, 2), 2, 8, (1.0, 1.0, 1.0))[:200])
    with pytest.raises(DamagedFileError, match="too short"):
        read_header(path)


def test_missing_file(tmp_path):
    with pytest.raises(DamagedFileError, match="cannot read"):
        read_header(tmp_path / "nope.nii.gz")


def test_header_says_more_voxels_than_stored(tmp_path):
    # A complete, valid gzip stream whose header promises 4x the data it holds.
    hdr = nifti1_header_bytes((20, 20, 20), 4, 16, (1.0, 1.0, 1.0))
    path = tmp_path / "liar.nii.gz"
    path.write_bytes(gzip.compress(hdr + b"\0" * 4 + bytes(20 * 20 * 5 * 2)))
    assert read_header(path).data_bytes == 16000
    with pytest.raises(DamagedFileError, match="truncated: data has 4000 bytes, header says 16000"):
        check_file_complete(path)


@pytest.mark.parametrize("offset, fmt, value, message", [
    (70, "<h", 1536, "unsupported NIfTI datatype"),      # float128
    (42, "<h", 0, "must all be positive"),               # dim[1] = 0
    (42, "<h", -5, "must all be positive"),
    (40, "<h", 9, "dim\\[0\\]"),
    (0, "<i", 123, "not a NIfTI file"),
])
def test_bad_header_fields(tmp_path, offset, fmt, value, message):
    hdr = bytearray(nifti1_header_bytes((2, 2, 2), 2, 8, (1.0, 1.0, 1.0)))
    struct.pack_into(fmt, hdr, offset, value)
    path = tmp_path / "bad.nii.gz"
    path.write_bytes(gzip.compress(bytes(hdr) + bytes(12)))
    with pytest.raises(DamagedFileError, match=message):
        read_header(path)


def test_bad_magic(tmp_path):
    hdr = bytearray(nifti1_header_bytes((2, 2, 2), 2, 8, (1.0, 1.0, 1.0)))
    hdr[344:348] = b"xyz\0"
    path = tmp_path / "bad.nii"
    path.write_bytes(bytes(hdr) + bytes(12))
    with pytest.raises(DamagedFileError, match="not a NIfTI file"):
        read_header(path)


def test_read_header_does_not_decompress_everything(tmp_path, monkeypatch):
    # A ~32 MB (decompressed) file: read_header must stop after the header.
    path = tmp_path / "big.nii.gz"
    write_nifti(path, np.zeros((256, 256, 128), np.float32), (1.0, 1.0, 1.0))
    import zlib

    produced = []
    real = zlib.decompressobj

    class Counting:
        def __init__(self, *a):
            self._d = real(*a)

        def decompress(self, data, max_length=0):
            out = self._d.decompress(data, max_length)
            produced.append(len(out))
            return out

        def __getattr__(self, name):
            return getattr(self._d, name)

    monkeypatch.setattr("runner.formats.nifti.zlib.decompressobj", Counting)
    assert read_header(path).shape == (256, 256, 128)
    assert sum(produced) <= 540


# --------------------------------------------------------------------------- check_files

def test_check_files_collects_all_problems_in_order(tmp_path):
    good1 = _write(tmp_path, "good1.nii.gz")
    cut = _write(tmp_path, "cut.nii.gz")
    cut.write_bytes(cut.read_bytes()[:300])
    good2 = _write(tmp_path, "good2.nii")
    empty = tmp_path / "empty.nii.gz"
    empty.write_bytes(b"")
    other_ok = tmp_path / "img.mha"
    other_ok.write_bytes(b"ObjectType = Image\n")
    other_empty = tmp_path / "empty.png"
    other_empty.write_bytes(b"")
    missing = tmp_path / "missing.nrrd"

    calls = []
    paths = [good1, cut, good2, empty, other_ok, other_empty, missing]
    problems = check_files(paths, workers=3, progress=lambda done, total: calls.append((done, total)))

    assert [p.path for p in problems] == [str(cut), str(empty), str(other_empty), str(missing)]
    assert all(isinstance(p, DamagedFileError) for p in problems)
    assert "truncated" in problems[0].reason
    assert "empty" in problems[2].reason
    assert calls == [(i, len(paths)) for i in range(1, len(paths) + 1)]


def test_check_files_empty_list():
    assert check_files([], progress=lambda d, t: pytest.fail("no progress for no files")) == []


# --------------------------------------------------------------------------- cross-check

def test_nibabel_reads_written_file(tmp_path):
    nib = pytest.importorskip("nibabel")
    arr = _volume((12, 10, 8), np.int16)
    path = tmp_path / "x.nii.gz"
    write_nifti(path, arr, (0.8, 0.7, 3.0))
    img = nib.load(str(path))
    assert img.shape == (12, 10, 8)
    assert img.header.get_zooms() == pytest.approx((0.8, 0.7, 3.0))
    assert np.allclose(img.affine, np.diag([0.8, 0.7, 3.0, 1.0]))
    assert np.allclose(img.get_qform(), img.affine)
    assert int(img.header["qform_code"]) == 1 and int(img.header["sform_code"]) == 1
    assert np.array_equal(np.asarray(img.dataobj), arr)
