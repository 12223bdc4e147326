"""Out-of-memory in a training step: the step is redone in smaller micro-batches and learns what
the step without the error learns; micro-batch 1 still out of memory is one clear error.

The out-of-memory error is simulated (a network wrapper raises ``torch.OutOfMemoryError`` for
batches above a size), so these run on a CPU; the CUDA parametrisation runs on a GPU machine
(benchmarks/gpu_check.sh also forces a real one).
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg._device import cuda_available
from autoseg.errors import TrainingOutOfMemoryError
from autoseg.planning.plan import Plan
from autoseg.training import micro_batch
from autoseg.training.config import TrainConfig
from autoseg.training.micro_batch import MicroBatcher, halved, split_batch
from autoseg.training.trainer import Trainer
from tests.golden import GOLDEN_PLAN

DEVICES = [
    "cpu",
    pytest.param(
        "cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")]
    ),
]


class OutOfMemoryAbove(torch.nn.Module):
    """The network, but a forward pass of more than ``limit`` samples runs out of memory."""

    def __init__(self, inner: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.inner, self.limit = inner, limit
        self.sizes: list[int] = []

    def forward(self, x: torch.Tensor) -> object:
        self.sizes.append(int(x.shape[0]))
        if x.shape[0] > self.limit:
            raise torch.OutOfMemoryError(f"CUDA out of memory (simulated, {x.shape[0]} > {self.limit})")
        return self.inner(x)


def _trainer(tmp_path: Path, device: str, *, batch_size: int = 4, accumulate: int = 2) -> Trainer:
    plan = Plan.load(GOLDEN_PLAN)
    # per-sample Dice: the loss of a batch is then exactly the mean of its pieces' losses
    config = dataclasses.replace(plan.configuration("2d"), batch_dice=False)
    cfg = TrainConfig(
        "2d", 0, device=device, precision="fp32", batch_size=batch_size, accumulate=accumulate, seed=7
    )
    return Trainer(plan, config, cfg, None, ["a"], ["b"], tmp_path)  # type: ignore[arg-type]


def _batches(n: int, batch_size: int) -> list[dict[str, object]]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "data": torch.randn(batch_size, 1, 56, 40, generator=g),
            "target": torch.randint(0, 3, (batch_size, 1, 56, 40), generator=g),
            "case_ids": [f"c{i}" for i in range(batch_size)],
        }
        for _ in range(n)
    ]


def _weights(trainer: Trainer) -> list[torch.Tensor]:
    return [p.detach().cpu().clone() for p in trainer.network.parameters()]


@pytest.mark.usefixtures("one_torch_thread")
@pytest.mark.parametrize("device", DEVICES)
def test_out_of_memory_step_learns_what_the_whole_batch_step_learns(
    tmp_path: Path, device: str, caplog: pytest.LogCaptureFixture
) -> None:
    batches = _batches(4, 4)  # two steps of accumulate 2
    plain = _trainer(tmp_path / "plain", device)
    tight = _trainer(tmp_path / "tight", device)
    for a, b in zip(_weights(plain), _weights(tight), strict=True):
        assert torch.equal(a, b)  # same seed, same start
    wrapper = OutOfMemoryAbove(tight.network, limit=1)
    tight.model = wrapper
    plain_loader, tight_loader = iter(batches), iter(batches)
    with caplog.at_level(logging.WARNING, logger="autoseg"):
        losses = [(plain._step(plain_loader), tight._step(tight_loader)) for _ in range(2)]
    for a, b in losses:
        assert b == pytest.approx(a, rel=1e-5)
    moved = max(
        float((w - w0).abs().max())
        for w, w0 in zip(_weights(plain), _weights(_trainer(tmp_path, device)), strict=True)
    )
    assert moved > 1e-4  # the steps did change the weights
    for a, b in zip(_weights(plain), _weights(tight), strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    # 4 raised, 2 raised, then 1 fits: 8 single-sample forwards per step from then on
    assert wrapper.sizes[:2] == [4, 2]
    assert wrapper.sizes[2:] == [1] * 16
    assert tight.micro.micro == 1
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1, warnings
    assert "micro-batch 4: now micro-batch 1, 4 x 2 accumulation steps" in warnings[0]
    assert "effective batch (4 x 2 x 1 processes) is unchanged" in warnings[0]
    assert tight.cfg.batch_size == 4
    assert tight.cfg.accumulate == 2

    # a checkpoint of the lowered run continues as the same run: the micro-batch is no setting
    tight.save("latest")
    again = _trainer(tmp_path / "tight", device)
    again.restore(tmp_path / "tight" / "checkpoint_latest.pt")
    for a, b in zip(_weights(again), _weights(tight), strict=True):
        assert torch.equal(a, b)


@pytest.mark.usefixtures("one_torch_thread")
def test_micro_batch_one_out_of_memory_is_one_clear_error(tmp_path: Path) -> None:
    trainer = _trainer(tmp_path, "cpu", batch_size=2, accumulate=1)
    before = _weights(trainer)
    trainer.model = OutOfMemoryAbove(trainer.network, limit=0)
    with pytest.raises(TrainingOutOfMemoryError) as info:
        trainer._step(iter(_batches(1, 2)))
    message = str(info.value)
    assert "\n" not in message
    assert "patch 56x40" in message
    assert "micro-batch 1" in message
    assert "--batch-size" in message
    for a, b in zip(before, _weights(trainer), strict=True):
        assert torch.equal(a, b)  # the optimiser never stepped on partial gradients
    assert all(p.grad is None for p in trainer.network.parameters())


def test_split_batch_cuts_every_per_sample_value() -> None:
    batch = {"data": np.arange(5), "target": torch.arange(5), "case_ids": list("abcde"), "note": "x"}
    pieces = split_batch(batch, 3)
    assert [list(p["data"]) for p in pieces] == [[0, 1, 2], [3, 4]]
    assert [p["target"].tolist() for p in pieces] == [[0, 1, 2], [3, 4]]
    assert [p["case_ids"] for p in pieces] == [["a", "b", "c"], ["d", "e"]]
    assert all(p["note"] == "x" for p in pieces)
    assert split_batch(batch, 5)[0]["case_ids"] == list("abcde")
    with pytest.raises(ValueError, match="micro-batch size must be >= 1"):
        split_batch(batch, 0)
    assert [halved(m) for m in (5, 3, 2, 1)] == [3, 2, 1, 1]


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_cuda_cache_is_emptied_after_out_of_memory(monkeypatch: pytest.MonkeyPatch, device: str) -> None:
    """The device is a parameter: on CUDA (simulated: only its cache call is observed) the cache is
    emptied after each abandoned attempt; on the CPU there is none to empty."""
    emptied: list[int] = []
    monkeypatch.setattr(micro_batch.torch.cuda, "empty_cache", lambda: emptied.append(1))
    batcher = MicroBatcher(4, 1, 1, torch.device(device), (8, 8))
    resets: list[int] = []

    def compute(piece: dict[str, object], weight: float) -> float:
        if len(piece["data"]) > 1:  # type: ignore[arg-type]
            raise torch.OutOfMemoryError("simulated")
        return weight

    total = batcher.run(_batches(1, 4), compute, agree=lambda oom: oom, reset=lambda: resets.append(1))
    assert total == pytest.approx(1.0)  # four pieces weighted 1/4 each
    assert batcher.micro == 1
    assert len(resets) == 2
    assert len(emptied) == (2 if device == "cuda" else 0)


def test_every_rank_redoes_the_step_when_another_ran_out_of_memory() -> None:
    """With several processes the decision is the all-reduced one: a rank whose own step fitted
    still halves and redoes it when another rank ran out of memory, so all stay in step."""
    batcher = MicroBatcher(4, 1, 2, torch.device("cpu"), (8, 8))
    answers = iter([True, False])  # the other rank ran out of memory on the first attempt
    asked: list[bool] = []
    sizes: list[int] = []

    def agree(oom: bool) -> bool:
        asked.append(oom)
        return next(answers)

    def compute(piece: dict[str, object], weight: float) -> float:
        sizes.append(len(piece["data"]))  # type: ignore[arg-type]
        return weight

    batcher.run(_batches(1, 4), compute, agree=agree, reset=lambda: None)
    assert asked == [False, False]  # this rank itself never ran out
    assert sizes == [4, 2, 2]
    assert batcher.micro == 2
