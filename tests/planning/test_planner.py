"""The planner (``make_plan``) on synthetic fingerprints, and the plan's strict loading.

Fingerprints are built directly (no images), so every input is visible in the test. Expected
values are derived in the comments from the rules (see ``test_rules.py`` for the rules alone).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import json
import math
import re
from pathlib import Path

import jsonschema
import pytest

from autoseg.errors import PlanError
from autoseg.fingerprint.model import CaseFingerprint, Fingerprint, IntensityStats
from autoseg.planning import Plan, make_plan
from autoseg.planning.planner import plan_configuration
from tests.golden import GOLDEN_PLAN, golden_without_default_presets

SCHEMA_PATH = Path(__file__).resolve().parents[2] / "plans" / "plan.schema.json"

STATS = IntensityStats(
    mean=50.0,
    std=20.0,
    median=48.0,
    min=-1000.0,
    max=2000.0,
    percentile_00_5=-100.0,
    percentile_99_5=300.0,
    n_samples=1000,
)

#: The configurations of a plan with a cascade (``3d_fullres_resenc`` is planned by default).
WITH_CASCADE = {"3d_fullres", "3d_lowres", "3d_cascade_fullres", "2d", "3d_fullres_resenc"}


def make_fp(
    shape: tuple[int, int, int],
    spacing: tuple[float, float, float],
    n: int,
    *,
    channels: tuple[str, ...] = ("CT",),
    n_labels: int = 2,
    relative_size: float = 1.0,
    spacings: list[tuple[float, float, float]] | None = None,
    name: str = "synthetic",
) -> Fingerprint:
    """``n`` cases of one shape (uncropped) at one spacing, or at ``spacings`` one per case."""
    spacings = spacings or [spacing] * n
    cases = tuple(
        CaseFingerprint(
            case_id=f"case_{i:03d}",
            spacing=tuple(sp),
            shape=shape,
            shape_after_crop=shape,
            bbox=tuple((0, s) for s in shape),
            label_voxels=(1000,) * n_labels,
        )
        for i, sp in enumerate(spacings)
    )
    labels = {"background": 0, **{f"label_{v}": v for v in range(1, n_labels)}}
    return Fingerprint(
        dataset_name=name,
        channel_names=channels,
        labels=labels,
        cases=cases,
        foreground_intensity=(STATS,) * len(channels),
        median_relative_size_after_crop=relative_size,
    )


def large_ct() -> Fingerprint:
    return make_fp((400, 512, 512), (0.8, 0.7, 0.7), 20)


def thick_mr(thick_axis: int = 0) -> Fingerprint:
    shape, spacing = [320, 320], [0.6, 0.6]
    shape.insert(thick_axis, 24)
    spacing.insert(thick_axis, 5.0)
    return make_fp(tuple(shape), tuple(spacing), 20, channels=("T2",))


def small_iso() -> Fingerprint:
    return make_fp((40, 50, 40), (1.0, 1.0, 1.0), 10, channels=("MRI",), n_labels=3)


def brats_like() -> Fingerprint:
    return make_fp((155, 240, 240), (1.0, 1.0, 1.0), 6, channels=("T1", "T2"), n_labels=4, relative_size=0.6)


def medium_ct() -> Fingerprint:
    return make_fp((100, 300, 300), (3.0, 0.8, 0.8), 3)


FINGERPRINTS = {
    "large-ct": large_ct,
    "thick-mr": thick_mr,
    "small-iso": small_iso,
    "brats-like": brats_like,
    "medium-ct": medium_ct,
}


@pytest.fixture(scope="module")
def validator() -> jsonschema.Draft202012Validator:
    schema = json.loads(SCHEMA_PATH.read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _parent(d: dict, path: tuple) -> dict:
    """The container holding the last key of ``path`` inside nested dicts/lists ``d``."""
    for key in path[:-1]:
        d = d[key]
    return d


class TestLargeCT:
    """20 cases of 400x512x512 at 0.8x0.7x0.7 mm: the patch covers little -> cascade."""

    @pytest.fixture(scope="class")
    def plan(self) -> Plan:
        return make_plan(large_ct(), gpu_memory_gb=8)

    def test_fullres_is_the_median(self, plan):
        # all cases alike: median spacing, 0.8 / 0.7 < 3 so no anisotropy rule; axis 0 is the
        # coarsest already, so no transpose
        full = plan.configuration("3d_fullres")
        assert plan.transpose_forward == (0, 1, 2)
        assert full.spacing == (0.8, 0.7, 0.7)
        assert full.median_shape == (400, 512, 512)
        # within the budget: the batch of 2 fits 560e6 elements at 8 GB
        assert full.estimated_feature_elements <= 560e6
        assert math.prod(full.patch_size) / math.prod(full.median_shape) < 0.25

    def test_configurations_and_links(self, plan):
        assert set(plan.configurations) == WITH_CASCADE
        full, low, casc = (plan.configuration(n) for n in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
        assert (low.previous_stage, low.next_stage) == (None, "3d_cascade_fullres")
        assert (casc.previous_stage, casc.next_stage) == ("3d_lowres", None)
        assert (full.previous_stage, full.next_stage) == (None, None)
        # the cascade's full-resolution stage is 3d_fullres under another name
        assert casc.name == "3d_cascade_fullres"
        for field in ("spacing", "median_shape", "patch_size", "batch_size", "network"):
            assert getattr(casc, field) == getattr(full, field)
        # nnU-Net: batch Dice for fullres when a lowres exists, not for lowres, always for 2d
        assert (full.batch_dice, casc.batch_dice, low.batch_dice) == (True, True, False)
        assert plan.configuration("2d").batch_dice is True
        assert any("3d_lowres + cascade" in n for n in plan.notes)

    def test_lowres_is_coarser_and_covers_a_quarter(self, plan):
        full, low = plan.configuration("3d_fullres"), plan.configuration("3d_lowres")
        assert all(lo > fu for lo, fu in zip(low.spacing, full.spacing, strict=True))
        # no axis is < half the coarsest (0.4 mm), so all axes grow together by 1.03 a step:
        # the same whole number of steps on every axis
        steps = [math.log(lo / fu) / math.log(1.03) for lo, fu in zip(low.spacing, full.spacing, strict=True)]
        assert steps[0] == pytest.approx(round(steps[0]), abs=1e-6)
        assert steps == pytest.approx([steps[0]] * 3)
        # the median shape at that spacing: round(shape * 0.8 / spacing) etc.
        expected_shape = tuple(
            round(s * sp / lo)
            for s, sp, lo in zip((400, 512, 512), (0.8, 0.7, 0.7), low.spacing, strict=True)
        )
        assert low.median_shape == expected_shape
        assert math.prod(low.patch_size) / math.prod(low.median_shape) >= 0.25
        assert math.prod(full.median_shape) / math.prod(low.median_shape) >= 2

    def test_2d(self, plan):
        # 2048^2 clipped to 512x512; 512 -> 8 in 6 poolings (the 7-stage cap), features
        # 32..512. Elements: sizes 262144, 65536, 16384, 4096, 1024, 256, 64;
        # encoder 2 * 16416768 = 32833536; decoder 3 * 16384000 + 2 * 349440 = 49850880;
        # total 82684416 -> memory batch round(85e6 * 12 / 82684416) = round(12.3) = 12;
        # coverage round(0.05 * 400 * 20) = 400.
        two = plan.configuration("2d")
        assert two.patch_size == (512, 512)
        assert two.estimated_feature_elements == 82_684_416
        assert two.batch_size == 12

    def test_ct_normalization(self, plan):
        # clip to the foreground 0.5 / 99.5 percentiles, dataset mean and std
        (norm,) = plan.normalization
        assert norm.scheme == "ct"
        assert norm.use_nonzero_mask is False
        assert norm.clip == (STATS.percentile_00_5, STATS.percentile_99_5)
        assert (norm.mean, norm.std) == (STATS.mean, STATS.std)


class TestThickSliceMR:
    """20 cases of 24x320x320 at 5x0.6x0.6 mm, thick axis stored at each position."""

    @pytest.mark.parametrize(
        ("thick_axis", "forward", "backward"),
        [(0, (0, 1, 2), (0, 1, 2)), (1, (1, 0, 2), (1, 0, 2)), (2, (2, 0, 1), (1, 2, 0))],
        ids=["thick-first", "thick-middle", "thick-last"],
    )
    def test_thick_axis_goes_first(self, thick_axis, forward, backward):
        plan = make_plan(thick_mr(thick_axis), gpu_memory_gb=8)
        assert (plan.transpose_forward, plan.transpose_backward) == (forward, backward)
        assert plan.original_median_spacing == (5.0, 0.6, 0.6)
        assert plan.original_median_shape == (24, 320, 320)
        for cfg in plan.configurations.values():
            assert cfg.spacing == (5.0, 0.6, 0.6)
            assert cfg.median_shape == (24, 320, 320)

    @pytest.fixture(scope="class")
    def plan(self) -> Plan:
        return make_plan(thick_mr(2), gpu_memory_gb=8)

    def test_2p5d_offered(self, plan):
        # 5 / 0.6 = 8.3 >= 3: thick. K: 15 mm / 5 mm = 3 slices.
        cfg = plan.configuration("2.5d")
        assert cfg.kind == "2.5d"
        assert cfg.in_slices == 3
        assert cfg.in_slices % 2 == 1
        assert 3 <= cfg.in_slices <= 7
        assert len(cfg.patch_size) == 2
        # planned like 2d on the in-plane axes: 320x320 (2048^2 clipped; 320 = 5 * 2^6)
        two = plan.configuration("2d")
        assert cfg.patch_size == two.patch_size == (320, 320)
        assert cfg.network == two.network
        # coverage cap: 5% of 20 cases x 24 slices of 320x320 = 24 patches of 320x320
        # (memory alone would allow round(85e6 * 12 / 32298600) = 32)
        assert cfg.batch_size == two.batch_size == 24
        assert any("2.5d offered with K=3" in n for n in plan.notes)

    def test_3d_kernels_in_plane_first(self, plan):
        # 5 mm vs 0.6 mm: the slice axis comes within 2x of the in-plane spacing after 3 in-plane
        # poolings (0.6 -> 1.2 -> 2.4 -> 4.8; 5 / 2.4 = 2.08 is not < 2, 5 / 4.8 is).
        net = plan.configuration("3d_fullres").network
        assert net.kernel_sizes[:4] == ((1, 3, 3), (1, 3, 3), (1, 3, 3), (3, 3, 3))
        assert net.strides[:4] == ((1, 1, 1), (1, 2, 2), (1, 2, 2), (1, 2, 2))

    def test_no_lowres_for_a_patch_covering_most_of_the_image(self, plan):
        assert "3d_lowres" not in plan.configurations
        full = plan.configuration("3d_fullres")
        assert math.prod(full.patch_size) / math.prod(full.median_shape) >= 0.25

    def test_10th_percentile_slice_spacing(self):
        # 11 cases: thick spacings 4.0, 4.5 and 9 x 5.0 -> median 5.0 (anisotropic and short),
        # 10th percentile at position 1 of the sorted list = 4.5. Median shape at 4.5 mm:
        # 24 * 5 / 4.5 = 26.7 -> 27 (nine cases), 24 * 4 / 4.5 = 21.3 -> 21, 24 -> median 27.
        spacings = [(4.0, 0.6, 0.6), (4.5, 0.6, 0.6)] + [(5.0, 0.6, 0.6)] * 9
        plan = make_plan(make_fp((24, 320, 320), (5.0, 0.6, 0.6), 11, channels=("T2",), spacings=spacings))
        full = plan.configuration("3d_fullres")
        assert full.spacing == (4.5, 0.6, 0.6)
        assert full.median_shape == (27, 320, 320)
        assert plan.original_median_spacing == (5.0, 0.6, 0.6)
        # K at 4.5 mm: 15 / 4.5 = 3.3 -> 3
        assert plan.configuration("2.5d").in_slices == 3


class TestIsotropicSmall:
    def test_no_2p5d_by_default(self):
        plan = make_plan(small_iso())
        assert set(plan.configurations) == {"3d_fullres", "2d", "3d_fullres_resenc"}
        assert any(n.startswith("no 2.5d") for n in plan.notes)
        # 40, 50, 40 at 1 mm: 3 poolings, divisor 8 -> 40, 56, 40, the whole image: no lowres
        full = plan.configuration("3d_fullres")
        assert full.patch_size == (40, 56, 40)
        assert full.batch_dice is False
        assert any(n.startswith("no 3d_lowres") for n in plan.notes)

    def test_2p5d_when_asked(self):
        plan = make_plan(small_iso(), add_2p5d=True)
        cfg = plan.configuration("2.5d")
        # K at 1 mm: 15 slices, capped at 7
        assert cfg.in_slices == 7
        assert cfg.patch_size == plan.configuration("2d").patch_size
        assert any("asked for with --add-2.5d" in n for n in plan.notes)

    def test_add_2p5d_changes_nothing_else(self):
        without = make_plan(small_iso())
        with_ = make_plan(small_iso(), add_2p5d=True)
        for name, cfg in without.configurations.items():
            assert with_.configurations[name] == cfg


class TestNormalization:
    def test_per_channel_and_mask_rule(self):
        # relative size after crop 0.6 < 0.75: z-score channels use the nonzero mask, CT does not
        fp = make_fp((40, 50, 40), (1.0, 1.0, 1.0), 4, channels=("CT", "T2", "noNorm"), relative_size=0.6)
        ct, t2, raw = make_plan(fp).normalization
        assert (ct.scheme, ct.use_nonzero_mask, ct.clip) == ("ct", False, (-100.0, 300.0))
        assert (t2.scheme, t2.use_nonzero_mask, t2.clip, t2.mean) == ("zscore", True, None, None)
        assert (raw.scheme, raw.use_nonzero_mask) == ("none", False)

    def test_ct_std_is_kept_positive(self):
        fp = make_fp((40, 50, 40), (1.0, 1.0, 1.0), 4)
        flat = IntensityStats(5.0, 0.0, 5.0, 5.0, 5.0, 5.0, 5.0, 100)
        fp = Fingerprint(fp.dataset_name, fp.channel_names, fp.labels, fp.cases, (flat,), 1.0)
        (norm,) = make_plan(fp).normalization
        assert norm.std == 1e-8


class TestShrinkStep:
    def test_patch_shrinks_without_skipping_valid_sizes(self):
        # 2D, 1 mm, median 240x256: 2048^2 clipped to 240x256, padded to 256x256, which pools
        # 6 times (divisor 64, 7 stages): estimate (2 classes) 20671104 elements:
        #   sizes 65536, 16384, 4096, 1024, 256, 64, 16; features 32, 64, 128, 256, 512x3
        #   encoder 2 * 4104192 = 8208384; decoder 3 * 4096000 + 2 * 87360 = 12462720.
        # The per-sample budget at 0.3 GB is 85e6 * 0.3 / 8 * 12 / 2 = 19.125e6: too small.
        # Axis 0 (256/240 > 256/256) shrinks. 256 - 64 = 192 pools only 5 times (divisor 32), so
        # the step is 32: 224x256, 6 stages, estimate 17986752 (fits):
        #   sizes 57344, 14336, 3584, 896, 224, 56; encoder 2 * 3584000 = 7168000;
        #   decoder 3 * 3555328 + 2 * 76384 = 10818752.
        # Stepping by the larger patch's divisor (64) would skip 224 and give 192.
        cfg = plan_configuration(
            "2d", "2d", (1.0, 1.0, 1.0), (10, 240, 256), n_cases=100, n_classes=2, gpu_memory_gb=0.3
        )
        assert cfg.patch_size == (224, 256)
        assert cfg.network.n_stages == 6
        assert cfg.estimated_feature_elements == 17_986_752
        # batch: round(85e6 * 0.3 / 8 * 12 / 17986752) = round(2.13) = 2
        assert cfg.batch_size == 2


class TestGpuMemory:
    @pytest.mark.parametrize("name", list(FINGERPRINTS), ids=list(FINGERPRINTS))
    def test_more_memory_never_gives_a_smaller_patch_or_batch(self, name):
        fp = FINGERPRINTS[name]()
        plans = [make_plan(fp, gpu_memory_gb=g) for g in (4, 8, 16, 32, 80)]
        grew = False
        for small, large in itertools.pairwise(plans):
            for cname, cfg in small.configurations.items():
                if cname not in large.configurations:
                    continue
                big = large.configurations[cname]
                assert all(b >= s for s, b in zip(cfg.patch_size, big.patch_size, strict=True)), (
                    cname,
                    small.gpu_memory_gb,
                    cfg.patch_size,
                    big.patch_size,
                )
                assert big.batch_size >= cfg.batch_size, (cname, cfg.batch_size, big.batch_size)
                grew |= big.patch_size != cfg.patch_size or big.batch_size != cfg.batch_size
        if name != "small-iso":  # the small images fit whole even at 4 GB
            assert grew

    def test_budget_is_recorded(self):
        assert make_plan(small_iso(), gpu_memory_gb=11).gpu_memory_gb == 11.0


def _all_plans() -> list[Plan]:
    out = []
    for factory in FINGERPRINTS.values():
        for gpu in (4, 8, 24):
            for add in (False, True):
                out.append(make_plan(factory(), gpu_memory_gb=gpu, add_2p5d=add))
    return out


class TestSchemaAndRoundTrip:
    @pytest.fixture(scope="class")
    def plans(self) -> list[Plan]:
        return _all_plans()

    def test_every_plan_validates(self, plans, validator):
        for plan in plans:
            validator.validate(plan.to_dict())

    def test_the_schema_rejects_a_wrong_plan(self, plans, validator):
        # the validator is live: the same dicts with one wrong value fail
        d = plans[0].to_dict()
        bad = copy.deepcopy(d)
        bad["configurations"]["3d_fullres"]["kind"] = "3D"
        assert not validator.is_valid(bad)
        bad = copy.deepcopy(d)
        bad["configurations"]["3d_fullres"]["in_slices"] = 3  # 3d must have in_slices 1
        assert not validator.is_valid(bad)
        bad = copy.deepcopy(d)
        bad["surprise"] = 1
        assert not validator.is_valid(bad)

    def test_to_dict_is_json(self, plans):
        for plan in plans:
            d = plan.to_dict()
            assert json.loads(json.dumps(d)) == d

    def test_round_trip(self, plans):
        for plan in plans:
            assert Plan.from_dict(plan.to_dict()) == plan
            assert Plan.from_dict(json.loads(json.dumps(plan.to_dict()))) == plan

    def test_save_and_load(self, tmp_path):
        plan = make_plan(thick_mr(1))
        path = tmp_path / "work" / "plans.json"
        plan.save(path)
        assert Plan.load(path) == plan
        assert [p.name for p in path.parent.iterdir()] == ["plans.json"]


class TestStrictLoading:
    @pytest.fixture
    def d(self) -> dict:
        return make_plan(small_iso()).to_dict()

    def test_unknown_key(self, d):
        d["surprise"] = 1
        with pytest.raises(
            PlanError, match=r"^plan: unknown key\(s\) \['surprise'\]; run `autoseg plan` again$"
        ):
            Plan.from_dict(d)

    def test_unknown_nested_key(self, d):
        d["configurations"]["3d_fullres"]["network"]["dropout"] = 0.1
        with pytest.raises(
            PlanError,
            match=r"plan\.configurations\.3d_fullres\.network: "
            r"unknown key\(s\) \['dropout'\]",
        ):
            Plan.from_dict(d)

    @pytest.mark.parametrize(
        ("path", "where"),
        [
            (("configurations",), "plan"),
            # keys with a default in the dataclass are required in the file too
            (("notes",), "plan"),
            (("configurations", "2d", "resampling", "z_order"), "plan.configurations.2d.resampling"),
            (("configurations", "3d_fullres", "next_stage"), "plan.configurations.3d_fullres"),
        ],
        ids=["configurations", "notes", "z_order", "next_stage"],
    )
    def test_missing_key(self, d, path, where):
        del _parent(d, path)[path[-1]]
        with pytest.raises(
            PlanError,
            match=rf"^{re.escape(where)}: missing key\(s\) "
            rf"\['{path[-1]}'\]; run `autoseg plan` again$",
        ):
            Plan.from_dict(d)

    @pytest.mark.parametrize("version", [5, 0, "4", None, True], ids=["5", "0", "str", "none", "bool"])
    def test_wrong_schema_version(self, d, version):
        d["schema_version"] = version
        with pytest.raises(
            PlanError,
            match=rf"schema_version is {re.escape(repr(version))}, "
            r"this autoseg reads 4; run `autoseg plan` again",
        ):
            Plan.from_dict(d)

    def test_missing_schema_version(self, d):
        del d["schema_version"]
        with pytest.raises(PlanError, match=r"^plan schema_version is missing, this autoseg reads 4; "):
            Plan.from_dict(d)

    def test_not_a_dict(self):
        with pytest.raises(PlanError, match=r"^plan: expected a JSON object, found list; run `autoseg plan`"):
            Plan.from_dict([])  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("path", "value", "message"),
        [
            (
                ("configurations", "3d_fullres", "kind"),
                "3D",
                r"plan\.configurations\.3d_fullres\.kind: '3D' is not one of \['3d', '2d', '2\.5d'\]",
            ),
            (
                ("normalization", 0, "scheme"),
                "minmax",
                r"plan\.normalization\[0\]\.scheme: 'minmax' is not one of \['ct', 'zscore', 'none'\]",
            ),
        ],
        ids=["kind", "scheme"],
    )
    def test_wrong_literal(self, d, path, value, message):
        _parent(d, path)[path[-1]] = value
        with pytest.raises(PlanError, match=message):
            Plan.from_dict(d)

    @pytest.mark.parametrize(
        ("path", "value", "message"),
        [
            (
                ("configurations", "2d", "batch_size"),
                "2",
                r"plan\.configurations\.2d\.batch_size: expected int, found '2'",
            ),
            (
                ("configurations", "2d", "batch_dice"),
                1,
                r"plan\.configurations\.2d\.batch_dice: expected bool, found 1",
            ),
            (
                ("configurations", "2d", "batch_size"),
                True,
                r"plan\.configurations\.2d\.batch_size: expected int, found True",
            ),
            (
                ("configurations", "2d", "patch_size"),
                "56x40",
                r"plan\.configurations\.2d\.patch_size: expected a list",
            ),
            (
                ("normalization", 0, "clip"),
                [1.0, 2.0, 3.0],
                r"plan\.normalization\[0\]\.clip: expected 2 values",
            ),
            (("labels",), ["background"], r"plan\.labels: expected an object"),
            (
                ("configurations", "2d", "network"),
                [],
                r"plan\.configurations\.2d\.network: "
                r"expected an object",
            ),
            (
                ("configurations", "2d", "spacing", 1),
                "1.0",
                r"plan\.configurations\.2d\.spacing\[1\]: expected float, found '1\.0'",
            ),
        ],
        ids=[
            "str-for-int",
            "int-for-bool",
            "bool-for-int",
            "str-for-list",
            "clip-length",
            "list-for-dict",
            "list-for-dataclass",
            "str-for-float",
        ],
    )
    def test_wrong_type(self, d, path, value, message):
        _parent(d, path)[path[-1]] = value
        with pytest.raises(PlanError, match=message):
            Plan.from_dict(d)

    def test_ints_are_accepted_as_floats(self, d):
        d["configurations"]["2d"]["spacing"] = [1, 1, 1]
        d["gpu_memory_gb"] = 8
        plan = Plan.from_dict(d)
        assert plan.configuration("2d").spacing == (1.0, 1.0, 1.0)
        assert isinstance(plan.gpu_memory_gb, float)

    def test_unknown_configuration_lists_the_plan_s(self):
        plan = make_plan(small_iso())
        with pytest.raises(
            PlanError,
            match=r"configuration 'nope' is not in the plan of synthetic; "
            r"the plan has: 3d_fullres, 2d, 3d_fullres_resenc$",
        ):
            plan.configuration("nope")

    def test_load_missing_file(self, tmp_path):
        with pytest.raises(
            PlanError,
            match=r"plans\.json: no plan here; run `autoseg plan "
            r"DATASET` first",
        ):
            Plan.load(tmp_path / "plans.json")

    def test_load_invalid_json(self, tmp_path):
        path = tmp_path / "plans.json"
        path.write_text("{not json")
        with pytest.raises(
            PlanError,
            match=r"plans\.json: invalid JSON .*; run `autoseg plan` "
            r"again",
        ):
            Plan.load(path)

    def test_load_names_the_file_on_a_bad_plan(self, tmp_path, d):
        d["schema_version"] = 99
        path = tmp_path / "plans.json"
        path.write_text(json.dumps(d))
        with pytest.raises(PlanError, match=rf"^{re.escape(str(path))}: plan schema_version is 99"):
            Plan.load(path)


V1_PLAN = Path(__file__).resolve().parent / "data" / "plans_v1_hippocampus_sample.json"


class TestVersion1Migration:
    """A version-1 plans.json (as written before ``planner``, ``extra`` and
    ``n_conv_per_stage`` were dropped) still loads; anything else in it stays strict."""

    @pytest.fixture
    def v1(self) -> dict:
        return json.loads(V1_PLAN.read_text())

    def test_stored_v1_plan_loads_as_the_current_plan(self):
        # the fixture is the golden plan as committed at schema_version 1
        assert json.loads(V1_PLAN.read_text())["schema_version"] == 1
        plan = Plan.load(V1_PLAN)
        assert plan == golden_without_default_presets()
        assert plan.schema_version == 4
        assert plan.regions_class_order is None
        assert "planner" not in plan.to_dict()

    @pytest.mark.parametrize(
        ("path", "value", "message"),
        [
            (("planner",), "nnunet", r"plan\.planner: 'nnunet', but autoseg only ever wrote 'autoseg'"),
            (("extra",), {"a": 1}, r"plan\.extra: \{'a': 1\}, but autoseg only ever wrote \{\}"),
            (
                ("configurations", "2d", "network", "n_conv_per_stage"),
                3,
                r"plan\.configurations\.2d\.network\.n_conv_per_stage: 3, but autoseg only ever wrote 2",
            ),
        ],
        ids=["planner", "extra", "n_conv_per_stage"],
    )
    def test_a_dropped_key_with_another_value_is_refused(self, v1, tmp_path, path, value, message):
        _parent(v1, path)[path[-1]] = value
        f = tmp_path / "plans.json"
        f.write_text(json.dumps(v1))
        with pytest.raises(PlanError, match=rf"^{re.escape(str(f))}: {message}.*run `autoseg plan` again$"):
            Plan.load(f)

    def test_a_dropped_key_missing_is_refused(self, v1):
        del v1["extra"]
        with pytest.raises(PlanError, match=r"^plan: missing key\(s\) \['extra'\] \(schema_version 1\)"):
            Plan.from_dict(v1)

    def test_v1_stays_strict_otherwise(self, v1):
        v1["surprise"] = 1
        with pytest.raises(PlanError, match=r"^plan: unknown key\(s\) \['surprise'\]"):
            Plan.from_dict(v1)

    def test_v2_refuses_the_dropped_keys(self):
        d = json.loads(GOLDEN_PLAN.read_text())
        d["planner"] = "autoseg"
        with pytest.raises(PlanError, match=r"^plan: unknown key\(s\) \['planner'\]"):
            Plan.from_dict(d)

    def test_migration_leaves_the_input_alone(self, v1):
        before = copy.deepcopy(v1)
        Plan.from_dict(v1)
        assert v1 == before


class TestConfigurationHash:
    def test_same_plan_same_hash_through_json(self):
        plan = make_plan(small_iso())
        back = Plan.from_dict(json.loads(json.dumps(plan.to_dict())))
        for name in plan.configurations:
            assert back.configuration_hash(name) == plan.configuration_hash(name)

    def test_v1_and_v2_files_hash_alike(self):
        v1, v2 = Plan.load(V1_PLAN), Plan.load(GOLDEN_PLAN)
        assert v1.configuration_hash("3d_fullres") == v2.configuration_hash("3d_fullres")

    def test_what_changes_the_hash(self):
        plan = make_plan(small_iso())
        h = plan.configuration_hash("3d_fullres")
        assert plan.configuration_hash("2d") != h
        config = plan.configuration("3d_fullres")
        other = dataclasses.replace(config, patch_size=tuple(p * 2 for p in config.patch_size))
        changed = dataclasses.replace(plan, configurations={**plan.configurations, "3d_fullres": other})
        assert changed.configuration_hash("3d_fullres") != h
        relabelled = dataclasses.replace(plan, labels={**plan.labels, "extra": 9})
        assert relabelled.configuration_hash("3d_fullres") != h
        # notes and the GPU budget do not change what the network sees or outputs
        noted = dataclasses.replace(plan, notes=("hello",), gpu_memory_gb=99.0)
        assert noted.configuration_hash("3d_fullres") == h
        # neither does how training ran: a re-plan that only changes the batch keeps the folds
        rebatched = dataclasses.replace(
            plan,
            configurations={
                **plan.configurations,
                "3d_fullres": dataclasses.replace(
                    config, batch_size=config.batch_size + 3, batch_dice=not config.batch_dice
                ),
            },
        )
        assert rebatched.configuration_hash("3d_fullres") == h
        spaced = dataclasses.replace(
            plan,
            configurations={
                **plan.configurations,
                "3d_fullres": dataclasses.replace(config, spacing=(1.0, 1.0, 1.5)),
            },
        )
        assert spaced.configuration_hash("3d_fullres") != h
        # ints in float fields hash like the floats they load as
        as_ints = dataclasses.replace(
            plan,
            configurations={
                **plan.configurations,
                "3d_fullres": dataclasses.replace(config, spacing=tuple(int(s) for s in config.spacing)),
            },
        )
        assert config.spacing == (1.0, 1.0, 1.0)
        assert as_ints.configuration_hash("3d_fullres") == h


class TestPlanProperties:
    def test_label_values_and_classes(self):
        plan = make_plan(brats_like())
        assert plan.label_values == (0, 1, 2, 3)
        assert plan.num_classes == 4

    def test_2d_data_plans_only_2d(self):
        # one slice per case: no 3D configuration, no 2.5d
        fp = make_fp((1, 256, 256), (1.0, 0.5, 0.5), 10, channels=("MRI",))
        plan = make_plan(fp)
        assert set(plan.configurations) == {"2d"}
        assert plan.configuration("2d").patch_size == (256, 256)


class TestLowresNote:
    """The note on 3d_lowres names the rule that decided: patch coverage or voxel reduction."""

    @pytest.mark.parametrize(
        ("edge", "kept", "words"),
        [
            (180, False, "covers 36% of the median image (>= 25%)"),
            (
                220,
                False,
                "covers only 20% of the median image, but a stage coarse enough for its patch "
                "to cover 25% would have only 1.31x fewer voxels (< 2x)",
            ),
            (240, False, "would have only 1.70x fewer voxels (< 2x)"),
            (
                300,
                True,
                "covers 8% of the median image (< 25%); the low-resolution stage has 3.5x fewer voxels",
            ),
        ],
        ids=["coverage", "reduction_1.3", "reduction_1.7", "kept"],
    )
    def test_note_names_the_deciding_rule(self, edge, kept, words):
        plan = make_plan(make_fp((edge,) * 3, (1.0, 1.0, 1.0), 20))
        (note,) = [n for n in plan.notes if "3d_lowres" in n]
        assert words in note
        assert ("3d_lowres" in plan.configurations) is kept
        assert note.startswith("3d_lowres + cascade" if kept else "no 3d_lowres")


class TestAddLowres:
    """``--add-lowres``: a genuinely coarser 3d_lowres + the cascade where the rule plans none."""

    def test_small_data_gets_a_coarser_stage(self):
        plan = make_plan(small_iso(), add_lowres=True)
        assert set(plan.configurations) == WITH_CASCADE
        full, low, casc = (plan.configuration(n) for n in ("3d_fullres", "3d_lowres", "3d_cascade_fullres"))
        # isotropic: all axes grow by 1.03 a step until 8x fewer voxels: after 23 steps,
        # 1.97 mm, the median shape rounds to 20 x 25 x 20 = 40 x 50 x 40 / 8
        assert low.spacing == pytest.approx((1.03**23,) * 3)
        assert low.median_shape == (20, 25, 20)
        assert math.prod(full.median_shape) / math.prod(low.median_shape) >= 8
        assert low.network.n_stages >= 3
        assert (low.next_stage, casc.previous_stage) == ("3d_cascade_fullres", "3d_lowres")
        assert casc.spacing == full.spacing
        assert casc.network == full.network
        assert (full.batch_dice, low.batch_dice) == (True, False)
        (note,) = [n for n in plan.notes if "3d_lowres" in n]
        assert note.startswith("3d_lowres + cascade asked for with --add-lowres")
        assert "covers 100% of the median image" in note
        assert "fewer voxels" in note

    def test_without_the_flag_nothing_changes(self):
        assert make_plan(small_iso()) == make_plan(small_iso(), add_lowres=False)
        assert "3d_lowres" not in make_plan(small_iso()).configurations

    def test_the_rule_decides_where_it_plans_one(self):
        assert make_plan(large_ct(), add_lowres=True) == make_plan(large_ct())

    def test_too_close_to_full_resolution_is_added_too(self):
        # edge 220: the rule's stage would have only 1.31x fewer voxels (TestLowresNote)
        plan = make_plan(make_fp((220,) * 3, (1.0, 1.0, 1.0), 20), add_lowres=True)
        low = plan.configuration("3d_lowres")
        assert 220**3 / math.prod(low.median_shape) >= 8
        (note,) = [n for n in plan.notes if "3d_lowres" in n]
        assert "would have only 1.31x fewer voxels" in note
        assert "--add-lowres" in note

    @pytest.mark.parametrize(("edge", "kept"), [(16, False), (24, True)], ids=["16", "24"])
    def test_tiny_images_keep_a_three_stage_network(self, edge, kept):
        # 16 voxels a side: 15 is the smallest image with 3 stages, only 1.2x fewer voxels;
        # 24: 15 voxels a side is 4.1x fewer (>= 2x, the rule's minimum), short of 8x
        plan = make_plan(make_fp((edge,) * 3, (1.0, 1.0, 1.0), 10, channels=("MRI",)), add_lowres=True)
        assert ("3d_lowres" in plan.configurations) is kept
        if kept:
            low = plan.configuration("3d_lowres")
            assert low.network.n_stages == 3
            assert low.median_shape == (15, 15, 15)
        else:
            (note,) = [n for n in plan.notes if "3d_lowres" in n]
            assert note.startswith("no 3d_lowres although asked for with --add-lowres")
            assert "too small an image for a 3-stage U-Net" in note


class TestCascadeInput:
    """The cascade's extra input channels come from the plan, one per foreground output."""

    def test_labels(self):
        plan = make_plan(small_iso(), add_lowres=True)  # background + 2 labels
        channels = {n: plan.network_input_channels(c) for n, c in plan.configurations.items()}
        assert channels == {
            "3d_fullres": 1,
            "3d_lowres": 1,
            "3d_cascade_fullres": 3,
            "2d": 1,
            "3d_fullres_resenc": 1,
        }

    def test_regions_and_ignore(self):
        fp = dataclasses.replace(
            small_iso(),
            labels={"background": 0, "whole": (1, 2, 3), "core": (2, 3), "enh": 3, "ignore": 4},
            regions_class_order=(1, 2, 3),
        )
        plan = make_plan(fp, add_lowres=True)
        # one channel per region, none for the background or the ignore label
        assert plan.network_input_channels(plan.configuration("3d_cascade_fullres")) == 1 + 3

    def test_hash_follows_the_previous_stage(self):
        plan = make_plan(small_iso(), add_lowres=True)
        assert plan.configuration_hash("3d_cascade_fullres") != plan.configuration_hash("3d_fullres")
        low = plan.configuration("3d_lowres")
        coarser = dataclasses.replace(low, spacing=(3.0,) * 3)
        other = dataclasses.replace(plan, configurations={**plan.configurations, "3d_lowres": coarser})
        assert other.configuration_hash("3d_cascade_fullres") != plan.configuration_hash("3d_cascade_fullres")
        assert other.configuration_hash("3d_fullres") == plan.configuration_hash("3d_fullres")


