"""End-of-fold validation: full sliding-window prediction of the fold's validation cases, written
on the source grid, scored against the original label files (not the resampled ones), so the
numbers are what a user would measure on their own data.

The plan's :class:`~autoseg.labels.LabelScheme` says how outputs become label maps and
probabilities (softmax labels or sigmoid regions) and what is scored: one Dice per label (keyed
by its value) or region (keyed by its name), over the voxels the reference annotates (not the
ignore label)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from autoseg._atomic import write_json_atomic
from autoseg.data.previous_stage import PreviousStageInput
from autoseg.errors import PreprocessedDataError
from autoseg.evaluation.metrics import dice_per_entry, mean_per_label, nan_to_none
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.inference.sliding_window import predict_logits
from autoseg.inference.source_grid import (
    logits_to_labels,
    probabilities_on_source_grid,
    probabilities_to_labels,
)
from autoseg.io.align import read_onto
from autoseg.io.image import write_image
from autoseg.planning.plan import Configuration, Plan
from autoseg.preprocessing.previous_stage import with_previous_stage
from autoseg.preprocessing.store import PreprocessedStore

log = logging.getLogger(__name__)


def summarize(per_case: list[dict[str, Any]], keys: list[str]) -> dict[str, Any]:
    """Mean Dice per label or region over cases and the foreground mean
    (:func:`~autoseg.evaluation.metrics.mean_per_label`); NaN (an entry absent from both maps) is
    written as null, since JSON has no NaN."""
    means = mean_per_label([{k: c["dice"][k] for k in keys} for c in per_case], keys)
    cases = [{**c, "dice": {k: nan_to_none(v) for k, v in c["dice"].items()}} for c in per_case]
    return {"per_case": cases, **nan_to_none(means)}


@torch.inference_mode()
def validate_fold(
    network: torch.nn.Module,
    plan: Plan,
    config: Configuration,
    store: PreprocessedStore,
    val_ids: list[str],
    label_files: dict[str, Path],
    out_dir: Path,
    *,
    device: torch.device,
    amp_dtype: torch.dtype | None,
    save_probabilities: bool,
    tta: bool = True,
    previous_stage: PreviousStageInput | None = None,
) -> dict[str, Any]:
    """Predict and score the validation cases; writes ``out_dir/CASE.nii.gz`` and ``summary.json``.

    A cascade stage gets ``previous_stage``: each case's input then carries the previous stage's
    cross-validation prediction as one-hot channels, as in training.

    Returns:
        The summary: per case and label (or region) Dice, mean per label, foreground mean.
    """
    network.eval()
    out_dir.mkdir(parents=True, exist_ok=True)
    scheme = plan.label_scheme
    per_case = []
    for cid in tqdm(val_ids, desc="Validating", unit="case", disable=None):
        case = store.load(cid)
        if previous_stage is None:
            data = torch.from_numpy(np.array(case.data))  # a writable copy of the memmap
        else:
            data = torch.from_numpy(
                with_previous_stage(case.data, previous_stage.load(cid), plan.label_scheme)
            )
        logits = predict_logits(
            network, data, config, tta=tta, device=device, output_device="cpu", amp_dtype=amp_dtype
        )
        if save_probabilities:
            # one resampling of the logits serves both: labels from the float32 probabilities
            prob = probabilities_on_source_grid(logits, case.properties, plan)
            labels = probabilities_to_labels(prob, scheme)
            ProbabilityMap.of(prob, scheme).save(out_dir / f"{cid}.npz")
        else:
            labels = logits_to_labels(logits, case.properties, plan)
        geometry = case.properties.geometry
        if geometry is None:
            msg = (
                f"{store.folder / (cid + '.json')}: no source geometry in the case properties; "
                f"delete {store.folder} and preprocess again"
            )
            raise PreprocessedDataError(msg)
        write_image(labels, geometry, out_dir / f"{cid}.nii.gz")
        ref = np.rint(
            read_onto(label_files[cid], geometry, labels.shape, grid_of=f"case {cid}'s image")
        ).astype(np.int64)
        per_case.append({"case_id": cid, "dice": dice_per_entry(labels, ref, scheme)})
    summary = summarize(per_case, list(scheme.entry_keys))
    write_json_atomic(out_dir / "summary.json", summary)
    log.info(
        "validation of %d cases: Dice per label %s, foreground mean %s",
        len(val_ids),
        summary["mean"],
        summary["foreground_mean"],
    )
    return summary
