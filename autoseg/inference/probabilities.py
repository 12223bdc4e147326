"""``CASE.npz``: a case's probabilities on its source grid, written by ``predict
--save-probabilities`` and by fold validation, read by find-best to score ensembles.

A typed, versioned contract like the JSON files between stages. Version 2 says what its channels
are, so that a file is never read as probabilities of another label scheme:

* ``schema_version``: 2;
* ``probabilities``: ``(n_outputs, Z, Y, X)`` float16, one channel per network output;
* ``activation``: ``"softmax"`` (plain labels: channels sum to 1, background first) or
  ``"sigmoid"`` (regions: one independent probability per region);
* ``channel_names``: the label or region name of each channel;
* ``label_values``: each channel's value in a label map (the argmax's value for labels, the
  painted value for regions);
* ``channel_values``: ``(n_outputs, K)`` the label values each channel stands for (one per label,
  a region's values), padded with -1.

Older files still load, as softmax probabilities over plain labels: version 1 (``schema_version``,
``probabilities``, ``label_values``) and version 0 (``probabilities``, and from ``predict``
``label_values``; no version). Arrays are stored without pickle and read with
``allow_pickle=False``.
"""

from __future__ import annotations

import functools
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from autoseg._atomic import write_atomic
from autoseg.errors import ModelError
from autoseg.labels import LabelScheme

#: Version of ``CASE.npz``.
PROBABILITIES_VERSION = 2
_KEYS = {"schema_version", "probabilities", "label_values", "activation", "channel_names", "channel_values"}
_V1_KEYS = {"schema_version", "probabilities", "label_values"}
_LEGACY_KEYS = ({"probabilities"}, {"probabilities", "label_values"})
#: Turns a reason into the error naming the file.
_Refuse = Callable[[str], ModelError]


