"""Choose what to predict with: the best configuration or pairwise ensemble, and its post-processing.

Reads what trained folds leave behind (``<dataset_dir>/models/<config>/fold_<k>/validation/``:
``CASE.nii.gz`` label maps and ``CASE.npz`` probabilities on the source grid, and
``summary.json`` once a fold's validation is complete) and scores every configuration, and every
pair of configurations ensembled by averaging their probabilities (softmax over labels or sigmoid
per region, turned into a label map by the plans' :class:`~autoseg.labels.LabelScheme`), against
the reference labels of the dataset folder named in ``<dataset_dir>/source.json``: Dice per label
or region, over the voxels the reference annotates (not its ignore label). All candidates are scored on the
same cases: those every configuration has predicted. The winner (highest foreground-mean Dice;
on a tie the single configuration, then the one listed first) gets its post-processing decided
on its cross-validation predictions (:func:`~autoseg.inference.postprocess.determine_postprocessing`).

Writes ``<dataset_dir>/inference.json`` (see :func:`find_best`), ``postprocessing.json`` in the
chosen model's folder when a single configuration wins (an ensemble's lives in inference.json),
and the ensembled label maps of every scored pair under
``<dataset_dir>/ensembles/<a>__<b>/CASE.nii.gz``.
"""

from __future__ import annotations

import itertools
import logging
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg._parallel import map_cases, values_or_raise
from autoseg.errors import DatasetError, ModelError
from autoseg.evaluation.metrics import as_labels, dice_per_entry, mean_per_label, nan_to_none
from autoseg.evaluation.postprocess_choice import determine_postprocessing
from autoseg.inference.choice import InferenceChoice
from autoseg.inference.postprocess import target_of
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.inference.source_grid import label_dtype, probabilities_to_labels
from autoseg.io.align import read_onto
from autoseg.io.dataset import load_dataset
from autoseg.io.image import read_image, write_image
from autoseg.labels import LabelScheme
from autoseg.planning.plan import Plan
from autoseg.workspace import SourceRecord

log = logging.getLogger(__name__)

_ENDING = ".nii.gz"
#: Voxels per float32 chunk when summing probabilities (bounds the temporary memory, ~64 MB).
_CHUNK_VOXELS = 1 << 24


@dataclass(frozen=True)
class _Run:
    """One configuration's cross-validation predictions."""

    name: str
    folds: tuple[str, ...]
    label_maps: dict[str, Path]
    probabilities: dict[str, Path]
    scheme: LabelScheme


@dataclass(frozen=True)
class _CaseJob:
    case_id: str
    reference: Path
    label_maps: tuple[tuple[str, Path], ...]
    probabilities: tuple[tuple[str, Path], ...]
    pairs: tuple[tuple[str, str], ...]
    scheme: LabelScheme
    ensembles_dir: Path


def pair_name(a: str, b: str) -> str:
    """The name of the ensemble of two configurations, ``<a>__<b>``."""
    return f"{a}__{b}"


def _fold_key(fold: str) -> tuple[int, int | str]:
    return (0, int(fold)) if fold.isdigit() else (1, fold)


def _warn(msg: str) -> None:
    log.warning(msg)
    warnings.warn(msg, UserWarning, stacklevel=3)


def _discover(model_dir: Path) -> _Run | str:
    """The configuration's validated folds and case files, or why it cannot be used."""
    if not (model_dir / "plans.json").is_file():
        return f"{model_dir}: no plans.json (not a trained model folder)"
    label_maps: dict[str, Path] = {}
    probabilities: dict[str, Path] = {}
    folds = []
    fold_dirs = sorted(
        (p for p in model_dir.glob("fold_*") if p.is_dir()),
        key=lambda p: _fold_key(p.name.removeprefix("fold_")),
    )
    for fold_dir in fold_dirs:
        val = fold_dir / "validation"
        if not val.is_dir():
            continue
        if not (val / "summary.json").is_file():
            _warn(
                f"{val}: validation incomplete (no summary.json); fold left out, re-run it with "
                "`autoseg train DATASET CONFIG FOLD --continue`"
            )
            continue
        cases = sorted(p.name[: -len(_ENDING)] for p in val.glob(f"*{_ENDING}") if not p.name.startswith("."))
        if not cases:
            continue
        for cid in cases:
            if cid in label_maps:
                msg = (
                    f"{model_dir}: case {cid} is validated in {label_maps[cid].parent.parent.name} "
                    f"and {fold_dir.name}; the folds come from different splits, retrain them "
                    "with one split"
                )
                raise ModelError(msg)
            label_maps[cid] = val / f"{cid}{_ENDING}"
            if (val / f"{cid}.npz").is_file():
                probabilities[cid] = val / f"{cid}.npz"
        folds.append(fold_dir.name.removeprefix("fold_"))
    if not folds:
        return f"{model_dir}: no validation predictions (fold_<k>/validation/ with summary.json)"
    plan = Plan.load(model_dir / "plans.json")
    return _Run(model_dir.name, tuple(folds), label_maps, probabilities, plan.label_scheme)


