"""The batchgenerators pipelines that turn cut patches into network batches.

Both pipelines take batchgenerators' dict ``{"data": (B, C, *initial), "seg": (B, 1, *initial)}``
(numpy) and end with ``{"data": float32 (B, C, *patch), "target": int64 (B, 1, *patch)}`` as
torch tensors, or, with ``tensors=False``, as numpy arrays (float32 and int16) that
:func:`to_tensors` converts later. The loader uses the latter: a torch tensor sent from a worker
process travels as a shared-memory file descriptor that the worker must still be alive to hand
over, which races with shutting the workers down; numpy arrays are plain bytes on the pipe.

Parameters and probabilities follow nnU-Net v2 (``nnunet_v2_facts.md`` §5); the spatial ranges
come from :mod:`autoseg.data.geometry`.

batchgenerators draws from the *global* ``numpy.random`` and ``random`` states. The loader
therefore runs these pipelines inside :func:`seeded_global_rng`, which seeds both from the
loader's own ``numpy.random.Generator`` and restores them afterwards, so a batch depends only on
that generator and nothing outside is disturbed.

Training chooses its pipeline by name from :data:`AUGMENTATIONS` (``--augmentation``): ``default``
(nnU-Net's) or ``none`` (no augmentation: patches cut at the network's size); register others as
:mod:`autoseg._registry` explains.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
from batchgenerators.transforms.abstract_transforms import AbstractTransform, Compose
from batchgenerators.transforms.color_transforms import (
    BrightnessMultiplicativeTransform,
    ContrastAugmentationTransform,
    GammaTransform,
)
from batchgenerators.transforms.crop_and_pad_transforms import CenterCropTransform
from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform
from batchgenerators.transforms.utility_transforms import NumpyToTensor, RenameTransform

from autoseg._registry import Registry
from autoseg.data.geometry import SpatialParams, spatial_params
from autoseg.planning.plan import Configuration

#: Probability per sample of a rotation and, independently, of a scaling.
P_ROTATION = 0.2
P_SCALE = 0.2


def training_transforms(config: Configuration, *, tensors: bool = True) -> Compose:
    """The training pipeline: spatial, intensity, mirroring, then tensors.

    Order and settings: spatial transform (rotation p 0.2 within ±``rotation_deg``, scaling p 0.2
    in (0.7, 1.4), no elastic deformation; data cubic, segmentation linear per class, both
    constant 0 outside; centre crop of the enlarged patch to ``config.patch_size``), Gaussian noise
    (p 0.1, variance (0, 0.1)), Gaussian blur (p 0.2, σ (0.5, 1), each channel with p 0.5),
    multiplicative brightness (p 0.15, (0.75, 1.25)), contrast (p 0.15, (0.75, 1.25)), simulated
    low resolution (p 0.25, zoom (0.5, 1), each channel with p 0.5), inverted gamma (p 0.1) and
    gamma (p 0.3), both (0.7, 1.5) keeping mean and std, mirroring of every spatial axis with
    p 0.5 each.

    For a 3D "dummy 2D" configuration the spatial transform runs slice by slice in the (Y, X)
    plane (axis 0 folded into the channels), and low-resolution simulation leaves axis 0 alone.

    Args:
        config: the configuration being trained.
        tensors: end with torch tensors (True) or numpy arrays (False, see the module docstring).

    Returns:
        A batchgenerators ``Compose`` called as ``pipeline(data=..., seg=...)``.
    """
    sp = spatial_params(config)
    spatial: list[AbstractTransform] = [_spatial_transform(sp)]
    if sp.dummy_2d:
        spatial = [_FoldAxis0IntoChannels(), *spatial, _UnfoldAxis0FromChannels()]
    return Compose(
        [
            *spatial,
            GaussianNoiseTransform(noise_variance=(0, 0.1), p_per_sample=0.1),
            GaussianBlurTransform(
                (0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5
            ),
            BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
            ContrastAugmentationTransform(contrast_range=(0.75, 1.25), p_per_sample=0.15),
            SimulateLowResolutionTransform(
                zoom_range=(0.5, 1),
                per_channel=True,
                p_per_channel=0.5,
                order_downsample=0,
                order_upsample=3,
                p_per_sample=0.25,
                ignore_axes=(0,) if sp.dummy_2d else None,
            ),
            GammaTransform(
                (0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1
            ),
            GammaTransform(
                (0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3
            ),
            MirrorTransform(sp.mirror_axes),
            *_finish(tensors),
        ]
    )


def validation_transforms(config: Configuration, *, tensors: bool = True) -> Compose:
    """The validation pipeline: only the centre crop to ``config.patch_size``, then tensors."""
    return Compose([CenterCropTransform(tuple(config.patch_size)), *_finish(tensors)])


@dataclass(frozen=True)
class Augmentation:
    """A training pipeline and the patch size it needs cut (larger than the network's patch when
    the pipeline rotates and scales, so that no padding shows after the centre crop).

    Attributes:
        cut_size: the spatial size of the patches the loader cuts.
        transforms: numpy in, numpy out (``tensors=False``; see the module docstring).
        perturbs_previous_stage: for a cascade stage, also perturb the previous stage's one-hot
            channels (random morphology, component removal: :mod:`autoseg.data.previous_stage`).
    """

    cut_size: tuple[int, ...]
    transforms: Compose
    perturbs_previous_stage: bool = True


#: Training augmentation pipelines by name: ``(configuration) -> Augmentation``.
AUGMENTATIONS: Registry[Callable[[Configuration], Augmentation]] = Registry(
    "augmentation", flag="--augmentation"
)


@AUGMENTATIONS.register("default")
def default_augmentation(config: Configuration) -> Augmentation:
    """nnU-Net's pipeline (:func:`training_transforms`) on enlarged patches."""
    return Augmentation(spatial_params(config).initial_patch, training_transforms(config, tensors=False))


