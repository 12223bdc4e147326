"""Six real hippocampus cases preprocessed once per session for the data tests."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoseg.io.dataset import load_dataset
from autoseg.planning.plan import Configuration, Plan
from autoseg.preprocessing import PreprocessedStore, preprocess_dataset
from tests.golden import GOLDEN_PLAN

ROOT = Path(__file__).resolve().parents[2]
N_CASES = 6


@dataclasses.dataclass(frozen=True)
class Prepared:
    plan: Plan
    case_ids: list[str]
    stores: dict[str, PreprocessedStore]

    def config(self, name: str) -> Configuration:
        if name == "2.5d":
            return dataclasses.replace(self.plan.configuration("2d"), name="2.5d", kind="2.5d", in_slices=3)
        return self.plan.configuration(name)

    def store(self, name: str) -> PreprocessedStore:
        return self.stores["2d" if name == "2.5d" else name]


@pytest.fixture(scope="session")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Prepared:
    ds = load_dataset(ROOT / "data" / "hippocampus_sample")
    ds = dataclasses.replace(ds, cases=ds.cases[:N_CASES])
    plan = Plan.load(GOLDEN_PLAN)
    work = tmp_path_factory.mktemp("hippocampus_sample")
    stores = {
        name: preprocess_dataset(ds, plan, plan.configuration(name), work, workers=1)
        for name in ("3d_fullres", "2d")
    }
    return Prepared(plan, [c.case_id for c in ds.cases], stores)
