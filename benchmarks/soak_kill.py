"""`kill -9` soak: training, prediction and preprocessing killed at random moments, then rerun.

Not part of CI (minutes, and it kills processes). For each stage it first runs the command
uninterrupted (the reference), then runs it again in a fresh folder, killing the process tree
with SIGKILL at a random moment, checking what the kill left, and rerunning (``--continue`` for
training) until the command completes; this repeats until ``--kills`` kills have landed in the
stage. The finished result must equal the reference:

- train (2d, 6 sample cases, 10 epochs x 4 steps, 2 augmentation workers, checkpoint every
  epoch, one torch thread): final and best weights and optimiser state bit-identical,
  ``progress.jsonl`` records equal (times aside). After each kill: ``checkpoint_latest.pt`` (if
  any) loads, ``progress.jsonl`` is readable (a torn last line is allowed: it is dropped), no
  augmentation worker outlives the killed process.
- predict (that model, 16 scans, mirror TTA): after each kill, every visible output is whole and
  byte-identical to the reference's; the completed set equals the reference set.
- preprocess (every configuration's store of the 32 sample cases, 2 workers): after each kill,
  every case marked done (its properties file) loads and equals the reference; the completed
  stores equal it.

Always, at the end: no ``.partial-*`` temporary is left (a rerun sweeps those of killed runs).

    .venv/bin/python benchmarks/soak_kill.py --kills 20 [--stages train predict preprocess] [--seed 0]

Prints a table and writes benchmarks/results/soak_kill.json (one entry per stage, added to
what earlier runs kept there).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, HERE

from autoseg.io.samples import copy_sample_subset, sample_dataset_dir
from autoseg.training.checkpoint import load_checkpoint
from autoseg.training.progress import read_records

log = logging.getLogger("soak")

N_CASES = 6
FOLD = Path("models/2d/fold_all")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


@dataclass
class StageResult:
    """One stage's soak: kills that landed, reruns, whether the end state equals the reference."""

    stage: str
    kills: int = 0
    runs: int = 0
    trials: int = 0
    reference_s: float = 0.0
    soak_s: float = 0.0
    identical: bool = True
    problems: list[str] = field(default_factory=list)
    kill_points: list[str] = field(default_factory=list)


def _train_args(work: Path, *extra: str) -> list[str]:
    return [
        AUTOSEG, "train", "hippo", "2d", "all", "--work-dir", str(work), "--device", "cpu",
        "--precision", "fp32", "--batch-size", "2", "--epochs", "10", "--iters-per-epoch", "4",
        "--val-iters", "2", "--augment-workers", "2", "--seed", "7", "--checkpoint-every", "1",
        "-q", *extra,
    ]  # fmt: skip


def _predict_args(work: Path, src: Path, out: Path) -> list[str]:
    return [
        AUTOSEG, "predict", "-i", str(src), "-o", str(out), "--work-dir", str(work), "-d", "hippo",
        "-c", "2d", "-f", "all", "--device", "cpu", "-q",
    ]  # fmt: skip


def _preprocess_args(work: Path) -> list[str]:
    return [
        AUTOSEG, "preprocess", "hippo", "--work-dir", str(work), "--preprocess-workers", "2", "-q",
    ]  # fmt: skip


def _run(cmd: list[str]) -> float:
    t0 = time.perf_counter()
    p = subprocess.run(cmd, env=ENV, capture_output=True, text=True)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}):\n{p.stdout[-2000:]}{p.stderr[-2000:]}")
    return time.perf_counter() - t0


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (from /proc)."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(x) for x in task.read_text().split()]
            except OSError:
                continue
            out += kids
            todo += kids
    return out


def _alive(pids: list[int]) -> list[int]:
    def running(p: int) -> bool:
        try:
            return Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            return False

    return [p for p in pids if running(p)]


