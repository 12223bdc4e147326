"""The ResEnc presets: the table, the pure sizing rules (reference scaled to the GPU, the patch
limit, the batch without the 5 % cap) on synthetic fingerprints, and what ``make_plan`` adds."""

from __future__ import annotations

import dataclasses
import json
import re
import typing
from pathlib import Path

import numpy as np
import pytest

from autoseg.command_options import PresetName
from autoseg.planning import Plan, make_plan, rules
from autoseg.planning.kinds import KINDS
from autoseg.planning.planner import plan_configuration
from autoseg.planning.presets import PRESETS
from autoseg.preprocessing.store import store_key
from tests.planning.test_planner import brats_like, large_ct, make_fp, small_iso

M, L, BASE_SIZED = PRESETS["resenc_m"], PRESETS["resenc_l"], PRESETS["resenc"]
PLANS_DIR = Path(__file__).resolve().parents[2] / "plans"


def test_the_option_offers_exactly_the_table():
    assert set(typing.get_args(PresetName)) == set(PRESETS)


def test_the_plan_schema_names_every_preset_configuration():
    schema = json.loads((PLANS_DIR / "plan.schema.json").read_text())
    pattern = schema["properties"]["configurations"]["propertyNames"]["pattern"]
    for preset in PRESETS.values():
        for base in ("3d_fullres", "2d"):
            assert re.fullmatch(pattern, preset.configuration_name(base))
    assert not re.fullmatch(pattern, "3d_fullres_resenc_s")


def test_the_references_are_nnunets():
    # nnU-Net v2 nnUNetPlannerResEnc{M,L,XL}: (3D, 2D) elements for the GPU size
    table = {n: (p.reference_3d, p.reference_2d, p.gpu_memory_gb) for n, p in PRESETS.items()}
    assert table == {
        "resenc": (680e6, 135e6, 8.0),  # ResEnc M's reference, for the memory check
        "resenc_m": (680e6, 135e6, 8.0),
        "resenc_l": (2.1e9, 380e6, 24.0),
        "resenc_xl": (3.6e9, 560e6, 40.0),
    }
    assert M.reference(KINDS["3d"]) == (680e6, 2)
    assert M.reference(KINDS["2d"]) == (135e6, 12)
    assert L.blocks_per_stage(7) == (1, 3, 4, 6, 6, 6, 6)


class TestMemoryBudget:
    def test_scales_linearly_with_the_gpu(self):
        at = {
            gb: rules.memory_budget((2.1e9, 2), reference_gb=24, gpu_memory_gb=gb, patch_batch=2)
            for gb in (12, 24, 48)
        }
        assert at[24].patch_limit == pytest.approx(2.1e9)
        assert at[12].patch_limit == pytest.approx(1.05e9)
        assert at[48].batch_budget == pytest.approx(2 * at[24].batch_budget)

    def test_patch_limit_for_the_reference_batch_vs_a_batch_of_two(self):
        # 2D: the default sizes the patch for a batch of 2 (limit 85e6 * 12 / 2), ResEnc for the
        # reference batch of 12 (limit = the reference itself)
        default = rules.memory_budget((85e6, 12), reference_gb=8, gpu_memory_gb=8, patch_batch=2)
        resenc = rules.memory_budget((135e6, 12), reference_gb=8, gpu_memory_gb=8, patch_batch=12)
        assert default.patch_limit == pytest.approx(510e6)
        assert resenc.patch_limit == pytest.approx(135e6)
        assert resenc.batch_budget == pytest.approx(135e6 * 12)


def _plan(fp, preset, *, kind="3d", gpu=None):
    plan = make_plan(fp)
    base = plan.configuration("3d_fullres" if kind == "3d" else "2d")
    n_classes = plan.num_classes
    return base, plan_configuration(
        f"x_{preset.name}",
        kind,
        base.spacing,
        base.median_shape,
        n_cases=len(fp.cases),
        n_classes=n_classes,
        gpu_memory_gb=preset.gpu_memory_gb if gpu is None else gpu,
        preset=preset,
    )


