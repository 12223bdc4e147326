"""DICOM series folders read into an :class:`~autoseg.io.image.Image`, slices in physical order.

File names do not give slice order (``1.dcm, 10.dcm, 11.dcm, ...`` sorts as text) and neither,
reliably, does ``InstanceNumber``. So slices are ordered by their position along the slice normal
and the ordered files are handed to SimpleITK, whose GDCM decodes every transfer syntax (JPEG2000
included) and builds the geometry. First the headers are checked for what would make the volume
silently wrong: several series in one folder, mixed orientations or sizes, duplicate or missing
slices.
"""

from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from autoseg.errors import ImageReadError
from autoseg.io.volume import Image, image_from_sitk

logger = logging.getLogger(__name__)

#: SOP class of a DICOMDIR: a DICOM file, but an index, not an image.
_MEDIA_DIRECTORY_SOP_CLASS = "1.2.840.10008.1.3.10"
#: Largest difference in direction cosines still counted as the same orientation.
_ORIENTATION_TOLERANCE = 1e-3
#: Slices closer than this (mm along the normal) are duplicates.
_DUPLICATE_TOLERANCE_MM = 1e-3
#: A gap wider than this times the median slice gap means a slice is missing.
_GAP_FACTOR = 1.5


@dataclass(frozen=True)
class _Slice:
    """The header fields of one DICOM file that ordering and checking need."""

    path: Path
    series_uid: str
    description: str
    size: tuple[int, int]  # (Rows, Columns)
    frames: int
    position: tuple[float, ...] | None
    orientation: tuple[float, ...] | None
    instance: int | None
    header: pydicom.Dataset = field(compare=False, repr=False)


def _floats(value: object, count: int) -> tuple[float, ...] | None:
    """``count`` floats from a multi-valued element, or None if absent or malformed."""
    try:
        out = tuple(float(v) for v in value)  # type: ignore[attr-defined]
    except (TypeError, ValueError):
        return None
    return out if len(out) == count else None


def _read_header(path: Path) -> _Slice | None:
    """Header of one file; None when it is no DICOM image (text, DICOMDIR, report, ...)."""
    if path.name.startswith(".") or not path.is_file():
        return None
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        sop = UID(str(ds.get("SOPClassUID") or ds.file_meta.get("MediaStorageSOPClassUID", "")))
        if "Rows" not in ds or "Columns" not in ds or sop == _MEDIA_DIRECTORY_SOP_CLASS:
            if sop.name.endswith("Image Storage"):  # pydicom reads a cut file without complaint
                msg = f"{path}: {sop.name} file without Rows/Columns (truncated?); re-copy it"
                raise ImageReadError(msg)
            logger.debug("%s: DICOM but not an image (%s), ignored", path, sop.name)
            return None
        instance = ds.get("InstanceNumber")
        return _Slice(
            path=path,
            series_uid=str(ds.get("SeriesInstanceUID") or ""),
            description=str(ds.get("SeriesDescription") or ""),
            size=(int(ds.Rows), int(ds.Columns)),
            frames=int(ds.get("NumberOfFrames") or 1),
            position=_floats(ds.get("ImagePositionPatient"), 3),
            orientation=_floats(ds.get("ImageOrientationPatient"), 6),
            instance=int(instance) if instance not in (None, "") else None,
            header=ds,
        )
    except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
        return None


def _scan(folder: Path) -> dict[str, list[_Slice]]:
    """Headers of the DICOM images directly in ``folder``, grouped by SeriesInstanceUID."""
    if not folder.is_dir():
        msg = f"{folder}: folder not found; give the folder that holds one DICOM series"
        raise ImageReadError(msg)
    series: dict[str, list[_Slice]] = {}
    for path in sorted(folder.iterdir()):
        header = _read_header(path)
        if header is not None:
            series.setdefault(header.series_uid, []).append(header)
    return series


def list_dicom_series(folder: str | os.PathLike[str]) -> dict[str, list[Path]]:
    """SeriesInstanceUID -> files, for the DICOM images directly in ``folder``.

    Non-DICOM files, hidden files, DICOMDIR and non-image DICOM objects are skipped, so exactly
    one key means the folder is ready for :func:`read_dicom_series`. A series without a
    SeriesInstanceUID is listed under ``""``.

    Raises:
        ImageReadError: ``folder`` is not a folder, or holds a truncated DICOM image file.
    """
    return {uid: [s.path for s in slices] for uid, slices in _scan(Path(folder)).items()}


