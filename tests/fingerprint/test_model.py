"""``fingerprint.json`` is a versioned contract loaded strictly, like the plan."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autoseg.errors import PlanError
from autoseg.fingerprint.model import FINGERPRINT_VERSION, Fingerprint

GOLDEN = Path(__file__).resolve().parents[2] / "plans" / "hippocampus_sample" / "fingerprint.json"
FIX = "; run `autoseg plan` again"


@pytest.fixture
def d() -> dict:
    return json.loads(GOLDEN.read_text())


def _write(tmp_path: Path, d: dict) -> Path:
    path = tmp_path / "fingerprint.json"
    path.write_text(json.dumps(d))
    return path


def test_round_trip(d):
    fp = Fingerprint.from_dict(d)
    assert fp.schema_version == FINGERPRINT_VERSION
    assert fp.to_dict() == d
    assert Fingerprint.from_dict(fp.to_dict()) == fp


@pytest.mark.parametrize("version", [3, 0, "2", None], ids=["3", "0", "str", "none"])
def test_wrong_version(d, tmp_path, version):
    d["schema_version"] = version
    path = _write(tmp_path, d)
    with pytest.raises(
        PlanError,
        match=rf"^{re.escape(str(path))}: fingerprint schema_version is {re.escape(repr(version))}, "
        rf"this autoseg reads 2{re.escape(FIX)}$",
    ):
        Fingerprint.load(path)


def test_missing_version(d, tmp_path):
    del d["schema_version"]
    path = _write(tmp_path, d)
    with pytest.raises(PlanError, match=rf"^{re.escape(str(path))}: fingerprint schema_version is missing"):
        Fingerprint.load(path)


def test_missing_key(d, tmp_path):
    del d["cases"][0]["bbox"]
    path = _write(tmp_path, d)
    with pytest.raises(
        PlanError,
        match=rf"^{re.escape(str(path))}: fingerprint\.cases\[0\]: "
        rf"missing key\(s\) \['bbox'\]{re.escape(FIX)}$",
    ):
        Fingerprint.load(path)


def test_extra_key(d, tmp_path):
    d["foreground_intensity"][0]["mode"] = 3.0
    path = _write(tmp_path, d)
    with pytest.raises(
        PlanError,
        match=rf"^{re.escape(str(path))}: fingerprint\.foreground_intensity\[0\]: "
        r"unknown key\(s\) \['mode'\]",
    ):
        Fingerprint.load(path)


def test_wrong_type(d, tmp_path):
    d["cases"][1]["shape"][0] = "35"
    path = _write(tmp_path, d)
    with pytest.raises(
        PlanError,
        match=rf"^{re.escape(str(path))}: fingerprint\.cases\[1\]\.shape\[0\]: expected int, found '35'",
    ):
        Fingerprint.load(path)


def test_missing_file(tmp_path):
    with pytest.raises(
        PlanError, match=r"fingerprint\.json: no fingerprint here; run `autoseg plan DATASET` first"
    ):
        Fingerprint.load(tmp_path / "fingerprint.json")


def test_version_1_is_read_without_regions(d):
    d["schema_version"] = 1
    del d["regions_class_order"]
    fp = Fingerprint.from_dict(d)
    assert fp.schema_version == FINGERPRINT_VERSION
    assert fp.regions_class_order is None
