"""Planning rules as pure functions of numbers: spacing, axes, network shape, patch, batch.

Every rule here is a small function of arrays and floats, tested on hand-worked cases, so that a
reader can check one decision without running the planner. The baseline values are nnU-Net v2's
published heuristics (anisotropy threshold 3, 10th-percentile out-of-plane spacing, bottleneck
edge >= 4, features 32·2^k capped, a feature-map budget calibrated to 8 GB); where autoseg
decides differently (2.5D, K) the docstring says why.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal, NamedTuple

import numpy as np

ANISOTROPY_THRESHOLD = 3.0
#: Feature-map elements (summed over every conv output) that fit a GPU of 8 GB at the reference
#: batch size, as calibrated by nnU-Net for the same U-Net family (560e6 for 3D at batch 2,
#: 85e6 for 2D at batch 12).
REFERENCE_3D = (560e6, 2)
REFERENCE_2D = (85e6, 12)
MIN_BATCH = 2
MAX_DATASET_FRACTION_PER_BATCH = 0.05
MIN_BOTTLENECK_EDGE = 4


class Topology(NamedTuple):
    """Per-stage kernel sizes and strides of a U-Net, and the patch size it accepts.

    ``strides[0]`` is all ones (the first stage does not downsample); ``patch_size`` is the input
    patch padded up so that every axis divides by 2**(number of stride-2 steps on that axis).
    """

    patch_size: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]

    @property
    def n_stages(self) -> int:
        """Number of resolution stages (strides + 1 ... including the full-resolution one)."""
        return len(self.strides)

    @property
    def divisor(self) -> tuple[int, ...]:
        """What each patch axis must divide by."""
        return tuple(int(np.prod([s[a] for s in self.strides])) for a in range(len(self.patch_size)))


def target_spacing(
    spacings: np.ndarray, shapes: np.ndarray, *, anisotropy_threshold: float = ANISOTROPY_THRESHOLD
) -> tuple[float, ...]:
    """Spacing every case is resampled to: the median, except on a strongly anisotropic axis.

    If the coarsest axis is more than ``anisotropy_threshold`` times coarser than the others *and*
    the images are short along it, the median would throw away in-plane detail of the many
    finely-sliced cases; that axis takes the 10th percentile of its spacings instead (never finer
    than the other axes).

    Args:
        spacings: ``(N, 3)`` per-case spacings in mm.
        shapes: ``(N, 3)`` per-case shapes (after cropping).

    Examples:
        >>> target_spacing(np.array([[1.0, 1, 1], [3, 1, 1]]), np.array([[40, 50, 50]] * 2))
        (2.0, 1.0, 1.0)
        >>> sp = np.array([[5.0, 0.7, 0.7], [4.0, 0.7, 0.7], [3.0, 0.7, 0.7]])
        >>> target_spacing(sp, np.array([[20, 300, 300]] * 3))
        (3.2, 0.7, 0.7)
    """
    spacings = np.asarray(spacings, dtype=np.float64)
    target = np.median(spacings, axis=0)
    median_shape = np.median(np.asarray(shapes, dtype=np.float64), axis=0)
    worst = int(np.argmax(target))
    others = [a for a in range(len(target)) if a != worst]
    coarse = target[worst] > anisotropy_threshold * max(target[others])
    short = median_shape[worst] * anisotropy_threshold < min(median_shape[others])
    if coarse and short:
        target[worst] = max(np.percentile(spacings[:, worst], 10), max(target[others]) + 1e-5)
    return tuple(round(float(t), 6) for t in target)


def transpose_order(
    spacing: Sequence[float], shape: Sequence[float] | None = None
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Axis order that puts the coarsest axis first (2D slices are then taken across it).

    An axis of size 1 (2D images stored as 3D) counts as the coarsest whatever its spacing, so
    that 2D data always has its single slice on axis 0.

    Returns:
        ``(forward, backward)``: ``array.transpose(forward)`` before, ``.transpose(backward)``
        after.

    Examples:
        >>> transpose_order((0.8, 0.8, 3.0))
        ((2, 0, 1), (1, 2, 0))
        >>> transpose_order((1.0, 1.0, 1.0))
        ((0, 1, 2), (0, 1, 2))
        >>> transpose_order((1.0, 2.0, 2.0), shape=(256, 1, 256))
        ((1, 0, 2), (1, 0, 2))
    """
    key = np.asarray(spacing, dtype=np.float64).copy()
    if shape is not None:
        key[np.asarray(shape) <= 1] = np.inf
    worst = int(np.argmax(key))
    forward = (worst, *(a for a in range(len(spacing)) if a != worst))
    backward = tuple(int(i) for i in np.argsort(forward))
    return forward, backward


