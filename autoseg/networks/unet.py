"""The U-Net of a plan: MONAI ``DynUNet`` with deep-supervision heads at their own resolution.

:func:`build_network` turns a :class:`~autoseg.planning.plan.Configuration` into a network.
:class:`PlanUNet` differs from ``DynUNet`` only in what ``forward`` returns in training mode:

* ``DynUNet`` upsamples every deep-supervision head to full resolution and stacks them into one
  ``(B, 1 + n_heads, C, *spatial)`` tensor. That costs an interpolation per head plus a full-res
  copy of each, in time and in activation memory, only for the loss to compare upsampled coarse
  logits with the full-res target.
* ``PlanUNet`` returns the list ``[full, 1/2, 1/4, ...]`` of logits at their native resolutions, as
  nnU-Net does, and the loss (:mod:`autoseg.training.losses`) downsamples the target instead.

In eval mode both return the full-resolution logits ``(B, C, *spatial)`` as one tensor, so
the end-of-fold validation's sliding window sees a plain network. ``autoseg predict`` and
``autoseg export`` load the same weights into :class:`~autoseg.networks.inference.InferenceUNet`
instead (plain torch, same outputs bit for bit), so that prediction does not import MONAI.

**Input size.** Every spatial axis of the input must be divisible by the product of the strides
on that axis (``DynUNet``'s constraint): the hippocampus plan's strides ``1, 2, 2, 2`` need
multiples of 8, and a plan with strides ``(1, 1), (1, 2), (2, 2), (2, 2)`` on ``(Y, X)`` needs
``Y`` divisible by 4 and ``X`` by 8. :func:`build_network` checks the plan's patch size against
this; sliding-window inference uses the patch size, so it never sees another size.
"""

from __future__ import annotations

import torch
from monai.networks.nets import DynUNet
from monai.networks.nets.dynunet import DynUNetSkipLayer
from torch import nn

from autoseg.networks.topology import SPATIAL_DIMS, check_network, input_channels, input_divisor
from autoseg.planning.plan import Configuration

__all__ = ["PlanUNet", "build_network", "input_divisor"]

# What ``PlanUNet`` leaves in ``DynUNet.heads`` after a forward pass, so that the module does not
# keep the last step's head activations (and through them its autograd graph) alive.
_RELEASED = torch.empty(0)


class PlanUNet(DynUNet):
    """``DynUNet`` whose training-mode output is a list of logits at native resolutions.

    Constructed exactly like ``monai.networks.nets.DynUNet``; use :func:`build_network` to build
    one from a plan.

    ``forward(x)`` with ``x`` of shape ``(B, in_channels, *spatial)``:

    * training mode with deep supervision: ``[y_0, y_1, ..., y_k]`` where ``y_0`` is
      ``(B, C, *spatial)`` and ``y_i`` has the resolution of decoder level ``i`` (``spatial``
      divided by the product of ``strides[1 : i + 1]``), ``k = deep_supr_num``;
    * otherwise: ``y_0`` alone, as a tensor.

    ``DynUNet`` fills ``self.heads[i - 1]`` from the skip layer of index ``i``, whose decoder output
    has the resolution of encoder stage ``i``; so ``heads[0]`` is the 1/2 resolution (for stride 2),
    ``heads[1]`` the 1/4 one, and so on, and ``[y_0, *heads]`` is ordered finest to coarsest.
    """

    def train(self, mode: bool = True) -> PlanUNet:
        """Set training mode; in eval mode the deep-supervision heads are not computed at all.

        ``DynUNet`` runs its head convolutions in eval mode too and stores their outputs in
        ``self.heads``: wasted work for inference and a side effect that ``torch.export`` warns
        about. A skip layer skips its head when its ``heads`` list is None, so eval unhooks it.
        """
        super().train(mode)
        heads = self.heads if mode and self.deep_supervision else None
        for layer in self.modules():
            if isinstance(layer, DynUNetSkipLayer) and layer.super_head is not None:
                layer.heads = heads
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:  # type: ignore[override]
        """Logits: a list ``[full, 1/2, ...]`` in training with deep supervision, else a tensor."""
        out = self.output_block(self.skip_layers(x))
        if not (self.training and self.deep_supervision):
            return out
        heads = list(self.heads)
        # ``self.heads`` is the list object the skip layers write into: empty it in place.
        for i in range(len(self.heads)):
            self.heads[i] = _RELEASED
        return [out, *heads]


def build_network(config: Configuration, *, in_channels: int, n_classes: int) -> nn.Module:
    """The U-Net of one plan configuration.

    ``DynUNet`` with the plan's per-stage kernel sizes, strides and features; transposed-conv
    kernels equal to ``strides[1:]``; affine instance norm; leaky ReLU (slope 0.01); plain (not
    residual) blocks of two convolutions; He initialisation. With ``network.deep_supervision``
    there is one output per decoder resolution, ``n_stages - 1`` in all (``deep_supr_num =
    n_stages - 2`` heads plus the output block; the bottleneck has none), like nnU-Net.

    Args:
        config: the configuration; ``kind`` ``"3d"`` gives a 3D network, ``"2d"`` and ``"2.5d"`` a
            2D one.
        in_channels: image channels of the dataset. For ``"2.5d"`` the network takes
            ``in_channels * config.in_slices`` channels (adjacent slices stacked as channels).
        n_classes: output channels, background included.

    Returns:
        A :class:`PlanUNet` in training mode. Inputs are ``(B, channels, *patch)`` float tensors
        (``patch`` 3 axes for ``"3d"``, 2 otherwise), each axis a multiple of
        :func:`input_divisor` of the strides.

    Raises:
        PlanError: the network description is inconsistent (lengths, dimensions, fewer than 3
            stages, ``n_conv_per_stage`` other than 2) or the patch size is not divisible by the
            product of the strides.
        ValueError: ``in_channels`` or ``n_classes`` is below 1.
    """
    check_network(config, in_channels=in_channels, n_classes=n_classes)
    net = config.network
    spatial_dims = SPATIAL_DIMS[config.kind]
    channels = input_channels(config, in_channels)
    kernels = [list(k) for k in net.kernel_sizes]
    strides = [list(s) for s in net.strides]
    return PlanUNet(
        spatial_dims=spatial_dims,
        in_channels=channels,
        out_channels=n_classes,
        kernel_size=kernels,
        strides=strides,
        upsample_kernel_size=strides[1:],
        filters=list(net.features_per_stage),
        norm_name=("INSTANCE", {"affine": True}),
        act_name=("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
        deep_supervision=net.deep_supervision,
        deep_supr_num=max(net.n_stages - 2, 1),
        res_block=False,
    )