def _killed_run(cmd: list[str], delay: float, result: StageResult) -> bool:
    """Start ``cmd``, SIGKILL it after ``delay`` seconds; True when it finished first.

    Only the main process is killed, as ``kill -9 PID`` would; its worker processes must then
    go by themselves (checked: none may outlive it by more than 10 s).
    """
    result.runs += 1
    with tempfile.TemporaryFile("w+") as log_file:  # not a pipe: orphaned workers may hold it
        proc = subprocess.Popen(cmd, env=ENV, stdout=log_file, stderr=subprocess.STDOUT, text=True)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            children = _descendants(proc.pid)
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=60)
            result.kills += 1
            deadline = time.monotonic() + 10
            while _alive(children) and time.monotonic() < deadline:
                time.sleep(0.1)
            if left := _alive(children):
                said = f"kill {result.kills}: {len(left)} worker(s) outlived the killed process"
                result.problems.append(said)
                for p in left:
                    os.kill(p, signal.SIGKILL)
            return False
        if proc.returncode != 0:
            log_file.seek(0)
            msg = f"{' '.join(cmd)} failed ({proc.returncode}) after a kill:\n{log_file.read()[-3000:]}"
            raise RuntimeError(msg)
    return True


def _partials(root: Path) -> list[str]:
    return [str(p) for p in root.rglob(".partial-*")]


def _soak(
    result: StageResult,
    *,
    kills: int,
    rng: random.Random,
    fresh: Callable[[Path], Path],
    command: Callable[[Path, bool], list[str]],
    after_kill: Callable[[Path], list[str]],
    compare: Callable[[Path], list[str]],
    where: Callable[[Path], str],
    span: tuple[float, float],
) -> None:
    """Trials of (fresh folder; kill at random moments in ``span`` seconds until a run
    completes; compare) until ``kills`` kills have landed."""
    t0 = time.perf_counter()
    while result.kills < kills:
        result.trials += 1
        folder = fresh(Path(tempfile.mkdtemp(prefix="soak_")))
        started = False
        while not _killed_run(command(folder, started), rng.uniform(*span), result):
            started = True
            result.problems += [f"kill {result.kills}: {p}" for p in after_kill(folder)]
            result.kill_points.append(where(folder))
            log.info("%s: kill %d of %d", result.stage, result.kills, kills)
        result.problems += [f"trial {result.trials}: {p}" for p in compare(folder)]
        result.problems += [f"trial {result.trials}: left behind {p}" for p in _partials(folder)]
        shutil.rmtree(folder)
    result.soak_s = time.perf_counter() - t0
    result.identical = not result.problems


# --- train ----------------------------------------------------------------------------------


def _train_state(fold: Path) -> dict[str, Any]:
    return {
        "final": load_checkpoint(fold / "checkpoint_final.pt"),
        "best": load_checkpoint(fold / "checkpoint_best.pt"),
        "records": [
            {k: v for k, v in r.items() if k != "seconds"} for r in read_records(fold / "progress.jsonl")
        ],
    }


def _differences(a: Any, b: Any, where: str) -> list[str]:
    if isinstance(a, torch.Tensor):
        return [] if isinstance(b, torch.Tensor) and torch.equal(a, b) else [f"{where} differs"]
    if isinstance(a, dict):
        if a.keys() != b.keys():
            return [f"{where}: keys differ"]
        return [d for k in a for d in _differences(a[k], b[k], f"{where}.{k}")]
    if isinstance(a, list | tuple):
        if len(a) != len(b):
            return [f"{where}: lengths differ"]
        return [
            d for i, (x, y) in enumerate(zip(a, b, strict=True)) for d in _differences(x, y, f"{where}[{i}]")
        ]
    return [] if a == b else [f"{where}: {a!r} != {b!r}"]


