"""Training data: cross-validation splits, patch sampling, augmentation and batch loading."""

from __future__ import annotations

from autoseg.data.augmentation import training_transforms, validation_transforms
from autoseg.data.geometry import SpatialParams, initial_patch_size, spatial_params
from autoseg.data.loader import BatchLoader, PatchDataset, forced_foreground, make_loader
from autoseg.data.sampling import sample_patch
from autoseg.data.splits import fold_cases, groups_from_regex, load_or_create_splits, make_splits

__all__ = [
    "BatchLoader",
    "PatchDataset",
    "SpatialParams",
    "fold_cases",
    "forced_foreground",
    "groups_from_regex",
    "initial_patch_size",
    "load_or_create_splits",
    "make_loader",
    "make_splits",
    "sample_patch",
    "spatial_params",
    "training_transforms",
    "validation_transforms",
]