def _describe(uid: str, slices: list[_Slice]) -> str:
    """``UID 'description' (N files)``, for messages."""
    desc = f" '{slices[0].description}'" if slices[0].description else ""
    return f"{uid or '(no SeriesInstanceUID)'}{desc} ({len(slices)} files)"


def _no_dicom_message(folder: Path) -> str:
    """Why a folder yielded nothing, pointing at subfolders that may hold the series."""
    entries = [p for p in folder.iterdir() if not p.name.startswith(".")]
    subfolders = sorted(p.name for p in entries if p.is_dir())
    msg = (
        f"{folder}: no DICOM image files found ({len(entries) - len(subfolders)} other files "
        "ignored); give the folder that holds the slice files of one series"
    )
    if subfolders:
        shown = ", ".join(subfolders[:5]) + (", ..." if len(subfolders) > 5 else "")
        msg += f" (its subfolders {shown} may be such folders)"
    return msg


def _order_by_instance(folder: Path, slices: list[_Slice]) -> list[_Slice]:
    """Fallback when positions are missing: InstanceNumber order, if every file has a unique one."""
    numbers = [s.instance for s in slices]
    if None in numbers or len(set(numbers)) != len(numbers):
        msg = (
            f"{folder}: {sum(s.position is None or s.orientation is None for s in slices)} of "
            f"{len(slices)} files lack ImagePositionPatient/ImageOrientationPatient and "
            "InstanceNumbers are missing or repeated, so the slice order is unknown; re-export "
            "the series with its geometry tags"
        )
        raise ImageReadError(msg)
    logger.warning(
        "%s: slices lack ImagePositionPatient/ImageOrientationPatient; ordered by "
        "InstanceNumber, so spacing, origin and direction may be wrong",
        folder,
    )
    return sorted(slices, key=lambda s: s.instance or 0)


def _check_gaps(folder: Path, ordered: list[_Slice], keys: np.ndarray) -> None:
    """Refuse duplicate and missing slices: ITK would stack them with one, wrong, spacing."""
    gaps = np.diff(keys)
    dup = np.flatnonzero(gaps < _DUPLICATE_TOLERANCE_MM)
    if dup.size:
        i = int(dup[0])
        msg = (
            f"{folder}: duplicate slice positions ({dup.size}), e.g. {ordered[i].path.name} and "
            f"{ordered[i + 1].path.name} both at {keys[i]:.4g} mm along the slice normal; remove "
            "the duplicates or put each echo/time point in its own folder"
        )
        raise ImageReadError(msg)
    median = float(np.median(gaps))
    wide = np.flatnonzero(gaps > _GAP_FACTOR * median)
    if wide.size:
        i = int(wide[0])
        msg = (
            f"{folder}: uneven slice spacing, {wide.size} gap(s) wider than {_GAP_FACTOR}x the "
            f"median {median:.4g} mm, e.g. a gap of {gaps[i]:.4g} mm between "
            f"{ordered[i].path.name} and {ordered[i + 1].path.name} (missing slice?); export "
            "the complete series"
        )
        raise ImageReadError(msg)
    if np.abs(gaps - median).max() > 0.01 * median:
        logger.warning("%s: slice gaps vary by over 1%%; read as evenly spaced", folder)


def _order_by_position(folder: Path, slices: list[_Slice]) -> list[_Slice]:
    """Slices sorted along the normal of their shared orientation, after sanity checks."""
    if any(s.position is None or s.orientation is None for s in slices):
        return _order_by_instance(folder, slices)
    orientations = np.array([s.orientation for s in slices])
    off = np.flatnonzero(np.abs(orientations - orientations[0]).max(1) > _ORIENTATION_TOLERANCE)
    if off.size:
        a, b = slices[0], slices[int(off[0])]
        assert a.orientation is not None  # every slice has one (checked above)
        assert b.orientation is not None
        msg = (
            f"{folder}: slices differ in orientation ({a.path.name}: {np.round(a.orientation, 4)}"
            f", {b.path.name}: {np.round(b.orientation, 4)}); put each stack in its own folder"
        )
        raise ImageReadError(msg)
    normal = np.cross(orientations[0, :3], orientations[0, 3:])
    positions = np.array([s.position for s in slices])
    order = np.argsort(positions @ normal, kind="stable")
    if len(order) > 1:
        _check_gaps(folder, [slices[i] for i in order], positions[order] @ normal)
        steps = np.diff(positions[order], axis=0)
        sideways = np.abs(steps - np.outer(steps @ normal, normal)).max()
        if sideways > 1e-2:
            logger.warning(
                "%s: slices shift sideways by up to %.3g mm each (gantry tilt?); read unsheared",
                folder,
                sideways,
            )
    return [slices[i] for i in order]


