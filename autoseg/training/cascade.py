"""What a cascade stage (``3d_cascade_fullres``) trains on besides the images: its previous
stage's cross-validation predictions.

nnU-Net's cascade, and this one: the full-resolution stage takes as input the low-resolution
stage's prediction of the case. For a *training* case that prediction must come from a
low-resolution model that did not train on it, or the cascade learns from predictions far better
than any it will get on a new scan (a model's predictions of its own training cases are nearly
perfect). Every case is in exactly one fold's validation set, and fold ``k`` of ``3d_lowres``
writes its validation cases' label maps to ``models/3d_lowres/fold_k/validation/``: those
cross-validation predictions, one per case, are what every fold of the cascade reads, for its
training and its validation cases alike.

:func:`find_cv_predictions` finds them from the splits (case -> the fold that validated it) and
refuses, naming the ``3d_lowres`` folds to train, when any is missing; a fold's predictions count
only when its validation finished after its final checkpoint (``summary.json`` lists the case
and is not older than ``checkpoint_final.pt``), so a fold retrained on another split cannot
leave behind predictions of cases it trained on. :func:`write_previous_stage` brings them onto
the cascade's preprocessed grid (:mod:`autoseg.preprocessing.previous_stage`) under the fold's
folder, ``fold_k/previous_stage/CASE.npy``, and records in ``fold_k/previous_stage.json`` (a
typed, versioned :class:`PreviousStageManifest`) which file of which fold each case's input came
from, with its SHA-256. A hash of that record goes into every checkpoint of the fold, so
``--continue`` after the previous stage was retrained (other inputs for the rest of the run) is
refused instead of silently mixing two sets of inputs in one model.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from autoseg._atomic import write_atomic, write_json_atomic
from autoseg._contract import digest, load, parse, to_json
from autoseg.data.previous_stage import PreviousStageInput
from autoseg.data.splits import Splits
from autoseg.errors import ModelError, PreprocessedDataError
from autoseg.io.align import read_onto
from autoseg.planning.plan import Configuration, Plan
from autoseg.preprocessing.previous_stage import previous_stage_indices, source_shape
from autoseg.preprocessing.store import PreprocessedStore

log = logging.getLogger(__name__)

_ENDING = ".nii.gz"
MANIFEST = "previous_stage.json"
MANIFEST_VERSION = 1
FOLDER = "previous_stage"
_FIX = "train this fold again (without --continue)"


@dataclass(frozen=True)
class CVPrediction:
    """The previous stage's cross-validation prediction of one case.

    Attributes:
        case_id: the case.
        fold: the previous stage's fold that validated the case (and so did not train on it).
        path: that fold's label map of the case (source grid).
    """

    case_id: str
    fold: str
    path: Path


@dataclass(frozen=True)
class ManifestEntry:
    """Where one case's previous-stage input came from.

    Attributes:
        fold: the previous stage's fold that validated the case.
        file: that fold's prediction of the case.
        sha256: the file's content hash when it was read.
    """

    fold: str
    file: str
    sha256: str


@dataclass(frozen=True)
class PreviousStageManifest:
    """``fold_k/previous_stage.json``: what a cascade fold's input channels were made from.

    Attributes:
        configuration: the cascade configuration.
        previous_stage: its previous stage.
        cases: case id -> where its input came from.
        schema_version: the file's version.
    """

    configuration: str
    previous_stage: str
    cases: dict[str, ManifestEntry]
    schema_version: int = MANIFEST_VERSION

    @property
    def digest(self) -> str:
        """A short hash of the record: equal for equal inputs (same files, same contents)."""
        return digest(PreviousStageManifest, self)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, its version first."""
        d = to_json(self)
        return {"schema_version": d.pop("schema_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> PreviousStageManifest:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            ModelError: wrong or missing version, missing or unknown keys, wrongly typed values.
        """
        return parse(
            cls, d, name="previous-stage manifest", version=MANIFEST_VERSION, error=ModelError, fix=_FIX
        )

    @classmethod
    def load(cls, path: Path) -> PreviousStageManifest:
        """Read and check a fold's manifest; every error names the file."""
        return load(path, cls.from_dict, error=ModelError, fix=_FIX, missing=f"not prepared; {_FIX}")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _validated_cases(fold_dir: Path) -> set[str] | None:
    """The cases a fold's finished validation predicted, or None when it has not finished since
    the fold's final checkpoint (no summary, an unreadable one, or one older than the checkpoint)."""
    summary = fold_dir / "validation" / "summary.json"
    final = fold_dir / "checkpoint_final.pt"
    try:
        if summary.stat().st_mtime_ns < final.stat().st_mtime_ns:
            return None
        per_case = json.loads(summary.read_text())["per_case"]
        return {str(c["case_id"]) for c in per_case}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def find_cv_predictions(
    model_dir: Path,
    splits: Splits,
    case_ids: Sequence[str],
    *,
    dataset: str,
    needed_by: str,
) -> dict[str, CVPrediction]:
    """The previous stage's cross-validation prediction of every case in ``case_ids``.

    Args:
        model_dir: the previous stage's model folder, ``<work>/<dataset>/models/3d_lowres``.
        splits: the dataset's cross-validation folds (``splits.json``); case ``c`` is read from
            the fold whose ``val`` holds it.
        case_ids: the cases the cascade fold trains and validates on.
        dataset: the dataset's name, for the commands in the message.
        needed_by: who asks (``"3d_cascade_fullres fold 0"``), for the message.

    Returns:
        Case id -> its :class:`CVPrediction`.

    Raises:
        ModelError: a case is in no fold's validation set, or the folds that validate some cases
            have not been trained and validated; one line naming exactly those folds and the
            commands that train them.
    """
    stage = model_dir.name
    fold_of = {cid: k for k, fold in enumerate(splits) for cid in fold["val"]}
    unsplit = [c for c in case_ids if c not in fold_of]
    if unsplit:
        msg = (
            f"{needed_by} needs {stage}'s cross-validation predictions, but case(s) "
            f"{', '.join(unsplit[:5])} are in no fold's validation set of splits.json, so no {stage} "
            "model predicts them without having trained on them; give every case a validation fold "
            "in splits.json"
        )
        raise ModelError(msg)
    validated: dict[int, set[str] | None] = {}
    found: dict[str, CVPrediction] = {}
    missing: dict[int, list[str]] = {}
    for cid in case_ids:
        k = fold_of[cid]
        if k not in validated:
            validated[k] = _validated_cases(model_dir / f"fold_{k}")
        path = model_dir / f"fold_{k}" / "validation" / f"{cid}{_ENDING}"
        cases = validated[k]
        if cases is None or cid not in cases or not path.is_file():
            missing.setdefault(k, []).append(cid)
        else:
            found[cid] = CVPrediction(cid, str(k), path)
    if missing:
        folds = sorted(missing)
        n = sum(len(v) for v in missing.values())
        commands = " and ".join(f"`autoseg train {dataset} {stage} {k}`" for k in folds)
        msg = (
            f"{needed_by} takes {stage}'s cross-validation prediction of each case as input, but "
            f"{stage} fold(s) {', '.join(map(str, folds))} have not predicted their {n} validation "
            f"case(s) among these (no finished validation under {model_dir}/fold_<k>/validation/); "
            f"train them first: {commands} (each predicts the cases it did not train on)"
        )
        raise ModelError(msg)
    return found


def previous_stage_manifest(sources: dict[str, CVPrediction], config: Configuration) -> PreviousStageManifest:
    """The record of which file of which fold each case's input comes from, with its SHA-256;
    reads the predictions, writes nothing (so that ``--continue`` can compare its digest with a
    checkpoint's before anything of the fold changes)."""
    return PreviousStageManifest(
        configuration=config.name,
        previous_stage=str(config.previous_stage),
        cases={
            cid: ManifestEntry(fold=s.fold, file=str(s.path), sha256=_sha256(s.path))
            for cid, s in sorted(sources.items())
        },
    )


def previous_stage_input(fold_dir: Path, plan: Plan, manifest: PreviousStageManifest) -> PreviousStageInput:
    """Where the loader and the validation find the maps :func:`write_previous_stage` writes."""
    return PreviousStageInput(fold_dir / FOLDER, plan.label_scheme, manifest.digest)


def write_previous_stage(
    manifest: PreviousStageManifest,
    sources: dict[str, CVPrediction],
    plan: Plan,
    config: Configuration,
    store: PreprocessedStore,
    fold_dir: Path,
) -> None:
    """Bring each case's previous-stage prediction onto ``config``'s preprocessed grid.

    Writes ``fold_dir/previous_stage/CASE.npy`` (stored indices, the store's grid) for every case
    of ``sources``, removes the maps of other cases (left by an earlier run of the fold on
    another split), and writes ``fold_dir/previous_stage.json`` (``manifest``).

    Raises:
        AutosegError: a prediction cannot be read or is not on its scan's grid.
        PreprocessedDataError: a case's properties lack the source geometry.
    """
    folder = fold_dir / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    for stale in folder.glob("*.npy"):
        if stale.stem not in sources:
            stale.unlink()
    for cid, src in sorted(sources.items()):
        props = store.properties(cid)
        if props.geometry is None:
            msg = (
                f"{store.folder / (cid + '.json')}: no source geometry; delete {store.folder} and train again"
            )
            raise PreprocessedDataError(msg)
        label_map = read_onto(
            src.path, props.geometry, source_shape(props, plan), grid_of=f"case {cid}'s image"
        )
        indices = previous_stage_indices(label_map, props, plan)

        def write(tmp: Path, indices: np.ndarray = indices) -> None:
            with open(tmp, "wb") as f:  # a file object: np.save would append ".npy" to other names
                np.save(f, indices, allow_pickle=False)

        write_atomic(folder / f"{cid}.npy", write)
    write_json_atomic(fold_dir / MANIFEST, manifest.to_dict())
    log.info(
        "%s: %s's cross-validation predictions of %d cases (folds %s) as input channels",
        config.name,
        config.previous_stage,
        len(sources),
        ", ".join(sorted({s.fold for s in sources.values()})),
    )