V3_PLAN = Path(__file__).resolve().parent / "data" / "plans_v3_hippocampus_sample.json"


class TestVersion3Migration:
    """A version-3 plans.json (before residual encoders) loads as plain networks, and hashes as
    it did then, so checkpoints trained under version 3 stay usable."""

    def test_loads_as_the_current_golden_plan(self):
        assert json.loads(V3_PLAN.read_text())["schema_version"] == 3
        plan = Plan.load(V3_PLAN)
        assert plan == golden_without_default_presets()
        net = plan.configuration("3d_fullres").network
        assert (net.encoder, net.blocks_per_stage, net.decoder_convs) == ("plain", None, 2)
        assert plan.configuration("3d_fullres").gpu_memory_gb is None

    def test_hashes_are_those_version_3_gave(self):
        # computed with the version-3 code (commit 99d9798) from the same file
        plan = Plan.load(V3_PLAN)
        assert plan.configuration_hash("3d_fullres") == "7a31231b83417eb6"
        assert plan.configuration_hash("2d") == "9b40d32a8d0a8dbd"

    def test_a_version_4_key_in_a_version_3_file_is_refused(self):
        d = json.loads(V3_PLAN.read_text())
        d["configurations"]["2d"]["network"]["encoder"] = "residual"
        message = r"2d\.network: unknown key\(s\) \['encoder'\] \(schema_version 3"
        with pytest.raises(PlanError, match=message):
            Plan.from_dict(d)
