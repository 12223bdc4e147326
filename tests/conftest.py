"""Fixtures shared across test folders."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from autoseg.cli import main
from autoseg.io.samples import copy_sample_subset
from tests.budget import tiny


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (``scripts/test.sh`` runs one worker per core, at most 4), every worker
    and the processes its tests start compute on one thread: two workers with a thread per core
    each would oversubscribe the cores, and OpenMP's waiting threads then slow a step many times
    over. A run without workers keeps torch's default."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = "1"  # inherited by the autoseg and torchrun children
        torch.set_num_threads(1)


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns) for p in root.rglob("*")}


@pytest.fixture(scope="session")
def trained_work(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A work folder where dataset ``hippo`` (4 real sample cases) has 3d_fullres and 2d trained
    on fold ``all`` for 2 iterations: enough to exercise prediction and export, not accuracy.

    Shared by the whole session, so read-only: a test that writes into a work folder takes
    :func:`trained_copy`. Whether any test changed it is checked when the session ends.
    """
    root = tmp_path_factory.mktemp("trained")
    ds = copy_sample_subset(root / "hippo", 4)
    work = root / "work"
    common = ["--work-dir", str(work), "-q"]
    assert main(["plan", str(ds), "--preprocess-workers", "1", *common]) == 0
    for config in ("3d_fullres", "2d"):
        assert (
            main(
                [
                    "train",
                    "hippo",
                    config,
                    "all",
                    *tiny(),
                    *common,
                ]
            )
            == 0
        )
    before = _snapshot(work)
    yield work
    after = _snapshot(work)
    changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
    assert not changed, f"a test changed the shared trained_work folder ({changed[:5]}); use trained_copy"


@pytest.fixture
def trained_copy(trained_work: Path, tmp_path: Path) -> Path:
    """A private copy of :func:`trained_work` for a test that writes into its work folder.

    Hard links, not copies (200 MB): autoseg writes every file to a temporary and renames it,
    which replaces the link and leaves the shared file as it was.
    """
    dst = tmp_path / "work"
    shutil.copytree(trained_work, dst, copy_function=os.link)
    return dst


@pytest.fixture
def one_torch_thread():
    """Tiny networks and tensors on one thread: with 2 threads on a busy 2-core machine, OpenMP
    waits dominate (up to ~50x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
