"""Training records: one JSON line per epoch (``progress.jsonl``) and curves (``progress.png``)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from autoseg._atomic import write_atomic


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record as a JSON line (flushed, so a killed run keeps what it logged)."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of ``progress.jsonl`` (empty if absent)."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def truncate_records(path: Path, *, before_epoch: int) -> None:
    """Drop records of epochs >= ``before_epoch`` (a resumed run re-does them)."""
    kept = [r for r in read_records(path) if r["epoch"] < before_epoch]
    Path(path).write_text("".join(json.dumps(r) + "\n" for r in kept))


def plot_progress(records: list[dict[str, Any]], path: Path) -> None:
    """Loss, pseudo-Dice and learning-rate curves, written atomically as a PNG."""
    if not records:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ep = [r["epoch"] for r in records]
    fig, (ax1, ax3) = plt.subplots(2, 1, figsize=(8, 7), sharex=True)
    ax1.plot(ep, [r["train_loss"] for r in records], "b-", label="train loss")
    if any("val_loss" in r for r in records):
        ax1.plot(ep, [r.get("val_loss", math.nan) for r in records], "r-", label="val loss")
    ax1.set_ylabel("loss")
    ax2 = ax1.twinx()
    ax2.plot(ep, [r.get("pseudo_dice_mean", math.nan) for r in records], "g:", label="pseudo Dice")
    ax2.plot(ep, [r.get("pseudo_dice_ema", math.nan) for r in records], "g-", label="pseudo Dice (EMA)")
    ax2.set_ylabel("pseudo Dice")
    ax2.set_ylim(0, 1)
    lines = ax1.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
    ax1.legend(lines, [str(line.get_label()) for line in lines], loc="center right")
    ax3.plot(ep, [r["lr"] for r in records], "k-")
    ax3.set_ylabel("learning rate")
    ax3.set_xlabel("epoch")
    fig.tight_layout()
    try:
        write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=90))
    finally:
        plt.close(fig)
