"""Score a folder of predicted label maps against a folder of references.

Files pair by case name (``CASE.nii.gz``, ``CASE.nrrd``, ``CASE.mha``, … in either folder). Every
problem (a reference without a prediction, another shape or spacing, an unreadable file) is
collected and raised together, before anything is written. A prediction stored with its axes
flipped or permuted on the reference grid is reoriented exactly; one on another grid (shifted,
rotated, resampled) is refused. The outputs, for ``out_json`` =
``DIR/summary.json``:

- ``DIR/summary.json``: ``{"per_case": [...], "per_label": {label: {metric: mean}},
  "mean": {metric: mean over labels}, "settings": {...}}``, NaN written as ``null``;
- ``DIR/summary.csv``: one row per case and label, columns ``case,label,<metrics>``, NaN empty;
- ``DIR/summary_boxplot.png`` with ``plot=True`` (see :mod:`autoseg.evaluation.plot`);
- with ``lesions=True``, a ``"lesions"`` key in the JSON, ``DIR/summary_lesions.csv`` (one row per
  lesion) and, when every prediction has its ``CASE.npz`` probabilities beside it,
  ``DIR/summary_froc.png`` (see :mod:`autoseg.evaluation.lesion_report`).

Metric definitions and the conventions for labels missing from a map are in
:mod:`autoseg.evaluation.metrics`; means skip NaN.

By default every nonzero value is a label of its own. Given a
:class:`~autoseg.labels.LabelScheme` (``autoseg evaluate --dataset-json``: the labels of an nnU-Net
``dataset.json`` or of a model's ``plans.json``), its entries are scored instead: each label, or
each region (the voxels holding any of its values; keyed by the region's name), over the
annotated voxels only: where the reference holds the ignore label, nothing is scored.
"""

from __future__ import annotations

import csv
import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from autoseg._atomic import write_atomic, write_json_atomic
from autoseg._fs import list_dir, output_file_problem, read_problem
from autoseg._parallel import map_cases, values_or_raise
from autoseg.errors import DatasetError, FileSystemError
from autoseg.evaluation.lesion_report import LesionJob, case_lesions, probability_files, summarize, write_csv
from autoseg.evaluation.lesions import DEFAULT_IOU
from autoseg.evaluation.metrics import (
    HD_PERCENTILE,
    METRICS,
    absent_label_metrics,
    as_labels,
    case_metrics,
    entry_metrics,
    mean_per_label,
    nan_to_none,
)
from autoseg.io.align import Reorientation, find_reorientation
from autoseg.io.image import Geometry, has_image_ending, read_image, strip_ending
from autoseg.labels import LabelScheme

#: Largest spacing difference (mm, per axis) between a prediction and its reference.
SPACING_ATOL_MM = 1e-3