@dataclass(frozen=True)
class ProbabilityMap:
    """Probabilities of one case on its source grid, and what their channels are.

    Attributes:
        probabilities: ``(n_outputs, Z, Y, X)``, float16 on disk.
        label_values: each channel's value in a label map (``LabelScheme.output_values``).
        activation: ``"softmax"`` over labels or ``"sigmoid"`` per region.
        channel_names: each channel's label or region name.
        channel_values: the label values each channel stands for.
    """

    probabilities: np.ndarray
    label_values: tuple[int, ...]
    activation: str
    channel_names: tuple[str, ...]
    channel_values: tuple[tuple[int, ...], ...]

    @classmethod
    def of(cls, probabilities: np.ndarray, scheme: LabelScheme) -> ProbabilityMap:
        """``probabilities`` (``(n_outputs, Z, Y, X)``) of a model whose labels are ``scheme``."""
        return cls(
            probabilities, scheme.output_values, scheme.activation, scheme.output_names, scheme.output_members
        )

    def save(self, path: Path) -> Path:
        """Write ``path`` (``.npz``, compressed) atomically."""
        width = max((len(v) for v in self.channel_values), default=1)
        members = np.full((len(self.channel_values), width), -1, dtype=np.int64)
        for i, values in enumerate(self.channel_values):
            members[i, : len(values)] = values
        save = functools.partial(
            np.savez_compressed,
            schema_version=np.int64(PROBABILITIES_VERSION),
            probabilities=self.probabilities.astype(np.float16, copy=False),
            label_values=np.asarray(self.label_values, dtype=np.int64),
            activation=np.asarray(self.activation, dtype=np.str_),
            channel_names=np.asarray(self.channel_names, dtype=np.str_).reshape(-1),
            channel_values=members,
        )
        return write_atomic(path, save)

    @classmethod
    def load(
        cls,
        path: Path,
        *,
        scheme: LabelScheme,
        shape: Sequence[int] | None = None,
        fix: str = "re-run the validation of this fold",
    ) -> ProbabilityMap:
        """Read and check a ``CASE.npz``.

        Args:
            path: the file.
            scheme: what the model's plan says the labels are: a file of another scheme (other
                activation, channel names or values) is refused; a version-0 validation file,
                which says nothing, is taken as softmax probabilities of these labels.
            shape: the expected spatial shape, when known.
            fix: what the messages tell the user to do.

        Raises:
            ModelError: unreadable, a missing, unknown or wrong-version key, a wrongly typed or
                shaped array, or another label scheme; the message names the file.
        """

        def refuse(why: str) -> ModelError:
            return ModelError(f"{path}: {why}; {fix}")

        try:  # the file is opened here: np.load leaves its own handle open on a corrupt zip
            with open(path, "rb") as fh, np.load(fh, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:
            raise refuse(f"cannot be read as probabilities ({e})") from e
        version = _version(arrays, refuse)
        prob = arrays["probabilities"]
        if prob.dtype.kind != "f" or prob.ndim != 4:
            raise refuse(
                f"probabilities must be a 4D float array (channels, Z, Y, X), got {prob.dtype} {prob.shape}"
            )
        if version < 2 and scheme.activation != "softmax":
            raise refuse(
                f"softmax probabilities over labels (schema_version {version}, written before regions "
                f"existed), but the model's plan has {scheme.n_outputs} sigmoid regions"
            )
        stored = cls._stored(arrays, refuse) if version == 2 else None
        expected = cls.of(prob, scheme)
        if stored is not None:
            for what, got, want in zip(
                ("activation", "channel names", "channel values"),
                stored,
                (expected.activation, expected.channel_names, expected.channel_values),
                strict=True,
            ):
                if got != want:
                    raise refuse(
                        f"probabilities of another label scheme: {what} {_show(got)}, but the "
                        f"model's plan has {_show(want)}"
                    )
        values = expected.label_values
        if "label_values" in arrays:
            lv = arrays["label_values"]
            if lv.dtype.kind not in "iu" or lv.ndim != 1:
                raise refuse(f"label_values must be a 1D integer array, got {lv.dtype} {lv.shape}")
            if tuple(int(v) for v in lv) != values:
                raise refuse(f"label values {lv.tolist()}, but the model's plan has {list(values)}")
        if prob.shape[0] != len(values) or (shape is not None and prob.shape[1:] != tuple(shape)):
            want_shape = (len(values), *(shape if shape is not None else prob.shape[1:]))
            raise refuse(
                f"probabilities of shape {prob.shape}, expected {want_shape} (channels, then the case's grid)"
            )
        return expected

    @staticmethod
    def _stored(
        arrays: dict[str, np.ndarray], refuse: _Refuse
    ) -> tuple[str, tuple[str, ...], tuple[tuple[int, ...], ...]]:
        """The channel description of a version-2 file, its types checked."""
        act, names, members = arrays["activation"], arrays["channel_names"], arrays["channel_values"]
        if act.dtype.kind != "U" or act.ndim != 0:
            raise refuse(f"activation must be a text scalar, got {act.dtype} {act.shape}")
        if names.dtype.kind != "U" or names.ndim != 1:
            raise refuse(f"channel_names must be a 1D text array, got {names.dtype} {names.shape}")
        if members.dtype.kind not in "iu" or members.ndim != 2:
            raise refuse(f"channel_values must be a 2D integer array, got {members.dtype} {members.shape}")
        values = tuple(tuple(int(v) for v in row if v >= 0) for row in members)
        return str(act), tuple(str(n) for n in names), values


def _version(arrays: dict[str, np.ndarray], refuse: _Refuse) -> int:
    """The file's version from its keys and ``schema_version``; refused when neither fits."""
    keys = set(arrays)
    if keys in _LEGACY_KEYS:
        return 0
    if "schema_version" not in keys:
        raise refuse(f"keys {sorted(keys)}, expected {sorted(_KEYS)}")
    found = arrays["schema_version"]
    version = int(found) if found.ndim == 0 and found.dtype.kind in "iu" else -1
    if version not in (1, PROBABILITIES_VERSION):
        raise refuse(
            f"probabilities schema_version {found.tolist()!r}, expected {PROBABILITIES_VERSION} (or 1, "
            "from an older autoseg)"
        )
    want = _KEYS if version == PROBABILITIES_VERSION else _V1_KEYS
    if keys != want:
        raise refuse(f"missing key(s) {sorted(want - keys)}, unknown key(s) {sorted(keys - want)}")
    return version


def _show(value: object) -> str:
    """Tuples as lists, as a user reads them in JSON."""
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value)