NormScheme = Literal["ct", "zscore", "none"]


def normalization_scheme(
    channel_name: str, median_relative_size_after_crop: float
) -> tuple[NormScheme, bool]:
    """How a channel is normalised, from its name, and whether only the nonzero region counts.

    CT values are physical (Hounsfield units), so they are clipped to the dataset's foreground
    0.5-99.5 percentiles and z-scored with dataset statistics. Anything else gets a per-image
    z-score; when cropping to nonzero removed much (median relative size < 0.75, e.g. skull-stripped
    brains) the statistics come from inside the nonzero mask and the outside stays 0.

    Examples:
        >>> normalization_scheme("CT", 1.0)
        ('ct', False)
        >>> normalization_scheme("T2", 0.5)
        ('zscore', True)
        >>> normalization_scheme("noNorm", 0.5)
        ('none', False)
    """
    name = channel_name.strip().lower()
    if name == "ct":
        return "ct", False
    if name in ("nonorm", "none"):
        return "none", False
    return "zscore", median_relative_size_after_crop < 0.75


def initial_patch_size(
    spacing: Sequence[float], median_shape: Sequence[float], *, edge_voxels: int
) -> tuple[int, ...]:
    """A patch of ``edge_voxels**dim`` voxels shaped like a cube in mm, clipped to the image.

    Examples:
        >>> initial_patch_size((1.0, 1.0, 1.0), (36, 50, 35), edge_voxels=256)
        (36, 50, 35)
        >>> initial_patch_size((2.0, 1.0, 1.0), (500, 500, 500), edge_voxels=256)
        (161, 323, 323)
    """
    inv = 1.0 / np.asarray(spacing, dtype=np.float64)
    scale = (edge_voxels ** len(inv) / np.prod(inv)) ** (1.0 / len(inv))
    patch = np.round(inv * scale).astype(int)
    return tuple(int(min(p, max(1, round(m)))) for p, m in zip(patch, median_shape, strict=True))


def topology(
    spacing: Sequence[float],
    patch_size: Sequence[float],
    *,
    min_edge: int = MIN_BOTTLENECK_EDGE,
    max_stages: int = 7,
) -> Topology:
    """Kernel sizes and strides for a patch, halving axes while they stay large and fine enough.

    An axis is downsampled at a stage while its current size is >= 2*min_edge and its current
    spacing is less than twice the finest current spacing among the axes that are still that
    large (so anisotropic axes wait until the others have caught up, but not for axes that can
    no longer be halved; nnU-Net v2 does the same). A lone axis needs 3*min_edge. Kernels are 1
    along an axis until its spacing comes within 2x of the finest, then 3 (in-plane-only
    convolutions early on for thick slices); the bottleneck's kernel is 3 everywhere.

    Examples:
        >>> t = topology((1.0, 1.0, 1.0), (36, 50, 35))
        >>> t.patch_size, t.n_stages
        ((40, 56, 40), 4)
        >>> topology((4.0, 1.0, 1.0), (16, 128, 128)).kernel_sizes[:3]
        ((1, 3, 3), (1, 3, 3), (3, 3, 3))
    """
    dim = len(spacing)
    sp = [float(s) for s in spacing]
    size = [float(s) for s in patch_size]
    three = [False] * dim

    def kernel() -> tuple[int, ...]:
        finest = min(sp)
        for a in range(dim):
            three[a] = three[a] or sp[a] / finest < 2
        return tuple(3 if t else 1 for t in three)

    kernels = [kernel()]
    strides = [(1,) * dim]
    while len(strides) < max_stages:
        large = [a for a in range(dim) if size[a] >= 2 * min_edge]
        if not large:
            break
        finest = min(sp[a] for a in large)
        valid = [a for a in large if sp[a] / finest < 2]
        if len(valid) == 1 and size[valid[0]] < 3 * min_edge:
            valid = []
        if not valid:
            break
        for a in valid:
            sp[a] *= 2
            size[a] /= 2
        strides.append(tuple(2 if a in valid else 1 for a in range(dim)))
        kernels.append(kernel())
    kernels[-1] = (3,) * dim
    div = [int(np.prod([s[a] for s in strides])) for a in range(dim)]
    padded = tuple(int(math.ceil(p / d) * d) for p, d in zip(patch_size, div, strict=True))
    return Topology(padded, tuple(kernels), tuple(strides))