def soak_train(planned: Path, kills: int, rng: random.Random) -> tuple[StageResult, Path]:
    result = StageResult("train")
    ref = Path(tempfile.mkdtemp(prefix="soak_ref_")) / "work"
    shutil.copytree(planned, ref, copy_function=os.link)
    result.reference_s = _run(_train_args(ref))
    want = _train_state(ref / "hippo" / FOLD)

    def fresh(tmp: Path) -> Path:
        dst = tmp / "work"
        shutil.copytree(planned, dst, copy_function=os.link)
        return dst

    def command(work: Path, started: bool) -> list[str]:
        resumable = (work / "hippo" / FOLD / "checkpoint_latest.pt").is_file()
        return _train_args(work, *(["--continue"] if started and resumable else []))

    def after_kill(work: Path) -> list[str]:
        fold, problems = work / "hippo" / FOLD, []
        if (fold / "checkpoint_latest.pt").is_file():
            try:
                load_checkpoint(fold / "checkpoint_latest.pt")
            except Exception as e:
                problems.append(f"checkpoint_latest.pt does not load: {e}")
        try:
            read_records(fold / "progress.jsonl")
        except Exception as e:
            problems.append(f"progress.jsonl: {e}")
        return problems

    def compare(work: Path) -> list[str]:
        got = _train_state(work / "hippo" / FOLD)
        return _differences(got, want, "run")[:5]

    def where(work: Path) -> str:
        latest = work / "hippo" / FOLD / "checkpoint_latest.pt"
        if not latest.is_file():
            return "no checkpoint yet"
        ck = load_checkpoint(latest)
        return f"checkpoint epoch {ck['epoch']} step {ck.get('iteration', 0)}"

    _soak(
        result, kills=kills, rng=rng, fresh=fresh, command=command, after_kill=after_kill,
        compare=compare, where=where, span=(2.0, 2.0 + 0.4 * result.reference_s),
    )  # fmt: skip
    return result, ref


# --- predict --------------------------------------------------------------------------------


def soak_predict(trained: Path, kills: int, rng: random.Random) -> StageResult:
    result = StageResult("predict")
    src = Path(tempfile.mkdtemp(prefix="soak_in_"))
    sample = sample_dataset_dir()
    scans = sorted((sample / "imagesTs").glob("*.nii.gz")) + sorted((sample / "imagesTr").glob("*.nii.gz"))
    for s in scans[:16]:
        shutil.copyfile(s, src / s.name)
    ref = src.parent / (src.name + "_ref")
    result.reference_s = _run(_predict_args(trained, src, ref))
    want = {p.name: p.read_bytes() for p in ref.iterdir()}

    def check(out: Path, complete: bool) -> list[str]:
        if not out.is_dir():
            return ["no output folder"] if complete else []
        got = {p.name: p.read_bytes() for p in out.iterdir() if not p.name.startswith(".")}
        problems = [f"{n}: not byte-identical to the reference" for n in got if got[n] != want.get(n)]
        if complete and got.keys() != want.keys():
            problems.append(f"outputs {sorted(got)} != {sorted(want)}")
        return problems

    _soak(
        result, kills=kills, rng=rng, fresh=lambda tmp: tmp / "out",
        command=lambda out, started: _predict_args(trained, src, out),
        after_kill=lambda out: check(out, complete=False), compare=lambda out: check(out, complete=True),
        where=lambda out: f"{len(list(out.glob('*.nii.gz'))) if out.is_dir() else 0} outputs",
        span=(0.5, 0.9 * result.reference_s),
    )  # fmt: skip
    shutil.rmtree(src)
    shutil.rmtree(ref)
    return result


# --- preprocess -----------------------------------------------------------------------------


def _stores(work: Path) -> dict[str, Path]:
    """The preprocessed stores of ``work`` by folder name (one per configuration)."""
    root = work / "hippo" / "preprocessed"
    return {p.name: p for p in sorted(root.iterdir()) if p.is_dir()} if root.is_dir() else {}


