"""Tests of the plan-built U-Net: shapes, head order, eval/train outputs, size, plan checks, and
its equality with MONAI's ``DynUNet``, which trained autoseg's models before (same names,
initial weights and outputs: old checkpoints load, a seed gives the run it gave)."""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from monai.networks.nets import DynUNet

from autoseg.errors import CheckpointError, PlanError
from autoseg.networks import UNet, build_network, input_divisor
from autoseg.planning.plan import Configuration, Network, Plan
from tests.configs import configuration

ROOT = Path(__file__).resolve().parents[2]
HIPPOCAMPUS_PLAN = ROOT / "plans" / "hippocampus" / "plans.json"


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_config(
    kind: str = "3d",
    *,
    patch: tuple[int, ...] = (16, 16, 16),
    strides: tuple[tuple[int, ...], ...] | None = None,
    features: tuple[int, ...] = (4, 8, 16),
    in_slices: int = 1,
    deep_supervision: bool = True,
    kernels: tuple[tuple[int, ...], ...] | None = None,
) -> Configuration:
    dims = 3 if kind == "3d" else 2
    n_stages = len(features)
    if strides is None:
        strides = ((1,) * dims,) + ((2,) * dims,) * (n_stages - 1)
    network = Network(
        n_stages=n_stages,
        features_per_stage=features,
        kernel_sizes=kernels or ((3,) * dims,) * n_stages,
        strides=strides,
        deep_supervision=deep_supervision,
    )
    return configuration(kind, network, patch, in_slices=in_slices)


def expected_shapes(config: Configuration, batch: int, n_classes: int) -> list[tuple[int, ...]]:
    """Output shapes finest first: the patch divided by the cumulative strides of stages 1..i."""
    shapes = []
    size = list(config.patch_size)
    for i in range(config.network.n_stages - 1):
        if i > 0:
            size = [s // st for s, st in zip(size, config.network.strides[i], strict=True)]
        shapes.append((batch, n_classes, *size))
    return shapes


def nnunet_plain_unet_params(features, *, in_channels, n_classes, kernel=3, dims=3, stride=2):
    """Parameters of nnU-Net's PlainConvUNet (conv bias, affine instance norm, deep-supervision heads)."""
    k, t = kernel**dims, stride**dims
    total, c_in = 0, in_channels
    for f in features:  # encoder: two conv+norm per stage
        total += (k * c_in * f + f + 2 * f) + (k * f * f + f + 2 * f)
        c_in = f
    for below, f in zip(features[:0:-1], features[-2::-1], strict=True):  # decoder, coarsest first
        total += t * below * f + f  # transposed conv with bias
        total += (k * 2 * f * f + f + 2 * f) + (k * f * f + f + 2 * f)
        total += f * n_classes + n_classes  # segmentation head
    return total


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


CONFIGS = {
    "3d": make_config("3d", patch=(16, 24, 16)),
    "3d_anisotropic": make_config("3d", patch=(8, 32, 32), strides=((1, 1, 1), (1, 2, 2), (2, 2, 2))),
    "2d": make_config("2d", patch=(24, 16)),
    "2.5d": make_config("2.5d", patch=(16, 32), in_slices=5),
    "4_stages": make_config("3d", patch=(16, 16, 16), features=(4, 8, 16, 16)),
    "3d_anisotropic_kernels": make_config(
        "3d",
        patch=(8, 16, 16),
        features=(4, 8, 16, 16),
        strides=((1, 1, 1), (1, 2, 2), (1, 2, 2), (2, 2, 2)),
        kernels=((1, 3, 3), (1, 3, 3), (3, 3, 3), (3, 1, 3)),
    ),
}


class TestShapes:
    @pytest.mark.parametrize("name", list(CONFIGS), ids=list(CONFIGS))
    def test_train_mode_returns_native_resolutions(self, name):
        config = CONFIGS[name]
        net = build_network(config, in_channels=2, n_classes=3)
        channels = 2 * (config.in_slices if config.kind == "2.5d" else 1)
        out = net(torch.randn(2, channels, *config.patch_size))
        assert isinstance(out, list)
        assert len(out) == config.network.n_stages - 1
        assert [tuple(o.shape) for o in out] == expected_shapes(config, 2, 3)

    @pytest.mark.parametrize("name", list(CONFIGS), ids=list(CONFIGS))
    def test_eval_mode_returns_one_tensor(self, name):
        config = CONFIGS[name]
        net = build_network(config, in_channels=1, n_classes=4).eval()
        channels = config.in_slices if config.kind == "2.5d" else 1
        with torch.no_grad():
            out = net(torch.randn(1, channels, *config.patch_size))
        assert isinstance(out, torch.Tensor)
        assert tuple(out.shape) == (1, 4, *config.patch_size)

    def test_halving_resolutions(self):
        net = build_network(CONFIGS["4_stages"], in_channels=1, n_classes=2)
        out = net(torch.randn(1, 1, 16, 16, 16))
        assert [o.shape[2:] for o in out] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]

    def test_2_5d_multiplies_input_channels(self):
        net = build_network(CONFIGS["2.5d"], in_channels=2, n_classes=3)
        first_conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
        assert first_conv.in_channels == 2 * 5
        assert not any(isinstance(m, torch.nn.Conv3d) for m in net.modules())

    def test_without_deep_supervision_train_returns_tensor(self):
        net = build_network(make_config("3d", deep_supervision=False), in_channels=1, n_classes=2)
        out = net(torch.randn(1, 1, 16, 16, 16))
        assert isinstance(out, torch.Tensor)
        assert tuple(out.shape) == (1, 2, 16, 16, 16)