def features_per_stage(n_stages: int, *, base: int = 32, cap: int = 320) -> tuple[int, ...]:
    """Feature channels per stage: ``base * 2**k`` capped (320 in 3D, 512 in 2D).

    Examples:
        >>> features_per_stage(6)
        (32, 64, 128, 256, 320, 320)
    """
    return tuple(min(base * 2**k, cap) for k in range(n_stages))


def _stage_voxels(topo: Topology) -> list[float]:
    """Voxels of one feature map at each stage's resolution."""
    size = np.asarray(topo.patch_size, dtype=np.float64)
    sizes = []
    for s in topo.strides:
        size = size / np.asarray(s)
        sizes.append(float(np.prod(size)))
    return sizes


def _decoder_elements(sizes: Sequence[float], features: Sequence[int], n_classes: int, n_conv: int) -> float:
    """Decoder stage k (all but the bottleneck): upsampling output, ``n_conv`` convs, a head."""
    return sum((1 + n_conv) * f * v + n_classes * v for f, v in zip(features[:-1], sizes[:-1], strict=True))


def feature_map_elements(topo: Topology, features: Sequence[int], *, n_classes: int, n_conv: int = 2) -> int:
    """Elements of every conv output of one sample: the memory a U-Net's activations need.

    Encoder stage k: ``n_conv`` convs of ``features[k]`` channels at that stage's size. Decoder
    stage k (all but the bottleneck): the upsampling output, ``n_conv`` convs, and a
    segmentation head (deep supervision) of ``n_classes`` channels.

    Examples:
        >>> t = Topology((8, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2)))
        >>> feature_map_elements(t, (4, 8), n_classes=2)   # enc 2*4*64 + 2*8*16, dec 64*(4+8+2)
        1664
    """
    sizes = _stage_voxels(topo)
    enc = sum(n_conv * f * v for f, v in zip(features, sizes, strict=True))
    return int(enc + _decoder_elements(sizes, features, n_classes, n_conv))


def residual_feature_map_elements(
    topo: Topology,
    features: Sequence[int],
    blocks: Sequence[int],
    *,
    n_classes: int,
    decoder_convs: int = 1,
) -> int:
    """:func:`feature_map_elements` of a residual-encoder U-Net (nnU-Net's ``ResidualEncoderUNet``).

    Counted as nnU-Net counts it, because its ResEnc reference budgets (680e6 for M, ...) were
    calibrated against that count: a stem conv of ``features[0]`` channels at full resolution;
    encoder stage k: ``blocks[k]`` residual blocks of two convs each, the first block of a
    downsampling stage also its skip projection (1x1 conv, one more map of that size); the
    decoder as the plain one with ``decoder_convs`` convs per stage.

    Examples:
        >>> t = Topology((8, 8), ((3, 3), (3, 3)), ((1, 1), (2, 2)))
        >>> # stem 4*64, stage 0: 2*4*64, stage 1: 2*2*8*16 + skip 8*16, decoder 64*(4+4+2)
        >>> residual_feature_map_elements(t, (4, 8), (1, 2), n_classes=2)
        2048
    """
    sizes = _stage_voxels(topo)
    enc = features[0] * sizes[0]
    for k, (f, v, n) in enumerate(zip(features, sizes, blocks, strict=True)):
        projects = k > 0 and (any(s != 1 for s in topo.strides[k]) or features[k - 1] != f)
        enc += 2 * n * f * v + (f * v if projects else 0)
    return int(enc + _decoder_elements(sizes, features, n_classes, decoder_convs))


