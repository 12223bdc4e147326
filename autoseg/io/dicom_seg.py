"""DICOM Segmentation objects (DICOM-SEG) of predicted label maps, built with highdicom.

One Segmentation instance per DICOM series, on the series' own pixel grid: frame ``k`` of the
label map (``(Z, Y, X)``, as :func:`~autoseg.io.dicom.read_dicom_series` read it) is derived from
``sources[k]``, the header of the slice file that gave ``array[k]`` (for one multi-frame file,
its frame ``k``). That index is the whole mapping; highdicom then takes each frame's position,
orientation and pixel spacing from its source and records the source instance per frame, so
an oblique or gantry-tilted series stays where its images are, and compressed sources (JPEG2000)
are never decoded: only their headers are needed.

Each foreground label, or each region (regions overlap: a voxel may be in several), is one
segment, named as ``dataset.json`` names it, coded with a segmented property category and type
(:data:`DEFAULT_CODES` unless a ``--seg-codes`` file says better), and marked as found
automatically by autoseg (name, version, configurations and folds). Segments are binary, and
frames empty in a segment are left out (highdicom's ``omit_empty_frames``).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pydicom

from autoseg._atomic import write_atomic
from autoseg.errors import DatasetError
from autoseg.io.volume import Geometry
from autoseg.labels import LabelScheme

if TYPE_CHECKING:
    from highdicom.seg import Segmentation

log = logging.getLogger(__name__)

#: Longest segment label (the LO value representation).
_MAX_LABEL = 64
#: Largest difference (mm, along the slice axis) between the first source's position and the
#: volume's origin; far below any slice gap, far above rounding.
_POSITION_TOLERANCE_MM = 0.05
#: Patient and study attributes a SEG copies from its source: type 2, so present but possibly
#: empty; a source that leaves one out gets it empty (what a type 2 attribute's absence means).
_TYPE2_COPIED = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "AccessionNumber",
    "StudyID",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
)
#: Series number of the Segmentation series (a new series in the source's study).
SEG_SERIES_NUMBER = 900
_SEG_FIX = "fix the series' headers, or write NIfTI only (--output-format nifti)"


@dataclass(frozen=True)
class Code:
    """A coded concept: ``(value, coding scheme designator, meaning)``, e.g.
    ``Code("85756007", "SCT", "Tissue")``."""

    value: str
    scheme: str
    meaning: str


@dataclass(frozen=True)
class SegmentCodes:
    """What a segment is: its segmented property category and type."""

    category: Code
    type: Code


#: Where nothing better is known: SNOMED CT "Tissue" as category and type (what 3D Slicer and
#: dcmqi use for a segment of unknown meaning).
DEFAULT_CODES = SegmentCodes(Code("85756007", "SCT", "Tissue"), Code("85756007", "SCT", "Tissue"))


@dataclass(frozen=True)
class SegAlgorithm:
    """Who made the segmentation: recorded per segment (Algorithm Identification) and in the
    equipment module.

    Attributes:
        version: autoseg's version.
        model: the trained model, e.g. ``"Hippocampus 3d_fullres"`` (dataset and configurations).
        parameters: recorded as algorithm parameters, e.g. ``{"folds": "0,1,2,3,4"}``.
    """

    version: str
    model: str
    parameters: Mapping[str, str]


def read_seg_codes(path: Path, scheme: LabelScheme) -> dict[str, SegmentCodes]:
    """Segment codes from a JSON file: label or region name -> ``{"category": [value, scheme,
    meaning], "type": [value, scheme, meaning]}``. Names left out get :data:`DEFAULT_CODES`.

    Example file::

        {"tumour core": {"category": ["49755003", "SCT", "Morphologically Altered Structure"],
                         "type": ["108369006", "SCT", "Neoplasm"]}}

    Raises:
        DatasetError: the file cannot be read, is not such an object, or names a label the
            model does not have (the message lists those it has); one line naming the file.
    """
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        msg = f"{path}: --seg-codes file not found; check the path"
        raise DatasetError(msg) from e
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        msg = f"{path}: --seg-codes file cannot be read as JSON ({e}); fix the file"
        raise DatasetError(msg) from e
    names = [e.name for e in scheme.entries]
    shape = 'give {"LABEL NAME": {"category": [value, scheme, meaning], "type": [...]}, ...}'
    if not isinstance(raw, dict):
        msg = f"{path}: --seg-codes must be a JSON object; {shape}"
        raise DatasetError(msg)
    out = {}
    for name, item in raw.items():
        if name not in names:
            msg = f"{path}: --seg-codes names {name!r}, which is no label of the model ({', '.join(names)})"
            raise DatasetError(msg)
        if not isinstance(item, dict) or sorted(item) != ["category", "type"]:
            msg = f"{path}: --seg-codes entry {name!r} must have exactly 'category' and 'type'; {shape}"
            raise DatasetError(msg)
        codes = []
        for key in ("category", "type"):
            code = item[key]
            if not (
                isinstance(code, list) and len(code) == 3 and all(isinstance(c, str) and c for c in code)
            ):
                msg = (
                    f"{path}: --seg-codes {name!r} {key} is {code!r}; give [value, scheme, meaning], "
                    'three non-empty strings, e.g. ["85756007", "SCT", "Tissue"]'
                )
                raise DatasetError(msg)
            codes.append(Code(*code))
        out[name] = SegmentCodes(*codes)
    return out


def seg_sources(
    sources: Sequence[pydicom.Dataset], geometry: Geometry, folder: Path
) -> list[pydicom.Dataset]:
    """The headers a DICOM-SEG of a volume read from ``folder`` references, checked.

    A SEG is part of its source's study and points at each source instance, so those UIDs must
    be there: a series anonymised with its UIDs emptied is refused (one line naming a file). An
    empty SOPClassUID or SOPInstanceUID is taken from the file's meta header (the Media Storage
    UIDs, which the standard makes equal), and a patient or study attribute the SEG copies
    that is left out (type 2: present, maybe empty) is added empty; the headers are copied,
    never changed in place.
    Finally each source's position along the slice normal must be that of the volume's slice it
    is mapped to, so a frame can never be attributed to the wrong image.

    Args:
        sources: :attr:`~autoseg.io.volume.Image.sources` of the volume.
        geometry: the volume's geometry.
        folder: the series folder (for messages).

    Raises:
        DatasetError: one line naming the file and what is missing.
    """
    if not sources:
        msg = f"{folder}: not a DICOM series; a DICOM-SEG needs DICOM source images"
        raise DatasetError(msg)
    out = []
    filled = 0
    for source in sources:
        name = _name(source, folder)
        ds = copy.deepcopy(source)
        for key, meta_key in (
            ("SOPClassUID", "MediaStorageSOPClassUID"),
            ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
        ):
            meta = getattr(ds, "file_meta", None)
            value = str(meta.get(meta_key) or "") if meta is not None else ""
            if not str(ds.get(key) or "") and value:
                setattr(ds, key, value)
                filled += 1
        missing = [
            key
            for key in (
                "StudyInstanceUID",
                "SeriesInstanceUID",
                "SOPInstanceUID",
                "SOPClassUID",
                "FrameOfReferenceUID",
            )
            if not str(ds.get(key) or "")
        ]
        if missing:
            msg = (
                f"{name}: has no {'/'.join(missing)} (anonymised with its UIDs removed?), so a "
                f"DICOM-SEG cannot reference it; {_SEG_FIX}"
            )
            raise DatasetError(msg)
        for key in _TYPE2_COPIED:
            if key not in ds:
                setattr(ds, key, None)
        out.append(ds)
    if filled:
        log.info("%s: SOP UIDs taken from the files' meta headers (%d values)", folder, filled)
    uids = [str(ds.SOPInstanceUID) for ds in out]
    if len(set(uids)) != len(uids):
        msg = (
            f"{folder}: two files share one SOPInstanceUID, so a DICOM-SEG cannot tell them apart; {_SEG_FIX}"
        )
        raise DatasetError(msg)
    _check_positions(out, geometry, folder)
    return out


def _name(ds: pydicom.Dataset, folder: Path) -> str:
    filename = getattr(ds, "filename", None)
    return str(filename) if isinstance(filename, str) and filename else str(folder)


def _positions(sources: Sequence[pydicom.Dataset], folder: Path) -> np.ndarray:
    """``(n_slices, 3)`` ImagePositionPatient per slice: one per file, or per frame of one
    multi-frame file (its per-frame or shared functional groups)."""
    try:
        if len(sources) == 1 and int(sources[0].get("NumberOfFrames") or 1) > 1:
            ds = sources[0]
            shared = ds.get("SharedFunctionalGroupsSequence")
            positions = []
            for frame in ds.PerFrameFunctionalGroupsSequence:
                group = frame if "PlanePositionSequence" in frame else shared[0]
                positions.append([float(v) for v in group.PlanePositionSequence[0].ImagePositionPatient])
            return np.array(positions)
        return np.array([[float(v) for v in ds.ImagePositionPatient] for ds in sources])
    except (AttributeError, KeyError, IndexError, TypeError, ValueError) as e:
        msg = (
            f"{_name(sources[0], folder)}: no usable ImagePositionPatient ({e}), so a DICOM-SEG "
            f"cannot place its frames; {_SEG_FIX}"
        )
        raise DatasetError(msg) from e


def _check_positions(sources: Sequence[pydicom.Dataset], geometry: Geometry, folder: Path) -> None:
    """The sources follow the volume's slice order: the first lies at the volume's origin and
    each next one further along the volume's slice axis. (Only the order is checked, not the
    gaps: a gantry-tilted series is read unsheared, its slices' steps are not the spacing.)"""
    axis = np.asarray(geometry.direction).reshape(3, 3)[:, 2]  # SimpleITK (x, y, z)
    along = _positions(sources, folder) @ axis
    start = float(np.asarray(geometry.origin) @ axis)
    steps = np.diff(along)
    if abs(along[0] - start) > _POSITION_TOLERANCE_MM or (steps <= 0).any():
        k = 0 if abs(along[0] - start) > _POSITION_TOLERANCE_MM else int(np.flatnonzero(steps <= 0)[0]) + 1
        msg = (
            f"{folder}: the image of slice {k} lies {along[k]:.4g} mm along the volume's slice "
            f"axis, out of the volume's slice order (slice 0 at {start:.4g} mm, then ascending), so "
            f"a DICOM-SEG would point at the wrong images; {_SEG_FIX}"
        )
        raise DatasetError(msg)


