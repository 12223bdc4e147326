"""A trained model on disk: ``models/<config>/plans.json`` + ``fold_<k>/checkpoint_<name>.pt``.

Loading needs no training code: the plan says how to build the network, the checkpoint holds
its weights (read with ``weights_only=True``). The network is the training
:class:`~autoseg.networks.unet.UNet` built without its deep-supervision heads (prediction never
evaluates them), in plain torch, so ``autoseg predict`` starts without importing MONAI.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from autoseg.checkpoint_meta import CheckpointMeta
from autoseg.errors import CheckpointError, ModelError
from autoseg.inference.choice import InferenceChoice
from autoseg.inference.postprocess import Postprocessing
from autoseg.networks.unet import network_for
from autoseg.planning.plan import Configuration, Plan

log = logging.getLogger(__name__)


@dataclass
class TrainedModel:
    """One configuration's networks (one per fold) and what prediction needs with them.

    ``previous`` is a cascade stage's previous stage (``3d_lowres`` for ``3d_cascade_fullres``):
    its folds' ensembled prediction of a scan is part of the cascade's input.
    """

    plan: Plan
    config: Configuration
    networks: list[torch.nn.Module]
    folds: list[str]
    model_dir: Path
    postprocessing: Postprocessing | None = field(default=None)
    previous: TrainedModel | None = field(default=None)


def trained_folds(model_dir: Path, checkpoint: str = "final") -> list[str]:
    """Fold names (``"0"``…``"4"``, ``"all"``) that have the given checkpoint."""
    return sorted(
        p.parent.name.removeprefix("fold_") for p in model_dir.glob(f"fold_*/checkpoint_{checkpoint}.pt")
    )


def load_model(
    model_dir: Path,
    *,
    folds: list[str] | None = None,
    checkpoint: str = "final",
    device: torch.device | str = "cpu",
    backend: str = "torch",
    previous_stage: bool = True,
) -> TrainedModel:
    """Load a configuration's fold networks in eval mode.

    A cascade stage's previous stage is loaded with it (every trained fold of it, whatever
    ``folds`` says: prediction runs their ensemble first), unless ``previous_stage`` is False
    (export needs the stage's own networks only).

    Args:
        model_dir: ``<work>/<dataset>/models/<config>``.
        folds: which folds (default: every fold with the checkpoint).
        checkpoint: ``final``, ``best`` or ``latest``.
        device: where the networks go.
        backend: ``torch`` (checkpoints), ``onnx`` (``fold_k/model.onnx`` run by onnxruntime) or
            ``tensorrt`` (``fold_k/model.engine``); the exported ones come from ``autoseg export``.
        previous_stage: also load a cascade stage's previous stage.

    Raises:
        CheckpointError: no plan, no trained fold, or an unreadable checkpoint.
        ModelError: a cascade stage's previous stage is not trained, or was trained with another
            plan than the cascade stage.
    """
    plan_path = model_dir / "plans.json"
    if not plan_path.is_file():
        msg = f"{model_dir}: no trained model here (plans.json missing); run `autoseg train` first"
        raise ModelError(msg)
    plan = Plan.load(plan_path)
    config = plan.configuration(model_dir.name)
    available = trained_folds(model_dir, checkpoint)
    folds = folds or available
    missing = [f for f in folds if f not in available]
    if not folds or missing:
        msg = (
            f"{model_dir}: fold(s) {missing or 'any'} have no checkpoint_{checkpoint}.pt "
            f"(trained: {available or 'none'}); train them or choose others with -f"
        )
        raise CheckpointError(msg)
    device = torch.device(device)
    previous = None
    if previous_stage and config.previous_stage is not None:  # first: it fails before any loading
        previous = _load_previous_stage(
            model_dir, plan, config.previous_stage, checkpoint=checkpoint, device=device, backend=backend
        )
    if backend != "torch":
        from autoseg.inference.backends import OnnxNetwork, TensorRTNetwork

        networks: list[Any] = [
            OnnxNetwork(model_dir / f"fold_{f}" / "model.onnx", device=device)
            if backend == "onnx"
            else TensorRTNetwork(model_dir / f"fold_{f}" / "model.engine", device=device)
            for f in folds
        ]
    else:
        networks = [_load_torch(model_dir, f, checkpoint, config, plan, device) for f in folds]
    pp_path = model_dir / "postprocessing.json"
    pp = Postprocessing.load(pp_path) if pp_path.is_file() else None
    return TrainedModel(plan, config, networks, list(folds), model_dir, pp, previous)


def _load_previous_stage(
    model_dir: Path, plan: Plan, stage: str, *, checkpoint: str, device: torch.device, backend: str
) -> TrainedModel:
    """The previous stage of the cascade stage in ``model_dir``: all its trained folds.

    Raises:
        ModelError: it is not trained (the message gives the commands), or its plan of ``stage``
            is not the one the cascade stage was trained with.
    """
    stage_dir = model_dir.parent / stage
    if not (stage_dir / "plans.json").is_file() or not trained_folds(stage_dir, checkpoint):
        msg = (
            f"{model_dir.name} takes the prediction of {stage} as input, but {stage_dir} has no "
            f"trained fold (checkpoint_{checkpoint}.pt); train its folds first: "
            f"`autoseg train {plan.dataset_name} {stage} FOLD`"
        )
        raise ModelError(msg)
    expected, found = (
        plan.configuration_hash(stage),
        Plan.load(stage_dir / "plans.json").configuration_hash(stage),
    )
    if expected != found:
        msg = (
            f"{stage_dir / 'plans.json'}: {stage} was trained with another plan (hash {found}) "
            f"than the one {model_dir.name} was trained with ({expected}); train {model_dir.name} "
            f"again on the predictions of this {stage}, or {stage} again with the plan of "
            f"{model_dir / 'plans.json'}"
        )
        raise ModelError(msg)
    previous = load_model(stage_dir, checkpoint=checkpoint, device=device, backend=backend)
    log.info("%s: its previous stage %s, folds %s", model_dir.name, stage, ", ".join(previous.folds))
    return previous


def _load_torch(
    model_dir: Path, fold: str, checkpoint: str, config: Configuration, plan: Plan, device: torch.device
) -> torch.nn.Module:
    """One fold's torch network from its checkpoint (weights only: no code runs from the file).

    Raises:
        CheckpointError: unreadable, without valid metadata, or trained for another
            configuration, plan or class count than ``model_dir/plans.json`` (named with the fix).
    """
    path = model_dir / f"fold_{fold}" / f"checkpoint_{checkpoint}.pt"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        msg = f"{path}: cannot be read as a checkpoint ({type(e).__name__}); retrain this fold"
        raise CheckpointError(msg) from e
    CheckpointMeta.from_checkpoint(state, path).check(
        plan,
        config,
        path=path,
        against=str(model_dir / "plans.json"),
        fix=f"retrain fold {fold} with this plan, or leave it out (-f with the other folds)",
    )
    net = network_for(plan, config, deep_supervision=False)
    try:
        net.load_weights(state["network"], source=str(path))
    except (KeyError, CheckpointError) as e:
        msg = (
            f"{path}: its weights do not fit the network of {model_dir / 'plans.json'} "
            f"({type(e).__name__}); retrain this fold with this plan"
        )
        raise CheckpointError(msg) from e
    return net.to(device).eval()


def default_models(dataset_dir: Path) -> tuple[list[tuple[str, list[str] | None]], Postprocessing | None]:
    """What ``predict`` uses without ``-c``: find-best's choice, else the only trained model.

    Returns:
        ``([(configuration, folds or None), …], post-processing or None)``; the post-processing
        is find-best's (for an ensemble too), else the model folder's own.

    Raises:
        CheckpointError: nothing trained, several models and no find-best choice, or an
            invalid ``inference.json``.
    """
    info = dataset_dir / "inference.json"
    if info.is_file():
        choice = InferenceChoice.load(info)
        return [(c, list(choice.folds[c])) for c in choice.configurations], choice.postprocessing
    models = sorted(p.name for p in (dataset_dir / "models").glob("*") if trained_folds(p))
    if len(models) == 1:
        return [(models[0], None)], None
    if not models:
        msg = f"{dataset_dir}: no trained model; run `autoseg train` first"
    else:
        msg = (
            f"{dataset_dir}: several trained models ({', '.join(models)}); choose one with -c "
            "or run `autoseg find-best`"
        )
    raise ModelError(msg)
