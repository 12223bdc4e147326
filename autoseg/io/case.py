"""Read one case (all channels + label) and check it, collecting every problem.

This is where a file's *contents* are judged: dimension, geometry agreement between channels and
label (a file stored flipped or with permuted axes on the same grid is reoriented exactly; one on
another grid is refused), NaN/inf, label values. The fingerprint, preprocessing and
``autoseg verify`` all read cases through :func:`load_case`, so a case is checked on every read
at no extra I/O.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from autoseg.errors import DatasetError, ImageReadError
from autoseg.io.align import find_reorientation
from autoseg.io.dataset import Case, Dataset
from autoseg.io.image import GRID_ATOL, SPACING_RTOL, Geometry, Image, read_image

if TYPE_CHECKING:
    import pydicom


@dataclass
class LoadedCase:
    """A case's arrays after checking.

    Attributes:
        case_id: the case's id.
        data: ``(C, Z, Y, X)`` float32 channels.
        label: ``(Z, Y, X)`` integer label map, or None for an unlabelled case.
        geometry: the first channel's geometry (all channels share its grid).
        warnings: non-fatal findings (a label or channel reoriented onto the image grid, an
            empty label), each naming a file.
        sources: the first channel's DICOM headers in slice order (``data[:, k]`` is the pixel
            data of ``sources[k]``; :attr:`~autoseg.io.volume.Image.sources`), empty unless it
            is a DICOM series.
    """

    case_id: str
    data: np.ndarray
    label: np.ndarray | None
    geometry: Geometry
    warnings: list[str] = field(default_factory=list)
    sources: tuple[pydicom.Dataset, ...] = ()


def _split_4d(img: Image, n_channels: int, problems: list[str]) -> list[Image]:
    """An MSD multi-modal file: ``(C, Z, Y, X)`` array with a 4D geometry -> one Image per channel."""
    arr = img.array
    if arr.ndim != 4 or arr.shape[0] != n_channels:
        problems.append(
            f"{img.path}: expected a 4D image with {n_channels} channels, found shape {arr.shape}"
        )
        return []
    g = img.geometry
    d = np.asarray(g.direction).reshape(4, 4)[:3, :3].ravel()
    geom = Geometry(g.spacing[1:], g.origin[:3], tuple(float(x) for x in d))
    return [Image(arr[c], geom, img.path) for c in range(n_channels)]


def _read_channels(case: Case, dataset: Dataset, problems: list[str]) -> list[Image]:
    images: list[Image] = []
    for c, path in enumerate(case.images):
        if not path.exists():  # a file, or a DICOM series folder
            what = f"channel {c} file" if dataset.num_channels > 1 else "image file"
            problems.append(f"{path}: {what} of case {case.case_id} not found; add it or remove the case")
            continue
        try:
            images.append(read_image(path))
        except ImageReadError as e:
            problems.append(str(e))
    if dataset.channels_in_one_file and images:
        return _split_4d(images[0], dataset.num_channels, problems)
    for img in images:
        if img.array.ndim != 3:
            problems.append(
                f"{img.path}: is {img.array.ndim}D (shape {img.array.shape}) but this "
                "dataset is 3D; give one 3D volume per channel file"
            )
    return [i for i in images if i.array.ndim == 3]


def _onto_grid(
    ref: Image, other: Image, what: str, problems: list[str], warnings: list[str]
) -> np.ndarray | None:
    """``other``'s array on ``ref``'s grid, or None (with a problem naming both files).

    Stored with axes flipped or permuted, but on the same physical grid: reoriented exactly
    (no interpolation), with a warning. Any other difference (shape, spacing, origin, direction)
    means the two do not overlay, and the case is refused rather than used misaligned.
    """
    found = find_reorientation(other.geometry, other.array.shape, ref.geometry, ref.array.shape)
    if found is not None:
        if not found.is_identity:
            warnings.append(
                f"{other.path}: {what} is stored {found.describe()} relative to "
                f"{ref.path}; reoriented exactly onto its grid"
            )
        return found.apply(other.array)
    if other.array.shape != ref.array.shape:
        problems.append(
            f"{other.path}: {what} shape {other.array.shape} differs from "
            f"{ref.path} {ref.array.shape}; resample one to the other's grid"
        )
    elif not np.allclose(other.geometry.spacing, ref.geometry.spacing, rtol=SPACING_RTOL, atol=GRID_ATOL):
        problems.append(
            f"{other.path}: {what} spacing {_fmt(other.geometry.spacing)} differs from "
            f"{ref.path} {_fmt(ref.geometry.spacing)}; resample one to the other"
        )
    else:
        problems.append(
            f"{other.path}: {what} origin/direction differ from {ref.path} by more than "
            "a flip or axis permutation (origin "
            f"{_fmt(other.geometry.origin)} vs {_fmt(ref.geometry.origin)}), so the two "
            "do not overlay; resample it onto the image's grid"
        )
    return None


def _fmt(v: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{x:g}" for x in v) + ")"


def _check_label(
    img: Image, allowed: set[int], problems: list[str], warnings: list[str]
) -> np.ndarray | None:
    arr = img.array
    if np.issubdtype(arr.dtype, np.floating):
        if not np.isfinite(arr).all():
            problems.append(f"{img.path}: label map holds NaN or inf; labels must be integers")
            return None
        rounded = np.rint(arr)
        if not np.array_equal(rounded, arr):
            bad = arr[rounded != arr][:3]
            problems.append(
                f"{img.path}: label map holds non-integer values "
                f"(e.g. {', '.join(f'{b:g}' for b in bad)}); labels must be integers"
            )
            return None
        arr = rounded
    elif not np.issubdtype(arr.dtype, np.integer):
        problems.append(f"{img.path}: label map has dtype {arr.dtype}; labels must be integers")
        return None
    lo, hi = int(arr.min()), int(arr.max())
    if lo < 0:
        problems.append(f"{img.path}: label map holds negative value {lo}; labels are >= 0")
        return None
    if hi > max(allowed, default=0):
        # A value above every declared one (e.g. 4e9 in a corrupt map): bincount would allocate hi+1.
        present = {int(v) for v in np.unique(arr)}
    else:
        counts = np.bincount(arr.astype(np.int64, copy=False).ravel(), minlength=hi + 1)
        present = set(np.flatnonzero(counts).tolist())
    if undeclared := sorted(present - allowed):
        problems.append(
            f"{img.path}: label value(s) {undeclared[:10]} not declared in "
            "dataset.json 'labels'; declare them or fix the label map"
        )
        return None
    if present <= {0}:
        warnings.append(f"{img.path}: label map is empty (background only)")
    dtype = np.uint8 if hi < 256 else np.int16 if hi < 32768 else np.int32
    return arr.astype(dtype, copy=False)


def load_case(case: Case, dataset: Dataset, *, with_label: bool = True) -> LoadedCase:
    """Read and check one case.

    Args:
        case: the case (from :func:`autoseg.io.dataset.load_dataset`).
        dataset: its dataset (channel count, declared labels).
        with_label: read the label map too.

    Returns:
        The arrays, ``data`` as ``(C, Z, Y, X)`` float32.

    Raises:
        DatasetError: listing every problem of this case, each naming its file.
    """
    problems: list[str] = []
    warnings: list[str] = []
    images = _read_channels(case, dataset, problems)
    # A broken image does not stop the label's checks: every problem of the case is reported.
    ref = images[0] if images and not problems else None
    data = None
    if ref is not None:
        arrays = [ref.array] + [
            _onto_grid(ref, img, f"channel {c}", problems, warnings)
            for c, img in enumerate(images[1:], start=1)
        ]
        if not problems:
            on_grid = [a for a in arrays if a is not None]  # all of them: None comes with a problem
            data = np.stack(on_grid).astype(np.float32, copy=False)
            if not np.isfinite(data).all():
                for img, channel in zip(images, on_grid, strict=True):
                    if not np.isfinite(channel.astype(np.float32, copy=False)).all():
                        problems.append(f"{img.path}: image holds NaN or inf values; fix or remove the case")
    label = None
    if with_label and case.label is not None:
        label = _read_label(case.label, case.case_id, dataset, ref, problems, warnings)
    if problems or data is None or ref is None:
        raise DatasetError(problems)
    return LoadedCase(case.case_id, data, label, ref.geometry, warnings, ref.sources)


def _read_label(
    path: Path, case_id: str, dataset: Dataset, ref: Image | None, problems: list[str], warnings: list[str]
) -> np.ndarray | None:
    """The case's label map on the image grid (``ref``), checked; without a readable image, its
    own values are still checked so that a broken label is reported beside a broken image."""
    if not path.is_file():
        problems.append(f"{path}: label file of case {case_id} not found; add it or remove the case")
        return None
    try:
        lab_img = read_image(path)
    except ImageReadError as e:
        problems.append(str(e))
        return None
    if lab_img.array.ndim != 3:
        problems.append(
            f"{path}: label map is {lab_img.array.ndim}D (shape {lab_img.array.shape}); it must be 3D"
        )
        return None
    if ref is None:
        _check_label(lab_img, set(dataset.label_values), problems, warnings)
        return None
    arr = _onto_grid(ref, lab_img, "label", problems, warnings)
    if arr is None:
        return None
    return _check_label(Image(arr, ref.geometry, lab_img.path), set(dataset.label_values), problems, warnings)