def evaluate_folders(
    pred_dir: Path,
    ref_dir: Path,
    out_json: Path,
    *,
    labels: list[int] | None = None,
    scheme: LabelScheme | None = None,
    tolerance_mm: float = 1.0,
    workers: int = 1,
    plot: bool = False,
    lesions: bool = False,
    lesion_iou: float = DEFAULT_IOU,
) -> dict[str, Any]:
    """Score every reference in ``ref_dir`` against the prediction of the same case name.

    Args:
        pred_dir: folder of predicted label maps; predictions without a reference are ignored
            with a warning.
        ref_dir: folder of reference label maps; each needs a prediction.
        out_json: summary to write; the CSV (and PNG) go beside it with the same stem.
        labels: label values to score; default: every nonzero value found in the references.
        scheme: score its labels or regions instead (keyed by
            :attr:`~autoseg.labels.LabelScheme.entry_keys`), leaving out the voxels where the
            reference holds its ignore label; exclusive with ``labels``.
        tolerance_mm: normalised surface Dice tolerance in mm.
        workers: processes scoring cases in parallel.
        plot: also save ``<stem>_boxplot.png`` (Dice and NSD per label, the cases as points).
        lesions: also match the lesions (connected components) of each label or region, see
            :mod:`autoseg.evaluation.lesions`, and write ``<stem>_lesions.csv``; with every
            prediction's ``CASE.npz`` beside it, also the FROC and ``<stem>_froc.png``.
        lesion_iou: a predicted and a reference lesion match when their IoU exceeds this.

    Returns:
        The summary written to ``out_json``, with NaN (not ``null``) where a mean is undefined.

    Raises:
        DatasetError: a folder is missing or holds no reference, references lack predictions,
            a prediction is not on its reference's grid (flipped or permuted axes are fine),
            a file cannot be read, or no label is left to score, or (with ``lesions``) only some
            predictions have their ``CASE.npz``; every problem is listed and nothing is written.
        ModelError: with ``lesions``, a ``CASE.npz`` is unreadable, of another shape or label
            scheme (the message names it); nothing is written.
        ValueError: ``labels`` is empty or given with ``scheme``, ``tolerance_mm`` negative, or
            ``lesion_iou`` outside [0, 1].
    """
    pred_dir, ref_dir, out_json = Path(pred_dir), Path(ref_dir), Path(out_json)
    if labels is not None and not labels:
        msg = "labels is empty; pass None to score every nonzero label of the references"
        raise ValueError(msg)
    if labels is not None and scheme is not None:
        msg = "labels and scheme both say what to score; give one"
        raise ValueError(msg)
    if not (math.isfinite(tolerance_mm) and tolerance_mm >= 0):
        msg = f"tolerance_mm must be a finite value >= 0, got {tolerance_mm}"
        raise ValueError(msg)
    if not (math.isfinite(lesion_iou) and 0 <= lesion_iou <= 1):
        msg = f"lesion_iou must be in [0, 1], got {lesion_iou}"
        raise ValueError(msg)
    problems = _output_problems(out_json, plot=plot, lesions=lesions)  # before any work
    try:
        pairs = _pair_cases(pred_dir, ref_dir)
    except DatasetError as e:
        raise DatasetError(problems + e.problems) from e
    problems += [p for pair in pairs for p in _check_pair(*pair[1:])]
    prob_files, prob_problems = probability_files(pairs) if lesions else (None, [])
    problems += prob_problems
    if problems:
        raise DatasetError(problems)

    fixed = None if labels is None else tuple(int(v) for v in labels)
    jobs = [
        (pred, ref, fixed, float(tolerance_mm), scheme, _lesion_job(lesions, lesion_iou, prob_files, case))
        for case, pred, ref in pairs
    ]
    results = values_or_raise(map_cases(_score_case, jobs, workers=workers, desc="Evaluating"))
    if scheme is None and fixed is None:
        fixed = tuple(sorted({v for r in results for v in r["ref_labels"]}))
        if not fixed:
            msg = f"{ref_dir}: the references hold no nonzero label; pass the labels to score"
            raise DatasetError(msg)
    keys = list(scheme.entry_keys) if scheme is not None else [str(v) for v in fixed or ()]

    per_case: list[dict[str, Any]] = []
    for (case, pred, ref), r in zip(pairs, results, strict=True):
        scores = {
            key: r["metrics"][key] if key in r["metrics"] else absent_label_metrics(r["n_voxels"])
            for key in keys
        }
        per_case.append({"case": case, "prediction": str(pred), "reference": str(ref), "metrics": scores})
    per_metric = {
        m: mean_per_label([{key: c["metrics"][key][m] for key in keys} for c in per_case], keys)
        for m in METRICS
    }
    settings: dict[str, Any] = {
        "pred_dir": str(pred_dir),
        "ref_dir": str(ref_dir),
        "labels": list(fixed) if scheme is None and fixed is not None else keys,
        "tolerance_mm": float(tolerance_mm),
        "hd_percentile": HD_PERCENTILE,
        "n_cases": len(per_case),
        "metrics": list(METRICS),
    }
    if scheme is not None:
        order = scheme.regions_class_order
        settings["label_scheme"] = {
            "labels": scheme.declared(),
            "regions_class_order": None if order is None else list(order),
        }
    summary = {
        "per_case": per_case,
        "per_label": {key: {m: per_metric[m]["mean"][key] for m in METRICS} for key in keys},
        "mean": {m: per_metric[m]["foreground_mean"] for m in METRICS},
        "settings": settings,
    }
    if lesions:
        summary["lesions"] = _write_lesions(
            out_json, pairs, results, keys, iou=float(lesion_iou), with_froc=prob_files is not None
        )
    _write_csv(out_json.with_name(out_json.stem + ".csv"), per_case)
    if plot:
        from autoseg.evaluation.plot import save_boxplot

        save_boxplot(per_case, out_json.with_name(out_json.stem + "_boxplot.png"), tolerance_mm=tolerance_mm)
    write_json_atomic(out_json, nan_to_none(summary))
    return summary


def _outputs(out_json: Path, *, plot: bool, lesions: bool = False) -> list[Path]:
    """The files :func:`evaluate_folders` may write for ``out_json``."""
    ends = [".csv", *(["_boxplot.png"] if plot else []), *(["_lesions.csv", "_froc.png"] if lesions else [])]
    return [out_json, *(out_json.with_name(out_json.stem + e) for e in ends)]


