"""Training on real sample cases: the loss falls, a killed run resumes, signals save the latest
checkpoint, a configuration the plan lacks is refused, and two DDP processes stay in sync.

Budgets are tiny (a few iterations of the 2d configuration with small batches), so these tests
show mechanics, not accuracy; accuracy lives in benchmarks/.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from autoseg.cli import main
from autoseg.io.samples import copy_sample_subset
from autoseg.training.checkpoint import load_checkpoint
from autoseg.training.progress import read_records
from tests.budget import tiny

N_CASES = 8


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of 8 sample cases (MSD layout), planned with 2.5d added."""
    root = copy_sample_subset(tmp_path_factory.mktemp("train") / "hippo", N_CASES)
    work = root.parent / "work"
    assert main(["plan", str(root), "--work-dir", str(work), "--workers", "1", "--add-2.5d", "-q"]) == 0
    return root


def _work(dataset: Path) -> Path:
    return dataset.parent / "work"


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env.update(OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    return env


def _train_args(
    dataset: Path,
    config: str,
    fold: str,
    *extra: str,
    epochs: int = 1,
    iters: int = 2,
    val_iters: int = 1,
    batch_size: int = 4,
) -> list[str]:
    budget = tiny(epochs=epochs, iters=iters, val_iters=val_iters, batch_size=batch_size)
    where = ["--work-dir", str(_work(dataset))]
    return ["train", "hippo", config, fold, *where, *budget, "--precision", "fp32", "-q", *extra]


def test_loss_falls(dataset: Path) -> None:
    args = _train_args(dataset, "2d", "all", "--checkpoint-every", "100", epochs=6, iters=4)
    assert main(args) == 0
    fold = _work(dataset) / "hippo/models/2d/fold_all"
    losses = [r["train_loss"] for r in read_records(fold / "progress.jsonl")]
    assert len(losses) == 6
    assert losses[-1] < 0.8 * losses[0], losses
    for name in ("final", "best"):
        assert (fold / f"checkpoint_{name}.pt").is_file()
    assert (fold / "progress.png").stat().st_size > 1000
    assert "epoch 5" in (fold / "log.txt").read_text()


def test_fold_validation_writes_summary_and_label_maps(dataset: Path) -> None:
    args = _train_args(dataset, "3d_fullres", "0", iters=1, batch_size=2)
    assert main(args) == 0
    val = _work(dataset) / "hippo/models/3d_fullres/fold_0/validation"
    summary = json.loads((val / "summary.json").read_text())
    splits = json.loads((_work(dataset) / "hippo/splits.json").read_text())
    assert sorted(c["case_id"] for c in summary["per_case"]) == splits[0]["val"]
    assert set(summary["mean"]) == {"1", "2"}
    for cid in splits[0]["val"]:
        assert (val / f"{cid}.nii.gz").is_file()
        assert (val / f"{cid}.npz").is_file()


def test_2p5d_trains_when_planned(dataset: Path) -> None:
    plan = json.loads((_work(dataset) / "hippo/plans.json").read_text())
    assert plan["configurations"]["2.5d"]["in_slices"] >= 3
    args = _train_args(dataset, "2.5d", "all")
    assert main(args) == 0
    ck = load_checkpoint(_work(dataset) / "hippo/models/2.5d/fold_all/checkpoint_final.pt")
    first = next(v for k, v in ck["network"].items() if k.endswith("weight") and v.ndim == 4)
    assert first.shape[1] == plan["configurations"]["2.5d"]["in_slices"]


def test_configuration_not_in_plan_is_refused(dataset: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(_train_args(dataset, "3d_lowres", "0")) == 2
    err = capsys.readouterr().err
    assert "3d_lowres" in err
    assert "3d_fullres, 2d, 2.5d" in err


@pytest.mark.parametrize(("schedule", "fold"), [("poly", "0"), ("poly_step", "4")])
def test_the_schedule_sets_the_rate_of_every_step(
    dataset: Path, schedule: str, fold: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """poly holds each epoch's rate for all its steps (nnU-Net's); poly_step moves it every step,
    from the fractional epoch ``epoch + iteration / iters_per_epoch``."""
    from autoseg.training.schedule import SCHEDULES

    rates: list[float] = []
    sgd_step = torch.optim.SGD.step

    def step(self: torch.optim.SGD, *args: object, **kwargs: object) -> object:
        rates.append(self.param_groups[0]["lr"])
        return sgd_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    args = _train_args(dataset, "2d", fold, "--schedule", schedule, "--lr", "0.02", epochs=2, iters=3)
    assert main([*args, "--no-val-probabilities"]) == 0
    expected = [SCHEDULES.get(schedule)(0.02, epoch + i / 3, 2) for epoch in range(2) for i in range(3)]
    assert rates == pytest.approx(expected)
    assert len(set(rates)) == {"poly": 2, "poly_step": 6}[schedule]
    assert rates[0] == 0.02


def _run_until(cmd: list[str], *, predicate, timeout: float = 240) -> subprocess.Popen:
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    t0 = time.monotonic()
    while not predicate():
        if proc.poll() is not None:
            pytest.fail(f"training exited early ({proc.returncode}): {proc.stdout.read()}")
        if time.monotonic() - t0 > timeout:
            proc.kill()
            pytest.fail("timed out waiting for training to reach the checkpoint")
        time.sleep(0.2)
    return proc


def test_sigkill_then_continue_resumes_at_the_checkpoint(dataset: Path) -> None:
    fold = _work(dataset) / "hippo/models/2d/fold_1"
    latest = fold / "checkpoint_latest.pt"
    args = _train_args(dataset, "2d", "1", "--checkpoint-every", "1", "--no-val-probabilities", epochs=4)

    def has_epoch_2() -> bool:
        try:
            return latest.is_file() and load_checkpoint(latest)["epoch"] >= 2
        except Exception:
            return False

    proc = _run_until([sys.executable, "-m", "autoseg", *args], predicate=has_epoch_2)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    proc.stdout.close()
    saved = load_checkpoint(latest)
    epoch = saved["epoch"]
    assert 2 <= epoch < 4

    # the state --continue restores is the checkpoint's, optimiser momentum included
    from autoseg.data.splits import fold_cases, load_or_create_splits
    from autoseg.planning.plan import Plan
    from autoseg.preprocessing.store import PreprocessedStore
    from autoseg.training.config import TrainConfig
    from autoseg.training.trainer import Trainer

    plan = Plan.load(_work(dataset) / "hippo/plans.json")
    config = plan.configuration("2d")
    store = PreprocessedStore.for_config(_work(dataset) / "hippo", plan, config)
    splits = load_or_create_splits(_work(dataset) / "hippo/splits.json", [])
    tr, va = fold_cases(splits, 1)
    trainer = Trainer(
        plan,
        config,
        TrainConfig("2d", 1, iters_per_epoch=2, device="cpu", batch_size=4, precision="fp32"),
        store,
        tr,
        va,
        fold,
    )
    trainer.restore(latest)
    assert trainer.state.epoch == epoch
    restored = trainer.optimizer.state_dict()["state"]
    for k, v in saved["optimizer"]["state"].items():
        assert torch.equal(restored[k]["momentum_buffer"], v["momentum_buffer"])

    assert main([*args, "--continue"]) == 0
    records = read_records(fold / "progress.jsonl")
    assert [r["epoch"] for r in records] == [0, 1, 2, 3]
    assert f"resumed from checkpoint_latest.pt at epoch {epoch}" in (fold / "log.txt").read_text()
    assert load_checkpoint(fold / "checkpoint_final.pt")["epoch"] == 4


def test_sigterm_saves_the_latest_checkpoint(dataset: Path) -> None:
    fold = _work(dataset) / "hippo/models/2d/fold_2"
    args = _train_args(dataset, "2d", "2", "--checkpoint-every", "1000", epochs=50)
    records = fold / "progress.jsonl"
    proc = _run_until(
        [sys.executable, "-m", "autoseg", *args], predicate=lambda: len(read_records(records)) >= 1
    )
    proc.send_signal(signal.SIGTERM)
    code = proc.wait(120)
    output = proc.stdout.read()
    proc.stdout.close()
    assert code == 130, output
    ck = load_checkpoint(fold / "checkpoint_latest.pt")
    assert 1 <= ck["epoch"] < 50
    assert not (fold / "checkpoint_final.pt").exists()


def test_two_ddp_processes_stay_in_sync(dataset: Path) -> None:
    torchrun = Path(sys.executable).with_name("torchrun")
    args = _train_args(dataset, "2d", "all", iters=3)
    args.remove("-q")  # the sync report is an info line
    out = subprocess.run(
        [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "autoseg", *args],
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "parameter checksums of 2 ranks" in out.stderr


def _trainer(dataset: Path, fold_dir: Path, fold: int, plan=None):
    from autoseg.data.splits import fold_cases, load_or_create_splits
    from autoseg.planning.plan import Plan
    from autoseg.preprocessing.store import PreprocessedStore
    from autoseg.training.config import TrainConfig
    from autoseg.training.trainer import Trainer

    plan = plan or Plan.load(_work(dataset) / "hippo/plans.json")
    config = plan.configuration("2d")
    store = PreprocessedStore.for_config(_work(dataset) / "hippo", plan, config)
    splits = load_or_create_splits(_work(dataset) / "hippo/splits.json", [])
    tr, va = fold_cases(splits, fold)
    # the run's learning settings (others are refused by --continue); epochs 1 -> 2 is allowed
    cfg = TrainConfig("2d", fold, epochs=2, iters_per_epoch=1, device="cpu", batch_size=4, precision="fp32")
    return Trainer(plan, config, cfg, store, tr, va, fold_dir)


def test_continue_refuses_a_checkpoint_of_another_run(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--continue checks the checkpoint's metadata before anything is written: another plan or
    fold is refused naming what differs; changed settings are a warning; format 1 still resumes."""
    args = _train_args(dataset, "2d", "3", "--no-val-probabilities", iters=1)
    assert main(args) == 0
    fold = _work(dataset) / "hippo/models/2d/fold_3"
    latest = fold / "checkpoint_latest.pt"  # what --continue takes before checkpoint_final.pt
    model_plan = (fold.parent / "plans.json").read_text()

    # the dataset re-planned: the 2d configuration's network input differs (its patch, say)
    plans = _work(dataset) / "hippo/plans.json"
    original = plans.read_text()
    d = json.loads(original)
    d["configurations"]["2d"]["patch_size"][0] += 8
    try:
        plans.write_text(json.dumps(d))
        capsys.readouterr()
        assert main([*args, "--continue"]) == 2
        err = capsys.readouterr().err
        assert f"{latest}: does not fit the current plan: it was trained with another plan of 2d" in err
        assert "without --continue" in err
        # refused before the model folder's plan was overwritten: its other folds still fit it
        assert (fold.parent / "plans.json").read_text() == model_plan
    finally:
        plans.write_text(original)

    from autoseg.errors import CheckpointError

    with pytest.raises(CheckpointError, match=r"trained as fold 3, not fold 4"):
        _trainer(dataset, fold, 4).restore(latest)

    seen: list[logging.LogRecord] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = seen.append  # whatever the CLI did to the autoseg logger's handlers
    logging.getLogger("autoseg").addHandler(handler)
    try:
        _trainer(dataset, fold, 3).restore(latest)
    finally:
        logging.getLogger("autoseg").removeHandler(handler)
    messages = [r.getMessage() for r in seen]
    assert any("continuing checkpoint_latest.pt with changed settings: epochs 1 -> 2" in m for m in messages)

    ck = load_checkpoint(latest)
    meta = ck.pop("meta")
    ck.update(format=1, train_config=meta["train_config"], configuration="2d", n_classes=meta["n_classes"])
    torch.save(ck, latest)
    trainer = _trainer(dataset, fold, 3)
    assert trainer.resume()
    assert trainer.state.epoch == 1


def test_time_budget_decides_the_epochs_and_continue_keeps_them(
    dataset: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """--time: the first epoch decides how many epochs fit; the decision is in train_config.json
    and the checkpoints, the run trains that many, and --continue keeps it instead of deciding
    again. How close the run ends to the limit is measured in benchmarks/bench_time_budget.py:
    this machine is shared, so the test asserts only that the run ends."""
    fold = _work(dataset) / "hippo/models/2d/fold_2"
    budget_flags = tiny(iters=2, val_iters=1, batch_size=2)[2:]  # all but --epochs
    assert budget_flags[0] == "--iters-per-epoch"
    args = ["train", "hippo", "2d", "2", "--work-dir", str(_work(dataset)), *budget_flags]
    args += ["--precision", "fp32", "--no-val-probabilities", "--checkpoint-every", "100", "-q"]
    assert main([*args, "--time", "20s"]) == 0
    saved = json.loads((fold / "train_config.json").read_text())
    budget = saved["budget"]
    assert saved["time_limit"] == "20s"
    assert budget["limit_s"] == 20
    assert budget["decided_after"] == 1
    assert saved["epochs"] == budget["epochs"] >= 1
    assert budget["seconds_per_iter"] > 0
    assert budget["final_s"] > 0
    assert len(read_records(fold / "progress.jsonl")) == budget["epochs"]
    for name in ("final", "latest"):
        ck = load_checkpoint(fold / f"checkpoint_{name}.pt")
        assert ck["meta"]["train_config"]["budget"] == budget, name
        assert ck["epoch"] == budget["epochs"], name
    assert (fold / "validation/summary.json").is_file()
    log_text = (fold / "log.txt").read_text()
    assert log_text.count("time budget 20s (20 s): measured ") == 1
    assert f"{budget['epochs']} epochs x 2 iterations, expected end " in log_text

    # a new trainer of the same command (epochs at the provisional default) takes the decision
    trainer = _trainer(dataset, fold, 2)
    trainer.cfg = dataclasses.replace(trainer.cfg, epochs=1000, time_limit="20s", iters_per_epoch=2)
    trainer.cfg = dataclasses.replace(
        trainer.cfg, batch_size=2, val_probabilities=False, checkpoint_every=100
    )
    trainer.restore(fold / "checkpoint_latest.pt")
    assert trainer.cfg.epochs == budget["epochs"]
    assert trainer.cfg.budget is not None
    assert dataclasses.asdict(trainer.cfg.budget) == budget

    assert main([*args, "--time", "20s", "--continue"]) == 0
    assert json.loads((fold / "train_config.json").read_text()) == saved
    assert len(read_records(fold / "progress.jsonl")) == budget["epochs"]
    assert (fold / "log.txt").read_text().count("time budget 20s (20 s): measured ") == 1

    capsys.readouterr()
    assert main([*args, "--time", "30s", "--continue"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"began with --time 20s, which decided {budget['epochs']} epochs, not --time 30s" in err


# ----------------------------------------------------------------- several nodes
#: Largest weight difference allowed between two "nodes" and one process with the same global
#: batch. The two see the same samples (each rank its slice of the global batch), so they differ
#: only in the order of float32 sums: DDP all-reduces the two ranks' mean gradients, where one
#: process sums over the whole batch in one reduction. Those few-ulp differences grow with every
#: step (momentum, normalisation): measured 6e-8 after 2 steps and 8e-6 after 4 steps of the 2d
#: network; one process run with 1 and then 2 threads differs by 2.3e-6 after 4 steps, the same
#: kind of difference. One epoch (2 steps) moves weights by about 2e-2, 400 times this.
WEIGHT_TOLERANCE = 5e-5
ACCUMULATE = ("--accumulate", "2")
_CHECKPOINTS = {"checkpoint_best.pt", "checkpoint_final.pt", "checkpoint_latest.pt"}


def _per_sample_work(dataset: Path, name: str) -> Path:
    """A work folder of its own (the dataset's plan, its preprocessed cases shared by a link) whose
    2d configuration computes Dice per sample (``batch_dice`` False).

    Per-sample Dice and cross-entropy are means over samples, so the mean of the ranks' losses over
    equal slices is the whole batch's loss, and DDP's averaged gradient is one process's. The 2d
    plan's batch Dice sums over the batch first: two ranks compute it over their halves, which
    is a different loss (still a valid way to train, but not equal to one process's).
    """
    shared = _work(dataset) / "hippo"
    work = dataset.parent / name
    (work / "hippo").mkdir(parents=True)
    for f in ("fingerprint.json", "source.json"):
        (work / "hippo" / f).write_bytes((shared / f).read_bytes())
    plan = json.loads((shared / "plans.json").read_text())
    plan["configurations"]["2d"]["batch_dice"] = False
    (work / "hippo/plans.json").write_text(json.dumps(plan))
    (shared / "preprocessed").mkdir(exist_ok=True)
    (work / "hippo/preprocessed").symlink_to(shared / "preprocessed", target_is_directory=True)
    return work


def _args(work: Path, *extra: str, epochs: int = 1, batch_size: int = 4) -> list[str]:
    """Training arguments; ``--ddp-batches global``: each rank a slice of one global stream (for
    one process the same as the default)."""
    budget = tiny(epochs=epochs, iters=2, val_iters=1, batch_size=batch_size)
    where = ["--work-dir", str(work), "--ddp-batches", "global"]
    return ["train", "hippo", "2d", "all", *where, *budget, "--precision", "fp32", *extra]


def _one_process(args: list[str]) -> None:
    out = subprocess.run(
        [sys.executable, "-m", "autoseg", *args], env=_env(), capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stdout + out.stderr


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def _two_nodes(args: list[str]) -> list[str]:
    """Run ``args`` as two torchrun agents of one process each, rendezvousing like two machines
    (c10d on a free port; which one becomes node 0 is the rendezvous' choice); their output."""
    torchrun = Path(sys.executable).with_name("torchrun")
    rdzv = ["--rdzv-backend", "c10d", "--rdzv-endpoint", f"localhost:{_free_port()}", "--rdzv-id", "t"]
    cmd = [str(torchrun), "--nnodes", "2", "--nproc-per-node", "1", *rdzv, "-m", "autoseg", *args]
    agents = [
        subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for _ in range(2)
    ]
    outputs = []
    try:
        for agent in agents:
            outputs.append(agent.communicate(timeout=300)[0])
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    assert [a.returncode for a in agents] == [0, 0], "\n---\n".join(outputs)
    return outputs


def _weights(fold: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(fold / "checkpoint_final.pt")["network"]


def _max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a if a[k].is_floating_point())


def _only_one_of_each_checkpoint(fold: Path) -> None:
    """Rank 0 alone writes checkpoints: one file of each kind, nothing half-written left."""
    assert {p.name for p in fold.glob("checkpoint_*")} == _CHECKPOINTS
    assert not [p for p in fold.parent.rglob("*") if ".partial" in p.name]


def test_two_nodes_train_as_one_process_with_the_same_global_batch(dataset: Path) -> None:
    """Two torchrun agents (two "nodes", one process each, gloo) of batch 2 per rank, accumulating
    2 micro-batches, end with the weights of one process of batch 4 accumulating 2 (the same
    micro-batches: the global batch n is the n-th micro-batch either way), within
    WEIGHT_TOLERANCE, and continue (--continue, more epochs) to the weights one process continues
    to. Accumulation costs nothing extra to check: with several processes every backward runs
    unsynchronised and gradients are averaged by hand once per step (see micro_batch.py), with
    or without accumulation."""
    one, two = _per_sample_work(dataset, "one_node"), _per_sample_work(dataset, "two_nodes")
    fold_one, fold_two = (w / "hippo/models/2d/fold_all" for w in (one, two))

    _one_process(_args(one, *ACCUMULATE))  # first: it preprocesses the 2d cases if no test has yet
    _two_nodes(_args(two, *ACCUMULATE))
    _only_one_of_each_checkpoint(fold_two)
    first = _weights(fold_two)
    difference = _max_difference(_weights(fold_one), first)
    logging.getLogger(__name__).info(
        "two nodes vs one process, 2 steps: max weight difference %.3g", difference
    )
    assert difference <= WEIGHT_TOLERANCE

    _one_process(_args(one, "--continue", *ACCUMULATE, epochs=2))
    outputs = _two_nodes(_args(two, "--continue", *ACCUMULATE, epochs=2))
    _only_one_of_each_checkpoint(fold_two)
    assert load_checkpoint(fold_two / "checkpoint_final.pt")["epoch"] == 2
    assert [r["epoch"] for r in read_records(fold_two / "progress.jsonl")] == [0, 1]
    # rank 0 reports it; rank 1 resumed too, or the ranks would have diverged (checked at the end)
    assert sum("resumed from checkpoint_latest.pt at epoch 1" in o for o in outputs) == 1
    assert "parameter checksums of 2 ranks" in "".join(outputs)
    continued = _weights(fold_two)
    difference = _max_difference(_weights(fold_one), continued)
    logging.getLogger(__name__).info(
        "two nodes vs one process, 4 steps: max weight difference %.3g", difference
    )
    assert difference <= WEIGHT_TOLERANCE
    # the tolerance is far below what one epoch of training changes
    assert _max_difference(first, continued) > 100 * WEIGHT_TOLERANCE
