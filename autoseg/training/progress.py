"""Training records: one JSON line per epoch (``progress.jsonl``) and curves (``progress.png``).

A run killed while appending a record leaves a half-written last line: :func:`read_records` drops
it with a warning (``--continue`` redoes that epoch and rewrites its record). Any other line that
is not a record is damage no kill explains, and an error naming the file and line.
"""

from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path
from typing import Any

from autoseg._atomic import write_atomic
from autoseg.errors import ModelError

log = logging.getLogger(__name__)


def append_record(path: Path, record: dict[str, Any]) -> None:
    """Append one epoch's record as a JSON line (flushed, so a killed run keeps what it logged).

    A file that does not end with a newline (a record torn by a kill) gets one first, so the new
    record starts its own line.
    """
    with open(path, "ab+") as f:  # appends go to the end wherever the reads left off
        torn = False
        if f.seek(0, os.SEEK_END) > 0:
            f.seek(-1, os.SEEK_END)
            torn = f.read(1) != b"\n"
        f.write((("\n" if torn else "") + json.dumps(record) + "\n").encode("utf-8"))
        f.flush()


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of ``progress.jsonl`` (empty if absent); a torn last line is dropped.

    Raises:
        ModelError: a line other than the last is not a record (a JSON object with an integer
            ``epoch``); the message names the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [(n, line) for n, line in enumerate(path.read_bytes().split(b"\n"), 1) if line.strip()]
    records = []
    for i, (n, line) in enumerate(lines):
        record = _parse(line)
        if record is not None:
            records.append(record)
        elif i == len(lines) - 1:
            log.warning("%s: line %d is half-written (a run killed while writing it); ignored", path, n)
        else:
            msg = (
                f"{path}: line {n} is not a training record (a JSON object with an integer epoch), "
                "damage a killed run cannot cause (it can only cut the last line short): train this "
                "fold from scratch, or delete the line to continue without that record"
            )
            raise ModelError(msg)
    return records


def _parse(line: bytes) -> dict[str, Any] | None:
    """The record on ``line``, or None when it is not one."""
    try:
        record = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(record, dict) or type(record.get("epoch")) is not int:
        return None
    return record


def truncate_records(path: Path, *, before_epoch: int) -> None:
    """Keep only the records of epochs before ``before_epoch`` (a resumed run redoes the others).

    Rewritten atomically, so a kill now leaves the old file or the new one.

    Raises:
        ModelError: a line other than the last is damaged (see :func:`read_records`); a run that
            starts from scratch (``before_epoch`` 0) does not read the old file.
    """
    kept = [r for r in read_records(path) if r["epoch"] < before_epoch] if before_epoch > 0 else []
    text = "".join(json.dumps(r) + "\n" for r in kept)
    write_atomic(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


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
