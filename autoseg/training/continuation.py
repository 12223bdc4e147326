"""Whether a checkpoint may be continued (``train ... --continue``) with the settings given now.

A continued run must be the run the checkpoint began: otherwise ``train_config.json`` would
claim the new settings for all of it, and no later run could repeat it. So a checkpoint of
another plan, configuration or fold, or one whose cascade inputs changed, is refused; so are
settings that change what the weights learn from (seed, batch size, loss, optimiser, schedule,
augmentation, learning rate, momentum, weight decay, clipping, steps per epoch, accumulation),
with the flags that continue it in the message. :data:`HARMLESS_CHANGES` (where and how fast
it runs, how long, what it measures on the way) are allowed with a warning that names each.

Pure checks on the checkpoint's metadata, before anything is loaded or written.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from autoseg._contract import parse
from autoseg.checkpoint_meta import CheckpointMeta
from autoseg.errors import CheckpointError
from autoseg.options import describe
from autoseg.planning.plan import Configuration, Plan
from autoseg.training.config import ADDED_SETTINGS, TrainConfig
from autoseg.training.time_budget import continued

log = logging.getLogger(__name__)

#: Training settings that may change when a run continues (with a warning naming them): where
#: and how fast it runs, how long, and what it measures on the way, not what the weights learn
#: from. Any other change is refused. The time budget is a way to say how long (the same
#: ``--time`` keeps its decision: see :func:`autoseg.training.time_budget.continued`).
HARMLESS_CHANGES = frozenset(
    {
        "device",
        "precision",
        "workers",
        "checkpoint_every",
        "epochs",
        "val_iters",
        "val_probabilities",
        "time_limit",
    }
)
_FIX = "train this fold from scratch (without --continue), or continue with the plan it was trained with"


def check_continuation(
    meta: CheckpointMeta,
    path: Path,
    plan: Plan,
    config: Configuration,
    cfg: TrainConfig,
    *,
    previous_stage: str | None,
    inputs_record: Path,
    warn: bool = True,
) -> TrainConfig:
    """The settings the continued run trains with: ``cfg`` with the checkpoint's time-budget
    decision when the same ``--time`` is given (see :func:`~.time_budget.continued`).

    Args:
        meta: the checkpoint's metadata; ``path``: the checkpoint (for messages).
        plan, config, cfg: the current plan, configuration and training settings.
        previous_stage: digest of the previous-stage predictions a cascade stage trains on now.
        inputs_record: where those predictions are described (named in the message).
        warn: log the harmless changes (the main process only, with several).

    Raises:
        CheckpointError: another plan, configuration or fold, other cascade inputs, or refused
            changes (all named, with the flags that continue the run).
    """
    meta.check(plan, config, path=path, against="the current plan", fix=_FIX)
    old = parse(
        TrainConfig,
        {**ADDED_SETTINGS, **meta.train_config},
        name="checkpoint metadata.train_config",
        version=None,
        error=CheckpointError,
        fix="train this fold from scratch (without --continue)",
    )
    if old.fold != cfg.fold:
        msg = f"{path}: trained as fold {old.fold!r}, not fold {cfg.fold!r}; {_FIX}"
        raise CheckpointError(msg)
    _check_same_previous_stage(meta, path, config, previous_stage, inputs_record)
    try:
        cfg = continued(old, cfg)
    except ValueError as e:
        msg = f"{path}: {e}"
        raise CheckpointError(msg) from e
    changed = changed_settings(old, cfg, plan_batch_size=config.batch_size)
    changed.pop("budget", None)  # a record of what the time limit decided, named with it
    refused = {k: v for k, v in changed.items() if k not in HARMLESS_CHANGES}
    if refused:
        msg = (
            f"{path}: --continue would change what this run learns ({_describe_changes(refused)}); "
            f"continue it with {_flags_for({k: a for k, (a, _) in refused.items()})}, or train "
            "this fold from scratch (without --continue)"
        )
        raise CheckpointError(msg)
    if changed and warn:
        note = ""
        if "epochs" in changed:
            note = " (the learning-rate schedule now spans the new epoch count)"
        if old.time_limit is not None and cfg.time_limit is None:
            note += (
                f"; without --time the run no longer keeps its time budget: continue with "
                f"--time {old.time_limit} to keep the epochs it decided"
            )
        log.warning("continuing %s with changed settings: %s%s", path.name, _describe_changes(changed), note)
    return cfg


def _check_same_previous_stage(
    meta: CheckpointMeta, path: Path, config: Configuration, now: str | None, inputs_record: Path
) -> None:
    """Refuse to continue a cascade stage on other previous-stage predictions than it began
    with (the previous stage was retrained in between): the model would have learnt from two
    sets of inputs, and no record would say so.

    Raises:
        CheckpointError: the recorded digest differs from the current inputs'.
    """
    if meta.previous_stage is None or now is None:
        if now is not None:
            log.warning("%s: which previous-stage predictions it trained on is not recorded", path.name)
        return
    if meta.previous_stage != now:
        msg = (
            f"{path}: {config.previous_stage}'s predictions that this fold takes as input "
            f"changed since it began (a {config.previous_stage} fold was retrained; see "
            f"{inputs_record}); --continue would train on other inputs: "
            "train this fold from scratch (without --continue)"
        )
        raise CheckpointError(msg)


def changed_settings(
    old: TrainConfig, new: TrainConfig, *, plan_batch_size: int
) -> dict[str, tuple[Any, Any]]:
    """The settings ``new`` changes from ``old``: ``{name: (old value, new value)}``.

    The batch size is compared as used: no ``--batch-size`` means the plan's.
    """
    before, now = old.to_dict(), new.to_dict()
    for d in (before, now):
        d["batch_size"] = d["batch_size"] or plan_batch_size
    return {k: (before.get(k), now[k]) for k in now if before.get(k) != now[k]}


def _describe_changes(changes: dict[str, tuple[Any, Any]]) -> str:
    """``"lr 0.01 -> 0.001, seed 1 -> 2"``."""
    return ", ".join(f"{k} {a!r} -> {b!r}" for k, (a, b) in changes.items())


def _flags_for(values: dict[str, Any]) -> str:
    """The command-line flags that give the settings ``values`` (or ``name value`` for a setting
    that is not an option)."""
    options = {d.name: d for d in describe(TrainConfig)}
    parts = []
    for name, value in values.items():
        d = options.get(name)
        if d is None:
            parts.append(f"{name} {value!r}")
        elif d.kind is bool:
            parts.append(d.flags[0] if value != d.default else f"no {d.flags[0]}")
        else:
            parts.append(f"{d.flags[0]} {value}")
    return " ".join(parts)
