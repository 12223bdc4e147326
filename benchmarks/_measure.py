"""Helpers shared by the benchmark scripts: timing a command with its peak memory."""

from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("bench")

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
SHARED = ROOT.parent / "shared"
AUTOSEG = str(ROOT / ".venv" / "bin" / "autoseg")


def short_training(epochs: int = 1, iters: int = 2, val_iters: int = 1, workers: int = 0) -> list[str]:
    """``autoseg train`` options of a run that only has to yield a model or pass through a code
    path, not to learn (the scripts that time prediction, memory or a device's code paths)."""
    out = ["--epochs", str(epochs), "--iters-per-epoch", str(iters), "--val-iters", str(val_iters)]
    return [*out, "--augment-workers", str(workers)]


@dataclass
class Run:
    """Wall seconds and peak resident memory (largest process, MiB) of one command."""

    wall_s: float
    peak_mib: float
    output: str


def run_measured(cmd: list[str], env: dict[str, str] | None = None, cwd: Path | None = None) -> Run:
    """Run ``cmd`` under ``/usr/bin/time -v`` (peak RSS of the largest process of the tree)."""
    timer = shutil.which("time") or "/usr/bin/time"
    log.info("$ %s", " ".join(cmd))
    t0 = time.perf_counter()
    p = subprocess.run([timer, "-v", *cmd], env=env, capture_output=True, text=True, cwd=cwd)
    wall = time.perf_counter() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{cmd[0]} failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    m = re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr)
    return Run(wall, int(m.group(1)) / 1024 if m else float("nan"), p.stdout + p.stderr)


def write_result(name: str, text: str) -> None:
    """Print a result table and keep it in benchmarks/results/<name>."""
    print(text)
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / name).write_text(text)


def read_rows(path: Path) -> list[dict]:
    """The runs kept in a benchmark's JSON results file (none when it does not exist yet)."""
    return json.loads(path.read_text()) if path.is_file() else []


def append_row(path: Path, row: dict) -> None:
    """Keep one more run in ``path`` at once, so that runs add up across sessions even when a
    later one is cut short."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([*read_rows(path), row], indent=1))
