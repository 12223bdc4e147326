"""Image files (NIfTI, NRRD, MHA, …) read and written through SimpleITK, geometry kept.

Arrays are ``(Z, Y, X)``; :class:`~autoseg.io.volume.Geometry` keeps spacing in the same order
and origin/direction in SimpleITK's physical (x, y, z) order, so that writing an array with the
geometry of the scan it came from gives a file that overlays the scan exactly. A folder holding
a DICOM series is read by :mod:`autoseg.io.dicom` (imported on first use: pydicom costs start-up);
both build on :mod:`autoseg.io.volume`, so neither imports the other back.
"""

from __future__ import annotations

import gzip
import itertools
import math
import os
import struct
import zlib
from collections.abc import Iterable, Iterator
from io import BufferedIOBase
from pathlib import Path
from typing import BinaryIO

import numpy as np
import SimpleITK as sitk

from autoseg._atomic import write_atomic
from autoseg._fs import access_problem, cause, default_fix
from autoseg.errors import ImageReadError
from autoseg.io.volume import GRID_ATOL, SPACING_RTOL, Geometry, Image, image_from_sitk

__all__ = [
    "GRID_ATOL",
    "IMAGE_ENDINGS",
    "SPACING_RTOL",
    "Geometry",
    "Image",
    "has_image_ending",
    "image_from_sitk",
    "is_dicom_folder",
    "read_image",
    "strip_ending",
    "write_image",
]

#: File endings SimpleITK reads for us, longest first so that ``.nii.gz`` wins over ``.gz``.
IMAGE_ENDINGS: tuple[str, ...] = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".gipl")


def has_image_ending(path: Path, endings: tuple[str, ...] = IMAGE_ENDINGS) -> bool:
    """Whether ``path``'s name ends with one of the image endings we read (case-insensitive)."""
    name = path.name.lower()
    return any(name.endswith(e) for e in endings)


