"""What a checkpoint says about itself: the typed metadata that training writes and every reader
checks against the plan it is about to use.

A checkpoint's weights fit any network of the same shape, so without this record a checkpoint of
another plan (another patch size, normalisation or label set of the same configuration) would be
continued or used for prediction silently. Training stores :meth:`CheckpointMeta.to_dict` under
the checkpoint's ``"meta"`` key as plain strings, numbers and dicts (checkpoints are read with
``torch.load(weights_only=True)``: no pickled classes); readers validate it back into the
dataclass with :meth:`CheckpointMeta.from_checkpoint` and compare it with :meth:`~CheckpointMeta.check`.

Formats: 3 (this one); 2 lacked ``previous_stage`` (read as None); 1 kept ``format``,
``configuration``, ``n_classes`` and ``train_config`` at the top level of the checkpoint and had no
plan identity. Format-1 and -2 checkpoints still load (format 1: configuration and class count
are checked; the plan cannot be).

This module imports no training code: prediction reads checkpoints too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg._contract import parse, to_json
from autoseg.errors import CheckpointError
from autoseg.planning.plan import Configuration, Plan

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = 3
_FIX = "retrain this fold"
#: The top-level keys of a format-1 checkpoint that held its metadata.
_FORMAT_1_KEYS = ("format", "configuration", "n_classes", "train_config")


@dataclass(frozen=True)
class CheckpointMeta:
    """Who a checkpoint belongs to.

    Attributes:
        format: the checkpoint format.
        configuration: the plan configuration it was trained for.
        n_classes: network outputs (background included).
        plan_hash: :meth:`Plan.configuration_hash` of the plan it was trained with; None for a
            format-1 checkpoint, which did not record it.
        train_config: the training settings (``TrainConfig.to_dict()``); training validates
            them when it continues, prediction does not read them.
        previous_stage: a cascade stage's digest of the previous-stage predictions it trains on
            (:attr:`autoseg.data.previous_stage.PreviousStageInput.digest`); training refuses to
            continue on others. None: not a cascade stage, or not recorded (format 1 and 2).
    """

    format: int
    configuration: str
    n_classes: int
    plan_hash: str | None
    train_config: dict[str, Any]
    previous_stage: str | None = None

    @classmethod
    def for_training(
        cls,
        plan: Plan,
        config: Configuration,
        train_config: dict[str, Any],
        *,
        previous_stage: str | None = None,
    ) -> CheckpointMeta:
        """The metadata of a checkpoint trained for ``config`` of ``plan`` (on the previous-stage
        inputs with digest ``previous_stage``, for a cascade stage)."""
        return cls(
            format=CHECKPOINT_FORMAT,
            configuration=config.name,
            n_classes=plan.num_classes,
            plan_hash=plan.configuration_hash(config.name),
            train_config=dict(train_config),
            previous_stage=previous_stage,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain form stored in the checkpoint under ``"meta"``."""
        return to_json(self)

    @classmethod
    def from_checkpoint(cls, checkpoint: Any, path: Path) -> CheckpointMeta:
        """Read and check the metadata of a loaded checkpoint (format 2, or 1 migrated).

        Args:
            checkpoint: what ``torch.load`` returned.
            path: the checkpoint file, named in errors.

        Raises:
            CheckpointError: no metadata, another format, or missing, unknown or wrongly typed
                metadata keys.
        """
        if not isinstance(checkpoint, dict):
            msg = f"{path}: not an autoseg checkpoint (a {type(checkpoint).__name__}); {_FIX}"
            raise CheckpointError(msg)
        if "meta" in checkpoint:
            data, version = checkpoint["meta"], CHECKPOINT_FORMAT
            if isinstance(data, dict) and data.get("format") == 2 and "previous_stage" not in data:
                data = {**data, "format": CHECKPOINT_FORMAT, "previous_stage": None}
        elif checkpoint.get("format") == 1 and type(checkpoint.get("format")) is int:
            data = {k: checkpoint[k] for k in _FORMAT_1_KEYS if k in checkpoint} | {
                "plan_hash": None,
                "previous_stage": None,
            }
            version = 1
        else:
            found = checkpoint.get("format", "missing")
            msg = (
                f"{path}: no checkpoint metadata (format {found}; this autoseg reads formats 1 and "
                f"{CHECKPOINT_FORMAT}); {_FIX}"
            )
            raise CheckpointError(msg)
        try:
            return parse(
                cls,
                data,
                name="checkpoint metadata",
                version=version,
                error=CheckpointError,
                fix=_FIX,
                version_key="format",
            )
        except CheckpointError as e:
            msg = f"{path}: {e}"
            raise CheckpointError(msg) from e

    def differences(self, plan: Plan, config: Configuration) -> list[str]:
        """How this checkpoint differs from what ``config`` of ``plan`` needs (empty: it fits)."""
        found = []
        if self.configuration != config.name:
            found.append(f"it was trained for configuration {self.configuration!r}, not {config.name!r}")
        if self.n_classes != plan.num_classes:
            found.append(f"it has {self.n_classes} classes, the plan {plan.num_classes}")
        if self.plan_hash is not None and not found:
            expected = plan.configuration_hash(config.name)
            if self.plan_hash != expected:
                found.append(
                    f"it was trained with another plan of {config.name} (plan hash {self.plan_hash}, "
                    f"this plan's {expected}: patch, network, spacing, normalisation, channels or "
                    "labels differ)"
                )
        return found

    def check(self, plan: Plan, config: Configuration, *, path: Path, against: str, fix: str) -> None:
        """Refuse a checkpoint that does not belong to ``config`` of ``plan``.

        Args:
            plan: the plan it is about to be used with.
            config: the configuration.
            path: the checkpoint, named in the message.
            against: how to name the plan in the message (its file).
            fix: what the user should do.

        Raises:
            CheckpointError: naming the checkpoint and everything that differs.
        """
        found = self.differences(plan, config)
        if found:
            msg = f"{path}: does not fit {against}: {'; '.join(found)}; {fix}"
            raise CheckpointError(msg)
        if self.plan_hash is None:
            log.debug(
                "%s: format-1 checkpoint, plan identity not recorded; configuration and classes fit", path
            )