@AUGMENTATIONS.register("none")
def no_augmentation(config: Configuration) -> Augmentation:
    """No augmentation: patches cut at the network's size (what validation batches use)."""
    return Augmentation(
        tuple(config.patch_size), validation_transforms(config, tensors=False), perturbs_previous_stage=False
    )


def to_tensors(batch: dict[str, Any]) -> dict[str, Any]:
    """Turn a ``tensors=False`` pipeline's numpy ``data``/``target`` into float32/int64 tensors."""
    import torch

    batch["data"] = torch.from_numpy(batch["data"])
    batch["target"] = torch.from_numpy(batch["target"]).long()
    return batch


@contextmanager
def seeded_global_rng(rng: np.random.Generator) -> Iterator[None]:
    """Seed ``numpy.random`` and ``random`` from ``rng`` for the block, then restore them.

    batchgenerators only draws from those global states; this ties its draws to ``rng``.
    Not thread-safe: the loader runs pipelines in one thread per process.
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    seed = int(rng.integers(2**32))
    np.random.seed(seed)
    random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(np_state)
        random.setstate(py_state)


def _spatial_transform(sp: SpatialParams) -> SpatialTransform:
    angle = math.radians(sp.rotation_deg)
    if sp.dummy_2d:
        patch: tuple[int, ...] = sp.patch_size[1:]
        angles = {"angle_x": (-angle, angle), "angle_y": (0.0, 0.0), "angle_z": (0.0, 0.0)}
    else:
        patch = sp.patch_size
        angles = {"angle_x": (-angle, angle), "angle_y": (-angle, angle), "angle_z": (-angle, angle)}
    return SpatialTransform(
        patch,
        patch_center_dist_from_border=None,
        random_crop=False,
        do_elastic_deform=False,
        p_el_per_sample=0,
        do_rotation=True,
        p_rot_per_sample=P_ROTATION,
        p_rot_per_axis=1,
        **angles,
        do_scale=True,
        scale=sp.scale_range,
        p_scale_per_sample=P_SCALE,
        border_mode_data="constant",
        border_cval_data=0,
        order_data=3,
        border_mode_seg="constant",
        border_cval_seg=0,
        order_seg=1,
    )


def _finish(tensors: bool) -> list[AbstractTransform]:
    rename = RenameTransform("seg", "target", delete_old=True)
    if tensors:
        return [rename, NumpyToTensor(["data"], cast_to="float"), NumpyToTensor(["target"], cast_to="long")]
    return [rename, _CastArrays()]


class _CastArrays(AbstractTransform):
    """Contiguous float32 data and int16 class indices (the spatial transform returns floats)."""

    def __call__(self, **batch: Any) -> dict[str, Any]:
        batch["data"] = np.ascontiguousarray(batch["data"], dtype=np.float32)
        batch["target"] = np.ascontiguousarray(np.rint(batch["target"]), dtype=np.int16)
        return batch


class _FoldAxis0IntoChannels(AbstractTransform):
    """``(B, C, Z, Y, X)`` -> ``(B, C * Z, Y, X)``, so 2D transforms act on every slice alike."""

    def __call__(self, **batch: Any) -> dict[str, Any]:
        batch["_dummy_2d_z"] = batch["data"].shape[2]
        for key in ("data", "seg"):
            b, c, z, y, x = batch[key].shape
            batch[key] = batch[key].reshape(b, c * z, y, x)
        return batch


class _UnfoldAxis0FromChannels(AbstractTransform):
    """Inverse of :class:`_FoldAxis0IntoChannels`."""

    def __call__(self, **batch: Any) -> dict[str, Any]:
        z = batch.pop("_dummy_2d_z")
        for key in ("data", "seg"):
            b, cz, y, x = batch[key].shape
            batch[key] = batch[key].reshape(b, cz // z, z, y, x)
        return batch
