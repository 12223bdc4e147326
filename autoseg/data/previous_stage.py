"""Training batches of a cascade stage: the previous stage's prediction as augmented input channels.

The loader cuts the previous stage's map (stored indices on the case's grid, written before
training by :mod:`autoseg.training.cascade`) at the same place as the segmentation and carries it
as a second segmentation channel through the augmentation pipeline, so that it moves with every
spatial transform exactly as the segmentation does (rotation, scaling, mirroring; label-wise
interpolation) and no intensity transform touches it. After the pipeline,
:meth:`PreviousStageInput.move_to_data` takes it out of the target, one-hot encodes it
(:func:`~autoseg.preprocessing.previous_stage.one_hot`) and appends it to the data channels:
nnU-Net's ``MoveSegAsOneHotToData``.

In training (not validation) two perturbations follow, as in nnU-Net v2 (``nnunet_v2_facts.md``
§5, "cascade one-hot plus morphology/CC perturbations"), because at prediction time the previous
stage's errors are unlike the cross-validation ones the network trained on, and a cascade that
trusts its input copies them:

* with probability :data:`P_MORPHOLOGY` per sample, every channel in random order gets a random
  binary dilation, erosion, opening or closing with a ball of radius 1-7 voxels (nnU-Net's
  ``ApplyRandomBinaryOperatorTransform``, strel (1, 8)); voxels a channel gains are taken from
  the other channels, so plain labels stay one-hot;
* with probability :data:`P_REMOVE_COMPONENT` per sample, every channel loses one random connected
  component (26-connected in 3D) among those covering less than :data:`MAX_REMOVED_SHARE` of the
  patch (``RemoveRandomConnectedComponentFromOneHotEncodingTransform``).

The balls are Euclidean and applied through distance transforms (time independent of the
radius); voxels outside the patch are not treated as background. Everything random comes from
the batch's ``numpy.random.Generator``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from autoseg.labels import LabelScheme
from autoseg.preprocessing.previous_stage import one_hot

__all__ = [
    "MAX_REMOVED_SHARE",
    "P_MORPHOLOGY",
    "P_REMOVE_COMPONENT",
    "PreviousStageInput",
    "perturb",
    "random_morphology",
    "remove_random_component",
]

#: nnU-Net v2's probabilities per sample (``apply_probability`` 0.4 and 0.2).
P_MORPHOLOGY = 0.4
P_REMOVE_COMPONENT = 0.2
#: Ball radii drawn for the morphology, in voxels: 1 to 7 (nnU-Net's strel_size (1, 8)).
STREL_RADII = (1, 8)
#: Only components smaller than this share of the patch may be removed (nnU-Net: 15%).
MAX_REMOVED_SHARE = 0.15


@dataclass(frozen=True)
class PreviousStageInput:
    """Where a cascade stage's loader finds the previous stage's predictions, and their labels.

    Pickles to a path and the label scheme (the loader's worker processes open the maps).

    Attributes:
        folder: ``CASE.npy`` per case: ``(Z, Y, X)`` stored indices on the store's grid.
        scheme: the label scheme (one channel per foreground entry).
        digest: a hash of the previous-stage predictions these maps were made from (which fold's
            file of each case, and its content); checkpoints record it, so ``--continue`` can
            refuse when the previous stage was retrained in between. None: not known.
    """

    folder: Path
    scheme: LabelScheme
    digest: str | None = None

    @property
    def channels(self) -> int:
        """Input channels added: one per foreground label or region."""
        return len(self.scheme.entries)

    def path(self, case_id: str) -> Path:
        """The map of one case."""
        return self.folder / f"{case_id}.npy"

    def load(self, case_id: str) -> np.ndarray:
        """The map of one case, memory-mapped read-only."""
        return np.load(self.path(case_id), mmap_mode="r", allow_pickle=False)

    def missing(self, case_ids: list[str] | tuple[str, ...]) -> list[str]:
        """The cases whose map is not there."""
        return [c for c in case_ids if not self.path(c).is_file()]

    def move_to_data(self, batch: dict[str, Any], rng: np.random.Generator | None) -> dict[str, Any]:
        """Move target channel 1 (the previous stage's map, transformed with the segmentation)
        to one-hot data channels; perturb them when ``rng`` is given (training).

        Args:
            batch: the pipeline's numpy output, ``data`` ``(B, C, *s)`` float32, ``target``
                ``(B, 2, *s)`` stored indices.
            rng: the batch's generator, or None for no perturbation (validation).

        Returns:
            The batch with ``data`` ``(B, C + channels, *s)`` float32 and ``target`` ``(B, 1, *s)``.
        """
        target = batch["target"]
        hot = np.stack([one_hot(target[b, 1], self.scheme, dtype=np.bool_) for b in range(len(target))])
        if rng is not None:
            for sample in hot:
                perturb(sample, rng)
        batch["target"] = np.ascontiguousarray(target[:, :1])
        batch["data"] = np.ascontiguousarray(np.concatenate([batch["data"], hot.astype(np.float32)], axis=1))
        return batch


def perturb(channels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """nnU-Net's perturbations of one sample's one-hot channels ``(E, *s)`` bool, in place:
    random morphology with :data:`P_MORPHOLOGY`, then component removal with
    :data:`P_REMOVE_COMPONENT` (see the module docstring)."""
    if rng.random() < P_MORPHOLOGY:
        random_morphology(channels, rng)
    if rng.random() < P_REMOVE_COMPONENT:
        remove_random_component(channels, rng)
    return channels


def _dilate(mask: np.ndarray, r: float) -> np.ndarray:
    if not mask.any() or mask.all():
        return mask.copy()
    return np.asarray(ndimage.distance_transform_edt(~mask) <= r)


def _erode(mask: np.ndarray, r: float) -> np.ndarray:
    if not mask.any() or mask.all():
        return mask.copy()
    return np.asarray(ndimage.distance_transform_edt(mask) > r)


#: The binary operators drawn from, as nnU-Net's: dilation, erosion, opening, closing.
OPERATORS: dict[str, Callable[[np.ndarray, float], np.ndarray]] = {
    "dilation": _dilate,
    "erosion": _erode,
    "opening": lambda m, r: _dilate(_erode(m, r), r),
    "closing": lambda m, r: _erode(_dilate(m, r), r),
}


def random_morphology(channels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every channel of ``(E, *s)`` bool, in random order, through a random operator of
    :data:`OPERATORS` with a ball of random radius in ``STREL_RADII``; voxels a channel gains are
    removed from the others. In place; returns ``channels``.

    Examples:
        >>> ch = np.zeros((1, 9, 9), dtype=bool)
        >>> ch[0, 3:6, 3:6] = True
        >>> _ = random_morphology(ch, np.random.default_rng(1))
        >>> int(ch.sum()) != 9  # the square grew or shrank
        True
    """
    names = list(OPERATORS)
    for c in rng.permutation(len(channels)):
        op = OPERATORS[names[int(rng.integers(len(names)))]]
        radius = float(rng.integers(*STREL_RADII))
        result = op(channels[c], radius)
        gained = result & ~channels[c]
        if gained.any():
            channels[:, gained] = False
        channels[c] = result
    return channels


def remove_random_component(channels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Remove from each channel of ``(E, *s)`` bool one random connected component among those
    smaller than :data:`MAX_REMOVED_SHARE` of the patch (fully connected). In place.

    Examples:
        >>> ch = np.zeros((1, 10, 10), dtype=bool)
        >>> ch[0, 1, 1] = ch[0, 8, 8] = True
        >>> int(remove_random_component(ch, np.random.default_rng(0)).sum())
        1
    """
    limit = MAX_REMOVED_SHARE * channels[0].size if len(channels) else 0
    structure = ndimage.generate_binary_structure(channels.ndim - 1, channels.ndim - 1)
    for c in range(len(channels)):
        if not channels[c].any():
            continue
        labelled, n = ndimage.label(channels[c], structure=structure)
        sizes = np.bincount(labelled.ravel(), minlength=n + 1)[1:]
        small = np.flatnonzero(sizes < limit) + 1
        if len(small):
            channels[c][labelled == small[rng.integers(len(small))]] = False
    return channels
