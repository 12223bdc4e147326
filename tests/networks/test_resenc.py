"""The residual-encoder U-Net (ResEnc presets): it builds from a plan for 2D and 3D topologies,
returns the plain U-Net's outputs, has the architecture the plan describes (parameter count
worked out by hand), and the planner's memory estimate counts exactly its convolution outputs."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from autoseg.errors import CheckpointError, PlanError
from autoseg.networks import UNet, build_network
from autoseg.networks.unet import ResidualEncoderUNet
from autoseg.planning import rules
from autoseg.planning.plan import Configuration, Network
from tests.configs import configuration

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def residual_config(
    kind: str = "3d",
    *,
    patch: tuple[int, ...] = (16, 16, 16),
    features: tuple[int, ...] = (4, 8, 16),
    blocks: tuple[int, ...] = (1, 2, 3),
    strides: tuple[tuple[int, ...], ...] | None = None,
    kernels: tuple[tuple[int, ...], ...] | None = None,
    decoder_convs: int = 1,
    in_slices: int = 1,
) -> Configuration:
    dims = 3 if kind == "3d" else 2
    n = len(features)
    network = Network(
        n_stages=n,
        features_per_stage=features,
        kernel_sizes=kernels or ((3,) * dims,) * n,
        strides=strides or ((1,) * dims,) + ((2,) * dims,) * (n - 1),
        encoder="residual",
        blocks_per_stage=blocks,
        decoder_convs=decoder_convs,
    )
    return configuration(kind, network, patch, in_slices=in_slices, name=f"test_{kind}_resenc")


def as_plain(config: Configuration) -> Configuration:
    net = dataclasses.replace(config.network, encoder="plain", blocks_per_stage=None, decoder_convs=2)
    return dataclasses.replace(config, network=net)


def params(net: nn.Module) -> int:
    return sum(p.numel() for p in net.parameters())


def hand_count(features, blocks, *, cin, n_classes, dims=3, k=3, stride=2, decoder_convs=1) -> int:
    """Parameters by hand: bias-free convs with affine norm (2 per channel), transposed convs
    without bias, 1x1 heads with bias (the output and one per decoder level but the bottleneck's)."""
    k, t = k**dims, stride**dims

    def conv_norm(c_in, c_out, kk=k):
        return kk * c_in * c_out + 2 * c_out

    total = conv_norm(cin, features[0])  # stem
    c = features[0]
    for f, n in zip(features, blocks, strict=True):
        for b in range(n):
            c_in = c if b == 0 else f
            total += conv_norm(c_in, f) + conv_norm(f, f)
            if c_in != f:
                total += conv_norm(c_in, f, 1)  # 1x1 projection of the shortcut
        c = f
    for hi, lo in zip(features[:0:-1], features[-2::-1], strict=True):  # decoder, bottleneck up
        total += t * hi * lo + conv_norm(2 * lo, lo) + (decoder_convs - 1) * conv_norm(lo, lo)
    heads = features[: len(features) - 1]  # output block + deep-supervision heads
    return total + sum(f * n_classes + n_classes for f in heads)


class TestShapes:
    @pytest.mark.parametrize(
        ("kind", "patch", "strides", "cin"),
        [
            ("3d", (16, 16, 16), None, 1),
            ("3d", (8, 16, 16), ((1, 1, 1), (1, 2, 2), (2, 2, 2)), 2),
            ("2d", (32, 24), None, 1),
            ("2.5d", (16, 16), None, 1),
        ],
        ids=["3d", "3d-anisotropic", "2d", "2.5d"],
    )
    def test_outputs_like_the_plain_unet(self, kind, patch, strides, cin):
        config = residual_config(kind, patch=patch, strides=strides, in_slices=3 if kind == "2.5d" else 1)
        net = build_network(config, in_channels=cin, n_classes=3)
        assert isinstance(net, ResidualEncoderUNet)
        channels = cin * (3 if kind == "2.5d" else 1)
        x = torch.randn(2, channels, *patch)
        outs = net(x)
        # deep supervision: n_stages - 1 outputs, finest first, each at its stage's resolution
        assert isinstance(outs, list)
        assert len(outs) == 2
        assert outs[0].shape == (2, 3, *patch)
        down = strides[1] if strides else (2,) * len(patch)
        assert outs[1].shape == (2, 3, *(p // s for p, s in zip(patch, down, strict=True)))
        net.eval()
        with torch.no_grad():
            assert net(x).shape == (2, 3, *patch)

    def test_without_deep_supervision_one_tensor(self):
        net = build_network(residual_config(), in_channels=1, n_classes=2, deep_supervision=False)
        out = net(torch.randn(1, 1, 16, 16, 16))
        assert isinstance(out, torch.Tensor)
        assert out.shape == (1, 2, 16, 16, 16)
        assert not hasattr(net, "deep_supervision_heads")

    def test_four_stages_give_three_supervised_outputs(self):
        config = residual_config(features=(4, 8, 16, 16), blocks=(1, 3, 4, 6))
        outs = build_network(config, in_channels=1, n_classes=2)(torch.randn(1, 1, 16, 16, 16))
        assert [tuple(o.shape[2:]) for o in outs] == [(16, 16, 16), (8, 8, 8), (4, 4, 4)]


class TestArchitecture:
    @pytest.mark.parametrize(
        ("features", "blocks", "decoder_convs"),
        [((4, 8, 16), (1, 2, 3), 1), ((4, 8, 16, 16), (1, 3, 4, 6), 1), ((4, 8, 16), (2, 1, 1), 2)],
    )
    def test_parameter_count_by_hand(self, features, blocks, decoder_convs):
        config = residual_config(features=features, blocks=blocks, decoder_convs=decoder_convs)
        net = build_network(config, in_channels=2, n_classes=3)
        expected = hand_count(features, blocks, cin=2, n_classes=3, decoder_convs=decoder_convs)
        assert params(net) == expected

    def test_parameters_grow_with_blocks(self):
        counts = [
            params(build_network(residual_config(blocks=b), in_channels=1, n_classes=2))
            for b in ((1, 1, 1), (1, 2, 2), (1, 3, 4))
        ]
        assert counts[0] < counts[1] < counts[2]

    def test_2d_parameter_count_by_hand(self):
        config = residual_config("2d", patch=(16, 16))
        net = build_network(config, in_channels=1, n_classes=2)
        assert params(net) == hand_count((4, 8, 16), (1, 2, 3), cin=1, n_classes=2, dims=2)

    def test_shortcuts_pool_and_project_only_where_needed(self):
        config = residual_config(features=(4, 8, 8), blocks=(1, 2, 1))
        net = build_network(config, in_channels=1, n_classes=2)
        assert isinstance(net, ResidualEncoderUNet)
        first = [stage[0].skip for stage in net.stages]
        assert len(first[0]) == 0  # stage 0: same channels, stride 1: identity
        assert [type(m) for m in first[1]][:1] == [nn.AvgPool3d]  # pool, then the 1x1 projection
        assert len(first[1]) == 2
        assert [type(m) for m in first[2]] == [nn.AvgPool3d]  # 8 -> 8 channels: pool only
        assert len(net.stages[1][1].skip) == 0  # later blocks of a stage: identity

    def test_is_residual(self):
        """With the second conv's norm zeroed, a block is leaky_relu(shortcut): the input passes."""
        config = residual_config(features=(4, 4, 4), blocks=(1, 1, 1))
        net = build_network(config, in_channels=1, n_classes=2)
        block = net.stages[0][0]
        with torch.no_grad():
            block.conv2.norm.weight.zero_()
            block.conv2.norm.bias.zero_()
            x = torch.rand(1, 4, 8, 8, 8)  # positive: leaky ReLU leaves it as it is
            assert torch.equal(block(x), x)

    def test_plain_configuration_still_builds_the_plain_unet(self):
        config = residual_config()
        plain = dataclasses.replace(
            config,
            network=dataclasses.replace(
                config.network, encoder="plain", blocks_per_stage=None, decoder_convs=2
            ),
        )
        assert type(build_network(plain, in_channels=1, n_classes=2)) is UNet


class TestEstimate:
    @pytest.mark.parametrize(
        ("kind", "patch", "features", "blocks", "strides"),
        [
            ("3d", (16, 16, 16), (4, 8, 16), (1, 2, 3), None),
            ("3d", (8, 16, 16), (4, 8, 16, 32), (1, 3, 4, 6), ((1, 1, 1), (1, 2, 2), (2, 2, 2), (2, 2, 2))),
            ("2d", (32, 32), (4, 8, 16, 32), (1, 3, 4, 6), None),
        ],
    )
    def test_counts_every_convolution_output(self, kind, patch, features, blocks, strides):
        """The planner's estimate is the number of elements the network's convolutions output
        for one sample (every stage changes the channels here, so every first block projects)."""
        config = residual_config(kind, patch=patch, features=features, blocks=blocks, strides=strides)
        net = build_network(config, in_channels=1, n_classes=3)
        counted = []
        convs = (nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.ConvTranspose3d)
        for m in net.modules():
            if isinstance(m, convs):
                m.register_forward_hook(lambda _m, _i, out: counted.append(out.numel()))
        with torch.no_grad():
            net(torch.randn(1, 1, *patch))
        topo = rules.Topology(patch, config.network.kernel_sizes, config.network.strides)
        assert sum(counted) == rules.residual_feature_map_elements(topo, features, blocks, n_classes=3)


class TestPlanChecks:
    def test_residual_without_blocks_is_refused(self):
        config = residual_config()
        bad = dataclasses.replace(config, network=dataclasses.replace(config.network, blocks_per_stage=None))
        with pytest.raises(PlanError, match="a residual encoder needs blocks_per_stage"):
            build_network(bad, in_channels=1, n_classes=2)

    def test_wrong_number_of_block_counts_is_refused(self):
        with pytest.raises(PlanError, match=r"one count >= 1 per stage, got \(1, 2\)"):
            build_network(residual_config(blocks=(1, 2)), in_channels=1, n_classes=2)

    def test_plain_with_blocks_is_refused(self):
        config = residual_config()
        bad = dataclasses.replace(config, network=dataclasses.replace(config.network, encoder="plain"))
        with pytest.raises(PlanError, match="a plain encoder has blocks_per_stage null"):
            build_network(bad, in_channels=1, n_classes=2)

    def test_weights_of_another_network_are_refused(self):
        res = build_network(residual_config(), in_channels=1, n_classes=2)
        config = residual_config()
        plain = dataclasses.replace(
            config,
            network=dataclasses.replace(
                config.network, encoder="plain", blocks_per_stage=None, decoder_convs=2
            ),
        )
        with pytest.raises(CheckpointError, match=r"x\.pt: its weights do not fit this network"):
            build_network(plain, in_channels=1, n_classes=2).load_weights(res.state_dict(), source="x.pt")

    def test_weights_round_trip_and_heads_are_dropped_for_prediction(self):
        trained = build_network(residual_config(), in_channels=1, n_classes=2)
        predictor = build_network(residual_config(), in_channels=1, n_classes=2, deep_supervision=False)
        predictor.load_weights(trained.state_dict())
        trained.eval()
        predictor.eval()
        x = torch.randn(1, 1, 16, 16, 16)
        with torch.no_grad():
            assert torch.equal(trained(x), predictor(x))