def stock_dynunet(config: Configuration, in_channels: int, n_classes: int) -> DynUNet:
    """MONAI's DynUNet as autoseg built it from a plan before it had its own network."""
    net = config.network
    strides = [list(s) for s in net.strides]
    return DynUNet(
        spatial_dims=3 if config.kind == "3d" else 2,
        in_channels=in_channels * (config.in_slices if config.kind == "2.5d" else 1),
        out_channels=n_classes,
        kernel_size=[list(k) for k in net.kernel_sizes],
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(net.features_per_stage),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=net.deep_supervision,
        deep_supr_num=max(net.n_stages - 2, 1),
        res_block=False,
    )


def without_aliases(state: dict) -> dict:
    return {k: v for k, v in state.items() if not k.startswith("skip_layers.")}


class TestHeadOrder:
    def test_matches_stock_dynunet_stacked_output(self):
        """Ours[i], upsampled like DynUNet does, equals DynUNet's stacked head i: the order is the same."""
        config = CONFIGS["4_stages"]
        torch.manual_seed(3)
        ours = build_network(config, in_channels=1, n_classes=3)
        torch.manual_seed(3)
        stock = stock_dynunet(config, 1, 3)
        x = torch.randn(2, 1, 16, 16, 16)
        with torch.no_grad():
            mine, theirs = ours(x), stock(x)
        assert theirs.shape == (2, 3, 3, 16, 16, 16)
        for i, head in enumerate(mine):
            torch.testing.assert_close(F.interpolate(head, size=(16, 16, 16)), theirs[:, i])

    def test_eval_mode_skips_the_heads(self):
        net = build_network(CONFIGS["4_stages"], in_channels=1, n_classes=2)
        calls = []
        for head in net.deep_supervision_heads:
            head.register_forward_hook(lambda *_: calls.append(1))
        x = torch.randn(1, 1, 16, 16, 16)
        with torch.no_grad():
            net.eval()(x)
            assert calls == []
            assert len(net.train()(x)) == 3
        assert len(calls) == 2

    def test_prediction_network_has_no_heads(self):
        net = build_network(CONFIGS["4_stages"], in_channels=1, n_classes=2, deep_supervision=False)
        assert not hasattr(net, "deep_supervision_heads")
        assert isinstance(net(torch.randn(1, 1, 16, 16, 16)), torch.Tensor)