def soak_preprocess(planned: Path, kills: int, rng: random.Random) -> StageResult:
    """Preprocessing of every configuration of ``planned`` (the 32 sample cases)."""
    from autoseg.preprocessing.store import PreprocessedStore

    result = StageResult("preprocess")

    def fresh(tmp: Path) -> Path:
        dst = tmp / "work"
        shutil.copytree(planned, dst, copy_function=os.link)
        shutil.rmtree(dst / "hippo" / "preprocessed", ignore_errors=True)
        return dst

    ref = fresh(Path(tempfile.mkdtemp(prefix="soak_ref_")))
    result.reference_s = _run(_preprocess_args(ref))
    want = {name: PreprocessedStore(folder) for name, folder in _stores(ref).items()}
    ids = sorted(p.stem for p in next(iter(want.values())).folder.glob("*.json") if p.stem != "plan_part")

    def check(work: Path, complete: bool) -> list[str]:
        stores, problems = _stores(work), []
        if complete and stores.keys() != want.keys():
            problems.append(f"stores {sorted(stores)} != {sorted(want)}")
        for name, folder in stores.items():
            store = PreprocessedStore(folder)
            done = [c for c in ids if store.is_done(c)]
            if complete and done != ids:
                problems.append(f"{name}: cases {sorted(set(ids) - set(done))} missing")
            for c in done:
                try:
                    a, b = store.load(c, mmap=False), want[name].load(c, mmap=False)
                except Exception as e:
                    problems.append(f"{name}/{c}: marked done but does not load: {e}")
                    continue
                same = np.array_equal(a.data, b.data) and np.array_equal(a.locations, b.locations)
                segs = (a.seg is None) == (b.seg is None) and (a.seg is None or np.array_equal(a.seg, b.seg))
                if not (same and segs):
                    problems.append(f"{name}/{c}: stored arrays differ from the reference")
        return problems

    _soak(
        result, kills=kills, rng=rng, fresh=fresh, command=lambda work, started: _preprocess_args(work),
        after_kill=lambda work: check(work, complete=False), compare=lambda work: check(work, complete=True),
        where=lambda work: f"{sum(len(list(f.glob('*.json'))) - 1 for f in _stores(work).values())} cases",
        span=(0.3, result.reference_s),
    )  # fmt: skip
    return result


# --- main -----------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=10, help="kills per stage (default 10)")
    ap.add_argument("--stages", nargs="+", default=["train", "predict", "preprocess"])
    ap.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="soak_root_"))
    ds = copy_sample_subset(root / "hippo", N_CASES)
    planned = root / "work"
    _run([AUTOSEG, "plan", str(ds), "--work-dir", str(planned), "--preprocess-workers", "2", "-q"])
    results: list[StageResult] = []
    trained: Path | None = None
    for stage in args.stages:
        if stage == "train" or (stage == "predict" and trained is None):
            res, trained = soak_train(planned, args.kills if stage == "train" else 0, rng)
            if stage == "train":
                results.append(res)
        if stage == "predict":
            assert trained is not None
            results.append(soak_predict(trained, args.kills, rng))
        if stage == "preprocess":
            full = copy_sample_subset(root / "all" / "hippo", 32)
            _run([AUTOSEG, "plan", str(full), "--work-dir", str(root / "all" / "work"), "-q"])
            results.append(soak_preprocess(root / "all" / "work", args.kills, rng))
    rows = [
        "| stage | kills | runs | trials | reference s | soak s | end state = reference | problems "
        "| killed at |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        rows.append(
            f"| {r.stage} | {r.kills} | {r.runs} | {r.trials} | {r.reference_s:.1f} | {r.soak_s:.0f} "
            f"| {'yes' if r.identical else 'NO'} | {'; '.join(r.problems[:3]) or '-'} "
            f"| {', '.join(f'{k} x{n}' for k, n in Counter(r.kill_points).most_common())} |"
        )
    print("\n".join(rows))
    out = HERE / "results" / "soak_kill.json"
    kept = json.loads(out.read_text()) if out.is_file() else []
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
    kept.append({"date": stamp, "seed": args.seed, "stages": [asdict(r) for r in results]})
    out.write_text(json.dumps(kept, indent=2) + "\n")
    shutil.rmtree(root, ignore_errors=True)
    sys.exit(0 if all(r.identical for r in results) else 1)


if __name__ == "__main__":
    main()
