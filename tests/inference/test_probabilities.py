"""``CASE.npz``, the probabilities contract: round trip, the files older autoseg wrote, what the
channels are (softmax labels or sigmoid regions; a file of another label scheme is refused), and a
one-line error naming the file for each way a file can be wrong."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import ModelError
from autoseg.inference.probabilities import PROBABILITIES_VERSION, ProbabilityMap
from autoseg.labels import LabelScheme

VALUES = (0, 1, 4)
SHAPE = (3, 4, 5)
PLAIN = LabelScheme.from_declared({"background": 0, "a": 1, "b": 4})
# three regions, so that the channel count alone does not tell the schemes apart
REGIONS = LabelScheme.from_declared({"background": 0, "whole": [1, 4], "a": 1, "b": 4}, [1, 4, 4])


def _probs() -> np.ndarray:
    p = np.random.default_rng(0).random((3, *SHAPE)).astype(np.float32)
    return p / p.sum(0, keepdims=True)


def test_round_trip(tmp_path: Path) -> None:
    path = ProbabilityMap.of(_probs(), PLAIN).save(tmp_path / "c.npz")
    back = ProbabilityMap.load(path, scheme=PLAIN, shape=SHAPE)
    assert back.label_values == VALUES
    assert back.probabilities.dtype == np.float16
    np.testing.assert_allclose(back.probabilities, _probs(), atol=1e-3)
    with np.load(path) as f:
        assert sorted(f.files) == [
            "activation",
            "channel_names",
            "channel_values",
            "label_values",
            "probabilities",
            "schema_version",
        ]
        assert int(f["schema_version"]) == PROBABILITIES_VERSION == 2
        assert str(f["activation"]) == "softmax"
        assert f["channel_names"].tolist() == ["background", "a", "b"]
        assert f["channel_values"].tolist() == [[0], [1], [4]]


def test_regions_say_what_their_channels_are(tmp_path: Path) -> None:
    path = ProbabilityMap.of(_probs(), REGIONS).save(tmp_path / "c.npz")
    back = ProbabilityMap.load(path, scheme=REGIONS, shape=SHAPE)
    assert (back.activation, back.channel_names, back.label_values) == (
        "sigmoid",
        ("whole", "a", "b"),
        (1, 4, 4),
    )
    assert back.channel_values == ((1, 4), (1,), (4,))
    with np.load(path) as f:
        assert f["channel_values"].tolist() == [[1, 4], [1, -1], [4, -1]]


@pytest.mark.parametrize(
    ("written", "read", "match"),
    [
        (PLAIN, REGIONS, r"another label scheme: activation 'softmax', but the model's plan has 'sigmoid'"),
        (REGIONS, PLAIN, r"another label scheme: activation 'sigmoid', but the model's plan has 'softmax'"),
        (
            REGIONS,
            LabelScheme.from_declared({"background": 0, "whole": [1, 4], "x": 1, "b": 4}, [1, 4, 4]),
            r"channel names \['whole', 'a', 'b'\], but the model's plan has \['whole', 'x', 'b'\]",
        ),
        (
            REGIONS,
            LabelScheme.from_declared({"background": 0, "whole": [1, 3, 4], "a": 1, "b": 4}, [1, 4, 4]),
            r"channel values \[\[1, 4\], \[1\], \[4\]\], but the model's plan has \[\[1, 3, 4\]",
        ),
    ],
    ids=["softmax_read_as_regions", "regions_read_as_softmax", "other_names", "other_region_values"],
)
def test_a_file_of_another_label_scheme_is_refused(
    tmp_path: Path, written: LabelScheme, read: LabelScheme, match: str
) -> None:
    path = ProbabilityMap.of(_probs(), written).save(tmp_path / "c.npz")
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: .*{match}"):
        ProbabilityMap.load(path, scheme=read, shape=SHAPE)


def test_version_1_files_load_as_softmax_and_not_as_regions(tmp_path: Path) -> None:
    path = _write(
        tmp_path / "c.npz",
        schema_version=np.int64(1),
        probabilities=_probs().astype(np.float16),
        label_values=np.asarray(VALUES),
    )
    back = ProbabilityMap.load(path, scheme=PLAIN, shape=SHAPE)
    assert (back.activation, back.channel_names) == ("softmax", ("background", "a", "b"))
    with pytest.raises(
        ModelError, match=r"written before regions existed\), but the model's plan has 3 sigmoid"
    ):
        ProbabilityMap.load(path, scheme=REGIONS, shape=SHAPE)


@pytest.mark.parametrize("with_values", [False, True], ids=["validation_v0", "predict_v0"])
def test_files_older_autoseg_wrote_still_load(tmp_path: Path, with_values: bool) -> None:
    extra = {"label_values": np.asarray(VALUES)} if with_values else {}
    np.savez_compressed(tmp_path / "c.npz", probabilities=_probs().astype(np.float16), **extra)
    assert ProbabilityMap.load(tmp_path / "c.npz", scheme=PLAIN).label_values == VALUES


def _write(path: Path, **arrays: object) -> Path:
    np.savez_compressed(path, **arrays)
    return path


BAD = {
    "wrong_version": ({"schema_version": np.int64(3)}, r"probabilities schema_version 3\b.*expected 2"),
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
        ProbabilityMap.load(path, scheme=PLAIN, shape=SHAPE)


V2_BAD = {
    "missing_key": ({"drop": "channel_names"}, r"missing key\(s\) \['channel_names'\]"),
    "activation_not_text": ({"activation": np.int64(0)}, "activation must be a text scalar"),
    "names_not_text": ({"channel_names": np.arange(3)}, "channel_names must be a 1D text array"),
    "values_not_2d": ({"channel_values": np.arange(3)}, "channel_values must be a 2D integer array"),
}


@pytest.mark.parametrize(("change", "match"), list(V2_BAD.values()), ids=list(V2_BAD))
def test_wrong_version_2_files_are_refused(tmp_path: Path, change: dict, match: str) -> None:
    path = ProbabilityMap.of(_probs(), PLAIN).save(tmp_path / "c.npz")
    with np.load(path) as f:
        arrays = {k: f[k] for k in f.files}
    change = dict(change)
    if drop := change.pop("drop", None):
        del arrays[drop]
    arrays.update(change)
    _write(path, **arrays)
    with pytest.raises(ModelError, match=rf"^{re.escape(str(path))}: .*{match}.*; re-run the validation"):
        ProbabilityMap.load(path, scheme=PLAIN, shape=SHAPE)


def test_corrupt_file(tmp_path: Path) -> None:
    path = tmp_path / "c.npz"
    path.write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ModelError, match="cannot be read as probabilities"):
        ProbabilityMap.load(path, scheme=PLAIN)