class TestHippocampusPlan:
    @pytest.fixture(scope="class")
    def plan(self):
        return Plan.load(HIPPOCAMPUS_PLAN)

    def test_3d_fullres(self, plan):
        config = plan.configuration("3d_fullres")
        net = build_network(config, in_channels=len(plan.channel_names), n_classes=plan.num_classes)
        assert isinstance(net, UNet)
        out = net(torch.randn(1, 1, *config.patch_size))
        assert [tuple(o.shape) for o in out] == [(1, 3, 40, 56, 40), (1, 3, 20, 28, 20), (1, 3, 10, 14, 10)]

    def test_2d(self, plan):
        config = plan.configuration("2d")
        net = build_network(config, in_channels=1, n_classes=plan.num_classes).eval()
        with torch.no_grad():
            out = net(torch.randn(3, 1, *config.patch_size))
        assert tuple(out.shape) == (3, 3, 56, 40)

    def test_parameter_count_close_to_nnunet(self, plan):
        config = plan.configuration("3d_fullres")
        net = build_network(config, in_channels=1, n_classes=3)
        reference = nnunet_plain_unet_params(config.network.features_per_stage, in_channels=1, n_classes=3)
        assert abs(reference - 5.6e6) / 5.6e6 < 0.01  # the formula reproduces nnU-Net's 5.6 M
        assert abs(n_params(net) - reference) / reference < 0.05
        assert abs(n_params(net) - 5.6e6) / 5.6e6 < 0.05


class TestPlanChecks:
    def test_patch_not_divisible(self):
        config = make_config("3d", patch=(16, 18, 16))
        with pytest.raises(PlanError, match=r"divisible by the product of the strides \(4, 4, 4\)"):
            build_network(config, in_channels=1, n_classes=2)

    def test_too_few_stages(self):
        config = make_config("3d", features=(4, 8))
        with pytest.raises(PlanError, match="at least 3 stages"):
            build_network(config, in_channels=1, n_classes=2)

    def test_list_lengths(self):
        config = make_config("3d")
        config = dataclasses.replace(config, network=dataclasses.replace(config.network, n_stages=4))
        with pytest.raises(PlanError, match="per-stage lists have lengths"):
            build_network(config, in_channels=1, n_classes=2)

    def test_wrong_dimensionality(self):
        config = make_config("2d", patch=(16, 16))
        config = dataclasses.replace(config, kind="3d")
        with pytest.raises(PlanError, match="needs 3 values"):
            build_network(config, in_channels=1, n_classes=2)

    @pytest.mark.parametrize(("in_channels", "n_classes"), [(0, 2), (1, 0)], ids=["no_input", "no_class"])
    def test_channel_counts(self, in_channels, n_classes):
        with pytest.raises(ValueError, match="must be >= 1"):
            build_network(make_config("3d"), in_channels=in_channels, n_classes=n_classes)


def test_input_divisor():
    assert input_divisor([(1, 1), (2, 1), (2, 2)]) == (4, 2)
    assert input_divisor([(1, 1, 1)] + [(2, 2, 2)] * 3) == (8, 8, 8)
    assert math.prod(input_divisor([(1, 2), (3, 1)])) == 6


