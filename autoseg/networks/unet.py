"""The U-Net of a plan: one definition, in plain torch, for training, prediction and export.

:func:`build_network` turns a :class:`~autoseg.planning.plan.Configuration` into a :class:`UNet`:
per stage a block of two (convolution, affine instance norm, leaky ReLU 0.01), the first
convolution carrying the stage's stride; transposed-convolution upsampling (kernel = stride),
skip concatenation and a block per decoder stage; a 1x1 convolution with bias for the logits;
optionally one such 1x1 head per decoder resolution for deep supervision. That is nnU-Net's
``PlainConvUNet`` (less the convolution biases, which instance norm cancels) and MONAI's
``DynUNet`` with plain blocks, with which it shares its parameter names, order and initialisation:
checkpoints written while training used ``DynUNet`` load unchanged (its ``skip_layers.*`` keys
are aliases of the same tensors and are dropped).

Why not a library network: MONAI's ``DynUNet`` cannot be imported without MONAI's package
``__init__`` (about 1.2 s of ``autoseg predict``'s start-up), and it upsamples every
deep-supervision head to full resolution; ``dynamic-network-architectures`` (nnU-Net's) imports
in 2 ms but pulls timm and torchvision, whose current release requires another torch than the
pinned CPU build (an unpinned install brought torch 2.14.1 and 4.7 GB of CUDA libraries).

**Residual encoder.** A configuration with ``network.encoder == "residual"`` (the ResEnc
presets, :mod:`autoseg.planning.presets`) gets a :class:`ResidualEncoderUNet` instead: a stem
convolution, then per encoder stage ``blocks_per_stage[i]`` residual blocks (conv, norm, leaky
ReLU, conv, norm, plus the input, leaky ReLU; where a block changes the stride or the channels the
input goes through average pooling and a 1x1 convolution with norm first, nnU-Net's "ResNet-D"
block), and ``decoder_convs`` (conv, norm, leaky ReLU) per decoder stage. Same inputs, outputs,
heads and deep supervision as :class:`UNet`, so training, the sliding window and export treat
both alike.

**Outputs.** In training mode with deep supervision, ``forward`` returns the list
``[full, 1/2, 1/4, ...]`` of logits at their native resolutions (as nnU-Net); the loss
(:mod:`autoseg.training.losses`) downsamples the target instead of upsampling the heads. In eval
mode, or without deep supervision, it returns the full-resolution logits ``(B, C, *spatial)``.

**Input size.** Every spatial axis of the input must be divisible by the product of the strides
on that axis: the hippocampus plan's strides ``1, 2, 2, 2`` need multiples of 8, and a plan with
strides ``(1, 1), (1, 2), (2, 2), (2, 2)`` on ``(Y, X)`` needs ``Y`` divisible by 4 and ``X`` by
8. :func:`build_network` checks the plan's patch size against this; sliding-window inference
uses the patch size, so it never sees another size.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.errors import CheckpointError
from autoseg.networks.topology import check_network, conv_padding
from autoseg.planning.kinds import kind_of
from autoseg.planning.plan import Configuration, Plan

__all__ = ["ResidualEncoderUNet", "UNet", "build_network", "network_for"]

_SLOPE = 0.01
#: Convolution, transposed convolution, instance norm and average pooling per number of spatial
#: dimensions. (Typed as factories: kernel, stride and padding are tuples of length ``dims``.)
_Factory = Callable[..., nn.Module]
_LAYERS: dict[int, tuple[_Factory, _Factory, _Factory, _Factory]] = {
    3: (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d, nn.AvgPool3d),
    2: (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d, nn.AvgPool2d),
}
#: State-dict keys of checkpoints trained with MONAI's ``DynUNet``: aliases of the same tensors.
_LEGACY_ALIASES = "skip_layers."
_HEADS = "deep_supervision_heads."


class _Wrapped(nn.Module):
    """Holds a layer as ``.conv`` (MONAI's ``Convolution`` wrapper), for the parameter names."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Block(nn.Module):
    """Two (convolution, affine instance norm, leaky ReLU 0.01); the first one carries the stride."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        conv, _, norm, _ = _LAYERS[dims]
        ones = (1,) * dims
        self.conv1 = _Wrapped(
            conv(cin, cout, tuple(kernel), tuple(stride), padding=conv_padding(kernel, stride), bias=False)
        )
        self.conv2 = _Wrapped(
            conv(cout, cout, tuple(kernel), ones, padding=conv_padding(kernel, ones), bias=False)
        )
        self.norm1 = norm(cout, affine=True)
        self.norm2 = norm(cout, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.norm1(self.conv1(x)), _SLOPE, inplace=True)
        return F.leaky_relu(self.norm2(self.conv2(x)), _SLOPE, inplace=True)


class _Up(nn.Module):
    """Transposed convolution (kernel = stride, no bias), concatenation with the skip, a block."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        conv_t = _LAYERS[dims][1]
        self.transp_conv = _Wrapped(conv_t(cin, cout, tuple(stride), tuple(stride), bias=False))
        self.conv_block = _Block(dims, 2 * cout, cout, kernel, (1,) * dims)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.conv_block(torch.cat((self.transp_conv(x), skip), dim=1))


def _head(dims: int, cin: int, n_classes: int) -> nn.Module:
    """A 1x1 convolution with bias; two levels of ``.conv`` (MONAI's ``UnetOutBlock`` names)."""
    return _Wrapped(_Wrapped(_LAYERS[dims][0](cin, n_classes, 1, bias=True)))


class _LoadsWeights(nn.Module):
    """Strict loading of a training checkpoint's weights (both network variants)."""

    deep_supervision: bool

    def load_weights(self, state: Mapping[str, torch.Tensor], *, source: str = "checkpoint") -> None:
        """Load a training checkpoint's ``network`` state dict, strictly.

        Keys of ``DynUNet``-era checkpoints that alias other keys are dropped, and so are the
        deep-supervision heads when this network has none (prediction does not need them).

        Raises:
            CheckpointError: a weight is missing, unexpected or of another shape (another plan);
                the message names ``source``.
        """
        drop = (_LEGACY_ALIASES,) if self.deep_supervision else (_LEGACY_ALIASES, _HEADS)
        try:
            self.load_state_dict({k: v for k, v in state.items() if not k.startswith(drop)})
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            msg = f"{source}: its weights do not fit this network ({first})"
            raise CheckpointError(msg) from e


class UNet(_LoadsWeights):
    """A U-Net: ``(B, C_in, *patch) -> (B, n_classes, *patch)`` logits, or in training with deep
    supervision the list ``[full, 1/2, ...]`` (see the module docstring).

    Encoder stage ``i`` is a block with ``kernels[i]`` and ``strides[i]`` (the last stage is the
    bottleneck); decoder stage ``i`` upsamples by ``strides[i + 1]`` and its block uses
    ``kernels[i + 1]`` (DynUNet's choice). Deep supervision adds a head to decoder stages
    ``1 .. n_stages - 2`` (the bottleneck has none), so there are ``n_stages - 1`` outputs.
    Weights start He-normal (negative slope 0.01), biases at 0, as nnU-Net's and DynUNet's do.
    Build it from a plan with :func:`build_network`.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        n_classes: int,
        features: Sequence[int],
        kernels: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        *,
        deep_supervision: bool,
    ) -> None:
        super().__init__()
        self.dims, self.in_channels, self.n_classes = dims, in_channels, n_classes
        n = len(features)
        # Registration order is DynUNet's: same parameter order (optimizer states of its
        # checkpoints) and same random draws under a seed (same initial weights).
        self.input_block = _Block(dims, in_channels, features[0], kernels[0], strides[0])
        self.downsamples = nn.ModuleList(
            _Block(dims, features[i - 1], features[i], kernels[i], strides[i]) for i in range(1, n - 1)
        )
        self.bottleneck = _Block(dims, features[-2], features[-1], kernels[-1], strides[-1])
        self.upsamples = nn.ModuleList(
            _Up(dims, features[i], features[i - 1], kernels[i], strides[i]) for i in range(n - 1, 0, -1)
        )
        self.output_block = _head(dims, features[0], n_classes)
        # DynUNet draws one random number here (a placeholder list of heads); drawing it too keeps
        # a seed's initial weights those of the DynUNet-based releases (reproducible runs).
        torch.rand(1)
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.deep_supervision_heads = _supervision_heads(dims, features, n_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits: a list ``[full, 1/2, ...]`` in training with deep supervision, else a tensor."""
        supervise = self.training and self.deep_supervision
        skips = [self.input_block(x)]
        for block in self.downsamples:
            skips.append(block(skips[-1]))
        x = self.bottleneck(skips[-1])
        heads = self.deep_supervision_heads if supervise else None
        return _decode(x, skips, self.upsamples, heads, self.output_block)


class _ConvNorm(nn.Module):
    """Convolution (no bias: the affine instance norm cancels it) and affine instance norm;
    ``act`` adds a leaky ReLU 0.01."""

    def __init__(
        self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], *, act: bool
    ) -> None:
        super().__init__()
        conv, _, norm, _ = _LAYERS[dims]
        self.conv = conv(
            cin, cout, tuple(kernel), tuple(stride), padding=conv_padding(kernel, stride), bias=False
        )
        self.norm = norm(cout, affine=True)
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x, _SLOPE, inplace=True) if self.act else x


