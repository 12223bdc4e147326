"""The training loop of one configuration and fold; everything else lives in its own module.

Data: :mod:`autoseg.data`; network: :mod:`autoseg.networks`; loss: :mod:`.losses`; schedule:
:mod:`.schedule`; checkpoints: :mod:`.checkpoint`; records and curves: :mod:`.progress`; final
validation: :mod:`.validate`; several processes: :mod:`.distributed`.
"""

from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autoseg._contract import parse
from autoseg._precision import amp_dtype_for
from autoseg.checkpoint_meta import CheckpointMeta
from autoseg.data.loader import make_loader
from autoseg.errors import CheckpointError
from autoseg.networks.unet import build_network
from autoseg.planning.plan import Configuration, Plan
from autoseg.preprocessing.store import PreprocessedStore
from autoseg.training import distributed as dist
from autoseg.training.checkpoint import load_checkpoint, save_checkpoint
from autoseg.training.config import ADDED_SETTINGS, TrainConfig
from autoseg.training.losses import make_loss
from autoseg.training.progress import append_record, plot_progress, read_records, truncate_records
from autoseg.training.schedule import OPTIMIZERS, SCHEDULES

log = logging.getLogger(__name__)

EMA_WEIGHT = 0.9
#: Training settings that may change when a run continues without a warning: where and how
#: fast it runs, not what it learns.
_RUNTIME_SETTINGS = frozenset({"device", "workers", "checkpoint_every"})
_CONTINUE_FIX = (
    "train this fold from scratch (without --continue), or continue with the plan it was trained with"
)


class TrainingInterrupted(Exception):
    """SIGTERM or Ctrl-C arrived; the latest checkpoint was saved before this was raised."""


