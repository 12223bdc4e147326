"""autoseg's predictor on nnU-Net's own trained weights: is it the same prediction?

The training benchmark compares two *trainings*; their Dice differs by how each run went. This
check takes the training out: nnU-Net's ``PlainConvUNet`` and autoseg's ``UNet`` are the same
network for the same plan (conv -> instance norm -> leaky ReLU, two per stage, transposed-conv
upsampling, upsampled features concatenated before the skip), so an nnU-Net checkpoint can be
loaded into autoseg's network and run by ``autoseg``'s predictor. Two weight differences:

* nnU-Net's convolutions have biases, autoseg's do not. Every such convolution feeds an
  instance norm, which subtracts the per-channel mean: a per-channel constant cancels exactly, so
  these biases are dropped.
* The transposed convolutions' biases do not cancel exactly (zero padding at the patch border),
  so here autoseg's transposed convolutions get a bias to receive them.

It then predicts nnU-Net's fold-0 validation cases with autoseg (mirror TTA, step 0.5, as
nnU-Net's validation) and compares, case by case, with the label maps nnU-Net's own validation
wrote: voxels that differ, and the Dice of each against the reference labels.

    .venv/bin/python benchmarks/check_same_model.py NNUNET_FOLD_DIR   # .../fold_0 of a run

NNUNET_FOLD_DIR holds ``checkpoint_final.pth`` and ``validation/``; the plan is autoseg's own
plan of ../shared/data/hippocampus (equal to nnU-Net's, see plans/README.md). Reading the nnU-Net
checkpoint needs ``weights_only=False`` (it pickles its logs): run it only on checkpoints you made.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _measure import AUTOSEG, SHARED, write_result

log = logging.getLogger("check_same_model")


def nnunet_to_autoseg(nn_state: dict[str, torch.Tensor], n_stages: int) -> dict[str, torch.Tensor]:
    """Rename nnU-Net ``PlainConvUNet`` weights to ``UNet`` names (conv biases dropped)."""
    out: dict[str, torch.Tensor] = {}

    def block(dst: str, src: str) -> None:
        for c in range(2):
            out[f"{dst}.conv{c + 1}.conv.weight"] = nn_state[f"{src}.convs.{c}.conv.weight"]
            out[f"{dst}.norm{c + 1}.weight"] = nn_state[f"{src}.convs.{c}.norm.weight"]
            out[f"{dst}.norm{c + 1}.bias"] = nn_state[f"{src}.convs.{c}.norm.bias"]

    for s in range(n_stages):
        dst = "input_block" if s == 0 else "bottleneck" if s == n_stages - 1 else f"downsamples.{s - 1}"
        block(dst, f"encoder.stages.{s}.0")
    for i in range(n_stages - 1):
        out[f"upsamples.{i}.transp_conv.conv.weight"] = nn_state[f"decoder.transpconvs.{i}.weight"]
        out[f"upsamples.{i}.transp_conv.conv.bias"] = nn_state[f"decoder.transpconvs.{i}.bias"]
        block(f"upsamples.{i}.conv_block", f"decoder.stages.{i}")
    last = n_stages - 2  # nnU-Net's seg_layers run from the coarsest decoder stage to the finest
    for name in ("weight", "bias"):
        out[f"output_block.conv.conv.{name}"] = nn_state[f"decoder.seg_layers.{last}.{name}"]
        for j in range(n_stages - 2):
            src = f"decoder.seg_layers.{last - 1 - j}.{name}"
            out[f"deep_supervision_heads.{j}.conv.conv.{name}"] = nn_state[src]
    return out


def with_transposed_biases(net: nn.Module) -> nn.Module:
    """Give every transposed convolution of a ``UNet`` a bias (see the module docstring)."""
    for up in net.upsamples:
        old = up.transp_conv.conv
        new = type(old)(old.in_channels, old.out_channels, old.kernel_size, stride=old.stride, bias=True)
        up.transp_conv.conv = new
    return net


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fold", type=Path, help="nnU-Net fold_0 folder (checkpoint_final.pth, validation/)")
    ap.add_argument("--data", type=Path, default=SHARED / "data" / "hippocampus")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from autoseg._precision import amp_dtype_for
    from autoseg.evaluation.metrics import dice_per_label
    from autoseg.inference.cohort import predict_path
    from autoseg.inference.model import TrainedModel
    from autoseg.inference.predictor import Predictor
    from autoseg.networks.unet import build_network
    from autoseg.planning.plan import Plan

    ck = torch.load(args.fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)
    nn_pred_dir = args.fold / "validation"
    cases = sorted(p.name.removesuffix(".nii.gz") for p in nn_pred_dir.glob("*.nii.gz"))
    with tempfile.TemporaryDirectory() as tmp:
        work, images, ours = Path(tmp) / "work", Path(tmp) / "images", Path(tmp) / "ours"
        subprocess.run([AUTOSEG, "plan", str(args.data), "--work-dir", str(work), "-q"], check=True)
        plan = Plan.load(work / args.data.name / "plans.json")
        config = plan.configuration("3d_fullres")
        net = with_transposed_biases(build_network(config, in_channels=1, n_classes=plan.num_classes))
        missing, unexpected = net.load_state_dict(
            nnunet_to_autoseg(ck["network_weights"], config.network.n_stages), strict=False
        )
        if missing or unexpected:
            sys.exit(f"weights do not map: missing {missing}, unexpected {unexpected}")
        net.eval()
        images.mkdir()
        for c in cases:
            (images / f"{c}.nii.gz").symlink_to(args.data / "imagesTr" / f"{c}.nii.gz")

        def read(path: Path) -> np.ndarray:
            return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))

        def mean_dice(pred: np.ndarray, ref: np.ndarray) -> float:
            return float(np.nanmean(list(dice_per_label(pred, ref, [1, 2]).values())))

        refs = {c: read(args.data / "labelsTr" / f"{c}.nii.gz") for c in cases}
        theirs = {c: read(nn_pred_dir / f"{c}.nii.gz") for c in cases}
        d_nn = float(np.mean([mean_dice(theirs[c], refs[c]) for c in cases]))
        rows = {}
        for precision in ("fp32", "auto"):
            dtype = amp_dtype_for(precision, torch.device("cpu"))
            model = TrainedModel(plan, config, [net], ["0"], work)
            predictor = Predictor([model], device=torch.device("cpu"), amp_dtype=dtype, step=0.5, tta=True)
            out = ours / precision
            predict_path(images, out, predictor)
            mine = {c: read(out / f"{c}.nii.gz") for c in cases}
            diff = [float(np.mean(mine[c] != theirs[c])) for c in cases]
            d_ours = float(np.mean([mean_dice(mine[c], refs[c]) for c in cases]))
            rows[precision] = (float(np.mean(diff)) * 100, float(np.max(diff)) * 100, d_ours, d_nn)
    lines = [
        f"## same model: nnU-Net's fold-0 weights ({args.fold.parent.name}) run by autoseg's predictor",
        "",
        f"{len(cases)} fold-0 validation cases, mirror TTA, step 0.5; nnU-Net's label maps are "
        "those its own validation wrote.",
        "",
        "| autoseg precision | voxels differing % (mean) | max % (one case) | Dice autoseg | Dice nnU-Net |",
        "|---|---:|---:|---:|---:|",
    ]
    for precision, (mean_d, max_d, d_a, d_n) in rows.items():
        lines.append(f"| {precision} | {mean_d:.4f} | {max_d:.4f} | {d_a:.4f} | {d_n:.4f} |")
    write_result("same_model_hippocampus_cpu.md", "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