def strip_ending(name: str, endings: tuple[str, ...] = IMAGE_ENDINGS) -> str:
    """``case_0000.nii.gz`` -> ``case_0000``: the file name without its image ending."""
    lower = name.lower()
    for e in endings:
        if lower.endswith(e):
            return name[: -len(e)]
    return Path(name).stem


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 files carry ``DICM`` at byte 128."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_folder(folder: Path) -> bool:
    """Whether a folder directly holds DICOM files.

    Raises:
        OSError: the folder cannot be listed (callers name it among their problems).
    """
    return folder.is_dir() and any(
        _is_dicom_file(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")
    )


def check_gzip_stream(path: Path) -> None:
    """Raise :class:`ImageReadError` if a gzip file is truncated or corrupt.

    SimpleITK (2.5) reads a ``.nii.gz`` cut in half without an error and fills the missing
    voxels with garbage, so every gzip file is decompressed once here to check its end-of-stream
    marker and CRC before it is trusted; a ``.nii.gz``'s contents are checked on the way (see
    :func:`check_nifti_bytes`). Costs about a millisecond per MB.
    """
    with _open_for_reading(path) as raw:  # not judged below: "permission denied" is not "corrupt"
        try:
            with gzip.open(raw, "rb") as f:
                if path.name.lower().endswith(".nii.gz"):
                    check_nifti_bytes(path, _chunks(f))
                else:
                    for _ in _chunks(f):
                        pass
        except (EOFError, OSError, zlib.error) as e:
            msg = f"{path}: the gzip stream is truncated or corrupt ({e}); re-export or re-copy the file"
            raise ImageReadError(msg) from e


def _open_for_reading(path: Path) -> BinaryIO:
    """``path`` opened for reading, or :class:`ImageReadError` saying why it cannot be
    (permission denied, a folder, a symbolic link loop, ...)."""
    try:
        return open(path, "rb")
    except OSError as e:
        msg = f"{path}: cannot be read ({cause(e)}); {default_fix(e)}"
        raise ImageReadError(msg) from e


def _chunks(f: BufferedIOBase | BinaryIO) -> Iterator[bytes]:
    while chunk := f.read(1 << 22):
        yield chunk


def _nifti_layout(head: bytes) -> tuple[int, int, np.dtype | None] | None:
    """(bytes the file needs, data offset, float dtype or None) from a single-file NIfTI header."""
    if len(head) >= 348 and head[344:348] == b"n+1\0":
        end = "<" if struct.unpack("<i", head[:4])[0] == 348 else ">"
        dims = struct.unpack(f"{end}8h", head[40:56])
        datatype, bitpix = struct.unpack(f"{end}2h", head[70:74])
        offset_f = struct.unpack(f"{end}f", head[108:112])[0]
        if not math.isfinite(offset_f):
            return None
        offset = int(offset_f)
    elif len(head) >= 540 and head[4:8] == b"n+2\0":
        end = "<" if struct.unpack("<i", head[:4])[0] == 540 else ">"
        datatype, bitpix = struct.unpack(f"{end}2h", head[12:16])
        dims = struct.unpack(f"{end}8q", head[16:80])
        offset = struct.unpack(f"{end}q", head[168:176])[0]
    else:
        return None
    if not 1 <= dims[0] <= 7 or offset < 0:
        return None
    n_voxels = math.prod(max(int(d), 1) for d in dims[1 : dims[0] + 1])
    floats = {16: f"{end}f4", 64: f"{end}f8"}  # NIfTI DT_FLOAT32, DT_FLOAT64
    dtype = np.dtype(floats[datatype]) if datatype in floats else None
    return offset + n_voxels * bitpix // 8, offset, dtype


def check_nifti_bytes(path: Path, chunks: Iterable[bytes]) -> None:
    """Raise :class:`ImageReadError` if a NIfTI file is shorter than its header says or holds NaN/inf.

    SimpleITK (2.5) reads both without a word: missing voxels of a cut ``.nii`` become zeros,
    and NaN and inf become 0 (nifti1_io replaces them), so the raw bytes are checked here.

    Args:
        path: the file (for the messages).
        chunks: the (decompressed) file's bytes in order, the first chunk holding the header.
    """
    it = iter(chunks)
    head = next(it, b"")
    layout = _nifti_layout(head)
    if layout is None:
        for _ in it:
            pass
        return
    expected, offset, dtype = layout
    size, n_bad, rest = 0, 0, b""
    for chunk in itertools.chain([head], it):
        if dtype is not None and size + len(chunk) > offset and size < expected:
            data = rest + chunk[max(offset - size, 0) : expected - size]
            n = len(data) - len(data) % dtype.itemsize
            values = np.frombuffer(data, dtype, count=n // dtype.itemsize)
            n_bad += values.size - int(np.count_nonzero(np.isfinite(values)))
            rest = data[n:]
        size += len(chunk)
    if size < expected:
        msg = (
            f"{path}: truncated: holds {size} bytes but its NIfTI header needs {expected}; "
            "re-export or re-copy the file"
        )
        raise ImageReadError(msg)
    if n_bad:
        msg = (
            f"{path}: holds {n_bad} NaN or inf voxel value(s) (they would be read as 0); "
            "fix or remove the case"
        )
        raise ImageReadError(msg)


def read_image(path: str | os.PathLike[str], *, check_stream: bool = True) -> Image:
    """Read one image file, or a DICOM series folder.

    Args:
        path: a NIfTI/NRRD/MHA/… file, or a folder holding one DICOM series.
        check_stream: check gzip integrity, NIfTI length and NaN/inf first (see
            :func:`check_gzip_stream`).

    Returns:
        The image, array in ``(Z, Y, X)`` order, any dimension (callers check for 3D).

    Raises:
        ImageReadError: the file is missing, unreadable, truncated or has vector pixels.
    """
    p = Path(path)
    if (problem := access_problem(p)) is not None:  # a link loop, a dangling link, no permission
        raise ImageReadError(problem)
    if p.is_dir():
        from autoseg.io.dicom import read_dicom_series

        _check_listable(p)
        return read_dicom_series(p)
    if not p.is_file():
        msg = f"{p}: file not found"
        raise ImageReadError(msg)
    with _open_for_reading(p) as f:  # SimpleITK would call an unreadable file "not an image"
        if check_stream and p.name.lower().endswith(".nii"):
            check_nifti_bytes(p, _chunks(f))
    if check_stream and p.name.lower().endswith(".gz"):
        check_gzip_stream(p)
    return image_from_sitk(
        p,
        lambda: sitk.ReadImage(str(p)),
        unreadable="cannot be read as an image ({error}); check the file format",
        multi_component="has {n} components per voxel; store each channel as its own file (_0000, _0001, …)",
    )


def _check_listable(folder: Path) -> None:
    """Raise :class:`ImageReadError` when a DICOM series folder cannot be listed."""
    try:
        os.listdir(folder)
    except OSError as e:
        msg = f"{folder}: cannot list this DICOM series folder ({cause(e)}); {default_fix(e)}"
        raise ImageReadError(msg) from e


def write_image(array: np.ndarray, geometry: Geometry, path: str | os.PathLike[str]) -> Path:
    """Write ``array`` with ``geometry`` atomically (temporary file, then rename).

    The ending of ``path`` chooses the format. A reader never sees a half-written file, and an
    interrupted write leaves no file under the final name.

    Args:
        array: ``(Z, Y, X)`` array; its dtype is kept.
        geometry: from the source scan, so that the output overlays it.
        path: destination; parent folders are created.

    Returns:
        The destination path.
    """
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    img = sitk.GetImageFromArray(np.ascontiguousarray(array))
    geometry.apply_to(img)
    return write_atomic(path, lambda tmp: sitk.WriteImage(img, str(tmp), useCompression=True))
