"""GPU check for a machine with an NVIDIA GPU: one table of training and prediction speed.

Run by benchmarks/gpu_check.sh (which also runs the CUDA tests). Under 5 minutes on one GPU:
- training: seconds per iteration of 3d_fullres with AMP on the hippocampus sample plan and on a
  large-patch plan (ct_sample, 32x112x128, 42 classes), and whether the data loader keeps up
  (time waiting for batches vs computing);
- prediction: seconds per case on the 8 held-out sample cases (TTA on) for the torch backend,
  onnxruntime (CUDA provider if present) and TensorRT (if installed);
- out of memory in training: a 3d_fullres step whose batch does not fit under a memory limit
  (``torch.cuda.set_per_process_memory_fraction``) falls back to smaller micro-batches and finishes;
- several folds: ``train ... 0 1`` runs both folds, on two GPUs at once when there are two.

``python benchmarks/gpu_check.py --cpu-smoke`` runs the fold-runner check on the CPU (one after
the other), so that the script itself is exercised on a machine without a GPU.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import short_training

from autoseg.cli import main as cli
from autoseg.io.samples import DATA_DIR, copy_sample_subset, make_single_case_dataset, sample_dataset_dir
from autoseg.planning.plan import Plan

log = logging.getLogger("gpu_check")


def time_training(work: Path, dataset: str, iters: int) -> dict[str, float]:
    """Train fold all for 2 epochs of `iters`; report s/iter of the second epoch and loader wait."""
    from autoseg.data.loader import make_loader
    from autoseg.planning.plan import Plan
    from autoseg.preprocessing.store import PreprocessedStore

    assert (
        cli(
            [
                "train",
                dataset,
                "3d_fullres",
                "all",
                *short_training(epochs=2, iters=iters, val_iters=2, workers=4),
                "--device",
                "cuda",
                "--work-dir",
                str(work),
                "-q",
            ]
        )
        == 0
    )
    fold = work / dataset / "models" / "3d_fullres" / "fold_all"
    recs = [json.loads(x) for x in (fold / "progress.jsonl").read_text().splitlines()]
    plan = Plan.load(work / dataset / "plans.json")
    cfg = plan.configuration("3d_fullres")
    store = PreprocessedStore.for_config(work / dataset, plan, cfg)
    ids = sorted(p.stem for p in store.folder.glob("*.json") if p.stem != "plan_part")
    with make_loader(store, ids, cfg, batch_size=cfg.batch_size, workers=4, seed=0, augment=True) as loader:
        next(loader)
        t0 = time.perf_counter()
        for _ in range(iters):
            next(loader)
        loader_s = (time.perf_counter() - t0) / iters
    step_s = recs[-1]["seconds"] / (iters + 2)
    return {"s_per_iter": step_s, "loader_s_per_batch": loader_s, "loader_keeps_up": float(loader_s < step_s)}


def time_predict(work: Path, dataset: str, backend: str, src: Path, out: Path, *extra: str) -> float:
    """Seconds per case of one ``autoseg predict`` of ``src`` on CUDA (``extra``: more flags)."""
    t0 = time.perf_counter()
    code = cli(
        [
            "predict",
            "-i",
            str(src),
            "-o",
            str(out),
            "-d",
            dataset,
            "-c",
            "3d_fullres",
            "--device",
            "cuda",
            "--backend",
            backend,
            "--work-dir",
            str(work),
            "-q",
            *extra,
        ]
    )
    if code != 0:
        return float("nan")
    return (time.perf_counter() - t0) / len(list(src.glob("*.nii.gz")))


def time_overlap(work: Path, dataset: str, tmp: Path, copies: int = 5) -> str:
    """A cohort of 40 small cases (the 8 held-out sample cases, 5 times), TTA off: the stages in
    turn vs overlapped (issue 15). On a GPU the network is a small share of a case, so reading
    and writing behind it is where the time goes."""
    src = tmp / "cohort"
    src.mkdir()
    for k in range(copies):
        for p in sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz")):
            shutil.copy(p, src / f"c{k}_{p.name}")
    flags = ["--no-tta"]
    in_turn = time_predict(
        work, dataset, "torch", src, tmp / "out_in_turn", *flags, "--read-ahead", "0", "--write-behind", "0"
    )
    one_each = ("--read-ahead", "1", "--write-behind", "1")
    overlapped = time_predict(work, dataset, "torch", src, tmp / "out_overlapped", *flags, *one_each)
    return (
        f"| predict cohort TTA off | {len(list(src.iterdir()))} cases | in turn {in_turn:.3f}, "
        f"overlapped {overlapped:.3f} s/case | {in_turn / overlapped:.2f}x (target >= 1.3x) |"
    )


def check_oom_fallback(plans: Path, batch_size: int = 16) -> str:
    """A 3d_fullres training step whose batch cannot fit under a memory limit set from the measured
    cost of one sample: the step must fall back to a smaller micro-batch and finish."""
    from autoseg.training.config import TrainConfig
    from autoseg.training.trainer import Trainer

    plan = Plan.load(plans)
    config = plan.configuration("3d_fullres")
    n_in = plan.network_input_channels(config)
    n_out = len(plan.label_scheme.entries) + 1

    def trainer(bs: int) -> Trainer:
        cfg = TrainConfig("3d_fullres", 0, device="cuda", precision="fp32", batch_size=bs, seed=1)
        out = Path(tempfile.mkdtemp())
        return Trainer(plan, config, cfg, None, ["a"], ["b"], out)  # type: ignore[arg-type]  # no store: batches given

    def batches(bs: int) -> list[dict[str, object]]:
        shape = (bs, n_in, *config.patch_size)
        return [{"data": torch.randn(shape), "target": torch.randint(0, n_out, (bs, 1, *config.patch_size))}]

    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    one = trainer(1)
    torch.cuda.reset_peak_memory_stats()
    one._step(iter(batches(1)))
    per_sample = torch.cuda.max_memory_allocated() - base
    del one
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    limit = base + 4 * per_sample  # room for about 2-3 samples besides weights and optimiser state
    torch.cuda.set_per_process_memory_fraction(min(1.0, limit / total))
    try:
        big = trainer(batch_size)
        before = [p.detach().clone() for p in big.network.parameters()]
        loss = big._step(iter(batches(batch_size)))
        micro = big.micro.micro
        moved = any(not torch.equal(a, p) for a, p in zip(before, big.network.parameters(), strict=True))
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()
    ok = micro < batch_size and moved and loss == loss
    return (
        f"| train OOM fallback | limit {limit / 2**30:.1f} GiB, batch {batch_size} | "
        f"micro-batch {micro}, loss {loss:.3f} | {'ok' if ok else 'FAILED'} |"
    )


def check_fold_runner(work: Path, dataset: str, config: str, device: str) -> str:
    """``train DATASET CONFIG 0 1``: both folds end with a final checkpoint; on two GPUs at once."""
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    t0 = time.perf_counter()
    code = cli(
        [
            "train",
            dataset,
            config,
            "0",
            "1",
            "--n-folds",
            "2",
            *short_training(),
            "--device",
            device,
            "--no-val-probabilities",
            "--work-dir",
            str(work),
            "-q",
        ]
    )
    seconds = time.perf_counter() - t0
    finals = [
        (work / dataset / "models" / config / f"fold_{f}" / "checkpoint_final.pt").is_file() for f in (0, 1)
    ]
    how = "2 GPUs at once" if gpus >= 2 else f"one after the other on {device}"
    ok = code == 0 and all(finals)
    verdict = "ok" if ok else "FAILED"
    return f"| train 2 folds | {dataset} {config}, {how} | {seconds:.0f} s, exit {code} | {verdict} |"


def cpu_smoke() -> int:
    """The fold-runner check on the CPU (2d, tiny budget): the parts of this script a CPU can run."""
    with tempfile.TemporaryDirectory() as t:
        work = Path(t) / "work"
        ds = copy_sample_subset(Path(t) / "hippo", 6)
        assert cli(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
        row = check_fold_runner(work, "hippo", "2d", "cpu")
    print(row)
    return 0 if row.endswith("ok |") else 1


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if "--cpu-smoke" in sys.argv[1:]:
        return cpu_smoke()
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    rows = []
    with tempfile.TemporaryDirectory() as t:
        tmp = Path(t)
        work = tmp / "work"
        ct = DATA_DIR / "fixtures" / "ct_sample"
        ct_ds = make_single_case_dataset(
            ct / "example_ct_sm.nii.gz", ct / "example_seg.nii.gz", tmp / "ct_sample"
        )
        for ds in (sample_dataset_dir(), ct_ds):
            assert cli(["plan", str(ds), "--work-dir", str(work), "-q"]) == 0
        for name, iters in (("hippocampus_sample", 50), ("ct_sample", 20)):
            r = time_training(work, name, iters)
            rows.append(
                f"| train 3d_fullres AMP | {name} | {r['s_per_iter']:.3f} s/iter | "
                f"loader {r['loader_s_per_batch']:.3f} s/batch "
                f"({'keeps up' if r['loader_keeps_up'] else 'GPU waits'}) |"
            )
        src = sample_dataset_dir() / "imagesTs"
        assert cli(["export", "hippocampus_sample", "3d_fullres", "--work-dir", str(work), "-q"]) == 0
        backends = ["torch", "onnx"]
        try:
            import tensorrt  # noqa: F401

            if (
                cli(
                    [
                        "export",
                        "hippocampus_sample",
                        "3d_fullres",
                        "--format",
                        "tensorrt",
                        "--fp16",
                        "--work-dir",
                        str(work),
                        "-q",
                    ]
                )
                == 0
            ):
                backends.append("tensorrt")
        except ImportError:
            rows.append("| predict | tensorrt | not installed | |")
        for b in backends:
            s = time_predict(work, "hippocampus_sample", b, src, tmp / f"out_{b}")
            rows.append(f"| predict TTA on | {b} | {s:.3f} s/case | 8 held-out sample cases |")
        rows.append(time_overlap(work, "hippocampus_sample", tmp))
        rows.append(
            check_oom_fallback(Path(__file__).resolve().parents[1] / "plans/hippocampus_sample/plans.json")
        )
        rows.append(check_fold_runner(work, "hippocampus_sample", "3d_fullres", "cuda"))
    print(f"## GPU check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| what | case | result | note |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