def _lesion_job(lesions: bool, iou: float, prob_files: dict[str, Path] | None, case: str) -> LesionJob | None:
    """What a case's scoring needs for its lesions, or None without ``lesions``."""
    return LesionJob(float(iou), (prob_files or {}).get(case)) if lesions else None


def _write_lesions(
    out_json: Path,
    pairs: list[tuple[str, Path, Path]],
    results: list[dict[str, Any]],
    keys: list[str],
    *,
    iou: float,
    with_froc: bool,
) -> dict[str, Any]:
    """Write ``<stem>_lesions.csv`` (and ``<stem>_froc.png``); the summary's ``"lesions"`` value."""
    found = [(case, r["lesions"]) for (case, _, _), r in zip(pairs, results, strict=True)]
    out = summarize(found, keys, iou_threshold=iou, with_froc=with_froc)
    write_csv(out_json.with_name(out_json.stem + "_lesions.csv"), found, keys)
    if with_froc:
        from autoseg.evaluation.plot import save_froc

        save_froc(out["per_label"], out_json.with_name(out_json.stem + "_froc.png"))
    return out


def _output_problems(out_json: Path, *, plot: bool, lesions: bool = False) -> list[str]:
    """Why the outputs could not be written (``-o`` names a folder, a file is in the way of the
    folder, the folder is read-only, ...): checked first, so that a run that cannot write its
    summary writes nothing at all (not the CSV without the JSON)."""
    problems = []
    if out_json.is_dir():
        problems.append(
            f"{out_json}: is a folder; -o takes the summary file to write, "
            f"such as {out_json / 'summary.json'}"
        )
    else:
        for out in _outputs(out_json, plot=plot, lesions=lesions)[1:]:
            if out.is_dir():
                problems.append(
                    f"{out}: is a folder where evaluate writes a file; move it or choose another -o"
                )
        if (problem := output_file_problem(out_json, fix="choose another -o")) is not None:
            problems.append(problem)
    return problems


def _case_files(folder: Path, role: str) -> tuple[dict[str, Path], list[str]]:
    """``{case: file}`` of the image files of a folder, and problems (two files for one case, a
    folder that cannot be listed)."""
    files: dict[str, Path] = {}
    problems = []
    try:
        entries = list_dir(folder, fix=f"make the {role} folder readable")
    except FileSystemError as e:
        return files, [str(e)]
    for f in entries:
        if f.name.startswith(".") or not f.is_file() or not has_image_ending(f):
            continue
        case = strip_ending(f.name)
        if case in files:
            problems.append(f"{role} {files[case]} and {f} are both case {case!r}; keep one")
        else:
            files[case] = f
    return files, problems


def _pair_cases(pred_dir: Path, ref_dir: Path) -> list[tuple[str, Path, Path]]:
    """``(case, prediction, reference)`` for every reference, or DatasetError listing all problems."""
    missing_dirs = [
        f"{role} folder {d} not found"
        for role, d in (("prediction", pred_dir), ("reference", ref_dir))
        if not d.is_dir()
    ]
    if missing_dirs:
        raise DatasetError(missing_dirs)
    preds, problems = _case_files(pred_dir, "predictions")
    refs, ref_problems = _case_files(ref_dir, "references")
    problems += ref_problems
    if not refs:
        problems.append(f"{ref_dir} holds no reference label map (.nii.gz, .nrrd, .mha, …)")
    missing = [c for c in refs if c not in preds]
    if missing:
        problems.append(
            f"{pred_dir} lacks the prediction of {len(missing)} reference case(s): "
            f"{', '.join(missing)}; predict them or remove their references"
        )
    if problems:
        raise DatasetError(problems)
    extra = [c for c in preds if c not in refs]
    if extra:
        warnings.warn(
            f"{len(extra)} prediction(s) in {pred_dir} have no reference in {ref_dir} "
            f"and are ignored: {', '.join(extra)}",
            stacklevel=3,
        )
    return [(c, preds[c], refs[c]) for c in refs]


