"""``CASE.npz``: a case's class probabilities on its source grid, written by ``predict
--save-probabilities`` and by fold validation, read by find-best to score ensembles.

A typed, versioned contract like the JSON files between stages: keys ``schema_version``,
``probabilities`` (``(n_classes, Z, Y, X)`` float16, background first) and ``label_values`` (the
label value of each class). Files written before the version existed hold ``probabilities`` (and,
from ``predict``, ``label_values``) only; they still load as version 0. Arrays are stored without
pickle and read with ``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg._atomic import write_atomic
from autoseg.errors import ModelError

#: Version of ``CASE.npz``.
PROBABILITIES_VERSION = 1
_KEYS = {"schema_version", "probabilities", "label_values"}
_LEGACY_KEYS = ({"probabilities"}, {"probabilities", "label_values"})


@dataclass(frozen=True)
class ProbabilityMap:
    """Class probabilities of one case on its source grid.

    Attributes:
        probabilities: ``(n_classes, Z, Y, X)``, float16 on disk.
        label_values: the dataset's label value of each class, background first.
    """

    probabilities: np.ndarray
    label_values: tuple[int, ...]

    def save(self, path: Path) -> Path:
        """Write ``path`` (``.npz``, compressed) atomically."""
        save = functools.partial(
            np.savez_compressed,
            schema_version=np.int64(PROBABILITIES_VERSION),
            probabilities=self.probabilities.astype(np.float16, copy=False),
            label_values=np.asarray(self.label_values, dtype=np.int64),
        )
        return write_atomic(path, save)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        label_values: Sequence[int],
        shape: Sequence[int] | None = None,
        fix: str = "re-run the validation of this fold",
    ) -> ProbabilityMap:
        """Read and check a ``CASE.npz``.

        Args:
            path: the file.
            label_values: what the model's plan says the classes are (a file of another plan
                is refused; a version-0 validation file, which lacks them, takes these).
            shape: the expected spatial shape, when known.
            fix: what the messages tell the user to do.

        Raises:
            ModelError: unreadable, a missing, unknown or wrong-version key, a wrongly typed or
                shaped array, or other labels; the message names the file.
        """

        def refuse(why: str) -> ModelError:
            return ModelError(f"{path}: {why}; {fix}")

        try:  # the file is opened here: np.load leaves its own handle open on a corrupt zip
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise refuse(f"cannot be read as probabilities ({e})") from e
        keys = set(arrays)
        if keys in _LEGACY_KEYS:
            version = 0
        elif "schema_version" not in keys:
            raise refuse(f"keys {sorted(keys)}, expected {sorted(_KEYS)}")
        else:
            version_arr = arrays["schema_version"]
            version = int(version_arr) if version_arr.ndim == 0 and version_arr.dtype.kind in "iu" else -1
            if version != PROBABILITIES_VERSION:
                raise refuse(
                    f"probabilities schema_version {version_arr.tolist()!r}, expected {PROBABILITIES_VERSION}"
                )
            if keys != _KEYS:
                raise refuse(f"missing key(s) {sorted(_KEYS - keys)}, unknown key(s) {sorted(keys - _KEYS)}")
        prob = arrays["probabilities"]
        if prob.dtype.kind != "f" or prob.ndim != 4:
            raise refuse(
                f"probabilities must be a 4D float array (classes, Z, Y, X), got {prob.dtype} {prob.shape}"
            )
        stored = arrays.get("label_values")
        values = tuple(int(v) for v in label_values)
        if stored is not None:
            if stored.dtype.kind not in "iu" or stored.ndim != 1:
                raise refuse(f"label_values must be a 1D integer array, got {stored.dtype} {stored.shape}")
            if tuple(int(v) for v in stored) != values:
                raise refuse(f"label values {stored.tolist()}, but the model's plan has {list(values)}")
        if prob.shape[0] != len(values) or (shape is not None and prob.shape[1:] != tuple(shape)):
            expected = (len(values), *(shape if shape is not None else prob.shape[1:]))
            raise refuse(
                f"probabilities of shape {prob.shape}, expected {expected} (classes, then the case's grid)"
            )
        return cls(prob, values)
