"""Preprocessing on real sample cases: what is stored, that a second run skips finished cases,
that a changed plan gets a new store, and that an interrupted case is redone."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from autoseg.io.dataset import load_dataset
from autoseg.io.samples import DATA_DIR, copy_sample_subset
from autoseg.planning.plan import Plan, Resampling
from autoseg.preprocessing import PreprocessedStore, preprocess_dataset, store_key

PLAN = DATA_DIR.parent / "plans" / "hippocampus_sample" / "plans.json"


@pytest.fixture
def dataset(tmp_path: Path) -> Path:
    return copy_sample_subset(tmp_path / "hippo", 3)


def test_store_contents(dataset: Path, tmp_path: Path) -> None:
    ds, plan = load_dataset(dataset), Plan.load(PLAN)
    store = preprocess_dataset(ds, plan, plan.configuration("3d_fullres"), tmp_path / "w", workers=1)
    case = store.load(ds.cases[0].case_id)
    assert case.data.dtype == np.float32
    assert case.data.ndim == 4
    assert isinstance(case.data, np.memmap)
    assert case.seg.shape == case.data.shape[1:]
    assert set(np.unique(case.seg)) <= {0, 1, 2}
    assert abs(float(case.data.mean())) < 0.2  # z-scored
    locs = case.locations
    assert locs.shape[1] == 4
    assert (case.seg[tuple(locs[:, 1:].T)] == locs[:, 0]).all()  # each location has its class
    assert case.properties.classes_present == (1, 2)
    part = json.loads((store.folder / "plan_part.json").read_text())
    assert part["spacing"] == [1.0, 1.0, 1.0]


def test_second_run_skips_and_changed_plan_rebuilds(
    dataset: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    ds, plan = load_dataset(dataset), Plan.load(PLAN)
    cfg = plan.configuration("3d_fullres")
    first = preprocess_dataset(ds, plan, cfg, tmp_path / "w", workers=1)
    stamps = {p.name: p.stat().st_mtime_ns for p in first.folder.iterdir()}
    with caplog.at_level("INFO", logger="autoseg"):
        again = preprocess_dataset(ds, plan, cfg, tmp_path / "w", workers=1)
    assert again.folder == first.folder
    assert {p.name: p.stat().st_mtime_ns for p in again.folder.iterdir()} == stamps
    assert "up to date" in caplog.text

    # the 2d configuration keeps slice spacing: it differs in the plan part, so a new store
    assert store_key(plan, plan.configuration("2d")) != store_key(plan, cfg)
    coarser = dataclasses.replace(cfg, spacing=(1.5, 1.5, 1.5))
    other = preprocess_dataset(ds, plan, coarser, tmp_path / "w", workers=1)
    assert other.folder != first.folder
    cid = ds.cases[0].case_id
    assert other.load(cid).data.shape[1] < first.load(cid).data.shape[1]
    orders = dataclasses.replace(cfg, resampling=Resampling(data_order=1))
    assert store_key(plan, orders) != store_key(plan, cfg)


def test_incomplete_case_is_redone(dataset: Path, tmp_path: Path) -> None:
    ds, plan = load_dataset(dataset), Plan.load(PLAN)
    cfg = plan.configuration("3d_fullres")
    store = preprocess_dataset(ds, plan, cfg, tmp_path / "w", workers=1)
    cid = ds.cases[1].case_id
    (store.folder / f"{cid}.json").unlink()  # as if killed before the properties were written
    assert not store.is_done(cid)
    again = preprocess_dataset(ds, plan, cfg, tmp_path / "w", workers=2)
    assert again.is_done(cid)
    assert PreprocessedStore(again.folder).load(cid).seg is not None
