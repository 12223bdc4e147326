"""``CASE.npz``, the probabilities contract: round trip, the files older autoseg wrote, and a
one-line error naming the file for each way a file can be wrong."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import ModelError
from autoseg.inference.probabilities import PROBABILITIES_VERSION, ProbabilityMap

VALUES = (0, 1, 4)
SHAPE = (3, 4, 5)


def _probs() -> np.ndarray:
    p = np.random.default_rng(0).random((3, *SHAPE)).astype(np.float32)
    return p / p.sum(0, keepdims=True)


def test_round_trip(tmp_path: Path) -> None:
    path = ProbabilityMap(_probs(), VALUES).save(tmp_path / "c.npz")
    back = ProbabilityMap.load(path, label_values=VALUES, shape=SHAPE)
    assert back.label_values == VALUES
    assert back.probabilities.dtype == np.float16
    np.testing.assert_allclose(back.probabilities, _probs(), atol=1e-3)
    with np.load(path) as f:
        assert sorted(f.files) == ["label_values", "probabilities", "schema_version"]
        assert int(f["schema_version"]) == PROBABILITIES_VERSION


@pytest.mark.parametrize("with_values", [False, True], ids=["validation_v0", "predict_v0"])
def test_files_older_autoseg_wrote_still_load(tmp_path: Path, with_values: bool) -> None:
    extra = {"label_values": np.asarray(VALUES)} if with_values else {}
    np.savez_compressed(tmp_path / "c.npz", probabilities=_probs().astype(np.float16), **extra)
    assert ProbabilityMap.load(tmp_path / "c.npz", label_values=VALUES).label_values == VALUES


def _write(path: Path, **arrays: object) -> Path:
    np.savez_compressed(path, **arrays)
    return path


BAD = {
    "wrong_version": ({"schema_version": np.int64(2)}, r"probabilities schema_version 2\b.*expected 1"),
    "missing_key": ({"drop": "label_values"}, r"missing key\(s\) \['label_values'\]"),
    "extra_key": ({"logits": np.zeros(3)}, r"unknown key\(s\) \['logits'\]"),
    "no_version_other_keys": (
        {"drop": "schema_version", "logits": np.zeros(3)},
        r"keys \[.*'logits'.*\], expected",
    ),
    "integer_probabilities": ({"probabilities": np.ones((3, *SHAPE), np.uint8)}, "must be a 4D float array"),
    "other_labels": (
        {"label_values": np.asarray([0, 1, 2])},
        r"label values \[0, 1, 2\], but the model's plan has \[0, 1, 4\]",
    ),
    "other_shape": (
        {"probabilities": np.ones((3, 3, 4, 6), np.float16)},
        r"shape \(3, 3, 4, 6\), expected \(3, 3, 4, 5\)",
    ),
    "string_version": ({"schema_version": np.asarray("1")}, "probabilities schema_version"),
}


@pytest.mark.parametrize(("change", "match"), list(BAD.values()), ids=list(BAD))
def test_wrong_files_are_refused(tmp_path: Path, change: dict, match: str) -> None:
    arrays = {
        "schema_version": np.int64(1),
        "probabilities": _probs().astype(np.float16),
        "label_values": np.asarray(VALUES),
    }
    change = dict(change)
    if drop := change.pop("drop", None):
        del arrays[drop]
    arrays.update(change)
    path = _write(tmp_path / "c.npz", **arrays)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: .*{match}.*; re-run the validation"):
        ProbabilityMap.load(path, label_values=VALUES, shape=SHAPE)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="cannot be read as probabilities"):
        ProbabilityMap.load(path, label_values=VALUES)
