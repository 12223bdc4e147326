"""One dataset model for the two layouts users have: nnU-Net v2 raw and Medical Segmentation Decathlon.

nnU-Net v2 raw::

    dataset.json   {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1},
                    "numTraining": N, "file_ending": ".nii.gz", ["dataset": {...}]}
    imagesTr/CASE_0000.nii.gz, CASE_0001.nii.gz, …   (or CASE_0000/: a DICOM series folder)
    labelsTr/CASE.nii.gz

Medical Segmentation Decathlon (MSD)::

    dataset.json   {"modality": {"0": "MRI"}, "labels": {"0": "background", "1": "Anterior"},
                    "training": [{"image": "./imagesTr/x.nii.gz", "label": "./labelsTr/x.nii.gz"}]}
    imagesTr/x.nii.gz    (several modalities: one 4D file, channels last)

Both are read as they are, into :class:`Dataset`. Only ``dataset.json`` and the folder listing
are looked at here; the files' contents are checked by :mod:`autoseg.io.case`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autoseg._fs import access_problem, cause, default_fix, list_dir, shown
from autoseg.errors import DatasetError, FileSystemError
from autoseg.io.image import IMAGE_ENDINGS, is_dicom_folder
from autoseg.labels import LabelScheme, LabelSchemeError

Layout = Literal["nnunet", "msd"]

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


@dataclass(frozen=True)
class Case:
    """One training case: its channel files (one per channel, or one 4D file) and label file."""

    case_id: str
    images: tuple[Path, ...]
    label: Path | None
    patient: str | None = None


@dataclass(frozen=True)
class Dataset:
    """A labelled dataset, whatever its layout on disk.

    Attributes:
        root: the dataset folder.
        name: the folder's name; names the work folder ``<work>/<name>/``.
        layout: ``"nnunet"`` or ``"msd"``.
        channel_names: one name per input channel, in channel order ("CT", "T2", …).
        labels: as declared: name -> value, or -> values of a region (see :mod:`autoseg.labels`).
        file_ending: e.g. ``".nii.gz"``.
        cases: the training cases, sorted by id.
        channels_in_one_file: MSD multi-modal datasets keep all channels in one 4D file.
    """

    root: Path
    name: str
    layout: Layout
    channel_names: tuple[str, ...]
    labels: dict[str, int | tuple[int, ...]]
    file_ending: str
    cases: tuple[Case, ...]
    channels_in_one_file: bool = False
    description: dict[str, Any] = field(default_factory=dict)
    regions_class_order: tuple[int, ...] | None = None

    @property
    def label_scheme(self) -> LabelScheme:
        """What the labels mean (checked when the dataset was read)."""
        return LabelScheme.from_declared(self.labels, self.regions_class_order)

    @property
    def num_channels(self) -> int:
        """Number of input channels."""
        return len(self.channel_names)

    @property
    def label_values(self) -> tuple[int, ...]:
        """Every value a label map may hold, sorted: background, labels, region members, ignore."""
        return self.label_scheme.stored_values


def _load_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        msg = f"{path}: not found; a dataset folder needs a dataset.json (nnU-Net v2 or MSD layout)"
        raise DatasetError(msg)
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        msg = f"{path}: not UTF-8 text ({e}); save it as UTF-8 JSON"
        raise DatasetError(msg) from e
    except OSError as e:
        msg = f"{path}: cannot be read ({cause(e)}); {default_fix(e)}"
        raise DatasetError(msg) from e
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        msg = f"{path}: invalid JSON ({e}); fix the syntax"
        raise DatasetError(msg) from e
    if not isinstance(data, dict):
        msg = f"{path}: must hold a JSON object, found {type(data).__name__}"
        raise DatasetError(msg)
    return data


def _inside(root: Path, rel: object, problems: list[str], where: str) -> Path:
    """``root / rel`` when the entry's text names a place inside the dataset folder; else a problem.

    The text is judged, not where it leads: an absolute path or ``..`` that climbs out is refused,
    while a symbolic link inside the folder may point anywhere (datasets are often assembled from
    links into a shared store; a link that leads nowhere is named by :func:`_access_problems`).
    The path returned is the normalised text under ``root``, so a ``..`` after a linked folder
    cannot climb out through the link's target.
    """
    if not isinstance(rel, str) or not rel.strip():
        problems.append(
            f"{where}: {rel!r} must be a file path relative to the dataset folder, "
            'like "imagesTr/case_0000.nii.gz"'
        )
        return root / "dataset.json"
    if "\0" in rel:
        problems.append(f"{where}: path {rel!r} is not a valid path (it holds a NUL character); fix it")
        return root / "dataset.json"
    if os.path.isabs(rel):
        problems.append(
            f"{where}: path {rel!r} is absolute; give it relative to the dataset folder "
            f"{root} and keep the file inside it (a symbolic link inside may point elsewhere)"
        )
        return root / "dataset.json"
    norm = os.path.normpath(rel)
    if norm == os.pardir or norm.startswith(os.pardir + os.sep):
        problems.append(
            f"{where}: path {rel!r} points outside the dataset folder {root}; keep every file "
            "inside it (a symbolic link inside may point elsewhere)"
        )
        return root / "dataset.json"
    if norm == os.curdir:
        problems.append(f"{where}: path {rel!r} names the dataset folder itself; give a file path")
        return root / "dataset.json"
    return root / norm


#: Longest case id in bytes: the store's file names add up to ~30 bytes to it, and a file name
#: may have 255.
MAX_CASE_ID_BYTES = 200


def case_id_problem(case_id: str) -> str | None:
    """Why ``case_id`` cannot name files, or None.

    Case ids become file names in the work folder (``preprocessed/<key>/CASE.npy``,
    ``validation/CASE.nii.gz``), so each must be one plain name: a ``/``, ``..`` or an absolute
    path would write outside the folder it is meant for.
    """
    if not case_id:
        return "is empty"
    if case_id in (os.curdir, os.pardir):
        return "is a folder reference"
    if "/" in case_id or "\\" in case_id:
        return "holds a path separator"
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in case_id):
        return "holds a control character"
    if len(case_id.encode("utf-8", "surrogatepass")) > MAX_CASE_ID_BYTES:
        return f"is longer than {MAX_CASE_ID_BYTES} bytes"
    return None


def _check_case_id(case_id: str, where: str, fix: str, problems: list[str]) -> None:
    """Note a problem when ``case_id`` cannot name files (the dataset is then refused)."""
    why = case_id_problem(case_id)
    if why is not None:
        problems.append(f"{where}: case id {case_id!r} {why}; case ids name files in the work folder, {fix}")


def _access_problems(cases: list[Case], problems: list[str]) -> None:
    """Name every case file that is a dangling symbolic link, a link loop or behind a folder that
    may not be entered; files that simply do not exist are named by :mod:`autoseg.io.case`."""
    for case in cases:
        for path in (*case.images, *([] if case.label is None else [case.label])):
            if (problem := access_problem(path)) is not None:
                problems.append(problem)


def _channel_names(raw: Any, key: str, json_path: Path, problems: list[str]) -> tuple[str, ...]:
    if not isinstance(raw, dict) or not raw:
        problems.append(f'{json_path}: {key!r} must be a non-empty object like {{"0": "CT"}}')
        return ()
    try:
        items = sorted((int(k), str(v)) for k, v in raw.items())
    except ValueError:
        problems.append(f'{json_path}: {key!r} keys must be channel indices "0", "1", …')
        return ()
    if [i for i, _ in items] != list(range(len(items))):
        problems.append(f"{json_path}: {key!r} indices must be 0..{len(items) - 1} without gaps")
    return tuple(name for _, name in items)


def _labels(
    data: dict[str, Any], layout: Layout, json_path: Path, problems: list[str]
) -> tuple[dict[str, int | tuple[int, ...]], tuple[int, ...] | None]:
    """The declared labels (regions as tuples) and ``regions_class_order``, checked by
    :class:`~autoseg.labels.LabelScheme` (every problem is noted)."""
    raw = data.get("labels")
    if not isinstance(raw, dict) or not raw:
        problems.append(f"{json_path}: 'labels' must be a non-empty object")
        return {}, None
    declared: dict[str, object] = {}
    for k, v in raw.items():
        if layout == "msd":  # {"0": "background", "1": "anterior"}: value -> name
            try:
                declared[str(v)] = int(k)
            except (TypeError, ValueError):
                problems.append(f"{json_path}: label {v!r} has value {k!r}; values must be integers")
        else:
            declared[str(k)] = v
    try:
        scheme = LabelScheme.from_declared(declared, data.get("regions_class_order"))
    except LabelSchemeError as e:
        problems += [f"{json_path}: {p}" for p in e.problems]
        return {}, None
    labels = {k: tuple(v) if isinstance(v, list) else v for k, v in scheme.declared().items()}
    return labels, scheme.regions_class_order


def _explicit_cases(root: Path, explicit: dict[str, Any], problems: list[str]) -> list[Case]:
    """The cases of an nnU-Net ``"dataset"`` object: ``{CASE: {"images": [...], "label": ...}}``."""
    json_path = root / "dataset.json"
    cases = []
    for cid, entry in sorted(explicit.items()):
        where = f"{json_path}: 'dataset' entry {cid!r}"
        _check_case_id(cid, f"{json_path}: 'dataset'", "so give a plain name such as 'case_001'", problems)
        if not isinstance(entry, dict) or "images" not in entry or "label" not in entry:
            problems.append(f"{json_path}: 'dataset' entry {cid!r} needs 'images' and 'label'")
            continue
        images = entry["images"]
        if not isinstance(images, list) or not images:
            problems.append(
                f"{json_path}: 'dataset' entry {cid!r}: 'images' must be a list of file paths, "
                'one per channel, like ["imagesTr/case_0000.nii.gz"]'
            )
            continue
        imgs = tuple(_inside(root, p, problems, f"{where} images") for p in images)
        lab = _inside(root, entry["label"], problems, f"{where} label")
        cases.append(Case(cid, imgs, lab, entry.get("patient")))  # a bad id refuses the dataset
    return cases


def _nnunet_cases(
    root: Path, data: dict[str, Any], n_channels: int, ending: str, problems: list[str]
) -> list[Case]:
    explicit = data.get("dataset")
    if isinstance(explicit, dict):
        return _explicit_cases(root, explicit, problems)
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    for d in (images_dir, labels_dir):
        if (problem := access_problem(d)) is not None:  # a dangling link or a loop
            problems.append(problem)
        elif not d.is_dir():
            problems.append(f"{d}: folder not found; nnU-Net layout needs imagesTr/ and labelsTr/")
    if problems:
        return []
    try:
        image_files, label_files = list_dir(images_dir), list_dir(labels_dir)
    except FileSystemError as e:
        problems.append(str(e))
        return []
    found: dict[str, dict[int, Path]] = {}
    for f in image_files:
        if f.name.startswith("."):
            continue
        if f.is_dir():  # a DICOM series folder stands for a file: imagesTr/CASE_0000/
            try:
                if not is_dicom_folder(f):
                    continue
            except OSError as e:
                problems.append(
                    f"{f}: cannot list this folder ({cause(e)}), so whether it holds a DICOM "
                    f"series is unknown; {default_fix(e)} or move it out of {images_dir.name}/"
                )
                continue
            stem = f.name
        elif f.name.endswith(ending):
            stem = f.name[: -len(ending)]
        else:
            continue
        m = _CHANNEL_RE.match(stem)
        if m is None:
            what = "DICOM series folder" if f.is_dir() else "image"
            problems.append(
                f"{f}: {what} name lacks the channel suffix; name it CASE_0000{'' if f.is_dir() else ending}"
            )
            continue
        channels = found.setdefault(m["case"], {})
        ch = int(m["ch"])
        if ch in channels:
            problems.append(f"{f}: channel {ch} of case {m['case']} is also {channels[ch]}; keep one of them")
            continue
        channels[ch] = f
    label_ids = {
        f.name[: -len(ending)] for f in label_files if f.name.endswith(ending) and not f.name.startswith(".")
    }
    patients = given if isinstance(given := data.get("patients"), dict) else {}
    cases = []
    for cid in sorted(found | dict.fromkeys(label_ids)):
        chans = found.get(cid, {})
        named_by = next(iter(chans.values()), labels_dir / f"{cid}{ending}")
        _check_case_id(cid, shown(named_by), "so rename the file", problems)  # refuses the dataset
        if extra := sorted(c for c in chans if c >= n_channels):
            problems.append(
                f"{chans[extra[0]]}: channel {extra[0]} but dataset.json declares {n_channels} channel(s)"
            )
        imgs = tuple(chans.get(c, images_dir / f"{cid}_{c:04d}{ending}") for c in range(n_channels))
        cases.append(Case(cid, imgs, labels_dir / f"{cid}{ending}", patients.get(cid)))
    return cases


def _msd_cases(root: Path, data: dict[str, Any], problems: list[str]) -> list[Case]:
    json_path = root / "dataset.json"
    training = data.get("training")
    if not isinstance(training, list) or not training:
        problems.append(
            f'{json_path}: \'training\' must be a non-empty list of {{"image": …, "label": …}} entries'
        )
        return []
    cases = []
    for i, entry in enumerate(training):
        if not isinstance(entry, dict) or "image" not in entry or "label" not in entry:
            problems.append(f"{json_path}: training entry {i} needs 'image' and 'label'")
            continue
        img = _inside(root, entry["image"], problems, f"{json_path}: training entry {i} image")
        lab = _inside(root, entry["label"], problems, f"{json_path}: training entry {i} label")
        cid = next((img.name[: -len(e)] for e in IMAGE_ENDINGS if img.name.endswith(e)), img.stem)
        _check_case_id(cid, f"{json_path}: training entry {i} ({shown(img)})", "so rename the file", problems)
        cases.append(Case(cid, (img,), lab, entry.get("patient")))  # a bad id refuses the dataset
    ids = [c.case_id for c in cases]
    if len(set(ids)) != len(ids):
        dup = sorted({i for i in ids if ids.count(i) > 1})
        problems.append(f"{json_path}: case ids listed twice: {', '.join(dup[:5])}")
    return sorted(cases, key=lambda c: c.case_id)


def read_label_scheme(json_path: str | Path) -> LabelScheme:
    """The labels a JSON file declares: a ``dataset.json`` (nnU-Net v2 or MSD layout) or a
    model's ``plans.json`` (both hold ``labels`` and, with regions, ``regions_class_order``).

    Raises:
        DatasetError: the file is missing or not JSON, or its labels cannot be used; every
            problem is listed, each naming the file.
    """
    json_path = Path(json_path)
    data = _load_json(json_path)
    problems: list[str] = []
    layout: Layout = "msd" if "modality" in data and "channel_names" not in data else "nnunet"
    labels, regions_class_order = _labels(data, layout, json_path, problems)
    if problems:
        raise DatasetError(problems)
    return LabelScheme.from_declared(labels, regions_class_order)


def load_dataset(root: str | Path) -> Dataset:
    """Read a dataset folder's ``dataset.json`` and list its cases.

    Args:
        root: the dataset folder (holding ``dataset.json``).

    Returns:
        The dataset model, cases sorted by id.

    Raises:
        DatasetError: with every problem found in dataset.json and the folder listing.
    """
    root = Path(root)
    if not root.is_dir():
        msg = f"{root}: dataset folder not found"
        raise DatasetError(msg)
    json_path = root / "dataset.json"
    data = _load_json(json_path)
    problems: list[str] = []
    layout: Layout = "nnunet" if "channel_names" in data else "msd"
    if layout == "msd" and "modality" not in data:
        msg = (
            f"{json_path}: needs 'channel_names' (nnU-Net v2) or 'modality' and 'training' "
            "(Medical Segmentation Decathlon)"
        )
        raise DatasetError(msg)
    key = "channel_names" if layout == "nnunet" else "modality"
    channels = _channel_names(data.get(key), key, json_path, problems)
    labels, regions_class_order = _labels(data, layout, json_path, problems)
    if layout == "nnunet":
        ending = data.get("file_ending")
        if not isinstance(ending, str) or not ending.startswith("."):
            problems.append(f"{json_path}: 'file_ending' must be given, e.g. \".nii.gz\"")
            ending = ".nii.gz"
        cases = _nnunet_cases(root, data, len(channels), ending, problems) if channels else []
        n_training = data.get("numTraining")
        if isinstance(n_training, int) and cases and n_training != len(cases):
            problems.append(
                f"{json_path}: numTraining is {n_training} but {len(cases)} cases "
                "were found; fix numTraining or add the missing cases"
            )
    else:
        cases = _msd_cases(root, data, problems)
        ending = next((e for e in IMAGE_ENDINGS if cases and cases[0].images[0].name.endswith(e)), ".nii.gz")
    _access_problems(cases, problems)
    if not cases and not problems:
        problems.append(f"{root}: no training cases found")
    if problems:
        raise DatasetError(problems)
    return Dataset(
        root=root,
        name=root.resolve().name,
        layout=layout,
        channel_names=channels,
        labels=labels,
        regions_class_order=regions_class_order,
        file_ending=ending,
        cases=tuple(cases),
        channels_in_one_file=layout == "msd" and len(channels) > 1,
        description={k: data[k] for k in ("name", "description", "licence", "reference") if k in data},
    )