def _references(dataset_dir: Path) -> dict[str, Path]:
    """Case id -> reference label file, from the dataset folder recorded in ``source.json``."""
    src = dataset_dir / "source.json"
    if not src.is_file():
        msg = (
            f"{src}: missing, so the reference labels cannot be found; run "
            "`autoseg plan PATH/TO/DATASET` with this work folder"
        )
        raise DatasetError(msg)
    folder = Path(SourceRecord.load(src).dataset_folder)
    return {c.case_id: c.label for c in load_dataset(folder).cases if c.label is not None}


def ensemble_labels(probabilities: list[np.ndarray], scheme: LabelScheme) -> np.ndarray:
    """Label map of the mean of several models' probabilities.

    Args:
        probabilities: ``(n_outputs, Z, Y, X)`` arrays (any float dtype) on one grid: softmax
            over labels, or a sigmoid per region, as ``scheme`` says.
        scheme: the models' labels: the mean becomes a label map by
            :meth:`~autoseg.labels.LabelScheme.to_label_map` (the argmax, the lowest class on a
            tie; or regions above 0.5 painted in order).

    Returns:
        ``(Z, Y, X)`` label values in the smallest integer type that holds them.

    Examples:
        >>> a = np.array([0.6, 0.4]).reshape(2, 1, 1, 1)
        >>> b = np.array([0.3, 0.7]).reshape(2, 1, 1, 1)
        >>> ensemble_labels([a, b], LabelScheme.from_declared({"background": 0, "x": 4})).ravel()
        array([4], dtype=uint8)
    """
    shape = probabilities[0].shape[1:]
    out = np.empty(shape, dtype=label_dtype(scheme.class_values))
    per_slice = max(1, math.prod(shape[1:]) * probabilities[0].shape[0])
    step = max(1, _CHUNK_VOXELS // per_slice)
    for z in range(0, shape[0], step):
        acc = probabilities[0][:, z : z + step].astype(np.float32)
        for p in probabilities[1:]:
            acc += p[:, z : z + step]
        acc /= len(probabilities)  # exact for a pair: the argmax of plain labels is unchanged
        out[z : z + step] = probabilities_to_labels(acc, scheme)
    return out


def _score_case(job: _CaseJob) -> dict[str, dict[str, dict[str, float]]]:
    """Dice per label or region of every configuration and pair on one case; writes the pairs'
    label maps.

    Returns:
        ``{"single": {config: {key: Dice}}, "pairs": {pair: {key: Dice}}}``, keyed by the
        scheme's entry keys.

    Raises:
        AutosegError: a file cannot be read or does not lie on the case's grid.
    """
    # every prediction is on the scan's grid (the first one's); the reference joins it
    grid = read_image(job.label_maps[0][1])
    ref = as_labels(
        read_onto(job.reference, grid.geometry, grid.array.shape, grid_of=str(grid.path)),
        source=job.reference,
    )
    single = {}
    for name, path in job.label_maps:
        img = grid if path == grid.path else read_image(path)
        if img.array.shape != grid.array.shape or not img.geometry.same_grid(grid.geometry):
            msg = (
                f"{path}: not on the grid of {grid.path} (another prediction of the same "
                "case); re-run the validation of this fold"
            )
            raise ModelError(msg)
        single[name] = dice_per_entry(img.array, ref, job.scheme)
    probs = {
        name: ProbabilityMap.load(p, scheme=job.scheme, shape=ref.shape).probabilities
        for name, p in job.probabilities
    }
    pairs = {}
    for a, b in job.pairs:
        labels = ensemble_labels([probs[a], probs[b]], job.scheme)
        out = job.ensembles_dir / pair_name(a, b) / f"{job.case_id}{_ENDING}"
        write_image(labels, grid.geometry, out)
        pairs[pair_name(a, b)] = dice_per_entry(labels, ref, job.scheme)
    return {"single": single, "pairs": pairs}


def _describe(scheme: LabelScheme) -> str:
    """A plan's labels as a user wrote them (and, with regions, their painting order)."""
    order = "" if scheme.regions_class_order is None else f", order {list(scheme.regions_class_order)}"
    return f"{scheme.declared()}{order}"


def _json_target(values: tuple[int, ...]) -> int | list[int]:
    """A label's value, or a region's values as a list (as the post-processing report has them)."""
    target = target_of(values)
    return target if isinstance(target, int) else list(target)


def _usable_runs(models: Path, configurations: list[str] | None, skipped: dict[str, str]) -> list[_Run]:
    if configurations is not None:
        names = list(configurations)
    else:
        names = sorted(p.name for p in models.iterdir() if p.is_dir()) if models.is_dir() else []
    runs = []
    for name in names:
        found = _discover(models / name) if (models / name).is_dir() else f"{models / name}: not found"
        if isinstance(found, str):
            skipped[name] = found
            _warn(f"configuration {name} skipped: {found}")
        else:
            runs.append(found)
    return runs


def _common_cases(runs: list[_Run], refs: dict[str, Path]) -> list[str]:
    missing = sorted({c for r in runs for c in r.label_maps if c not in refs})
    if missing:
        msg = (
            f"validation cases {', '.join(missing[:10])} have no reference label in the dataset "
            "folder named in source.json; was the model trained on another dataset?"
        )
        raise DatasetError(msg)
    sets = [set(r.label_maps) for r in runs]
    common = sorted(set.intersection(*sets))
    if any(s != set(common) for s in sets):
        counts = ", ".join(f"{r.name}: {len(r.label_maps)}" for r in runs)
        _warn(
            f"the configurations validated different cases ({counts}); they are compared on the "
            f"{len(common)} cases they share. Train the same folds for all for a full comparison"
        )
    if not common:
        msg = "the configurations share no validated case; train the same folds for each"
        raise ModelError(msg)
    return common


def _pairs(runs: list[_Run], common: list[str], skipped: dict[str, str]) -> list[tuple[str, str]]:
    pairs = []
    for a, b in itertools.combinations(runs, 2):
        lacking = [r.name for r in (a, b) if any(c not in r.probabilities for c in common)]
        if lacking:
            reason = (
                f"{', '.join(lacking)} kept no probabilities (CASE.npz) for some validation "
                "cases; retrain without --no-val-probabilities to ensemble"
            )
            skipped[pair_name(a.name, b.name)] = reason
            _warn(f"ensemble {pair_name(a.name, b.name)} skipped: {reason}")
        else:
            pairs.append((a.name, b.name))
    return pairs


def find_best(
    dataset_dir: Path, *, configurations: list[str] | None = None, workers: int = 1
) -> dict[str, Any]:
    """Score configurations and their pairwise ensembles by cross-validation Dice, pick the best,
    decide its post-processing, and write ``inference.json``.

    Args:
        dataset_dir: ``<work>/<dataset>/`` (holding ``models/`` and ``source.json``).
        configurations: which configurations to consider, in order of preference on a tie
            (default: every folder under ``models/``, sorted by name). One without validation
            predictions is skipped with a warning.
        workers: processes reading and scoring cases.

    Returns:
        What is written to ``<dataset_dir>/inference.json``
        (:class:`~autoseg.inference.choice.InferenceChoice`)::

            {"schema_version": 1,
             "best": "3d_fullres" | "2d__3d_fullres",
             "configurations": ["3d_fullres"] | ["2d", "3d_fullres"],
             "folds": {config: ["0", "1", ...]},           # the chosen configurations' folds
             "postprocessing": {"foreground_largest_only": bool, "largest_only_labels": [int]},
             "cv_dice": {candidate: foreground-mean Dice or null},
             "report": {"labels": [int or [int] per label or region], "n_cases": N, "cases": [ids],
                        "candidates": {candidate: {"configurations": [...],
                                                   "mean": {label: Dice}, "foreground_mean": x}},
                        "skipped": {config or pair: reason},
                        "ensemble_folder": "ensembles/<a>__<b>" | null,
                        "postprocessing": <determine_postprocessing's report>}}

    Raises:
        CheckpointError: no configuration has validation predictions, their plans disagree on
            the labels, or a prediction file is unreadable or on another grid.
        DatasetError: ``source.json`` is missing, or a validated case has no reference label.
    """
    dataset_dir = Path(dataset_dir)
    models = dataset_dir / "models"
    skipped: dict[str, str] = {}
    runs = _usable_runs(models, configurations, skipped)
    if not runs:
        msg = (
            f"{dataset_dir}: no configuration has validation predictions under "
            f"{models}/<config>/fold_<k>/validation/; run `autoseg train` for at least one fold"
        )
        raise ModelError(msg)
    scheme = runs[0].scheme
    if any(r.scheme != scheme for r in runs):
        found = "; ".join(f"{r.name}: {_describe(r.scheme)}" for r in runs)
        msg = f"{models}: the configurations' plans have different labels ({found}); retrain from one plan"
        raise ModelError(msg)
    keys = list(scheme.entry_keys)
    refs = _references(dataset_dir)
    common = _common_cases(runs, refs)
    pairs = _pairs(runs, common, skipped)
    in_pairs = {n for p in pairs for n in p}
    jobs = [
        _CaseJob(
            cid,
            refs[cid],
            tuple((r.name, r.label_maps[cid]) for r in runs),
            tuple((r.name, r.probabilities[cid]) for r in runs if r.name in in_pairs),
            tuple(pairs),
            scheme,
            dataset_dir / "ensembles",
        )
        for cid in common
    ]
    scores = values_or_raise(map_cases(_score_case, jobs, workers=workers, desc="Scoring configurations"))

    def means(per_case: list[dict[str, float]]) -> dict[str, Any]:
        return nan_to_none(mean_per_label(per_case, keys))

    candidates: dict[str, dict[str, Any]] = {}
    for r in runs:
        candidates[r.name] = {"configurations": [r.name], **means([s["single"][r.name] for s in scores])}
    for a, b in pairs:
        name = pair_name(a, b)
        candidates[name] = {"configurations": [a, b], **means([s["pairs"][name] for s in scores])}
    order = list(candidates)

    def rank(name: str) -> tuple[float, int, int]:
        d = candidates[name]["foreground_mean"]
        return (-math.inf if d is None else d, -len(candidates[name]["configurations"]), -order.index(name))

    best = max(order, key=rank)
    chosen = candidates[best]["configurations"]
    by_name = {r.name: r for r in runs}
    if len(chosen) == 1:
        run = by_name[chosen[0]]
        cases = sorted(c for c in run.label_maps if c in refs)
        preds = [run.label_maps[c] for c in cases]
        ensemble_folder = None
    else:
        cases = common
        preds = [dataset_dir / "ensembles" / best / f"{c}{_ENDING}" for c in cases]
        ensemble_folder = f"ensembles/{best}"
    log.info(
        "best: %s (foreground Dice %s); deciding post-processing on %d cases",
        best,
        candidates[best]["foreground_mean"],
        len(cases),
    )
    pp, pp_report = determine_postprocessing(preds, [refs[c] for c in cases], scheme, workers=workers)
    choice = InferenceChoice(
        best=best,
        configurations=tuple(chosen),
        folds={c: tuple(by_name[c].folds) for c in chosen},
        postprocessing=pp,
        cv_dice={n: candidates[n]["foreground_mean"] for n in order},
        report={
            "labels": [_json_target(e.values) for e in scheme.entries],
            "n_cases": len(common),
            "cases": common,
            "candidates": candidates,
            "skipped": skipped,
            "ensemble_folder": ensemble_folder,
            "postprocessing": pp_report,
        },
    )
    if len(chosen) == 1:  # an ensemble's post-processing lives in inference.json only
        pp.save(models / chosen[0] / "postprocessing.json")
    choice.save(dataset_dir / "inference.json")
    return choice.to_dict()
