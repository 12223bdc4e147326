"""Resuming is exact: a run killed (or stopped by a signal) and continued with ``--continue`` ends
with the weights, optimiser state and ``progress.jsonl`` records (times aside) of the run that was
never stopped, whatever the moment of the kill and the number of augmentation workers; a torn last
record is dropped, a damaged middle one refused; changed settings are named, and those that change
what the run learns are refused.

A ``kill -9`` is simulated in-process by raising an exception that nothing in autoseg catches
(nothing after it is written, as after SIGKILL), and once for real in a subprocess. Every run is
the 2d configuration of 4 sample cases for 4 epochs of 2 steps, on one torch thread, so the
reference and the interrupted runs do the same arithmetic.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import torch

from autoseg.cli import main
from autoseg.io.samples import copy_sample_subset
from autoseg.training.checkpoint import load_checkpoint
from autoseg.training.progress import read_records
from autoseg.training.trainer import Trainer
from tests.budget import tiny

N_CASES = 4
EPOCHS = 4
ITERS = 2
FOLD = Path("hippo/models/2d/fold_all")


class Killed(BaseException):
    """A simulated ``kill -9``: no autoseg handler catches it, so nothing more is saved."""


@pytest.fixture(scope="module", autouse=True)
def _one_thread() -> Iterator[None]:
    """One torch thread everywhere (the subprocess too): the same arithmetic in every run."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with 4 cases planned and the 2d store preprocessed (by the reference run)."""
    root = tmp_path_factory.mktemp("resume")
    ds = copy_sample_subset(root / "hippo", N_CASES)
    work = root / "work"
    assert main(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
    assert main(_args(work, "--checkpoint-every", "1")) == 0
    return work


@pytest.fixture(scope="module")
def reference(planned: Path) -> dict[str, Any]:
    """The uninterrupted run: its final checkpoint and records."""
    return _result(planned)


@pytest.fixture
def work(planned: Path, tmp_path: Path) -> Path:
    """A fresh work folder sharing the preprocessed store (hard links; autoseg replaces files by
    renaming, so the shared ones are never written through)."""
    dst = tmp_path / "work"
    shutil.copytree(planned, dst, copy_function=os.link, ignore=shutil.ignore_patterns("models"))
    return dst


def _args(work: Path, *extra: str, workers: int = 0) -> list[str]:
    return [
        "train",
        "hippo",
        "2d",
        "all",
        "--work-dir",
        str(work),
        "--precision",
        "fp32",
        *tiny(epochs=EPOCHS, iters=ITERS, augment_workers=workers),
        "--seed",
        "7",
        "-q",
        *extra,
    ]


def _result(work: Path) -> dict[str, Any]:
    fold = work / FOLD
    return {
        "final": load_checkpoint(fold / "checkpoint_final.pt"),
        "best": load_checkpoint(fold / "checkpoint_best.pt"),
        "records": [
            {k: v for k, v in r.items() if k != "seconds"} for r in read_records(fold / "progress.jsonl")
        ],
    }


def _assert_same_run(work: Path, reference: dict[str, Any]) -> None:
    """Bit-identical final (and best) weights, optimiser and random states, the same records."""
    got = _result(work)
    assert got["records"] == reference["records"]
    assert len(got["records"]) == EPOCHS
    for name in ("final", "best"):
        a, b = got[name], reference[name]
        assert a["epoch"] == b["epoch"]
        assert a["network"].keys() == b["network"].keys()
        for key, t in a["network"].items():
            assert torch.equal(t, b["network"][key]), f"{name}: network {key} differs"
        _assert_equal_nested(a["optimizer"], b["optimizer"], f"{name}: optimizer")
        _assert_equal_nested(a["rng"], b["rng"], f"{name}: random states")


def _assert_equal_nested(a: Any, b: Any, where: str) -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor), where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            _assert_equal_nested(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, list | tuple):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _assert_equal_nested(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def _kill_when(monkeypatch: pytest.MonkeyPatch, *, step: int | None = None, saved: int | None = None) -> None:
    """Simulate a kill -9 before optimiser step ``step`` (counted over the run from 0) or right
    after ``checkpoint_latest.pt`` of epoch ``saved`` is written."""
    steps = [0]
    real_step, real_save = Trainer._step, Trainer.save

    def fake_step(self: Trainer, loader: Any) -> float:
        if steps[0] == step:
            raise Killed
        steps[0] += 1
        return real_step(self, loader)

    def fake_save(self: Trainer, name: str) -> None:
        real_save(self, name)
        if name == "latest" and self.state.epoch == saved:
            raise Killed

    monkeypatch.setattr(Trainer, "_step", fake_step)
    monkeypatch.setattr(Trainer, "save", fake_save)


def _killed_run(work: Path, monkeypatch: pytest.MonkeyPatch, *extra: str, **when: int) -> None:
    with monkeypatch.context() as m:
        _kill_when(m, **when)
        with pytest.raises(Killed):
            main(_args(work, *extra))


@pytest.mark.parametrize(
    ("checkpoint_every", "when", "lost"),
    [
        ("1", {"saved": 2}, 0),  # at an epoch boundary, right after the checkpoint
        ("2", {"step": 3 * ITERS + 1}, 1),  # mid-epoch 3: epoch 2 was not saved, and is redone
    ],
    ids=["boundary", "mid-epoch"],
)
def test_killed_run_continues_exactly(
    work: Path,
    reference: dict[str, Any],
    monkeypatch: pytest.MonkeyPatch,
    checkpoint_every: str,
    when: dict[str, int],
    lost: int,
) -> None:
    _killed_run(work, monkeypatch, "--checkpoint-every", checkpoint_every, **when)
    latest = load_checkpoint(work / FOLD / "checkpoint_latest.pt")
    assert latest["epoch"] == 2
    assert len(read_records(work / FOLD / "progress.jsonl")) == 2 + lost
    assert main(_args(work, "--checkpoint-every", checkpoint_every, "--continue")) == 0
    _assert_same_run(work, reference)


def test_signal_mid_epoch_saves_the_step_and_continues_exactly(
    work: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM/Ctrl-C after step 1 of epoch 1: the checkpoint records the step and its loss."""
    real_step = Trainer._step
    steps = [0]

    def step_then_signal(self: Trainer, loader: Any) -> float:
        loss = real_step(self, loader)
        steps[0] += 1
        if steps[0] == ITERS + 1:
            self._request_stop(signal.SIGTERM, None)
        return loss

    with monkeypatch.context() as m:
        m.setattr(Trainer, "_step", step_then_signal)
        assert main(_args(work, "--checkpoint-every", "100")) == 130
    latest = load_checkpoint(work / FOLD / "checkpoint_latest.pt")
    assert (latest["epoch"], latest["iteration"], len(latest["losses"])) == (1, 1, 1)
    assert main(_args(work, "--checkpoint-every", "100", "--continue")) == 0
    _assert_same_run(work, reference)


def test_weight_average_is_the_saved_model_and_continues_exactly(
    work: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--weight-ema: the checkpoint's ``network`` (what prediction loads) is the moving average of
    the weights after every step, computed here by hand; the trained weights and the average's
    step count ride beside it, so a run killed mid-epoch continues to the same average."""
    ema = ("--weight-ema", "0.6", "--checkpoint-every", "2")
    uninterrupted = tmp_path / "uninterrupted"
    shutil.copytree(work, uninterrupted, copy_function=os.link)
    after_steps: list[dict[str, torch.Tensor]] = []
    update = torch.optim.swa_utils.AveragedModel.update_parameters

    def recording(self: torch.optim.swa_utils.AveragedModel, model: torch.nn.Module) -> None:
        after_steps.append({k: v.detach().clone() for k, v in model.state_dict().items()})
        update(self, model)

    with monkeypatch.context() as m:
        m.setattr(torch.optim.swa_utils.AveragedModel, "update_parameters", recording)
        assert main(_args(uninterrupted, *ema)) == 0
    reference = _result(uninterrupted)
    final = reference["final"]
    assert len(after_steps) == final["averaged_steps"] == EPOCHS * ITERS
    average = dict(after_steps[0])
    for weights in after_steps[1:]:
        average = {k: 0.6 * average[k] + 0.4 * w for k, w in weights.items()}
    for key, t in final["network"].items():
        assert torch.allclose(t, average[key], atol=1e-6), key
        assert torch.equal(final["trained_network"][key], after_steps[-1][key]), key
    assert any(not torch.equal(final["network"][k], final["trained_network"][k]) for k in average)

    _killed_run(work, monkeypatch, *ema, step=3 * ITERS + 1)  # mid-epoch 3, epoch 2 unsaved
    assert main(_args(work, *ema, "--continue")) == 0
    _assert_same_run(work, reference)
    got = _result(work)["final"]
    assert got["averaged_steps"] == EPOCHS * ITERS
    for key, t in got["trained_network"].items():
        assert torch.equal(t, final["trained_network"][key]), key


def test_torn_last_record_is_dropped(
    work: Path, reference: dict[str, Any], monkeypatch: pytest.MonkeyPatch, logged: list[str]
) -> None:
    """Killed while appending epoch 2's record: half a line, no newline."""
    _killed_run(work, monkeypatch, "--checkpoint-every", "2", step=3 * ITERS)
    records = work / FOLD / "progress.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    assert len(lines) == 3
    records.write_text("".join(lines[:2]) + lines[2][:25])
    assert main(_args(work, "--checkpoint-every", "2", "--continue")) == 0
    assert any(f"{records}: line 3 is half-written" in m for m in logged), logged
    _assert_same_run(work, reference)


def test_damaged_middle_record_is_one_clear_error(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    _killed_run(work, monkeypatch, "--checkpoint-every", "1", saved=2)
    records = work / FOLD / "progress.jsonl"
    lines = records.read_text().splitlines(keepends=True)
    records.write_text('{"epoch": 0, "train_lo\n' + lines[1])
    capsys.readouterr()
    assert main(_args(work, "--checkpoint-every", "1", "--continue")) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"{records}: line 1 is not a training record" in err


def _stop_before_training(self: Trainer, **_: Any) -> None:
    raise Killed


def test_changed_settings_are_named_and_learning_ones_refused(
    work: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], logged: list[str]
) -> None:
    """Settings that change what the weights learn from are refused, naming the flags that
    continue the run; harmless ones (epochs, workers, checkpoint interval...) are one warning."""
    _killed_run(work, monkeypatch, "--checkpoint-every", "1", saved=1)
    config = (work / FOLD / "train_config.json").read_text()
    changes = [
        (("--seed", "8"), "seed 7 -> 8", "--seed 7"),
        (("--batch-size", "4"), "batch_size 2 -> 4", "--batch-size 2"),
        (("--lr", "0.001"), "lr 0.01 -> 0.001", "--lr 0.01"),
        (("--iters-per-epoch", "3"), "iters_per_epoch 2 -> 3", "--iters-per-epoch 2"),
        (("--loss", "dice_focal"), "loss 'dice_ce' -> 'dice_focal'", "--loss dice_ce"),
        (("--augmentation", "none"), "augmentation 'default' -> 'none'", "--augmentation default"),
    ]
    for flags, said, fix in changes:
        capsys.readouterr()
        assert main(_args(work, "--checkpoint-every", "1", "--continue", *flags)) == 2, flags
        err = capsys.readouterr().err
        assert "--continue would change what this run learns" in err
        assert said in err, err
        assert f"continue it with {fix}," in err, err
    # refused before anything was written
    assert (work / FOLD / "train_config.json").read_text() == config

    args = _args(work, "--continue", "--epochs", str(EPOCHS + 1), "--checkpoint-every", "3", workers=1)
    with monkeypatch.context() as m:  # only the warning matters here: stop before training
        m.setattr(Trainer, "run", _stop_before_training)
        with pytest.raises(Killed):
            main(args)
    assert [m for m in logged if "changed settings" in m] == [
        f"continuing checkpoint_latest.pt with changed settings: epochs {EPOCHS} -> {EPOCHS + 1}, "
        "workers 0 -> 1, checkpoint_every 1 -> 3 (the learning-rate schedule now spans the new epoch "
        "count)"
    ]


def _poll(predicate: Callable[[], bool], proc: subprocess.Popen[str], timeout: float = 240) -> None:
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.communicate()[0]}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out waiting for the checkpoint")
        time.sleep(0.05)


def test_sigkill_with_workers_continues_exactly(work: Path, reference: dict[str, Any]) -> None:
    """A real kill -9 (two augmentation workers) as soon as epoch 1's checkpoint exists; the
    workers do not outlive the killed process; the continued run matches the reference run,
    which loaded its batches in-process."""
    latest = work / FOLD / "checkpoint_latest.pt"

    def saved() -> bool:
        try:
            return latest.is_file() and load_checkpoint(latest)["epoch"] >= 1
        except Exception:
            return False

    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    args = _args(work, "--checkpoint-every", "1", workers=2)
    cmd = [sys.executable, "-m", "autoseg", *args]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    _poll(saved, proc)
    children = _children(proc.pid)
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=30)
    assert 1 <= load_checkpoint(latest)["epoch"] < EPOCHS
    assert len(children) >= 2
    deadline = time.monotonic() + 10
    while _alive(children) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _alive(children), "augmentation workers outlived the killed training process"
    out = subprocess.run([*cmd, "--continue"], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout + out.stderr
    _assert_same_run(work, reference)


def _children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(x) for x in path.read_text().split()] if path.is_file() else []


def _alive(pids: list[int]) -> bool:
    return any(Path(f"/proc/{p}").exists() and "Z" not in _state(p) for p in pids)


def _state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return "Z"
