"""``source.json``: a versioned contract; the unversioned form written before still loads."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from autoseg.errors import DatasetError
from autoseg.workspace import SOURCE_VERSION, SourceRecord, Workspace

FIX = "run `autoseg plan PATH/TO/DATASET` again with this work folder"


def _write(tmp_path: Path, d: object) -> Path:
    path = tmp_path / "source.json"
    path.write_text(json.dumps(d))
    return path


def test_remember_and_resolve(tmp_path):
    ws = Workspace(tmp_path / "work")
    folder = tmp_path / "data" / "hippo"
    folder.mkdir(parents=True)
    ws.remember_source("hippo", folder)
    stored = json.loads(ws.source_path("hippo").read_text())
    assert stored == {"dataset_folder": str(folder.resolve()), "schema_version": SOURCE_VERSION}
    assert ws.resolve("hippo") == ("hippo", folder.resolve())


def test_version_0_still_loads(tmp_path):
    # what autoseg wrote before source.json had a version
    path = _write(tmp_path, {"dataset_folder": "/data/hippo"})
    assert SourceRecord.load(path) == SourceRecord("/data/hippo")


@pytest.mark.parametrize("version", [2, 0, "1", None], ids=["2", "0", "str", "none"])
def test_wrong_version(tmp_path, version):
    path = _write(tmp_path, {"dataset_folder": "/d", "schema_version": version})
    with pytest.raises(
        DatasetError,
        match=rf"^{re.escape(str(path))}: source record schema_version is {re.escape(repr(version))}, "
        rf"this autoseg reads 1; {re.escape(FIX)}$",
    ):
        SourceRecord.load(path)


def test_missing_version(tmp_path):
    # without a version only the exact version-0 form is accepted
    path = _write(tmp_path, {"folder": "/d"})
    with pytest.raises(
        DatasetError, match=rf"^{re.escape(str(path))}: source record schema_version is missing"
    ):
        SourceRecord.load(path)


def test_missing_key(tmp_path):
    path = _write(tmp_path, {"schema_version": 1})
    with pytest.raises(
        DatasetError,
        match=rf"^{re.escape(str(path))}: source record: missing key\(s\) \['dataset_folder'\]; "
        rf"{re.escape(FIX)}$",
    ):
        SourceRecord.load(path)


def test_extra_key(tmp_path):
    path = _write(tmp_path, {"schema_version": 1, "dataset_folder": "/d", "name": "x"})
    with pytest.raises(
        DatasetError, match=rf"^{re.escape(str(path))}: source record: unknown key\(s\) \['name'\]"
    ):
        SourceRecord.load(path)


def test_wrong_type(tmp_path):
    path = _write(tmp_path, {"schema_version": 1, "dataset_folder": 3})
    with pytest.raises(
        DatasetError, match=rf"^{re.escape(str(path))}: source record\.dataset_folder: expected str, found 3"
    ):
        SourceRecord.load(path)


def test_resolve_reports_a_broken_record(tmp_path):
    ws = Workspace(tmp_path / "work")
    ws.source_path("hippo").parent.mkdir(parents=True)
    ws.source_path("hippo").write_text("{not json")
    with pytest.raises(DatasetError, match=r"source\.json: invalid JSON"):
        ws.resolve("hippo")