class TestSameAsDynUNet:
    """The network that replaced DynUNet: same parameters in the same order, the same initial
    weights under a seed, the same outputs bit for bit; DynUNet checkpoints load into it."""

    @staticmethod
    def randomised(net: torch.nn.Module) -> torch.nn.Module:
        """Every weight random (norm affines too, so that they matter)."""
        with torch.no_grad():
            for p in net.parameters():
                p.normal_(0.0, 0.2)
        return net

    @pytest.mark.parametrize("name", [*CONFIGS, "no_deep_supervision"])
    def test_same_parameters_and_initial_weights(self, name):
        config = CONFIGS.get(name) or make_config("3d", deep_supervision=False)
        torch.manual_seed(7)
        ours = build_network(config, in_channels=2, n_classes=3)
        torch.manual_seed(7)
        stock = stock_dynunet(config, 2, 3)
        theirs = without_aliases(stock.state_dict())
        assert list(ours.state_dict()) == list(theirs)
        assert [n for n, _ in ours.named_parameters()] == [n for n, _ in stock.named_parameters()]
        for key, value in ours.state_dict().items():
            assert torch.equal(value, theirs[key]), key

    @pytest.mark.parametrize("dtype", [None, torch.bfloat16], ids=["fp32", "bf16"])
    @pytest.mark.parametrize("name", [*CONFIGS, "no_deep_supervision"])
    def test_same_outputs_from_a_dynunet_checkpoint(self, name, dtype):
        config = CONFIGS.get(name) or make_config("3d", deep_supervision=False)
        channels = 2 * (config.in_slices if config.kind == "2.5d" else 1)
        torch.manual_seed(0)
        stock = self.randomised(stock_dynunet(config, 2, 3)).eval()
        net = build_network(config, in_channels=2, n_classes=3, deep_supervision=False)
        net.load_weights(stock.state_dict())  # with DynUNet's aliases and heads
        x = torch.randn(2, channels, *config.patch_size)
        with torch.no_grad(), torch.autocast("cpu", dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            expected, got = stock(x), net.eval()(x)
        assert got.shape == (2, 3, *config.patch_size)
        assert torch.equal(got, expected)

    def test_training_network_loads_a_dynunet_checkpoint_with_its_heads(self):
        config = CONFIGS["4_stages"]
        stock = self.randomised(stock_dynunet(config, 1, 3))
        net = build_network(config, in_channels=1, n_classes=3)
        net.load_weights(stock.state_dict())
        assert all(torch.equal(v, stock.state_dict()[k]) for k, v in net.state_dict().items())

    def test_hippocampus_sizes_with_and_without_heads(self):
        plan = Plan.load(HIPPOCAMPUS_PLAN)
        config = plan.configuration("3d_fullres")
        train_net = build_network(config, in_channels=1, n_classes=plan.num_classes)
        net = build_network(config, in_channels=1, n_classes=plan.num_classes, deep_supervision=False)
        heads = sum(p.numel() for p in train_net.deep_supervision_heads.parameters())
        assert heads > 0
        assert n_params(net) == n_params(train_net) - heads

    def test_weights_of_another_plan_are_refused(self):
        train_net = build_network(CONFIGS["3d"], in_channels=1, n_classes=3)
        net = build_network(CONFIGS["4_stages"], in_channels=1, n_classes=3, deep_supervision=False)
        with pytest.raises(CheckpointError, match=r"fold_9\.pt: its weights do not fit this network"):
            net.load_weights(train_net.state_dict(), source="fold_9.pt")


def test_mismatched_checkpoint_is_a_checkpoint_error(tmp_path):
    """A fold whose weights do not fit the plan's network: a one-line error naming the file."""
    from autoseg.checkpoint_meta import CheckpointMeta
    from autoseg.inference.model import load_model

    plan = Plan.load(HIPPOCAMPUS_PLAN)
    model_dir = tmp_path / "models" / "3d_fullres"
    (model_dir / "fold_0").mkdir(parents=True)
    plan.save(model_dir / "plans.json")
    other = build_network(plan.configuration("2d"), in_channels=1, n_classes=plan.num_classes)
    # metadata that fits the plan (see tests/test_checkpoint_meta.py), weights that do not
    meta = CheckpointMeta.for_training(plan, plan.configuration("3d_fullres"), {}).to_dict()
    torch.save({"meta": meta, "network": other.state_dict()}, model_dir / "fold_0" / "checkpoint_final.pt")
    with pytest.raises(CheckpointError, match=r"checkpoint_final\.pt: its weights do not fit"):
        load_model(model_dir)