class _ResidualBlock(nn.Module):
    """Two convolutions (the first carries the stride) added to the input, then a leaky ReLU.

    Where the stride or the channels change, the input is average-pooled by the stride and
    projected by a 1x1 convolution with norm (nnU-Net's ``BasicBlockD``): pooling keeps every
    input voxel in the shortcut where a strided 1x1 convolution would drop most of them.
    """

    def __init__(self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        self.conv1 = _ConvNorm(dims, cin, cout, kernel, stride, act=True)
        self.conv2 = _ConvNorm(dims, cout, cout, kernel, (1,) * dims, act=False)
        skip: list[nn.Module] = []
        if any(s != 1 for s in stride):
            skip.append(_LAYERS[dims][3](tuple(stride), tuple(stride)))
        if cin != cout:
            skip.append(_ConvNorm(dims, cin, cout, (1,) * dims, (1,) * dims, act=False))
        self.skip = nn.Sequential(*skip)  # empty: the identity

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(self.conv2(self.conv1(x)) + self.skip(x), _SLOPE, inplace=True)


class _ResidualUp(nn.Module):
    """Transposed convolution (kernel = stride, no bias), concatenation with the skip, then
    ``n_convs`` (conv, norm, leaky ReLU) at the skip's resolution with that stage's kernel."""

    def __init__(
        self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int], n_convs: int
    ) -> None:
        super().__init__()
        ones = (1,) * dims
        self.transp_conv = _LAYERS[dims][1](cin, cout, tuple(stride), tuple(stride), bias=False)
        self.convs = nn.Sequential(
            *(
                _ConvNorm(dims, 2 * cout if i == 0 else cout, cout, kernel, ones, act=True)
                for i in range(n_convs)
            )
        )

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        return self.convs(torch.cat((self.transp_conv(x), skip), dim=1))


