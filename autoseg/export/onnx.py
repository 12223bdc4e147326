"""ONNX export of a trained configuration's fold networks, with a JSON sidecar.

Layout (inside the model folder, where ``predict --backend onnx`` looks)::

    models/<config>/fold_<k>/model.onnx     input "input" (B, C_in, *patch), output "logits"
    models/<config>/export.json             what prediction needs beyond the networks

The networks output logits: no softmax or sigmoid is baked in. The sidecar says which one turns
them into probabilities (``activation``: softmax over labels, or a sigmoid per region painted in
``regions_class_order``), as the plan's :class:`~autoseg.labels.LabelScheme` does in autoseg.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from pathlib import Path
from typing import Any

import torch

from autoseg._atomic import write_atomic, write_json_atomic
from autoseg._optional import get_onnx
from autoseg.inference.model import load_model

log = logging.getLogger(__name__)

SIDECAR_VERSION = 2  # 2: previous_stage, previous_stage_channels
OPSET = 17


def sidecar(model_dir: Path, folds: list[str], fmt: str) -> dict[str, Any]:
    """The JSON beside exported networks: plan subset, patch, normalisation, labels (and how the
    logits become probabilities and label maps), files."""
    model = load_model(model_dir, folds=folds, device="cpu", previous_stage=False)
    cfg, plan = model.config, model.plan
    return {
        "schema_version": SIDECAR_VERSION,
        "format": fmt,
        "configuration": cfg.name,
        "kind": cfg.kind,
        "patch_size": list(cfg.patch_size),
        "in_slices": cfg.in_slices,
        "input_channels": plan.network_input_channels(cfg),
        # a cascade stage's last input channels: its previous stage's label map (that export
        # runs first), one-hot, one channel per foreground label or region in declared order
        "previous_stage": cfg.previous_stage,
        "previous_stage_channels": plan.previous_stage_channels(cfg),
        "input_name": "input",
        "output_name": "logits",
        "channel_names": list(plan.channel_names),
        "labels": dict(plan.labels),
        "regions_class_order": None if plan.regions_class_order is None else list(plan.regions_class_order),
        "activation": plan.label_scheme.activation,
        "output_names": list(plan.label_scheme.output_names),
        "normalization": [vars(n) | {"clip": list(n.clip) if n.clip else None} for n in plan.normalization],
        "spacing": list(cfg.spacing),
        "transpose_forward": list(plan.transpose_forward),
        "postprocessing": model.postprocessing.to_dict() if model.postprocessing is not None else None,
        "folds": {f: f"fold_{f}/model.{'onnx' if fmt == 'onnx' else 'engine'}" for f in folds},
        "plan": plan.to_dict(),
    }


def export_onnx(
    model_dir: Path, *, folds: list[str] | None = None, copy_to: Path | None = None
) -> list[Path]:
    """Export every (or the given) fold of a configuration to ONNX, dynamic batch size.

    Args:
        model_dir: ``<work>/<dataset>/models/<config>``.
        folds: folds to export (default: every trained fold).
        copy_to: also copy the exported folder (networks + export.json) here.

    Returns:
        The written ``model.onnx`` paths.
    """
    onnx = get_onnx()
    model = load_model(model_dir, folds=folds, device="cpu", previous_stage=False)
    cfg, plan = model.config, model.plan
    c_in = plan.network_input_channels(cfg)
    written = []
    for fold, net in zip(model.folds, model.networks, strict=True):
        dummy = torch.zeros(1, c_in, *cfg.patch_size)

        def write(tmp: Path, net: torch.nn.Module = net, dummy: torch.Tensor = dummy) -> None:
            with warnings.catch_warnings():
                # The exporter's notices are not actionable here: it warns that InstanceNorm
                # exports with train=True (InstanceNorm always normalises with the input's own
                # statistics, so that is what the network does in eval mode) and that the
                # TorchScript exporter is the legacy one (the torch.export one needs onnxscript,
                # not a dependency).
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    net,
                    (dummy,),
                    str(tmp),
                    input_names=["input"],
                    output_names=["logits"],
                    opset_version=OPSET,
                    dynamo=False,
                    dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                )
            onnx.checker.check_model(str(tmp))

        dest = write_atomic(model_dir / f"fold_{fold}" / "model.onnx", write)
        written.append(dest)
        log.info("fold %s -> %s", fold, dest)
    write_json_atomic(model_dir / "export.json", sidecar(model_dir, model.folds, "onnx"))
    if copy_to is not None:
        copy_to.mkdir(parents=True, exist_ok=True)
        shutil.copy(model_dir / "export.json", copy_to / "export.json")
        for fold, src in zip(model.folds, written, strict=True):
            (copy_to / f"fold_{fold}").mkdir(exist_ok=True)
            shutil.copy(src, copy_to / f"fold_{fold}" / "model.onnx")
    return written
