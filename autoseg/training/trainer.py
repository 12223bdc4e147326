"""The training loop of one configuration and fold; everything else lives in its own module.

Data: :mod:`autoseg.data`; network: :mod:`autoseg.networks`; loss: :mod:`.losses`; schedule:
:mod:`.schedule`; checkpoints: :mod:`.checkpoint`; records and curves: :mod:`.progress`; final
validation: :mod:`.validate`; several processes: :mod:`.distributed`; random states: :mod:`.rng`.

Resuming is exact: a run stopped and continued (``--continue``) ends with the weights, optimiser
state and records of the run that was never stopped. Three things make it so: (1) batch ``n`` of
the run (cases, patches, augmentation) is a function of the seed and ``n`` only (each of several
processes takes its slice of it; see :mod:`autoseg.data.loader`), and a resumed run's loaders
start at the batch where the checkpoint stopped; (2) a checkpoint holds everything else that
changes as training goes: weights, optimiser and gradient-scaler state, the epoch, the steps
already taken in it and their losses (a checkpoint saved on SIGTERM/Ctrl-C mid-epoch), the
pseudo-Dice EMA and best value, and every random state (:mod:`.rng`); (3) ``--continue`` refuses
settings that change what the run learns (see :mod:`.continuation`). A ``kill -9``
loses the epochs since the latest checkpoint (``--checkpoint-every``); they are redone the same
way, and their records are rewritten.
"""

from __future__ import annotations

import dataclasses
import datetime
import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.optim.swa_utils import get_ema_multi_avg_fn
from tqdm import tqdm

from autoseg._atomic import sweep_partials, write_json_atomic
from autoseg._precision import amp_dtype_for
from autoseg.checkpoint_meta import CheckpointMeta
from autoseg.data.loader import make_loader
from autoseg.data.previous_stage import PreviousStageInput
from autoseg.networks.unet import network_for
from autoseg.options import duration_seconds
from autoseg.planning.plan import Configuration, Plan
from autoseg.preprocessing.store import PreprocessedStore
from autoseg.training import distributed as dist
from autoseg.training import rng
from autoseg.training.checkpoint import load_checkpoint, save_checkpoint
from autoseg.training.config import TrainConfig
from autoseg.training.continuation import check_continuation
from autoseg.training.losses import make_loss
from autoseg.training.micro_batch import MicroBatcher
from autoseg.training.progress import append_record, plot_progress, read_records, truncate_records
from autoseg.training.schedule import OPTIMIZERS, SCHEDULES
from autoseg.training.time_budget import (
    SAFETY,
    BudgetDecision,
    decision_line,
    epochs_for_budget,
    final_validation_s,
    sliding_windows,
    steady_seconds_per_step,
)

log = logging.getLogger(__name__)

