"""The ResEnc presets: the table, the pure sizing rules (reference scaled to the GPU, the patch
limit, the batch without the 5 % cap) on synthetic fingerprints, and what ``make_plan`` adds."""

from __future__ import annotations

import typing

import numpy as np
import pytest

from autoseg.command_options import PresetName
from autoseg.planning import make_plan, rules
from autoseg.planning.kinds import KINDS
from autoseg.planning.planner import plan_configuration
from autoseg.planning.presets import PRESETS
from autoseg.preprocessing.store import store_key
from tests.planning.test_planner import brats_like, large_ct, make_fp, small_iso

M, L = PRESETS["resenc_m"], PRESETS["resenc_l"]


def test_the_option_offers_exactly_the_table():
    assert set(typing.get_args(PresetName)) == set(PRESETS)


def test_the_references_are_nnunets():
    # nnU-Net v2 nnUNetPlannerResEnc{M,L,XL}: (3D, 2D) elements for the GPU size
    table = {n: (p.reference_3d, p.reference_2d, p.gpu_memory_gb) for n, p in PRESETS.items()}
    assert table == {
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