@dataclass
class _State:
    epoch: int = 0
    ema: float | None = None
    best_ema: float = -math.inf
    stop: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)


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
    ) -> None:
        self.plan, self.config, self.cfg = plan, config, cfg
        self.store, self.train_ids, self.val_ids = store, train_ids, val_ids
        self.out_dir = Path(out_dir)
        self.world = dist.world()
        self.device = torch.device(
            cfg.device if cfg.device != "cuda" or self.world.size == 1 else f"cuda:{self.world.local_rank}"
        )
        self.amp_dtype = amp_dtype_for(cfg.precision, self.device)
        self.state = _State()
        torch.manual_seed(cfg.seed + self.world.rank)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        net = build_network(config, in_channels=len(plan.channel_names), n_classes=plan.num_classes)
        self.network = net.to(self.device)
        self.model = dist.wrap(self.network, self.device)
        self.optimizer = OPTIMIZERS.get(cfg.optimizer)(self.network.parameters(), cfg)
        self.schedule = SCHEDULES.get(cfg.schedule)
        self.scaler = torch.amp.GradScaler(
            "cuda", enabled=self.amp_dtype == torch.float16 and self.device.type == "cuda"
        )
        n_out = config.network.n_stages - 1 if config.network.deep_supervision else 1
        self.loss_fn = make_loss(cfg.loss, n_outputs=n_out, batch_dice=config.batch_dice)
        bs = cfg.batch_size or config.batch_size
        self.batch_size = max(1, math.ceil(bs / self.world.size))

    # ----------------------------------------------------------------- checkpoints
    def _checkpoint_state(self) -> dict[str, Any]:
        s = self.state
        meta = CheckpointMeta.for_training(self.plan, self.config, self.cfg.to_dict())
        return {
            "meta": meta.to_dict(),
            "network": self.network.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": s.epoch,
            "ema": s.ema,
            "best_ema": s.best_ema,
            "torch_rng": torch.get_rng_state(),
        }

    def save(self, name: str) -> None:
        """Write ``<out_dir>/checkpoint_<name>.pt`` (main process only)."""
        if self.world.is_main:
            save_checkpoint(self.out_dir / f"checkpoint_{name}.pt", self._checkpoint_state())

    def restore(self, path: Path) -> None:
        """Load model, optimiser, scaler, epoch, EMA and RNG state from a checkpoint.

        Raises:
            CheckpointError: the checkpoint belongs to another configuration, plan, class count
                or fold (the message says what differs), or its metadata is invalid.
        """
        ck = load_checkpoint(path, map_location=self.device)
        self._check_continues(CheckpointMeta.from_checkpoint(ck, path), path)
        self.network.load_weights(ck["network"], source=str(path))
        self.optimizer.load_state_dict(ck["optimizer"])
        if ck.get("scaler"):
            self.scaler.load_state_dict(ck["scaler"])
        self.state.epoch = int(ck["epoch"])
        self.state.ema = ck["ema"]
        self.state.best_ema = float(ck["best_ema"])
        torch.set_rng_state(ck["torch_rng"].cpu())
        log.info("resumed from %s at epoch %d", path.name, self.state.epoch)

    def _check_continues(self, meta: CheckpointMeta, path: Path) -> None:
        """Refuse to continue a checkpoint of another run; warn about changed settings."""
        meta.check(self.plan, self.config, path=path, against="the current plan", fix=_CONTINUE_FIX)
        old = parse(
            TrainConfig,
            {**ADDED_SETTINGS, **meta.train_config},
            name="checkpoint metadata.train_config",
            version=None,
            error=CheckpointError,
            fix="train this fold from scratch (without --continue)",
        )
        if old.fold != self.cfg.fold:
            msg = f"{path}: trained as fold {old.fold!r}, not fold {self.cfg.fold!r}; {_CONTINUE_FIX}"
            raise CheckpointError(msg)
        before, now = old.to_dict(), self.cfg.to_dict()
        changed = [
            f"{k} {before[k]!r} -> {now[k]!r}"
            for k in now
            if k not in _RUNTIME_SETTINGS and before[k] != now[k]
        ]
        if changed and self.world.is_main:
            log.warning("continuing %s with changed settings: %s", path.name, ", ".join(changed))

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
        self.model.train()
        lr = self.schedule(self.cfg.lr, self.state.epoch, self.cfg.epochs)
        for g in self.optimizer.param_groups:
            g["lr"] = lr
        losses = []
        bar = tqdm(
            range(self.cfg.iters_per_epoch),
            desc=f"epoch {self.state.epoch}",
            unit="it",
            disable=None if self.world.is_main else True,
            leave=False,
        )
        for _ in bar:
            loss = self._step(loader)
            losses.append(loss)
            bar.set_postfix(loss=f"{loss:.4f}", lr=f"{lr:.2e}")
            if self.state.stop:
                raise TrainingInterrupted
        return float(np.mean(losses))

    def _step(self, loader: Any) -> float:
        total = 0.0
        for micro in range(self.cfg.accumulate):
            batch = next(loader)
            x = batch["data"].to(self.device, non_blocking=True)
            y = batch["target"].to(self.device, non_blocking=True)
            sync = micro == self.cfg.accumulate - 1
            with (
                dist.maybe_no_sync(self.model, sync),
                torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None),
            ):
                loss = self.loss_fn(self.model(x), y) / self.cfg.accumulate
            self.scaler.scale(loss).backward()
            total += float(loss.detach())
        self.scaler.unscale_(self.optimizer)
        torch.nn.utils.clip_grad_norm_(self.network.parameters(), self.cfg.grad_clip)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad(set_to_none=True)
        return total

    @torch.no_grad()
    def _val_epoch(self, loader: Any) -> dict[str, Any]:
        self.model.eval()
        n = self.plan.num_classes
        tp, fp, fn = np.zeros(n - 1), np.zeros(n - 1), np.zeros(n - 1)
        losses = []
        for _ in range(self.cfg.val_iters):
            batch = next(loader)
            x = batch["data"].to(self.device)
            y = batch["target"].to(self.device)
            with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
                out = self.model(x)
            losses.append(float(self.loss_fn(out, y)))
            pred = out.argmax(1)
            ref = y[:, 0].long()
            for c in range(1, n):
                p, r = pred == c, ref == c
                tp[c - 1] += float((p & r).sum())
                fp[c - 1] += float((p & ~r).sum())
                fn[c - 1] += float((~p & r).sum())
        tp, fp, fn, loss = dist.sum_arrays(tp, fp, fn, np.array([np.mean(losses)]))
        dice = _pseudo_dice(tp, fp, fn)
        finite = [d for d in dice if not math.isnan(d)]
        mean = float(np.mean(finite)) if finite else 0.0
        return {"val_loss": float(loss[0] / self.world.size), "pseudo_dice": dice, "pseudo_dice_mean": mean}

    def run(self, *, resume: bool = False) -> None:
        """Train from scratch, or from the latest checkpoint when ``resume`` (see :meth:`resume`;
        a caller that called :meth:`resume` itself passes False)."""
        self.out_dir.mkdir(parents=True, exist_ok=True)
        records = self.out_dir / "progress.jsonl"
        if resume:
            self.resume()
        if self.world.is_main and records.is_file():  # a resumed run redoes the epochs it lost
            truncate_records(records, before_epoch=self.state.epoch)
        seed = self.cfg.seed + 1000 * self.state.epoch + 7919 * self.world.rank
        train_loader = make_loader(
            self.store,
            self.train_ids,
            self.config,
            batch_size=self.batch_size,
            workers=self.cfg.workers,
            seed=seed,
            augment=True,
            augmentation=self.cfg.augmentation,
        )
        val_ids = self.val_ids or self.train_ids
        val_loader = make_loader(
            self.store,
            val_ids,
            self.config,
            batch_size=self.batch_size,
            workers=0,
            seed=seed + 1,
            augment=False,
        )
        old = (
            {s: signal.signal(s, self._request_stop) for s in (signal.SIGTERM, signal.SIGINT)}
            if self.world.is_main
            else {}
        )
        try:
            while self.state.epoch < self.cfg.epochs:
                self._one_epoch(train_loader, val_loader, records)
            self._check_in_sync()
            self.save("final")
        except (TrainingInterrupted, KeyboardInterrupt):
            self.save("latest")
            log.warning(
                "training stopped at epoch %d; the latest checkpoint is saved, resume with --continue",
                self.state.epoch,
            )
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

    def _one_epoch(self, train_loader: Any, val_loader: Any, records: Path) -> None:
        t0 = time.perf_counter()
        train_loss = self._train_epoch(train_loader)
        val = self._val_epoch(val_loader) if self.cfg.val_iters > 0 else {}
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
        s.epoch += 1
        if not self.world.is_main:
            return
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


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"