EMA_WEIGHT = 0.9


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C arrived; the latest checkpoint was saved before this was raised."""


@dataclass
class _State:
    """What changes as training goes, besides the network, optimiser and scaler.

    Attributes:
        epoch: epochs completed.
        iteration: optimiser steps taken in epoch ``epoch`` (non-zero only in a checkpoint saved
            on a signal mid-epoch).
        losses: the training losses of those steps (the epoch's record is their mean).
        ema: the pseudo-Dice exponential moving average.
        best_ema: the best ``ema`` so far (``checkpoint_best.pt``'s).
        stop: a signal asked to stop.
    """

    epoch: int = 0
    iteration: int = 0
    losses: list[float] = field(default_factory=list)
    ema: float | None = None
    best_ema: float = -math.inf
    stop: bool = False


@dataclass(frozen=True)
class _EpochTiming:
    """Where an epoch's time went (``time.perf_counter()`` seconds), for the time budget.

    Attributes:
        start: when its first step began.
        step_ends: when each step of this process ended.
        val_s: its validation batches.
        total_s: all of it: steps, validation, records, curves and checkpoints.
    """

    start: float
    step_ends: list[float]
    val_s: float
    total_s: float


def _pseudo_dice(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray) -> list[float]:
    denom = 2 * tp + fp + fn
    return [float(2 * t / d) if d > 0 else float("nan") for t, d in zip(tp, denom, strict=True)]


class Trainer:
    """Trains one configuration on one fold; ``run()`` does the whole job.

    Args:
        plan: the plan.
        config: the configuration to train.
        cfg: training settings.
        store: preprocessed cases.
        train_ids: training case ids.
        val_ids: validation case ids (empty for fold "all").
        out_dir: the fold's folder (checkpoints, log, curves, validation/).
        previous_stage: a cascade stage's previous-stage predictions of every training and
            validation case (:func:`autoseg.training.cascade.write_previous_stage`); required
            exactly when ``config`` has a previous stage.

    Raises:
        ValueError: ``previous_stage`` given without a previous stage in ``config``, or missing.
    """

    def __init__(
        self,
        plan: Plan,
        config: Configuration,
        cfg: TrainConfig,
        store: PreprocessedStore,
        train_ids: list[str],
        val_ids: list[str],
        out_dir: Path,
        *,
        previous_stage: PreviousStageInput | None = None,
    ) -> None:
        if (previous_stage is None) != (config.previous_stage is None):
            msg = (
                f"{config.name}: previous stage {config.previous_stage!r}, but its predictions "
                f"{previous_stage}"
            )
            raise ValueError(msg)
        self.previous_stage = previous_stage
        self.plan, self.config, self.cfg = plan, config, cfg
        self.store, self.train_ids, self.val_ids = store, train_ids, val_ids
        self.out_dir = Path(out_dir)
        self.world = dist.world()
        self.device = torch.device(
            cfg.device if cfg.device != "cuda" or self.world.size == 1 else f"cuda:{self.world.local_rank}"
        )
        self.amp_dtype = amp_dtype_for(cfg.precision, self.device)
        self.state = _State()
        #: ``time.perf_counter()`` at the end of each step of the current epoch (time budget).
        self._step_ends: list[float] = []
        rng.seed_all(cfg.seed + self.world.rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        net = network_for(plan, config)
        self.network = net.to(self.device)
        #: The moving average of the weights (``--weight-ema``), else None; copied before DDP
        #: wraps the network, so that the copy carries none of its hooks.
        self.averaged = (
            torch.optim.swa_utils.AveragedModel(
                self.network, multi_avg_fn=get_ema_multi_avg_fn(cfg.weight_ema), use_buffers=True
            )
            if cfg.weight_ema
            else None
        )
        self.model = dist.wrap(self.network, self.device)
        self.optimizer = OPTIMIZERS.get(cfg.optimizer)(self.network.parameters(), cfg)
        self.schedule = SCHEDULES.get(cfg.schedule)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )
        n_out = config.network.n_stages - 1 if config.network.deep_supervision else 1
        self.loss_fn = make_loss(
            cfg.loss, n_outputs=n_out, batch_dice=config.batch_dice, scheme=plan.label_scheme
        )
        bs = cfg.batch_size or config.batch_size
        #: Samples per process; the global batch is this times the world size (see _loaders).
        self.batch_size = max(1, math.ceil(bs / self.world.size))
        # the micro-batch is not a setting: lowered on out-of-memory, it changes how a step is
        # computed, not what it learns, so checkpoints and --continue never see it
        self.micro = MicroBatcher(
            self.batch_size, cfg.accumulate, self.world.size, self.device, config.patch_size
        )
        if self.batch_size * self.world.size != bs and self.world.is_main:
            log.warning(
                "batch size %d does not split over %d processes: each takes %d, a global batch of %d",
                bs,
                self.world.size,
                self.batch_size,
                self.batch_size * self.world.size,
            )

    @property
    def predicting_network(self) -> torch.nn.Module:
        """The weights validated, saved for prediction and exported: the moving average of the
        weights with ``--weight-ema``, else the network trained."""
        return self.network if self.averaged is None else self.averaged.module

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        meta = CheckpointMeta.for_training(
            self.plan,
            self.config,
            self.cfg.to_dict(),
            previous_stage=self.previous_stage.digest if self.previous_stage else None,
        )
        # "network" is what prediction loads; with a moving average, the trained weights and
        # the average's step count ride beside it so that --continue resumes exactly
        averaged = (
            {}
            if self.averaged is None
            else {
                "trained_network": self.network.state_dict(),
                "averaged_steps": int(self.averaged.n_averaged),
            }
        )
        return {
            "meta": meta.to_dict(),
            "network": self.predicting_network.state_dict(),
            **averaged,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": s.epoch,
            "iteration": s.iteration,
            "losses": list(s.losses),
            "ema": s.ema,
            "best_ema": s.best_ema,
            "rng": rng.capture(self.device),
        }

    def save(self, name: str) -> None:
        """Write ``<out_dir>/checkpoint_<name>.pt`` (main process only)."""
        if self.world.is_main:
            save_checkpoint(self.out_dir / f"checkpoint_{name}.pt", self._checkpoint_state())

    def restore(self, path: Path) -> None:
        """Load model, optimiser, scaler, epoch (and step), EMA and random states from a checkpoint.

        Raises:
            CheckpointError: the checkpoint belongs to another configuration, plan, class count
                or fold, or was trained with settings that change what the run learns (the
                message says what differs), or its metadata is invalid.
        """
        ck = load_checkpoint(path, map_location=self.device)
        self.cfg = check_continuation(
            CheckpointMeta.from_checkpoint(ck, path),
            path,
            self.plan,
            self.config,
            self.cfg,
            previous_stage=self.previous_stage.digest if self.previous_stage else None,
            inputs_record=self.out_dir / "previous_stage.json",
            warn=self.world.is_main,
        )
        self.network.load_weights(ck.get("trained_network", ck["network"]), source=str(path))
        if self.averaged is not None:
            self.averaged.module.load_state_dict(ck["network"])  # written by this code: no old keys
            self.averaged.n_averaged.fill_(int(ck["averaged_steps"]))
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        s = self.state
        s.epoch = int(ck["epoch"])
        s.iteration = int(ck.get("iteration", 0))  # older checkpoints: saved at epoch ends only
        s.losses = [float(x) for x in ck.get("losses", [])]
        s.ema = ck["ema"]
        s.best_ema = float(ck["best_ema"])
        if "rng" in ck:
            rng.restore(ck["rng"], self.device)
        else:  # before the other random states were stored
            torch.set_rng_state(ck["torch_rng"].cpu())
        where = f" step {s.iteration}" if s.iteration else ""
        log.info("resumed from %s at epoch %d%s", path.name, s.epoch, where)

    def resume(self) -> bool:
        """Restore the latest (else the final) checkpoint of this fold, checking it is this run's.

        Returns:
            Whether a checkpoint was found; without one, training starts from scratch.

        Raises:
            CheckpointError: the checkpoint belongs to another run (see :meth:`restore`).
        """
        for name in ("latest", "final"):
            if (self.out_dir / f"checkpoint_{name}.pt").is_file():
                self.restore(self.out_dir / f"checkpoint_{name}.pt")
                return True
        log.warning("--continue: no checkpoint in %s; starting from scratch", self.out_dir)
        return False

    # ----------------------------------------------------------------- loop
    def _request_stop(self, signum: int, _frame: object) -> None:
        if self.state.stop:  # second signal: stop now
            raise KeyboardInterrupt
        log.warning("signal %d: saving the latest checkpoint after this iteration", signum)
        self.state.stop = True

    def _train_epoch(self, loader: Any) -> float:
        """The rest of epoch ``state.epoch`` (all of it unless resumed mid-epoch); its mean loss.

        Raises:
            TrainingInterrupted: a signal asked to stop; ``state`` holds the steps taken so far.
        """
        s = self.state
        self.model.train()
        bar = tqdm(
            range(s.iteration, self.cfg.iters_per_epoch),
            desc=f"epoch {s.epoch}",
            unit="it",
            initial=s.iteration,
            total=self.cfg.iters_per_epoch,
            disable=None if self.world.is_main else True,
            leave=False,
        )
        self._step_ends = []
        for _ in bar:
            if s.stop:
                raise TrainingInterrupted
            lr = self.schedule(self.cfg.lr, s.epoch + s.iteration / self.cfg.iters_per_epoch, self.cfg.epochs)
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            loss = self._step(loader)
            s.losses.append(loss)
            s.iteration += 1
            self._step_ends.append(time.perf_counter())
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
        if s.stop:
            raise TrainingInterrupted
        return float(np.mean(s.losses))

    def _step(self, loader: Any) -> float:
        """One optimiser step on the next ``accumulate`` batches; its loss.

        The batches are cut into micro-batches when the GPU memory runs out (see
        :mod:`.micro_batch`: same data, same effective batch, the step redone before the
        optimiser moves). With several processes every backward pass runs without DDP's
        all-reduce, and the gradients are averaged once all ranks agreed that none ran out of
        memory: an all-reduce started inside a backward pass that fails on one rank would hang
        the others. The price is that the communication no longer overlaps the backward pass.
        """
        drawn = [next(loader) for _ in range(self.cfg.accumulate)]
        total = self.micro.run(
            drawn,
            self._micro_step,
            agree=dist.any_rank,
            reset=lambda: self.optimizer.zero_grad(set_to_none=True),
        )
        dist.average_gradients(self.network.parameters())
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        if self.averaged is not None:
            self.averaged.update_parameters(self.network)
        return total

    def _micro_step(self, batch: Any, weight: float) -> float:
        """Forward and backward of one micro-batch, its loss scaled by ``weight``; the loss."""
        x = batch["data"].to(self.device, non_blocking=True)
        y = batch["target"].to(self.device, non_blocking=True)
        with (
            dist.no_sync(self.model),
            torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None),
        ):
            loss = self.loss_fn(self.model(x), y)
            if weight != 1.0:
                loss = loss * weight
        self.scaler.scale(loss).backward()
        return float(loss.detach())

    @torch.no_grad()
    def _val_epoch(self, loader: Any) -> dict[str, Any]:
        model = self.model if self.averaged is None else self.averaged.module
        model.eval()
        scheme = self.plan.label_scheme
        n = len(scheme.entries)
        tp, fp, fn = np.zeros(n), np.zeros(n), np.zeros(n)
        losses = []
        for _ in range(self.cfg.val_iters):
            batch = next(loader)
            x = batch["data"].to(self.device)
            y = batch["target"].to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = model(x)
            losses.append(float(self.loss_fn(out, y)))
            pred = scheme.predicted_masks(out)
            ref, annotated = scheme.reference_masks(y)
            if annotated is not None:  # unannotated voxels count for nothing
                pred, ref = pred & annotated, ref & annotated
            dims = [0, *range(2, pred.ndim)]
            tp += (pred & ref).sum(dims).cpu().numpy()
            fp += (pred & ~ref).sum(dims).cpu().numpy()
            fn += (~pred & ref).sum(dims).cpu().numpy()
        tp, fp, fn, loss = dist.sum_arrays(tp, fp, fn, np.array([np.mean(losses)]))
        dice = _pseudo_dice(tp, fp, fn)
        finite = [d for d in dice if not math.isnan(d)]
        mean = float(np.mean(finite)) if finite else 0.0
        return {"val_loss": float(loss[0] / self.world.size), "pseudo_dice": dice, "pseudo_dice_mean": mean}

    def _loaders(self) -> tuple[Any, Any]:
        """The training and validation loaders, each starting at the batch the run is at.

        Batch ``n`` of the training loader is the ``n``-th the run uses (``accumulate`` per step,
        ``iters_per_epoch`` steps per epoch); the validation loader uses ``val_iters`` per epoch.
        Their seeds do not depend on how many epochs this process has run, so a resumed run
        draws the batches the uninterrupted one did.

        With several processes, ``ddp_batches`` says how they share the data. "own": each draws
        its own batches, seeded (seed, rank, 0), augmenting only what it trains on (rank 0 is
        then exactly a single process). "global": every rank draws the same global batches,
        seeded (seed, 0, 0) as a single process's always were, and keeps its rank's slice
        (``part``): ``N`` processes of batch ``B`` then train on exactly the samples of one
        process of batch ``N * B``, and their averaged gradients are that process's (up to the
        order of float sums) whenever the loss is a mean over samples; batch Dice, summed over
        the batch, is summed over each slice instead. The price: every rank augments the whole
        global batch, ``N`` times the work. Validation batches only measure (pseudo-Dice, best
        checkpoint), so each rank draws its own, the cheaper way.
        """
        s, cfg, rank = self.state, self.cfg, self.world.rank
        steps = s.epoch * cfg.iters_per_epoch + s.iteration
        shared = cfg.ddp_batches == "global"
        train_loader = make_loader(
            self.store,
            self.train_ids,
            self.config,
            batch_size=self.batch_size * self.world.size if shared else self.batch_size,
            workers=cfg.workers,
            seed=(cfg.seed, 0, 0) if shared else (cfg.seed, rank, 0),
            augment=True,
            augmentation=cfg.augmentation,
            start=steps * cfg.accumulate,
            previous_stage=self.previous_stage,
            part=(rank, self.world.size) if shared else (0, 1),
        )
        val_loader = make_loader(
            self.store,
            self.val_ids or self.train_ids,
            self.config,
            batch_size=self.batch_size,
            workers=0,
            seed=(cfg.seed, rank, 1),
            augment=False,
            start=s.epoch * cfg.val_iters,
            previous_stage=self.previous_stage,
        )
        return train_loader, val_loader

    def run(self, *, resume: bool = False, started: float | None = None) -> None:
        """Train from scratch, or from the latest checkpoint when ``resume`` (see :meth:`resume`;
        a caller that called :meth:`resume` itself passes False).

        With a time limit (``cfg.time_limit``) and no decision yet, the first epoch this process
        runs is timed and decides the number of epochs (:meth:`_decide_budget`); ``started``
        (``time.monotonic()``, default now) is when the limit began, e.g. when the command
        started, before preprocessing.

        SIGTERM or Ctrl-C saves ``checkpoint_latest.pt`` after the current step (mid-epoch
        included: it records the steps taken) and raises :class:`TrainingInterrupted`; a second
        one stops at once without saving (the state may be half-way through a step), and
        ``--continue`` takes the last checkpoint saved.
        """
        self.out_dir.mkdir(parents=True, exist_ok=True)
        if self.world.is_main:
            sweep_partials(self.out_dir)
        records = self.out_dir / "progress.jsonl"
        started = time.monotonic() if started is None else started
        if resume:
            self.resume()
        if self.world.is_main and records.is_file():  # a resumed run redoes the epochs it lost
            truncate_records(records, before_epoch=self.state.epoch)
        train_loader, val_loader = self._loaders()
        old = (
            {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
            if self.world.is_main
            else {}
        )
        try:
            while self.state.epoch < self.cfg.epochs:
                timing = self._one_epoch(train_loader, val_loader, records)
                if self.cfg.time_limit is not None and self.cfg.budget is None and timing.step_ends:
                    self._decide_budget(timing, started)
            self._check_in_sync()
            self.save("final")
        except TrainingInterrupted:
            self.save("latest")
            log.warning(
                "training stopped at epoch %d step %d; the latest checkpoint is saved, resume with "
                "--continue",
                self.state.epoch,
                self.state.iteration,
            )
            raise
        except KeyboardInterrupt:
            log.warning("training stopped at once; --continue resumes from the last checkpoint saved before")
            raise TrainingInterrupted from None
        finally:
            for s, h in old.items():
                signal.signal(s, h)
            for ld in (train_loader, val_loader):
                ld.close()

    def _check_in_sync(self) -> None:
        """With several processes, verify every rank ended with the same weights."""
        if self.world.size == 1:
            return
        sums = dist.gather_floats(dist.parameter_checksum(self.network))
        spread = max(sums) - min(sums)
        if self.world.is_main:
            log.info(
                "parameter checksums of %d ranks: %s (spread %.3g)",
                self.world.size,
                [round(x, 6) for x in sums],
                spread,
            )
        if spread > 1e-6 * max(1.0, abs(sums[0])):
            msg = f"ranks diverged: parameter checksums {sums}"
            raise RuntimeError(msg)

    def _decide_budget(self, timing: _EpochTiming, started: float) -> None:
        """Fix the number of epochs that fits the time limit, from the epoch just run (see
        :mod:`.time_budget`), and record it where ``--continue`` finds it: the settings (so every
        later checkpoint and ``train_config.json``) and at once in ``checkpoint_latest.pt``.

        With several processes each measures its own epoch and all take the slowest figures, so
        that they decide the same number of epochs.
        """
        cfg, s = self.cfg, self.state
        assert cfg.time_limit is not None
        limit = float(duration_seconds(cfg.time_limit))
        per_step = steady_seconds_per_step(timing.step_ends, timing.start)
        train_s = timing.step_ends[-1] - timing.start
        other_s = max(0.0, timing.total_s - train_s - timing.val_s)  # records, curves, checkpoints
        final_s = self._final_validation_s() if self.world.is_main else 0.0
        elapsed = time.monotonic() - started
        per_step, val_s, other_s, final_s, elapsed = (
            max(dist.gather_floats(x)) for x in (per_step, timing.val_s, other_s, final_s, elapsed)
        )
        epoch_s = per_step * cfg.iters_per_epoch + val_s + other_s
        epochs = epochs_for_budget(limit, elapsed, epoch_s, final_s, done=s.epoch)
        decision = BudgetDecision(
            limit_s=limit,
            epochs=epochs,
            decided_after=s.epoch,
            seconds_per_iter=per_step,
            val_s=val_s,
            epoch_s=epoch_s,
            elapsed_s=elapsed,
            final_s=final_s,
            safety_s=SAFETY * limit,
        )
        self.cfg = dataclasses.replace(cfg, epochs=epochs, budget=decision)
        if not self.world.is_main:
            return
        began = datetime.datetime.now() - datetime.timedelta(seconds=elapsed)
        log.info(
            "%s",
            decision_line(
                decision,
                time_limit=cfg.time_limit,
                iters_per_epoch=cfg.iters_per_epoch,
                val_cases=len(self.val_ids),
                started=began,
            ),
        )
        if epochs == s.epoch:
            log.warning(
                "time budget %s: not even one more epoch fits (an epoch takes %.0f s, %.0f s are "
                "left after the final validation's %.0f s): stopping after %d epoch(s)",
                cfg.time_limit,
                epoch_s,
                max(0.0, limit * (1 - SAFETY) - elapsed - final_s),
                final_s,
                s.epoch,
            )
        self.save("latest")
        write_json_atomic(self.out_dir / "train_config.json", self.cfg.to_dict())

    def _final_validation_s(self) -> float:
        """Seconds to keep for the end of a time-budgeted run (:func:`.time_budget.final_validation_s`):
        the sliding-window prediction of the smallest validation case is timed, as the final
        validation will run it (mirroring, its window batches), and scaled by the windows of all.

        Measured rather than derived from the validation batches: those run ``batch_size``
        patches with their loading, where the sliding window batches many windows, so per window
        they were several times slower (0.022 s against about 0.005 s for the 2d hippocampus
        network on a CPU). The price: one more prediction of the smallest case, once.
        """
        from autoseg.inference.sliding_window import predict_logits
        from autoseg.preprocessing.previous_stage import with_previous_stage

        if not self.val_ids:
            return final_validation_s(0, 0.0, 0)
        shapes = {c: self.store.load(c).data.shape[1:] for c in self.val_ids}
        windows = {
            c: sliding_windows(shape, self.config.patch_size, self.config.kind) for c, shape in shapes.items()
        }
        smallest = min(self.val_ids, key=lambda c: (windows[c], math.prod(shapes[c])))
        case = self.store.load(smallest)
        data = np.array(case.data)
        if self.previous_stage is not None:
            data = with_previous_stage(data, self.previous_stage.load(smallest), self.plan.label_scheme)
        self.predicting_network.eval()
        t0 = time.perf_counter()
        predict_logits(
            self.predicting_network,
            torch.from_numpy(data),
            self.config,
            device=self.device,
            output_device="cpu",
            amp_dtype=self.amp_dtype,
        )
        per_window = (time.perf_counter() - t0) / windows[smallest]
        return final_validation_s(sum(windows.values()), per_window, len(self.val_ids))

    def _one_epoch(self, train_loader: Any, val_loader: Any, records: Path) -> _EpochTiming:
        """Train, validate and record one epoch; where its time went."""
        t0 = time.perf_counter()
        train_loss = self._train_epoch(train_loader)
        t_val = time.perf_counter()
        val = self._val_epoch(val_loader) if self.cfg.val_iters > 0 else {}
        val_s = time.perf_counter() - t_val
        step_ends = list(self._step_ends)
        s = self.state
        if "pseudo_dice_mean" in val:
            s.ema = (
                val["pseudo_dice_mean"]
                if s.ema is None
                else EMA_WEIGHT * s.ema + (1 - EMA_WEIGHT) * val["pseudo_dice_mean"]
            )
        rec = {
            "epoch": s.epoch,
            "train_loss": train_loss,
            **val,
            "pseudo_dice_ema": s.ema,
            "lr": self.optimizer.param_groups[0]["lr"],
            "seconds": round(time.perf_counter() - t0, 3),
        }
        s.epoch, s.iteration, s.losses = s.epoch + 1, 0, []
        if not self.world.is_main:
            return _EpochTiming(t0, step_ends, val_s, time.perf_counter() - t0)
        append_record(records, rec)
        plot_progress(read_records(records), self.out_dir / "progress.png")
        log.info(
            "epoch %d: train loss %.4f, val loss %s, pseudo Dice %s (EMA %s), %.1f s",
            rec["epoch"],
            train_loss,
            _fmt(val.get("val_loss")),
            [round(d, 4) for d in val.get("pseudo_dice", [])],
            _fmt(s.ema),
            rec["seconds"],
        )
        if s.ema is not None and s.ema > s.best_ema:
            s.best_ema = s.ema
            self.save("best")
        if s.epoch % self.cfg.checkpoint_every == 0 or s.epoch == self.cfg.epochs:
            self.save("latest")
        return _EpochTiming(t0, step_ends, val_s, time.perf_counter() - t0)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