class MemoryBudget(NamedTuple):
    """What a configuration's patch and batch are sized against, in feature-map elements.

    Attributes:
        patch_limit: the most one sample may need; the patch shrinks until it fits.
        batch_budget: what the whole batch may need; the batch size is this over one sample's.
    """

    patch_limit: float
    batch_budget: float


def memory_budget(
    reference: tuple[float, int], *, reference_gb: float, gpu_memory_gb: float, patch_batch: int
) -> MemoryBudget:
    """Scale a reference budget (elements at a batch size, measured on a GPU of ``reference_gb``)
    to ``gpu_memory_gb``, and size the patch for a batch of ``patch_batch``.

    nnU-Net's default planner shrinks the patch until a batch of 2 (:data:`MIN_BATCH`) fits; its
    ResEnc planners until the reference batch fits (``patch_batch`` = the reference's). In 3D,
    where the reference batch is 2, the two agree; in 2D (reference batch 12) ResEnc plans
    smaller patches and bigger batches.

    Examples:
        >>> memory_budget((560e6, 2), reference_gb=8, gpu_memory_gb=8, patch_batch=2)
        MemoryBudget(patch_limit=560000000.0, batch_budget=1120000000.0)
        >>> memory_budget((2.1e9, 2), reference_gb=24, gpu_memory_gb=12, patch_batch=2)
        MemoryBudget(patch_limit=1050000000.0, batch_budget=2100000000.0)
        >>> memory_budget((85e6, 12), reference_gb=8, gpu_memory_gb=8, patch_batch=2).patch_limit
        510000000.0
    """
    elements, ref_batch = reference
    scaled = elements * gpu_memory_gb / reference_gb
    return MemoryBudget(patch_limit=scaled * ref_batch / patch_batch, batch_budget=scaled * ref_batch)


def batch_size(
    estimate: float,
    *,
    budget: float,
    patch_voxels: int,
    dataset_voxels: float,
    max_fraction: float = MAX_DATASET_FRACTION_PER_BATCH,
    minimum: int = MIN_BATCH,
) -> int:
    """Samples per batch: as many as the memory budget holds, but no batch may cover more than
    ``max_fraction`` of the whole dataset (small datasets would otherwise see every voxel in
    every step and overfit), and never fewer than ``minimum``.

    Args:
        estimate: :func:`feature_map_elements` of one sample.
        budget: feature-map elements the GPU holds for a whole batch.
        patch_voxels: voxels in one patch.
        dataset_voxels: voxels of all cases at the target spacing.

    Examples:
        >>> batch_size(1e6, budget=1e9, patch_voxels=89600, dataset_voxels=12_600_000)
        7
    """
    by_memory = round(budget / estimate)
    by_coverage = round(max_fraction * dataset_voxels / patch_voxels)
    return int(max(minimum, min(by_memory, by_coverage)))


def slices_for_2p5d(slice_spacing: float, *, context_mm: float = 15.0) -> int:
    """K, the number of adjacent slices a 2.5D network sees: an odd count spanning ~15 mm.

    Thick slices (5 mm and up) give 3; 3 mm slices give 5; thin ones at most 7, beyond which
    the 3D network is the better tool anyway. The centre slice is the one segmented.

    Examples:
        >>> [slices_for_2p5d(s) for s in (1.0, 2.5, 3.0, 4.0, 6.5)]
        [7, 5, 5, 3, 3]
    """
    k = 2 * round((context_mm / slice_spacing - 1) / 2) + 1
    return int(min(7, max(3, k)))


def offers_2p5d(spacing: Sequence[float], *, threshold: float = ANISOTROPY_THRESHOLD) -> bool:
    """Whether the plan offers 2.5D: when slices are much thicker than the in-plane resolution.

    There a 3D network's kernels see little across slices while a 2D one sees nothing; K stacked
    slices give the 2D network the through-plane context cheaply. ``spacing`` is after transpose
    (coarsest axis first).

    Examples:
        >>> offers_2p5d((3.6, 0.6, 0.6)), offers_2p5d((1.0, 1.0, 1.0))
        (True, False)
    """
    return spacing[0] >= threshold * min(spacing[1:])