class TestPresetConfiguration:
    @pytest.mark.parametrize(
        "fp", [large_ct, brats_like, small_iso], ids=["large-ct", "brats-like", "small-iso"]
    )
    @pytest.mark.parametrize("preset", [M, L], ids=["M", "L"])
    def test_fits_the_reference_and_sizes_the_batch_by_memory(self, fp, preset):
        fp = fp()
        _, cfg = _plan(fp, preset)
        reference = preset.reference_3d
        assert cfg.estimated_feature_elements <= reference
        topo = rules.Topology(cfg.patch_size, cfg.network.kernel_sizes, cfg.network.strides)
        blocks = cfg.network.blocks_per_stage
        assert blocks == preset.blocks_per_stage(cfg.network.n_stages)
        assert cfg.estimated_feature_elements == rules.residual_feature_map_elements(
            topo, cfg.network.features_per_stage, blocks, n_classes=make_plan(fp).num_classes
        )
        by_memory = round(reference * 2 / cfg.estimated_feature_elements)
        by_dataset = round(np.prod(cfg.median_shape) * len(fp.cases) / np.prod(cfg.patch_size))
        assert cfg.batch_size == max(2, min(by_memory, by_dataset))
        assert cfg.gpu_memory_gb == preset.gpu_memory_gb
        assert (cfg.network.encoder, cfg.network.decoder_convs) == ("residual", 1)

    def test_small_dataset_batch_is_not_capped_at_5_percent(self):
        # small-iso: 10 cases of 40x50x40, patch 40x56x40. The default batch is the floor 2
        # (5 %: 0.05 * 800000 / 89600 = 0.45); ResEnc M may cover the whole dataset once:
        # 800000 / 89600 = 8.9 -> 9 (memory alone would allow round(680e6 * 2 / 2.36e7) = 58)
        base, cfg = _plan(small_iso(), M)
        assert base.patch_size == cfg.patch_size == (40, 56, 40)
        assert base.batch_size == 2
        assert cfg.batch_size == 9

    def test_large_images_get_larger_patches_with_l_than_with_m(self):
        _, m = _plan(large_ct(), M)
        _, l_ = _plan(large_ct(), L)
        assert np.prod(l_.patch_size) > 2 * np.prod(m.patch_size)
        assert all(a >= b for a, b in zip(l_.patch_size, m.patch_size, strict=True))

    def test_less_gpu_memory_shrinks_the_patch(self):
        _, full = _plan(large_ct(), L)
        _, half = _plan(large_ct(), L, gpu=12)
        assert np.prod(half.patch_size) < np.prod(full.patch_size)
        assert half.estimated_feature_elements <= L.reference_3d / 2
        assert half.gpu_memory_gb == 12

    def test_2d_patch_fits_the_reference_itself(self):
        # 1024x1024 slices: the default 2d keeps the whole slice (plain estimate < 510e6), the
        # ResEnc M 2d patch must shrink until one sample fits 135e6
        fp = make_fp((1, 1024, 1024), (1.0, 0.5, 0.5), 10, channels=("MRI",))
        base, cfg = _plan(fp, M, kind="2d")
        assert base.patch_size == (1024, 1024)
        assert base.estimated_feature_elements > 135e6
        assert cfg.estimated_feature_elements <= 135e6
        assert np.prod(cfg.patch_size) < np.prod(base.patch_size)