def segment_pixels(label_map: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """The segments of a label map, as highdicom takes them.

    Args:
        label_map: ``(Z, Y, X)`` label values.
        scheme: the model's labels.

    Returns:
        For plain labels, ``(Z, Y, X)`` segment numbers (label-map style: entry ``i`` is segment
        ``i + 1``, 0 none; the labels are disjoint). For regions, ``(Z, Y, X, R)`` uint8 0/1, one
        mask per region (stacked style: regions overlap); the masks are
        :meth:`LabelScheme.masks`, the voxels that scoring counts in each region.

    Examples:
        >>> scheme = LabelScheme.from_declared({"bg": 0, "a": 2, "b": 5})
        >>> segment_pixels(np.array([[[0, 2, 5, 2]]]), scheme).tolist()
        [[[0, 1, 2, 1]]]
        >>> regions = LabelScheme.from_declared({"bg": 0, "whole": [1, 2], "core": 2}, [1, 2])
        >>> segment_pixels(np.array([[[0, 1, 2]]]), regions)[0, 0].tolist()
        [[0, 0], [1, 0], [1, 1]]
    """
    if scheme.regions:
        return np.stack(scheme.masks(label_map), axis=-1).astype(np.uint8)
    dtype = np.uint8 if len(scheme.entries) < 256 else np.uint16
    lut = np.zeros(max(scheme.output_values) + 1, dtype=dtype)
    for i, entry in enumerate(scheme.entries):
        lut[entry.values[0]] = i + 1
    return lut[label_map]


def build_dicom_seg(
    label_map: np.ndarray,
    sources: Sequence[pydicom.Dataset],
    scheme: LabelScheme,
    *,
    algorithm: SegAlgorithm,
    codes: Mapping[str, SegmentCodes] | None = None,
    folder: Path,
) -> Segmentation:
    """A highdicom ``Segmentation`` of ``label_map`` referencing ``sources``.

    Args:
        label_map: ``(Z, Y, X)`` label values on the series' grid: ``label_map[k]`` covers
            ``sources[k]`` pixel for pixel (or frame ``k`` of a single multi-frame source).
        sources: from :func:`seg_sources`.
        scheme: the model's labels: one segment per foreground label or region, in order.
        algorithm: what made it.
        codes: segment codes by label name (:func:`read_seg_codes`); others get
            :data:`DEFAULT_CODES`.
        folder: the series folder (for messages).

    Raises:
        DatasetError: highdicom refuses the sources' headers (one line naming ``folder``).
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes as dicom_codes

    n_frames = int(sources[0].get("NumberOfFrames") or 1) if len(sources) == 1 else len(sources)
    size = (int(sources[0].Rows), int(sources[0].Columns))
    if label_map.ndim != 3 or label_map.shape != (n_frames, *size):
        msg = f"label map {label_map.shape} does not match its {n_frames} source frames of {size}"
        raise ValueError(msg)  # a bug: the map comes from these very files
    identification = hd.AlgorithmIdentificationSequence(
        name="autoseg",
        family=dicom_codes.cid7162.ArtificialIntelligence,
        version=algorithm.version,
        parameters={"model": algorithm.model, **algorithm.parameters},
    )
    descriptions = []
    for number, entry in enumerate(scheme.entries, start=1):
        c = (codes or {}).get(entry.name, DEFAULT_CODES)
        if len(entry.name) > _MAX_LABEL:
            log.warning("segment label %r cut to %d characters (DICOM's limit)", entry.name, _MAX_LABEL)
        descriptions.append(
            hd.seg.SegmentDescription(
                segment_number=number,
                segment_label=entry.name[:_MAX_LABEL],
                segmented_property_category=hd.sr.CodedConcept(
                    c.category.value, c.category.scheme, c.category.meaning
                ),
                segmented_property_type=hd.sr.CodedConcept(c.type.value, c.type.scheme, c.type.meaning),
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
                algorithm_identification=identification,
            )
        )
    try:
        return hd.seg.Segmentation(
            source_images=list(sources),
            pixel_array=segment_pixels(label_map, scheme),
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=descriptions,
            series_instance_uid=hd.UID(),
            series_number=SEG_SERIES_NUMBER,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="autoseg",
            manufacturer_model_name=algorithm.model[:_MAX_LABEL],
            software_versions=algorithm.version,
            device_serial_number=algorithm.version,
            series_description="autoseg segmentation"[:_MAX_LABEL],
            content_label="AUTOSEG",
            content_description=f"autoseg {algorithm.model}"[:_MAX_LABEL],
            omit_empty_frames=True,
        )
    except (AttributeError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        msg = f"{folder}: highdicom cannot build a DICOM-SEG from this series ({first}); {_SEG_FIX}"
        raise DatasetError(msg) from e


def write_dicom_seg(seg: Segmentation, path: str | os.PathLike[str]) -> Path:
    """Write a Segmentation from :func:`build_dicom_seg` atomically (temporary, then rename):
    an interrupted or failed write leaves no file under ``path``."""
    return write_atomic(path, lambda tmp: seg.save_as(tmp))
