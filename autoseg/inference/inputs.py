"""Find the scans to predict in an input path: image files (nnU-Net channel naming or plain),
DICOM series folders, or one file or series."""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

from autoseg.errors import AutosegError
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
        ``(cases, problems)``: cases sorted by id; problems such as a missing channel name the
        case's files (those cases are left out).

    Raises:
        AutosegError: ``source`` does not exist or holds no scans.
    """
    if not source.exists():
        msg = f"{source}: input not found; give a scan, a DICOM series folder or a folder of scans"
        raise AutosegError(msg)
    if source.is_file():
        return _group_files([source], n_channels, siblings_of=source.parent)
    if is_dicom_folder(source):
        return [Case(source.name, (source,), None)], []
    files = sorted(
        p for p in source.iterdir() if p.is_file() and not p.name.startswith(".") and has_image_ending(p)
    )
    cases, problems = _group_files(files, n_channels)
    for sub in sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if is_dicom_folder(sub):
            if n_channels != 1:
                problems.append(
                    f"{sub}: a DICOM series is one channel but the model needs "
                    f"{n_channels}; give NIfTI files named CASE_0000…"
                )
                continue
            cases.append(Case(sub.name, (sub,), None))
    if not cases and not problems:
        msg = f"{source}: no scans found (NIfTI/NRRD/MHA files or DICOM series folders); check the path"
        raise AutosegError(msg)
    ids = [c.case_id for c in cases]
    dup = sorted({i for i in ids if ids.count(i) > 1})
    if dup:
        problems.append(
            f"{source}: case name(s) {dup} given twice (e.g. as a file and a DICOM folder); rename one"
        )
        cases = [c for c in cases if c.case_id not in dup]
    return sorted(cases, key=lambda c: c.case_id), problems


def _group_files(
    files: list[Path], n_channels: int, *, siblings_of: Path | None = None
) -> tuple[list[Case], list[str]]:
    groups: dict[str, dict[int, Path]] = defaultdict(dict)
    for f in files:
        stem = strip_ending(f.name)
        m = _CHANNEL_RE.match(stem)
        if m is None:
            groups[stem][0] = f
        else:
            groups[m["case"]][int(m["ch"])] = f
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
    return cases, problems