class TestMakePlan:
    def test_adds_one_configuration_per_preset_and_keeps_the_rest(self):
        fp = brats_like()
        default = make_plan(fp)
        plan = make_plan(fp, presets=("resenc_l", "resenc_m", "resenc_l"))  # repeated: once
        assert list(plan.configurations) == [
            *default.configurations,
            "3d_fullres_resenc_l",
            "3d_fullres_resenc_m",
        ]
        for name, cfg in default.configurations.items():
            assert plan.configuration(name) == cfg
        assert plan.notes[: len(default.notes)] == default.notes
        assert any(n.startswith("3d_fullres_resenc_l: preset ResEnc L") and "24 GB" in n for n in plan.notes)

    def test_preset_shares_the_preprocessed_store_of_its_base(self):
        plan = make_plan(brats_like(), presets=("resenc_m",))
        key = store_key(plan, plan.configuration("3d_fullres"))
        assert store_key(plan, plan.configuration("3d_fullres_resenc_m")) == key
        assert store_key(plan, plan.configuration("2d")) != key

    def test_given_gpu_memory_overrides_the_presets_own(self):
        plan = make_plan(brats_like(), presets=("resenc_l",), preset_gpu_memory_gb=8)
        own = make_plan(brats_like(), presets=("resenc_l",))
        assert plan.configuration("3d_fullres_resenc_l").gpu_memory_gb == 8
        assert own.configuration("3d_fullres_resenc_l").gpu_memory_gb == 24
        small, large = plan.configuration("3d_fullres_resenc_l"), own.configuration("3d_fullres_resenc_l")
        assert np.prod(small.patch_size) < np.prod(large.patch_size)

    def test_2d_data_gets_a_2d_preset(self):
        fp = make_fp((1, 256, 256), (1.0, 0.5, 0.5), 10, channels=("MRI",))
        plan = make_plan(fp, presets=("resenc_m",))
        assert list(plan.configurations) == ["2d", "2d_resenc_m"]
        assert plan.configuration("2d_resenc_m").kind == "2d"

    def test_hash_differs_from_the_base(self):
        plan = make_plan(small_iso(), presets=("resenc_m", "resenc_l"))
        hashes = {plan.configuration_hash(n) for n in ("3d_fullres", "3d_fullres_resenc_m")}
        assert len(hashes) == 2
        # M and L plan the same network on this small data: same weights fit both
        m, l_ = (plan.configuration_hash(f"3d_fullres_resenc_{s}") for s in ("m", "l"))
        assert m == l_