class ResidualEncoderUNet(_LoadsWeights):
    """A U-Net with a residual encoder (nnU-Net's ``ResidualEncoderUNet``): same inputs and
    outputs as :class:`UNet` (see the module docstring).

    A stem (conv, norm, leaky ReLU; ``kernels[0]``) maps the input to ``features[0]``; encoder
    stage ``i`` is ``blocks[i]`` :class:`_ResidualBlock` s, the first with ``strides[i]``;
    decoder stage ``i`` (from the bottleneck up) upsamples by ``strides[i]`` and runs
    ``decoder_convs`` convolutions with ``kernels[i - 1]``, the kernel of the resolution it works
    at. Deep supervision: a head per decoder resolution but the full one (whose head is
    ``output_block``) and the bottleneck's, ``n_stages - 1`` outputs in all, as :class:`UNet`.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        n_classes: int,
        features: Sequence[int],
        kernels: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
        blocks: Sequence[int],
        *,
        decoder_convs: int,
        deep_supervision: bool,
    ) -> None:
        super().__init__()
        self.dims, self.in_channels, self.n_classes = dims, in_channels, n_classes
        n = len(features)
        self.stem = _ConvNorm(dims, in_channels, features[0], kernels[0], (1,) * dims, act=True)
        self.stages = nn.ModuleList(
            nn.Sequential(
                *(
                    _ResidualBlock(
                        dims,
                        features[max(i - 1, 0)] if b == 0 else features[i],
                        features[i],
                        kernels[i],
                        strides[i] if b == 0 else (1,) * dims,
                    )
                    for b in range(blocks[i])
                )
            )
            for i in range(n)
        )
        self.decoder = nn.ModuleList(
            _ResidualUp(dims, features[i], features[i - 1], kernels[i - 1], strides[i], decoder_convs)
            for i in range(n - 1, 0, -1)
        )
        self.output_block = _head(dims, features[0], n_classes)
        self.deep_supervision = deep_supervision
        if deep_supervision:
            self.deep_supervision_heads = _supervision_heads(dims, features, n_classes)
        self.apply(_init_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        """Logits: a list ``[full, 1/2, ...]`` in training with deep supervision, else a tensor."""
        supervise = self.training and self.deep_supervision
        x = self.stem(x)
        skips = []
        for stage in self.stages:
            x = stage(x)
            skips.append(x)
        heads = self.deep_supervision_heads if supervise else None
        return _decode(x, skips[:-1], self.decoder, heads, self.output_block)


def _supervision_heads(dims: int, features: Sequence[int], n_classes: int) -> nn.ModuleList:
    """A 1x1 logits head per decoder resolution below full, down to the third-coarsest stage
    (levels ``1 .. max(n - 2, 1)`` of ``n`` stages), as both U-Nets supervise them."""
    n = len(features)
    return nn.ModuleList(_head(dims, features[level], n_classes) for level in range(1, max(n - 2, 1) + 1))


def _decode(
    x: torch.Tensor,
    skips: list[torch.Tensor],
    ups: nn.ModuleList,
    heads: nn.ModuleList | None,
    output: nn.Module,
) -> torch.Tensor | list[torch.Tensor]:
    """The decoder pass both U-Nets share: from the coarsest features ``x``, each decoder stage
    joins the next finer encoder output of ``skips`` (finest first); with deep-supervision
    ``heads``, the list ``[full, 1/2, ...]`` of logits, else the full-resolution logits."""
    found = []
    for i, (up, skip) in enumerate(zip(ups, reversed(skips), strict=True)):
        x = up(x, skip)
        level = len(skips) - 1 - i  # x now has the resolution of encoder stage ``level``
        if heads is not None and 1 <= level <= len(heads):
            found.append(heads[level - 1](x))
    out = output(x)
    return [out, *reversed(found)] if heads is not None else out


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, (nn.Conv3d, nn.Conv2d, nn.ConvTranspose3d, nn.ConvTranspose2d)):
        nn.init.kaiming_normal_(module.weight, a=_SLOPE)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def network_for(
    plan: Plan, config: Configuration, *, deep_supervision: bool | None = None
) -> UNet | ResidualEncoderUNet:
    """The U-Net of ``config`` of ``plan``: :func:`build_network` with the plan's channels,
    classes and previous-stage channels (:meth:`~autoseg.planning.plan.Plan.network_input_channels`),
    so that training, prediction and export build the same network."""
    return build_network(
        config,
        in_channels=len(plan.channel_names),
        n_classes=plan.num_classes,
        deep_supervision=deep_supervision,
        previous_stage_channels=plan.previous_stage_channels(config),
    )


def build_network(
    config: Configuration,
    *,
    in_channels: int,
    n_classes: int,
    deep_supervision: bool | None = None,
    previous_stage_channels: int = 0,
) -> UNet | ResidualEncoderUNet:
    """The U-Net of one plan configuration.

    Args:
        config: the configuration; ``kind`` ``"3d"`` gives a 3D network, ``"2d"`` and ``"2.5d"`` a
            2D one.
        in_channels: image channels of the dataset. For ``"2.5d"`` the network takes
            ``in_channels * config.in_slices`` channels (adjacent slices stacked as channels).
        n_classes: output channels, background included.
        deep_supervision: build the deep-supervision heads; default the plan's choice (training).
            Prediction and export pass False: the heads are never evaluated there.
        previous_stage_channels: channels appended after the image channels for a cascade stage
            (the previous stage's one-hot prediction; the plan decides how many).

    Returns:
        A :class:`UNet` (a :class:`ResidualEncoderUNet` where ``config.network.encoder`` is
        ``"residual"``) in training mode. Inputs are ``(B, channels, *patch)`` float tensors
        (``patch`` 3 axes for ``"3d"``, 2 otherwise), each axis a multiple of
        :func:`~autoseg.networks.topology.input_divisor` of the strides.

    Raises:
        PlanError: the network description is inconsistent (lengths, dimensions, fewer than 3
            stages) or the patch size is not divisible by the product of the strides.
        ValueError: ``in_channels`` or ``n_classes`` is below 1.
    """
    check_network(config, in_channels=in_channels, n_classes=n_classes)
    net = config.network
    kind = kind_of(config.kind)
    channels = kind.input_channels(in_channels, config.in_slices, previous_stage_channels)
    supervise = net.deep_supervision if deep_supervision is None else deep_supervision
    if net.encoder == "residual":
        assert net.blocks_per_stage is not None  # check_network refuses a residual one without
        return ResidualEncoderUNet(
            kind.spatial_dims,
            channels,
            n_classes,
            net.features_per_stage,
            net.kernel_sizes,
            net.strides,
            net.blocks_per_stage,
            decoder_convs=net.decoder_convs,
            deep_supervision=supervise,
        )
    return UNet(
        kind.spatial_dims,
        channels,
        n_classes,
        net.features_per_stage,
        net.kernel_sizes,
        net.strides,
        deep_supervision=supervise,
    )