def _to_image(folder: Path, read: Callable[[], sitk.Image]) -> Image:
    """Run a SimpleITK read; its errors and colour (RGB) volumes become ImageReadError."""
    return image_from_sitk(
        folder,
        read,
        unreadable="SimpleITK cannot read the DICOM files ({error}); check they are complete",
        multi_component="DICOM has {n} components per voxel (colour); convert it to grayscale",
    )


def read_dicom_series(folder: str | os.PathLike[str]) -> Image:
    """Read the single DICOM series in ``folder`` as a ``(Z, Y, X)`` volume.

    Slices are ordered by ``dot(ImagePositionPatient, normal)``, ``normal`` being the cross
    product of the two ImageOrientationPatient vectors, never by file name. Files without
    position or orientation fall back to InstanceNumber order (with a warning). A folder that
    holds one multi-frame file is read whole by SimpleITK.

    Args:
        folder: folder whose files (not subfolders) are the slices of one series; other files
            (DICOMDIR, text, hidden files) are ignored.

    Returns:
        The volume (modality rescale applied by SimpleITK), its geometry, ``folder``, and the
        slices' headers in the volume's slice order (:attr:`Image.sources`): ``array[k]`` is
        the pixel data of ``sources[k]``.

    Raises:
        ImageReadError: no DICOM images; several series; slices differing in size or
            orientation; duplicate or missing slices; unknown slice order; truncated files.
    """
    folder = Path(folder)
    series = _scan(folder)
    if not series:
        raise ImageReadError(_no_dicom_message(folder))
    if len(series) > 1:
        listing = "; ".join(_describe(uid, s) for uid, s in sorted(series.items()))
        msg = (
            f"{folder}: holds {len(series)} DICOM series ({listing}); put each series in its "
            "own folder and read them one at a time"
        )
        raise ImageReadError(msg)
    slices = next(iter(series.values()))
    if any(s.frames > 1 for s in slices):
        if len(slices) > 1:
            msg = (
                f"{folder}: mixes multi-frame DICOM with other files ({len(slices)} in all); a "
                "folder must hold one multi-frame file or single-frame slices, split them"
            )
            raise ImageReadError(msg)
        image = _to_image(folder, lambda: sitk.ReadImage(str(slices[0].path)))
        return replace(image, sources=(slices[0].header,))
    sizes = Counter(s.size for s in slices)
    if len(sizes) > 1:
        listing = ", ".join(f"{n} files of {r}x{c}" for (r, c), n in sizes.most_common())
        msg = (
            f"{folder}: slices differ in size (rows x columns: {listing}); the folder mixes "
            "images (a localizer?), remove the odd ones or put each series in its own folder"
        )
        raise ImageReadError(msg)
    ordered = _order_by_position(folder, slices)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(s.path) for s in ordered])
    reader.MetaDataDictionaryArrayUpdateOff()
    reader.LoadPrivateTagsOff()
    try:
        image = _to_image(folder, reader.Execute)
    except ImageReadError as e:
        # SimpleITK names no file: read the slices one by one to name the damaged ones.
        bad = [s.path for s in ordered if not _readable_slice(s.path)]
        if not bad:
            raise
        more = f" (and {len(bad) - 1} more: {', '.join(p.name for p in bad[1:4])})" if len(bad) > 1 else ""
        msg = f"{bad[0]}: this slice's pixel data cannot be read (truncated?){more}; re-copy the series"
        raise ImageReadError(msg) from e
    return replace(image, sources=tuple(s.header for s in ordered))


def _readable_slice(path: Path) -> bool:
    """Whether SimpleITK reads one slice file whole (only asked once the series failed)."""
    try:
        sitk.ReadImage(str(path))
    except RuntimeError:
        return False
    return True
