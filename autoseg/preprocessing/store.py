"""On-disk store of preprocessed cases: memory-mappable ``.npy`` arrays plus a JSON properties file.

Layout of one store (``<work>/<dataset>/preprocessed/<key>/``)::

    plan_part.json        the part of the plan the arrays depend on (its hash is <key>)
    CASE.npy              (C, Z, Y, X) float32
    CASE_seg.npy          (Z, Y, X) class indices
    CASE_fg.npy           (N, 4) int32 foreground samples (class, z, y, x)
    CASE.json             properties (:class:`~autoseg.preprocessing.properties.CaseProperties`);
                          written last, so its presence means the case is complete

No pickle anywhere: everything loads with ``allow_pickle=False``.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np

from autoseg._atomic import write_atomic, write_json_atomic
from autoseg.errors import PreprocessedDataError
from autoseg.planning.kinds import kind_of
from autoseg.planning.plan import Configuration, Plan
from autoseg.preprocessing.case import PreprocessedCase
from autoseg.preprocessing.properties import PROPERTIES_VERSION, CaseProperties


def plan_part(plan: Plan, config: Configuration) -> dict[str, Any]:
    """What a store's files depend on; configurations that agree on it share one store.

    The properties' format version is part of it: a store written in another format gets
    another key, so it is preprocessed again instead of being misread.
    """
    kind = kind_of(config.kind)
    return {
        "properties_version": PROPERTIES_VERSION,
        "channel_names": list(plan.channel_names),
        "label_values": list(plan.label_values),
        "transpose_forward": list(plan.transpose_forward),
        "normalization": [vars(n) | {"clip": list(n.clip) if n.clip else None} for n in plan.normalization],
        "resample_axis0": kind.resamples_axis0,
        "spacing": list(config.spacing) if kind.resamples_axis0 else list(config.spacing[1:]),
        "resampling": vars(config.resampling),
    }


def store_key(plan: Plan, config: Configuration) -> str:
    """Short hash of :func:`plan_part`."""
    blob = json.dumps(plan_part(plan, config), sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def _save_npy(path: Path, arr: np.ndarray) -> None:
    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to other names
            np.save(f, np.ascontiguousarray(arr), allow_pickle=False)

    write_atomic(path, write)


class PreprocessedStore:
    """One folder of preprocessed cases for one plan part."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)

    @classmethod
    def for_config(cls, dataset_dir: Path, plan: Plan, config: Configuration) -> PreprocessedStore:
        """The store of ``config`` under ``<dataset_dir>/preprocessed/``; records its plan part."""
        store = cls(dataset_dir / "preprocessed" / store_key(plan, config))
        part = store.folder / "plan_part.json"
        if not part.is_file():
            write_json_atomic(part, plan_part(plan, config))
        return store

    def is_done(self, case_id: str) -> bool:
        """Whether the case was stored completely."""
        return (self.folder / f"{case_id}.json").is_file()

    def save(self, case: PreprocessedCase) -> None:
        """Store a case; the properties file goes last and marks it complete."""
        cid = case.properties.case_id
        self.folder.mkdir(parents=True, exist_ok=True)
        _save_npy(self.folder / f"{cid}.npy", case.data)
        if case.seg is not None:
            _save_npy(self.folder / f"{cid}_seg.npy", case.seg)
        _save_npy(self.folder / f"{cid}_fg.npy", case.locations)
        write_json_atomic(self.folder / f"{cid}.json", case.properties.to_dict())

    def load(self, case_id: str, *, mmap: bool = True) -> PreprocessedCase:
        """Load a case; arrays memory-mapped read-only unless ``mmap`` is False.

        Raises:
            PreprocessedDataError: a file is missing, unreadable, or holds an array of the wrong
                kind (an object array, another dtype or number of axes, shapes that disagree).
        """
        mode: Literal["r"] | None = "r" if mmap else None
        props = CaseProperties.load(self.folder / f"{case_id}.json")
        data = self._array(f"{case_id}.npy", mode, kinds="f", ndim=4)
        seg_path = self.folder / f"{case_id}_seg.npy"
        seg = self._array(seg_path.name, mode, kinds="iu", ndim=3) if seg_path.is_file() else None
        loc = self._array(f"{case_id}_fg.npy", None, kinds="iu", ndim=2)
        if seg is not None and seg.shape != data.shape[1:]:
            raise self._refuse(seg_path, f"segmentation of shape {seg.shape}, data {data.shape[1:]}")
        if loc.shape[1:] != (4,):
            raise self._refuse(self.folder / f"{case_id}_fg.npy", f"shape {loc.shape}, expected (N, 4)")
        return PreprocessedCase(data, seg, loc, props)

    def check(self, case_ids: list[str]) -> None:
        """Load every case's headers (memory-mapped, so cheap) before training starts, so that
        a damaged store is one clear error listing every bad file, not a crash in a worker.

        Raises:
            PreprocessedDataError: listing every problem.
        """
        problems = []
        for cid in case_ids:
            try:
                self.load(cid)
            except PreprocessedDataError as e:
                problems.append(str(e))
        if problems:
            raise PreprocessedDataError(
                "\n  ".join([f"{len(problems)} preprocessed case(s) unusable:", *problems])
            )

    def _refuse(self, path: Path, why: str) -> PreprocessedDataError:
        return PreprocessedDataError(
            f"{path}: {why}; delete {self.folder} and run `autoseg preprocess` (or train) again"
        )

    def _array(self, name: str, mode: Literal["r"] | None, *, kinds: str, ndim: int) -> np.ndarray:
        """One stored array, checked: plain numbers of the expected kind and number of axes."""
        path = self.folder / name
        try:
            arr = np.load(path, mmap_mode=mode, allow_pickle=False)
        except FileNotFoundError as e:
            raise self._refuse(path, "missing") from e
        except (ValueError, OSError, EOFError) as e:  # object arrays, truncated or foreign files
            raise self._refuse(path, f"not a plain numeric array ({e})") from e
        if not isinstance(arr, np.ndarray) or arr.dtype.kind not in kinds or arr.ndim != ndim:
            what = f"{arr.dtype} {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
            raise self._refuse(path, f"holds {what}, expected {ndim} axes of kind {kinds!r}")
        return arr

    def properties(self, case_id: str) -> CaseProperties:
        """Only the properties of a case.

        Raises:
            PreprocessedDataError: the properties file is missing or invalid.
        """
        return CaseProperties.load(self.folder / f"{case_id}.json")
