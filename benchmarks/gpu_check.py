"""GPU check for a machine with an NVIDIA GPU: one table of training and prediction speed.

Run by benchmarks/gpu_check.sh (which also runs the CUDA tests). Under 5 minutes on one GPU:
- training: seconds per iteration of 3d_fullres with AMP on the hippocampus sample plan and on a
  large-patch plan (ct_sample, 32x112x128, 42 classes), and whether the data loader keeps up
  (time waiting for batches vs computing);
- prediction: seconds per case on the 8 held-out sample cases (TTA on) for the torch backend,
  onnxruntime (CUDA provider if present) and TensorRT (if installed).
"""

from __future__ import annotations

import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import torch

from autoseg.cli import main as cli
from autoseg.io.samples import DATA_DIR, make_single_case_dataset, sample_dataset_dir

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
                "--epochs",
                "2",
                "--iters-per-epoch",
                str(iters),
                "--val-iters",
                "2",
                "--device",
                "cuda",
                "--augment-workers",
                "4",
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


def time_predict(work: Path, dataset: str, backend: str, src: Path, out: Path) -> float:
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
        ]
    )
    if code != 0:
        return float("nan")
    return (time.perf_counter() - t0) / len(list(src.glob("*.nii.gz")))


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
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
    print(f"## GPU check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}\n")
    print("| what | case | result | note |\n|---|---|---|---|")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
