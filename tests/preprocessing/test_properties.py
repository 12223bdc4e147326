"""A preprocessed case's properties (``CASE.json``): a typed, versioned contract, loaded strictly."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import PreprocessedDataError
from autoseg.io.image import Geometry
from autoseg.io.samples import DATA_DIR
from autoseg.planning.plan import Plan
from autoseg.preprocessing import PreprocessedStore, preprocess_arrays
from autoseg.preprocessing.properties import PROPERTIES_VERSION, CaseProperties
from autoseg.preprocessing.store import plan_part

PLAN = DATA_DIR.parent / "plans" / "hippocampus_sample" / "plans.json"
GEOMETRY = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


@pytest.fixture
def stored(tmp_path: Path) -> tuple[PreprocessedStore, CaseProperties]:
    """One synthetic case preprocessed and stored; its in-memory properties."""
    plan = Plan.load(PLAN)
    rng = np.random.default_rng(0)
    data = np.zeros((1, 12, 14, 10), np.float32)
    data[:, 2:10, 3:12, 1:9] = rng.normal(size=(1, 8, 9, 8))
    seg = np.zeros(data.shape[1:], np.uint8)
    seg[4:7, 5:9, 3:6] = 1
    pre = preprocess_arrays(
        data, seg, (2.0, 1.0, 1.0), plan, plan.configuration("3d_fullres"), case_id="c0", geometry=GEOMETRY
    )
    store = PreprocessedStore(tmp_path / "store")
    store.save(pre)
    return store, pre.properties


def _rewrite(store: PreprocessedStore, change) -> Path:
    path = store.folder / "c0.json"
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))
    return path


def _fix(store: PreprocessedStore) -> str:
    return re.escape(f"; delete {store.folder} and preprocess again")


def test_stored_properties_load_equal(stored):
    store, props = stored
    assert props.schema_version == PROPERTIES_VERSION
    assert props.bbox == ((2, 10), (3, 12), (1, 9))
    assert props.shape_after_crop == (8, 9, 8)
    assert props.classes_present == (1,)
    assert props.geometry == GEOMETRY
    assert store.properties("c0") == props
    assert store.load("c0").properties == props
    assert CaseProperties.from_dict(json.loads(json.dumps(props.to_dict()))) == props


def test_without_geometry_round_trips():
    props = CaseProperties(
        "x", (1.0,) * 3, (4, 4, 4), ((0, 4),) * 3, (4, 4, 4), (1.0,) * 3, (4, 4, 4), 0, (), None
    )
    assert CaseProperties.from_dict(props.to_dict()) == props


@pytest.mark.parametrize("version", [2, 0, "1", None], ids=["2", "0", "str", "none"])
def test_wrong_version(stored, version):
    store, _ = stored
    path = _rewrite(store, lambda d: d.update(schema_version=version))
    with pytest.raises(
        PreprocessedDataError,
        match=rf"^{re.escape(str(path))}: case properties schema_version is {re.escape(repr(version))}, "
        rf"this autoseg reads 1{_fix(store)}",
    ):
        store.load("c0")


def test_missing_version(stored):
    store, _ = stored
    path = _rewrite(store, lambda d: d.pop("schema_version"))
    with pytest.raises(
        PreprocessedDataError, match=rf"^{re.escape(str(path))}: case properties schema_version is missing"
    ):
        store.properties("c0")


def test_missing_key(stored):
    store, _ = stored
    path = _rewrite(store, lambda d: d.pop("z_axis"))
    with pytest.raises(
        PreprocessedDataError,
        match=rf"^{re.escape(str(path))}: case properties: missing key\(s\) \['z_axis'\]{_fix(store)}",
    ):
        store.load("c0")


def test_extra_key(stored):
    store, _ = stored
    path = _rewrite(store, lambda d: d["geometry"].update(units="mm"))
    with pytest.raises(
        PreprocessedDataError,
        match=rf"^{re.escape(str(path))}: case properties\.geometry: unknown key\(s\) \['units'\]",
    ):
        store.load("c0")


def test_wrong_type(stored):
    store, _ = stored
    path = _rewrite(store, lambda d: d.update(bbox=[[2, 10], [3, 12]]) or d["bbox"].append([1, "9"]))
    with pytest.raises(
        PreprocessedDataError,
        match=rf"^{re.escape(str(path))}: case properties\.bbox\[2\]\[1\]: expected int, found '9'",
    ):
        store.load("c0")


def test_the_format_version_is_part_of_the_store_key():
    plan = Plan.load(PLAN)
    assert plan_part(plan, plan.configuration("3d_fullres"))["properties_version"] == PROPERTIES_VERSION
