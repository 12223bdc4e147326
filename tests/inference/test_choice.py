"""``inference.json`` (find-best's choice) is a typed, versioned contract; ``predict`` without
``-c`` reads it through :func:`default_models`, strictly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autoseg.errors import ModelError
from autoseg.inference.choice import INFERENCE_VERSION, InferenceChoice
from autoseg.inference.model import default_models
from autoseg.inference.postprocess import Postprocessing

FIX = "; re-run `autoseg find-best`"


def _choice() -> InferenceChoice:
    return InferenceChoice(
        best="2d__3d_fullres",
        configurations=("2d", "3d_fullres"),
        folds={"2d": ("0", "1"), "3d_fullres": ("0", "1", "2")},
        postprocessing=Postprocessing(True, (2,)),
        cv_dice={"2d": 0.5, "3d_fullres": None, "2d__3d_fullres": 0.75},
        report={"labels": [1, 2], "anything": {"for": "people"}},
    )


@pytest.fixture
def d() -> dict:
    return _choice().to_dict()


def _write(tmp_path: Path, d: dict) -> Path:
    path = tmp_path / "inference.json"
    path.write_text(json.dumps(d))
    return path


def test_round_trip(tmp_path, d):
    assert next(iter(d)) == "schema_version"
    assert d["schema_version"] == INFERENCE_VERSION
    assert d["postprocessing"] == {"foreground_largest_only": True, "largest_only_labels": [2]}
    choice = _choice()
    choice.save(tmp_path / "inference.json")
    assert InferenceChoice.load(tmp_path / "inference.json") == choice


def test_default_models_reads_it(tmp_path, d):
    _write(tmp_path, d)
    chosen, pp = default_models(tmp_path)
    assert chosen == [("2d", ["0", "1"]), ("3d_fullres", ["0", "1", "2"])]
    assert pp == Postprocessing(True, (2,))


@pytest.mark.parametrize("version", [2, 0, "1", None], ids=["2", "0", "str", "none"])
def test_wrong_version(tmp_path, d, version):
    d["schema_version"] = version
    path = _write(tmp_path, d)
    with pytest.raises(
        ModelError,
        match=rf"^{re.escape(str(path))}: inference choice schema_version is {re.escape(repr(version))}, "
        rf"this autoseg reads 1{re.escape(FIX)}$",
    ):
        default_models(tmp_path)


def test_missing_version(tmp_path, d):
    del d["schema_version"]
    path = _write(tmp_path, d)
    with pytest.raises(
        ModelError, match=rf"^{re.escape(str(path))}: inference choice schema_version is missing"
    ):
        InferenceChoice.load(path)


def test_missing_key(tmp_path, d):
    del d["folds"]
    path = _write(tmp_path, d)
    with pytest.raises(
        ModelError,
        match=rf"^{re.escape(str(path))}: inference choice: missing key\(s\) \['folds'\]{re.escape(FIX)}$",
    ):
        default_models(tmp_path)


def test_extra_key(tmp_path, d):
    d["postprocessing"]["min_size"] = 10
    path = _write(tmp_path, d)
    with pytest.raises(
        ModelError,
        match=rf"^{re.escape(str(path))}: inference choice\.postprocessing: unknown key\(s\) \['min_size'\]",
    ):
        InferenceChoice.load(path)


def test_wrong_type(tmp_path, d):
    d["folds"]["2d"] = "0,1"
    path = _write(tmp_path, d)
    with pytest.raises(
        ModelError, match=rf"^{re.escape(str(path))}: inference choice\.folds\.2d: expected a list"
    ):
        InferenceChoice.load(path)


def test_every_configuration_needs_its_folds(tmp_path, d):
    del d["folds"]["3d_fullres"]
    path = _write(tmp_path, d)
    with pytest.raises(
        ModelError,
        match=rf"^{re.escape(str(path))}: inference choice: configurations \['2d', '3d_fullres'\] and the "
        r"configurations with folds \['2d'\] differ",
    ):
        InferenceChoice.load(path)
