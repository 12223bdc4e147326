"""The plan's U-Net for prediction, in plain torch: loads the training checkpoints, imports no MONAI.

Training uses MONAI's ``DynUNet`` (:mod:`autoseg.networks.unet`). Importing any part of MONAI
runs its package ``__init__``, which imports every MONAI submodule and through them scipy.signal,
matplotlib and pandas: about 1.2 s of the 3 s that ``autoseg predict`` took to start. The
forward pass in eval mode is small (conv - instance norm - leaky ReLU blocks, transposed-conv
upsampling, skip concatenation), so prediction builds it here with the same module names as
``DynUNet``, and a training checkpoint loads into it strictly (DynUNet's ``skip_layers.*`` keys
are aliases of the same tensors and ``deep_supervision_heads.*`` are training-only; both are
dropped). ``TestInferenceUNet`` in ``tests/networks/test_unet.py`` checks bit-equal outputs to
``DynUNet`` for 3D, 2D, 2.5D and anisotropic plans.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from autoseg.networks.topology import SPATIAL_DIMS, check_network, conv_padding, input_channels
from autoseg.planning.plan import Configuration

__all__ = ["InferenceUNet", "build_inference_network"]

#: State-dict prefixes of a ``DynUNet`` checkpoint that the inference network has no use for.
_TRAINING_ONLY = ("skip_layers.", "deep_supervision_heads.")
_SLOPE = 0.01
#: Convolution, transposed convolution and instance norm per number of spatial dimensions.
_LAYERS = {
    3: (nn.Conv3d, nn.ConvTranspose3d, nn.InstanceNorm3d),
    2: (nn.Conv2d, nn.ConvTranspose2d, nn.InstanceNorm2d),
}


class _Wrapped(nn.Module):
    """Holds a convolution as ``.conv``: MONAI's ``Convolution`` wrapper, for its state-dict names."""

    def __init__(self, conv: nn.Module) -> None:
        super().__init__()
        self.conv = conv

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class _Block(nn.Module):
    """Two (convolution, affine instance norm, leaky ReLU 0.01); the first one carries the stride."""

    def __init__(self, dims: int, cin: int, cout: int, kernel: Sequence[int], stride: Sequence[int]) -> None:
        super().__init__()
        conv, _, norm = _LAYERS[dims]
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


class InferenceUNet(nn.Module):
    """The plan's U-Net without deep-supervision heads: ``(B, C_in, *patch) -> (B, n_classes, *patch)``.

    Same layers as :func:`autoseg.networks.build_network` (``DynUNet``): encoder stage ``i`` is a
    block with ``kernel_sizes[i]`` and ``strides[i]``; decoder stage ``i`` upsamples by
    ``strides[i + 1]`` and its block uses ``kernel_sizes[i + 1]`` (DynUNet's choice); a 1x1
    convolution with bias gives the logits. Build it with :func:`build_inference_network`.
    """

    def __init__(
        self,
        dims: int,
        in_channels: int,
        n_classes: int,
        features: Sequence[int],
        kernels: Sequence[Sequence[int]],
        strides: Sequence[Sequence[int]],
    ) -> None:
        super().__init__()
        n = len(features)
        self.input_block = _Block(dims, in_channels, features[0], kernels[0], strides[0])
        self.downsamples = nn.ModuleList(
            _Block(dims, features[i - 1], features[i], kernels[i], strides[i]) for i in range(1, n - 1)
        )
        self.bottleneck = _Block(dims, features[-2], features[-1], kernels[-1], strides[-1])
        self.upsamples = nn.ModuleList(
            _Up(dims, features[i], features[i - 1], kernels[i], strides[i]) for i in range(n - 1, 0, -1)
        )
        conv = _LAYERS[dims][0]
        # DynUNet's UnetOutBlock wraps a Convolution: two levels of ``.conv``.
        self.output_block = _Wrapped(_Wrapped(conv(features[0], n_classes, 1, bias=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Full-resolution logits."""
        skips = [self.input_block(x)]
        for block in self.downsamples:
            skips.append(block(skips[-1]))
        x = self.bottleneck(skips[-1])
        for up, skip in zip(self.upsamples, reversed(skips), strict=True):
            x = up(x, skip)
        return self.output_block(x)

    def load_training_state(self, state: Mapping[str, torch.Tensor]) -> None:
        """Load a training network's ``state_dict`` (``checkpoint["network"]``), strictly.

        Raises:
            RuntimeError: a weight is missing, unexpected or of another shape (another plan).
        """
        self.load_state_dict({k: v for k, v in state.items() if not k.startswith(_TRAINING_ONLY)})


def build_inference_network(config: Configuration, *, in_channels: int, n_classes: int) -> InferenceUNet:
    """The prediction U-Net of one plan configuration (see :class:`InferenceUNet`).

    Args:
        config: the configuration; ``kind`` ``"3d"`` gives a 3D network, the others a 2D one.
        in_channels: image channels of the dataset (times ``in_slices`` is applied for ``"2.5d"``).
        n_classes: output channels, background included.

    Raises:
        PlanError: the network description is inconsistent (see
            :func:`autoseg.networks.topology.check_network`).
        ValueError: ``in_channels`` or ``n_classes`` is below 1.
    """
    check_network(config, in_channels=in_channels, n_classes=n_classes)
    net = config.network
    return InferenceUNet(
        SPATIAL_DIMS[config.kind],
        input_channels(config, in_channels),
        n_classes,
        net.features_per_stage,
        net.kernel_sizes,
        net.strides,
    )