class TestBaseSized:
    """``resenc``: ResEnc M's network at the base's patch and batch, planned for 3D data by
    default (what the budget curve measured against the plain U-Net)."""

    def test_is_the_only_preset_planned_by_default(self):
        assert [n for n, p in PRESETS.items() if p.planned_by_default] == ["resenc"]
        assert BASE_SIZED.blocks == M.blocks
        assert BASE_SIZED.decoder_convs == M.decoder_convs

    @pytest.mark.parametrize("name", ["hippocampus", "hippocampus_sample", "ct_sample", "brats2015_sample"])
    def test_golden_plans_hold_the_network_the_curve_measured(self, name):
        # the budget curve's "ResEnc M" runs: the resenc_m configuration's network, trained at
        # 3d_fullres's batch (bench_budget passes --batch-size) and patch
        plan = Plan.load(PLANS_DIR / name / "plans_resenc.json")
        base, cfg = plan.configuration("3d_fullres"), plan.configuration("3d_fullres_resenc")
        assert (cfg.patch_size, cfg.batch_size, cfg.spacing) == (
            base.patch_size,
            base.batch_size,
            base.spacing,
        )
        expected = dataclasses.replace(
            base.network,
            encoder="residual",
            blocks_per_stage=M.blocks_per_stage(base.network.n_stages),
            decoder_convs=1,
        )
        assert cfg.network == expected
        if name == "hippocampus":  # there ResEnc M plans the same patch and topology
            assert cfg.network == plan.configuration("3d_fullres_resenc_m").network
            assert (cfg.batch_size, plan.configuration("3d_fullres_resenc_m").batch_size) == (7, 58)
        assert cfg.gpu_memory_gb is None  # the plan's budget, like its base

    @pytest.mark.parametrize(
        "fp", [large_ct, brats_like, small_iso], ids=["large-ct (cascade)", "brats-like", "small-iso"]
    )
    def test_every_3d_plan_gets_it_and_keeps_the_rest(self, fp):
        plan = make_plan(fp())
        base, cfg = plan.configuration("3d_fullres"), plan.configuration("3d_fullres_resenc")
        assert list(plan.configurations)[-1] == "3d_fullres_resenc"
        unchanged = {
            "name",
            "network",
            "batch_size",
            "estimated_feature_elements",
            "previous_stage",
            "next_stage",
        }
        for field in dataclasses.fields(base):
            if field.name not in unchanged:
                assert getattr(cfg, field.name) == getattr(base, field.name), field.name
        assert (cfg.previous_stage, cfg.next_stage) == (None, None)
        assert cfg.batch_size <= base.batch_size
        topo = rules.Topology(cfg.patch_size, cfg.network.kernel_sizes, cfg.network.strides)
        assert cfg.estimated_feature_elements == rules.residual_feature_map_elements(
            topo, cfg.network.features_per_stage, cfg.network.blocks_per_stage, n_classes=plan.num_classes
        )
        assert store_key(plan, cfg) == store_key(plan, base)
        assert plan.configuration_hash("3d_fullres_resenc") != plan.configuration_hash("3d_fullres")
        assert sum(n.startswith("3d_fullres_resenc: preset ResEnc base-sized") for n in plan.notes) == 1

    def test_batch_shrinks_where_the_residual_network_holds_fewer(self):
        # 3000 cases of 16x64x64: the batch is memory-bound (coverage would allow far more).
        # Plain: round(1.12e9 / 1.43e7) = 78; residual: round(1.36e9 / 1.80e7) = 75
        plan = make_plan(make_fp((16, 64, 64), (1.0, 1.0, 1.0), 3000))
        base, cfg = plan.configuration("3d_fullres"), plan.configuration("3d_fullres_resenc")
        assert base.batch_size == round(1.12e9 / base.estimated_feature_elements) == 78
        assert cfg.batch_size == round(1.36e9 / cfg.estimated_feature_elements) == 75
        assert any("batch 75, not 78: the residual network holds fewer" in n for n in plan.notes)

    def test_follows_the_plans_budget_not_the_presets_gpu(self):
        fp = make_fp((16, 64, 64), (1.0, 1.0, 1.0), 3000)
        small, large = make_plan(fp, gpu_memory_gb=4), make_plan(fp, gpu_memory_gb=16)
        for plan in (small, large):
            assert (
                plan.configuration("3d_fullres_resenc").patch_size
                == plan.configuration("3d_fullres").patch_size
            )
        assert (
            small.configuration("3d_fullres_resenc").batch_size
            < large.configuration("3d_fullres_resenc").batch_size
        )
        # --gpu-memory is the presets' budget for the memory-sized ones only
        given = make_plan(fp, gpu_memory_gb=16, presets=("resenc_l",), preset_gpu_memory_gb=16)
        assert given.configuration("3d_fullres_resenc") == large.configuration("3d_fullres_resenc")

    def test_a_base_at_its_memory_limit_says_the_residual_network_is_over(self):
        # brats-like: the plain patch fills its 560e6 reference; the residual estimate of the
        # same patch against ResEnc M's 680e6 is reported in the note when it is over
        plan = make_plan(brats_like())
        cfg = plan.configuration("3d_fullres_resenc")
        over = cfg.estimated_feature_elements > 680e6
        assert any("above the memory reference" in n for n in plan.notes) == over

    def test_2d_data_gets_it_only_when_asked(self):
        fp = make_fp((1, 256, 256), (1.0, 0.5, 0.5), 10, channels=("MRI",))
        assert list(make_plan(fp).configurations) == ["2d"]
        plan = make_plan(fp, presets=("resenc",))
        assert list(plan.configurations) == ["2d", "2d_resenc"]
        assert plan.configuration("2d_resenc").patch_size == plan.configuration("2d").patch_size

    def test_asking_for_it_adds_nothing_twice(self):
        fp = small_iso()
        assert make_plan(fp, presets=("resenc", "resenc_m")) == make_plan(fp, presets=("resenc_m",))
