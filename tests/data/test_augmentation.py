"""The augmentation pipelines: output layout per kind, dummy 2D, and the scoped global RNG."""

from __future__ import annotations

import dataclasses
import random

import numpy as np
import pytest
import torch

from autoseg.data.augmentation import seeded_global_rng, training_transforms, validation_transforms
from autoseg.data.geometry import spatial_params


def _batch(config, *, channels: int = 1, batch: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    size = spatial_params(config).initial_patch
    rng = np.random.default_rng(seed)
    seg = rng.integers(0, 3, (batch, 1, *size)).astype(np.uint8)
    return {"data": rng.normal(size=(batch, channels, *size)).astype(np.float32), "seg": seg}


@pytest.mark.parametrize("name", ["3d_fullres", "2d", "dummy-2d"])
def test_training_pipeline_output(prepared, name):
    config = prepared.config("3d_fullres" if name == "dummy-2d" else name)
    if name == "dummy-2d":
        config = dataclasses.replace(config, patch_size=(6, 40, 32))
        assert spatial_params(config).dummy_2d
    pipeline = training_transforms(config)
    for seed in range(4):
        with seeded_global_rng(np.random.default_rng(seed)):
            out = pipeline(**_batch(config, seed=seed))
        assert set(out) == {"data", "target"}
        assert out["data"].shape == (3, 1, *config.patch_size)
        assert out["target"].shape == (3, 1, *config.patch_size)
        assert out["data"].dtype == torch.float32
        assert out["target"].dtype == torch.int64
        assert set(out["target"].unique().tolist()) <= {0, 1, 2}


def test_numpy_ending(prepared):
    config = prepared.config("2d")
    out = training_transforms(config, tensors=False)(**_batch(config))
    assert out["data"].dtype == np.float32
    assert out["target"].dtype == np.int16


def test_validation_is_a_centre_crop(prepared):
    config = prepared.config("3d_fullres")
    batch = _batch(config)
    big = batch["data"].copy()
    out = validation_transforms(config)(**batch)
    starts = [(s - p) // 2 for s, p in zip(big.shape[2:], config.patch_size, strict=True)]
    crop = big[
        (slice(None), slice(None), *(slice(a, a + p) for a, p in zip(starts, config.patch_size, strict=True)))
    ]
    np.testing.assert_array_equal(out["data"].numpy(), crop)


def test_seeded_global_rng_is_reproducible_and_restores_state():
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.random(), random.random()
    np.random.seed(123)
    random.seed(123)
    draws = []
    for _ in range(2):
        with seeded_global_rng(np.random.default_rng(5)):
            draws.append((np.random.random(), random.random()))
    assert draws[0] == draws[1]
    assert (np.random.random(), random.random()) == (expected_np, expected_py)
