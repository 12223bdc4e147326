"""Find the scans to predict in an input path: image files (nnU-Net channel naming or plain),
DICOM series folders, or one file or series.

Every output is named after its case (``CASE.nii.gz``), so two inputs that would give one case the
same channel (``caseA.nii.gz`` and ``caseA.mha``; ``caseB.nii.gz`` and ``caseB_0000.nii.gz``; a
file and a DICOM folder of one name) are ambiguous: the whole input is refused, listing every
clash, before anything is written. An entry that looks like a scan but cannot be read as one (a
dangling symbolic link, a link loop) is a problem of its own, never silently left out.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from autoseg._fs import access_problem, cause, default_fix, list_dir
from autoseg.errors import AutosegError, DatasetError, FileSystemError
from autoseg.io.dataset import Case
from autoseg.io.image import has_image_ending, is_dicom_folder, strip_ending

_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<ch>\d{4})$")


def find_cases(source: Path, *, n_channels: int) -> tuple[list[Case], list[str]]:
    """The cases under ``source`` and the problems found while grouping files.

    * a file: one case (``CASE_0000.nii.gz`` takes its ``_0001``… siblings along);
    * a DICOM series folder: one case named after the folder;
    * a folder: every image file, grouped by ``CASE_XXXX`` channel suffix (a plain ``CASE.nii.gz``
      is channel 0 of a single-channel case), and every sub-folder holding a DICOM series.

    Returns:
        ``(cases, problems)``: cases sorted by id; problems such as a missing channel or a
        dangling link name the case's files (those cases are left out, the others predicted).

    Raises:
        AutosegError: ``source`` does not exist or holds no scans.
        DatasetError: two inputs give one case the same channel; every clash is listed.
        FileSystemError: ``source`` (or a sub-folder) cannot be listed.
    """
    if (problem := access_problem(source)) is not None:
        raise AutosegError(problem)
    if not source.exists():
        msg = f"{source}: input not found; give a scan, a DICOM series folder or a folder of scans"
        raise AutosegError(msg)
    if source.is_file():
        cases, problems, clashes = _group_files([source], n_channels, siblings_of=source.parent)
        _refuse(clashes)
        return cases, problems
    if _is_series(source):
        return [Case(source.name, (source,), None)], []
    files, subs, problems = _entries(source)
    cases, group_problems, clashes = _group_files(files, n_channels)
    problems += group_problems
    by_id = {c.case_id: c for c in cases}
    for sub in subs:
        if not _is_series(sub):
            continue
        if n_channels != 1:
            problems.append(
                f"{sub}: a DICOM series is one channel but the model needs "
                f"{n_channels}; give NIfTI files named CASE_0000…"
            )
        elif sub.name in by_id:
            clashes.append(
                f"{source}: {by_id[sub.name].images[0].name} and the DICOM series folder {sub.name}/ "
                f"are both case {sub.name!r} (output {sub.name}.nii.gz); rename or move one of them"
            )
        else:
            cases.append(Case(sub.name, (sub,), None))
    _refuse(clashes)
    if not cases and not problems:
        msg = f"{source}: no scans found (NIfTI/NRRD/MHA files or DICOM series folders); check the path"
        raise AutosegError(msg)
    return sorted(cases, key=lambda c: c.case_id), problems


def _refuse(clashes: list[str]) -> None:
    """Raise the clashes together: predicting some of them would silently drop the others."""
    if clashes:
        raise DatasetError(clashes)


def _is_series(folder: Path) -> bool:
    """Whether ``folder`` holds a DICOM series; one that cannot be listed is named."""
    try:
        return is_dicom_folder(folder)
    except OSError as e:
        msg = f"{folder}: cannot list this folder ({cause(e)}); {default_fix(e)}"
        raise FileSystemError(msg) from e


def _entries(source: Path) -> tuple[list[Path], list[Path], list[str]]:
    """Image files, sub-folders, and problems (entries named like scans that cannot be read as
    one: a dangling symbolic link, a link loop, a device) of a folder; hidden entries are skipped."""
    files, subs, problems = [], [], []
    for p in list_dir(source, fix="make the input folder readable"):
        if p.name.startswith("."):
            continue
        if p.is_dir():
            subs.append(p)
        elif p.is_file():
            if has_image_ending(p):
                files.append(p)
        elif has_image_ending(p):
            problems.append(access_problem(p) or f"{p}: not a regular file; give an image file")
    return files, subs, problems


def _group_files(
    files: list[Path], n_channels: int, *, siblings_of: Path | None = None
) -> tuple[list[Case], list[str], list[str]]:
    """Group image files into cases by their ``_XXXX`` channel suffix.

    Returns:
        ``(cases, problems, clashes)``: problems (a channel missing or unexpected) leave their
        case out; clashes (two files for one case and channel) refuse the input.
    """
    groups: dict[str, dict[int, Path]] = defaultdict(dict)
    clashes = []
    for f in files:
        stem = strip_ending(f.name)
        m = _CHANNEL_RE.match(stem)
        cid, ch = (stem, 0) if m is None else (m["case"], int(m["ch"]))
        if ch in groups[cid]:
            what = f"case {cid!r}" if n_channels == 1 else f"channel {ch} of case {cid!r}"
            clashes.append(
                f"{f.parent}: {groups[cid][ch].name} and {f.name} are both {what} "
                f"(output {cid}.nii.gz); rename or move one of them"
            )
            continue
        groups[cid][ch] = f
    if siblings_of is not None:  # a single file named CASE_0000: pick up its other channels
        for cid, chans in groups.items():
            if 0 in chans and _CHANNEL_RE.match(strip_ending(chans[0].name)):
                ending = chans[0].name[len(strip_ending(chans[0].name)) :]
                for c in range(1, n_channels):
                    p = siblings_of / f"{cid}_{c:04d}{ending}"
                    if p.is_file():
                        chans[c] = p
    cases, problems = [], []
    for cid, chans in sorted(groups.items()):
        missing = [c for c in range(n_channels) if c not in chans]
        extra = [c for c in chans if c >= n_channels]
        if missing or extra:
            found = ", ".join(p.name for _, p in sorted(chans.items()))
            problems.append(
                f"case {cid} ({found}): the model needs {n_channels} channel(s) "
                f"_0000…_{n_channels - 1:04d}; "
                + (f"missing channel(s) {missing}" if missing else f"unexpected channel(s) {extra}")
            )
            continue
        cases.append(Case(cid, tuple(chans[c] for c in range(n_channels)), None))
    return cases, problems, clashes


def case_voxels(case: Case) -> int:
    """The voxels of a case's scans, from their headers only (milliseconds: no pixel data read),
    to weigh cases for the memory the stages of prediction may hold at once
    (:func:`~autoseg.inference.overlap.overlapped`). A DICOM series counts its files times the
    rows and columns of one. What cannot be read counts 0: reading it properly reports why."""
    total = 0
    for path in case.images:
        try:
            total += _voxels(path)
        except Exception:  # a weight, not a check: reading the case reports the problem
            continue
    return total


def _voxels(path: Path) -> int:
    if path.is_dir():
        import pydicom

        files = [p for p in path.iterdir() if p.is_file()]
        if not files:
            return 0
        head = pydicom.dcmread(files[0], stop_before_pixels=True)
        frames = int(head.get("NumberOfFrames", 1) or 1)
        return len(files) * frames * int(head.Rows) * int(head.Columns)
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    n = reader.GetNumberOfComponents()
    for s in reader.GetSize():
        n *= s
    return n
