"""Planner presets: extra configurations planned by other rules, one table (:data:`PRESETS`).

The presets are nnU-Net's residual-encoder ones ("nnU-Net Revisited", Isensee et al. 2024): a
U-Net whose encoder stages hold several residual blocks (1, 3, 4, 6, 6, 6, ... per stage) and
whose decoder has one convolution per stage, sized against larger memory references than the
plain U-Net's, each measured for a GPU size (M: 8 GB, L: 24 GB, XL: 40 GB). They also drop the
default rule that a batch may cover at most 5 % of the dataset. nnU-Net reports them better
than its default on most of its benchmarks (ResEnc L is its recommendation) at more training
time; they are therefore offered as extra configurations that cross-validation and
``autoseg find-best`` compare with the default ones, never as a replacement.

One row, ``resenc``, is autoseg's own and planned by default for 3D data: the same residual
encoder (ResEnc M's blocks) at the base's patch, topology and batch, which is the network autoseg's
budget curve measured (hippocampus, fold 0, 2 CPU cores: at 1440 iterations its mean Dice over 3
seeds, 0.8720, beat the plain ``3d_fullres`` beyond that one's seed spread, 0.8672-0.8674; at 360
iterations it was within the spread, so ``3d_fullres`` itself stays the plain U-Net;
``benchmarks/results/budget_curve.md``). The memory-sized presets change the batch too (ResEnc M
asks 58 on hippocampus, 8x the compute per step), which was not what was measured.

A preset configuration is named ``<base>_<preset>`` (``3d_fullres_resenc_m``) and keeps its
base's spacing, normalisation and resampling, so it trains on the base's preprocessed data (the
preprocessed store is keyed by exactly those values: :func:`~autoseg.preprocessing.store.store_key`).
"""

from __future__ import annotations

from dataclasses import dataclass

from autoseg.planning.kinds import Kind
from autoseg.planning.rules import MAX_DATASET_FRACTION_PER_BATCH

#: Residual blocks per encoder stage of nnU-Net's ResEnc presets; deeper stages keep 6.
RESENC_BLOCKS = (1, 3, 4, 6)


@dataclass(frozen=True)
class Preset:
    """How a preset plans its configurations.

    Attributes:
        name: the ``--preset`` value and the configuration-name suffix.
        title: what people call it.
        gpu_memory_gb: the GPU the references were measured for; the default budget.
        reference_3d: feature-map elements that fit that GPU at the 3D reference batch (2).
        reference_2d: the same for 2D networks (reference batch 12).
        blocks: residual blocks per encoder stage; stages beyond the list repeat its last value.
        decoder_convs: convolutions per decoder stage.
        max_dataset_fraction: the most of the dataset one batch may cover (1: no cap).
        sized_like_base: keep the base configuration's patch, topology and batch, only swapping
            the network for the residual one (the batch shrinks where that network would not
            fit the plan's memory budget); planned for the plan's GPU, not :attr:`gpu_memory_gb`.
        planned_by_default: planned for 3D data without ``--preset``.
    """

    name: str
    title: str
    gpu_memory_gb: float
    reference_3d: float
    reference_2d: float
    blocks: tuple[int, ...] = RESENC_BLOCKS
    decoder_convs: int = 1
    max_dataset_fraction: float = 1.0
    sized_like_base: bool = False
    planned_by_default: bool = False

    def reference(self, kind: Kind) -> tuple[float, int]:
        """``(elements, batch size)`` at :attr:`gpu_memory_gb` for a kind's network; the batch
        size is the kind's reference batch (nnU-Net's presets keep 2 in 3D, 12 in 2D)."""
        elements = self.reference_3d if kind.spatial_dims == 3 else self.reference_2d
        return elements, kind.reference[1]

    def blocks_per_stage(self, n_stages: int) -> tuple[int, ...]:
        """Residual blocks of each of ``n_stages`` encoder stages.

        Examples:
            >>> PRESETS["resenc_m"].blocks_per_stage(6)
            (1, 3, 4, 6, 6, 6)
            >>> PRESETS["resenc_l"].blocks_per_stage(3)
            (1, 3, 4)
        """
        return tuple(self.blocks[min(i, len(self.blocks) - 1)] for i in range(n_stages))

    def configuration_name(self, base: str) -> str:
        """``3d_fullres`` -> ``3d_fullres_resenc_m``."""
        return f"{base}_{self.name}"


#: Every preset, by ``--preset`` name (nnU-Net v2's ``nnUNetPlannerResEnc{M,L,XL}``, and
#: autoseg's ``resenc``: ResEnc M's network at the base's size, planned by default).
PRESETS: dict[str, Preset] = {
    "resenc": Preset(
        "resenc",
        "ResEnc base-sized",
        8.0,
        680e6,
        135e6,
        max_dataset_fraction=MAX_DATASET_FRACTION_PER_BATCH,
        sized_like_base=True,
        planned_by_default=True,
    ),
    "resenc_m": Preset("resenc_m", "ResEnc M", 8.0, 680e6, 135e6),
    "resenc_l": Preset("resenc_l", "ResEnc L", 24.0, 2.1e9, 380e6),
    "resenc_xl": Preset("resenc_xl", "ResEnc XL", 40.0, 3.6e9, 560e6),
}
