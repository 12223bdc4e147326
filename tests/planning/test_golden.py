"""The golden plans in ``plans/``: re-planning from each stored fingerprint gives the stored plan.

``plans/regenerate.py`` writes them (8 GB budget); a planner change shows up here as a failing
test and then as a reviewed diff of those files. Fingerprint extraction is checked to reproduce
the stored fingerprints of the two datasets that ship with the repository, whatever the number
of worker processes.

For the record (not read by the tests, which must run without ``../shared``): nnU-Net v2.8.1's
own plan for all 200 hippocampus cases (``../shared/reference/nnunet_plans/hippocampus/
nnUNetPlans.json``) agrees with ``plans/hippocampus/plans.json`` on every value the two share:
transpose (0, 1, 2); median spacing 1x1x1 mm and median shape 36x50x35; 3d_fullres patch
40x56x40, batch 7, 4 stages, features 32/64/128/256, kernels 3x3x3 throughout, strides 1 then
2x2x2 three times, batch Dice off; 2d patch 56x40, batch 281, 4 stages, features 32..256, batch
Dice on; per-image z-score without the nonzero mask. Both batch sizes are the 5% coverage cap
(memory alone would allow 58 and more): 3d 0.05 * 36*50*35 * 200 / (40*56*40) = 7.03 -> 7, 2d
0.05 * 36*50*35 * 200 / (56*40) = 281.25 -> 281 (nnU-Net counts 3D median voxels for the 2d cap
too, as we do).
"""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest

from autoseg.fingerprint import extract_fingerprint
from autoseg.fingerprint.model import Fingerprint
from autoseg.io.dataset import load_dataset
from autoseg.io.samples import DATA_DIR, make_single_case_dataset, sample_dataset_dir
from autoseg.planning import Plan, make_plan

PLANS_DIR = Path(__file__).resolve().parents[2] / "plans"
GOLDEN = sorted(
    d for d in PLANS_DIR.iterdir() if (d / "fingerprint.json").is_file() and (d / "plans.json").is_file()
)
CT_DIR = DATA_DIR / "fixtures" / "ct_sample"


def _json(obj: object) -> object:
    """What ``obj`` looks like after a trip through a JSON file (tuples become lists)."""
    return json.loads(json.dumps(obj))


def _stored(name: str, file: str) -> dict:
    return json.loads((PLANS_DIR / name / file).read_text())


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    return jsonschema.Draft202012Validator(json.loads((PLANS_DIR / "plan.schema.json").read_text()))


def test_the_shipped_golden_plans_are_found():
    # guards against an empty parametrisation passing silently
    names = {d.name for d in GOLDEN}
    assert {"hippocampus_sample", "ct_sample"} <= names
    with_presets = {d.name for d in GOLDEN if (d / "plans_resenc.json").is_file()}
    assert {"hippocampus_sample", "ct_sample"} <= with_presets


@pytest.mark.parametrize("folder", GOLDEN, ids=[d.name for d in GOLDEN])
class TestGoldenPlan:
    def test_replanning_gives_the_stored_plan(self, folder):
        fp = Fingerprint.load(folder / "fingerprint.json")
        plan = make_plan(fp, gpu_memory_gb=8, add_2p5d=False)
        stored = json.loads((folder / "plans.json").read_text())
        assert plan.to_dict() == stored
        assert Plan.load(folder / "plans.json") == plan

    def test_stored_plan_validates(self, folder, validator):
        validator.validate(json.loads((folder / "plans.json").read_text()))

    def test_replanning_with_the_presets_gives_the_stored_preset_plan(self, folder, validator):
        """``plans_resenc.json``: ``--preset resenc_m resenc_l`` at each preset's own GPU."""
        fp = Fingerprint.load(folder / "fingerprint.json")
        plan = make_plan(fp, gpu_memory_gb=8, presets=("resenc_m", "resenc_l"))
        stored = json.loads((folder / "plans_resenc.json").read_text())
        validator.validate(stored)
        assert plan.to_dict() == stored
        # the presets only add configurations: the default ones are those of plans.json
        default = json.loads((folder / "plans.json").read_text())
        added = {k: v for k, v in stored["configurations"].items() if k not in default["configurations"]}
        kept = {k: stored["configurations"][k] for k in default["configurations"]}
        assert kept == default["configurations"]
        assert sorted(added) == ["3d_fullres_resenc_l", "3d_fullres_resenc_m"]
        assert stored["notes"][: len(default["notes"])] == default["notes"]
        base = default["configurations"]["3d_fullres"]
        for name, cfg in added.items():
            assert cfg["network"]["encoder"] == "residual"
            assert cfg["network"]["decoder_convs"] == 1
            assert cfg["network"]["blocks_per_stage"] == [1, 3, 4, 6, 6, 6, 6][: cfg["network"]["n_stages"]]
            assert cfg["gpu_memory_gb"] == {"3d_fullres_resenc_m": 8, "3d_fullres_resenc_l": 24}[name]
            # the preprocessed data is the base's: same spacing, median shape, resampling
            for key in ("spacing", "median_shape", "resampling", "kind", "batch_dice"):
                assert cfg[key] == base[key]
            # the larger references never give a smaller patch or batch than the default's
            assert all(p >= q for p, q in zip(cfg["patch_size"], base["patch_size"], strict=True))
            assert cfg["batch_size"] >= base["batch_size"]

    def test_stored_fingerprint_round_trips(self, folder):
        stored = json.loads((folder / "fingerprint.json").read_text())
        assert _json(Fingerprint.from_dict(stored).to_dict()) == stored


class TestExtractionReproducesTheStoredFingerprint:
    @pytest.fixture(scope="class")
    def hippocampus(self) -> Fingerprint:
        return extract_fingerprint(load_dataset(sample_dataset_dir()), workers=1)

    def test_hippocampus_sample(self, hippocampus):
        assert _json(hippocampus.to_dict()) == _stored("hippocampus_sample", "fingerprint.json")

    def test_hippocampus_sample_with_two_workers(self, hippocampus):
        two = extract_fingerprint(load_dataset(sample_dataset_dir()), workers=2)
        assert two == hippocampus

    def test_ct_sample(self, tmp_path):
        folder = make_single_case_dataset(
            CT_DIR / "example_ct_sm.nii.gz", CT_DIR / "example_seg.nii.gz", tmp_path / "ct_sample"
        )
        fp = extract_fingerprint(load_dataset(folder), workers=1)
        assert _json(fp.to_dict()) == _stored("ct_sample", "fingerprint.json")
        # and the plan from the fresh fingerprint is the golden one
        assert make_plan(fp, gpu_memory_gb=8).to_dict() == _stored("ct_sample", "plans.json")
