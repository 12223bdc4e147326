"""Fixtures shared across test folders."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from autoseg.cli import main
from autoseg.io.samples import copy_sample_subset


@pytest.fixture(scope="session")
def trained_work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder where dataset ``hippo`` (4 real sample cases) has 3d_fullres and 2d trained
    on fold ``all`` for 2 iterations: enough to exercise prediction and export, not accuracy."""
    root = tmp_path_factory.mktemp("trained")
    ds = copy_sample_subset(root / "hippo", 4)
    work = root / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--workers", "1", *common]) == 0
    for config in ("3d_fullres", "2d"):
        assert (
            main(
                [
                    "train",
                    "hippo",
                    config,
                    "all",
                    "--epochs",
                    "1",
                    "--iters-per-epoch",
                    "2",
                    "--val-iters",
                    "1",
                    "--batch-size",
                    "2",
                    "--device",
                    "cpu",
                    "--workers",
                    "0",
                    *common,
                ]
            )
            == 0
        )
    return work


@pytest.fixture
def one_torch_thread():
    """Tiny networks and tensors on one thread: with 2 threads on a busy 2-core machine, OpenMP
    waits dominate (up to ~50x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