def _header(path: Path) -> tuple[tuple[int, ...], Geometry]:
    """Shape (array order) and geometry of an image file, from its header only."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    geometry = Geometry(tuple(reversed(reader.GetSpacing())), reader.GetOrigin(), reader.GetDirection())
    return tuple(reversed(reader.GetSize())), geometry


def _check_pair(pred: Path, ref: Path) -> list[str]:
    """Problems of one pair found from the headers: unreadable, or not on the reference grid (a
    prediction stored with axes flipped or permuted on that grid is fine: it is reoriented)."""
    headers = {}
    problems = []
    for f in (pred, ref):
        if (problem := read_problem(f)) is not None:  # ITK would call it "not an image"
            problems.append(problem)
            continue
        try:
            headers[f] = _header(f)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[-1] if str(e).strip() else "unknown error"
            problems.append(f"{f}: cannot be read as an image ({first})")
    if problems:
        return problems
    (p_shape, p_geo), (r_shape, r_geo) = headers[pred], headers[ref]
    if len(r_shape) not in (2, 3):
        return [f"{ref}: has {len(r_shape)} dimensions; expected a 3D label map"]
    if len(r_shape) == 3 and find_reorientation(p_geo, p_shape, r_geo, r_shape) is not None:
        return []
    if p_shape != r_shape:
        return [
            f"{pred} has shape {p_shape} (z, y, x) but its reference {ref} has {r_shape}; "
            "write the prediction on the reference grid"
        ]
    if not np.allclose(p_geo.spacing, r_geo.spacing, rtol=0, atol=SPACING_ATOL_MM):
        p_txt, r_txt = (tuple(round(s, 6) for s in g.spacing) for g in (p_geo, r_geo))
        return [
            f"{pred} has spacing {p_txt} mm (z, y, x) but its reference {ref} has {r_txt}; "
            "write the prediction on the reference grid"
        ]
    if len(r_shape) == 3:
        return [
            f"{pred}: origin/direction differ from its reference {ref} by more than a flip or "
            "axis permutation, so the two do not overlay; write the prediction on the "
            "reference grid"
        ]
    return []


def _present_labels(arr: np.ndarray) -> set[int]:
    return {int(v) for v in np.unique(arr) if v != 0}


def _score_case(
    job: tuple[Path, Path, tuple[int, ...] | None, float, LabelScheme | None, LesionJob | None],
) -> dict[str, Any]:
    """Metrics of one case: ``{"metrics": {key: {...}}, "ref_labels": [...], "n_voxels": n}``,
    keyed by label value (as text) or, with a scheme, by entry key, and with a lesion job
    ``"lesions": {key: CaseLesions}``. Without fixed labels or a scheme it scores the labels
    present in either map; the caller fills in the labels absent from both.

    Raises:
        AutosegError: a file cannot be read, or changed since its header was checked, or (with
            lesions) its probabilities cannot be used.
    """
    pred_path, ref_path, labels, tolerance_mm, scheme, lesion_job = job
    ref_img, pred_img = read_image(ref_path), read_image(pred_path)
    ref, pred = as_labels(ref_img.array, source=ref_path), as_labels(pred_img.array, source=pred_path)
    stored_shape = pred.shape
    how: Reorientation | None = None
    if ref.ndim == 3:
        how = find_reorientation(pred_img.geometry, pred.shape, ref_img.geometry, ref.shape)
        if how is not None:
            pred = how.apply(pred)
    if pred.shape != ref.shape:  # the header check passed, so the file changed under us
        msg = f"{pred_path} has shape {pred.shape} but {ref_path} has {ref.shape}"
        raise DatasetError(msg)
    if scheme is not None:
        annotated = scheme.annotated(ref)
        entries = list(zip(scheme.entry_keys, (e.values for e in scheme.entries), strict=True))
        out = {
            "metrics": entry_metrics(pred, ref, scheme, spacing=ref_img.spacing, tolerance_mm=tolerance_mm),
            "ref_labels": [],
            "n_voxels": int(ref.size if annotated is None else np.count_nonzero(annotated)),
        }
    else:
        ref_labels = _present_labels(ref)
        todo = labels if labels is not None else sorted(ref_labels | _present_labels(pred))
        metrics = case_metrics(pred, ref, todo, spacing=ref_img.spacing, tolerance_mm=tolerance_mm)
        annotated, entries = None, [(str(v), (int(v),)) for v in todo]
        out = {
            "metrics": {str(k): v for k, v in metrics.items()},
            "ref_labels": sorted(ref_labels),
            "n_voxels": int(ref.size),
        }
    if lesion_job is not None:
        out["lesions"] = case_lesions(
            pred,
            ref,
            entries,
            lesion_job,
            spacing=ref_img.spacing,
            annotated=annotated,
            scheme=scheme,
            stored_shape=stored_shape,
            reorientation=how,
        )
    return out


def _write_csv(path: Path, per_case: list[dict[str, Any]]) -> None:
    """One row per case and label, written atomically; NaN cells are empty."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["case", "label", *METRICS])
    for c in per_case:
        for lab, scores in c["metrics"].items():
            writer.writerow(
                [c["case"], lab, *("" if math.isnan(scores[m]) else repr(scores[m]) for m in METRICS)]
            )
    write_atomic(path, lambda tmp: tmp.write_text(buf.getvalue(), encoding="utf-8"))
