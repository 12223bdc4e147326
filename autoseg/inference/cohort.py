"""Predict a folder of scans (a cohort) with a :class:`~autoseg.inference.predictor.Predictor`:
find the cases, take this job's share (:class:`Part`), skip finished outputs, overlap reading,
the networks and writing (:func:`~autoseg.inference.overlap.overlapped`), and write every output
of a case atomically (label map, DICOM-SEG, probabilities, uncertainty maps), a broken case
failing alone with one line that names it."""

from __future__ import annotations

import gzip
import logging
import os
import zipfile
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import numpy as np
from tqdm import tqdm

from autoseg._atomic import sweep_partials
from autoseg._fs import cause, check_output_dir
from autoseg.errors import AutosegError, DatasetError
from autoseg.inference.inputs import case_voxels, find_cases
from autoseg.inference.overlap import default_depth, overlapped
from autoseg.inference.predictor import NetworkOutput, Prediction, Predictor, PreparedCase
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.inference.uncertainty import (
    CaseUncertainty,
    UncertaintyMaps,
    max_entropy,
    summarize,
    write_uncertainty_csv,
)
from autoseg.io.case import load_case
from autoseg.io.dataset import Case, Dataset
from autoseg.io.dicom_seg import SegAlgorithm, SegmentCodes, build_dicom_seg, seg_sources, write_dicom_seg
from autoseg.io.image import write_image
from autoseg.io.volume import Geometry
from autoseg.planning.plan import Plan

log = logging.getLogger(__name__)

T = TypeVar("T")


#: What ``predict`` writes per case: ``CASE.nii.gz``, a DICOM-SEG ``CASE.dcm`` (DICOM series
#: inputs only), or both.
OutputFormat = Literal["nifti", "dicom-seg", "both"]


@dataclass
class PredictReport:
    """What ``predict_path`` did: cases written, skipped (output existed), failed (with why)."""

    written: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def _dataset_for(plan: Plan, source: Path, cases: list[Case]) -> Dataset:
    """A minimal dataset so that :func:`load_case` checks new scans exactly like training cases."""
    return Dataset(
        root=source,
        name=source.name,
        layout="nnunet",
        channel_names=tuple(plan.channel_names),
        labels=dict(plan.labels),
        regions_class_order=plan.regions_class_order,
        file_ending="",
        cases=tuple(cases),
    )


#: The folder under the output folder that holds the uncertainty maps and ``uncertainty.csv``
#: (kept apart so that the output folder holds one label map per case, as evaluate expects).
UNCERTAINTY_DIR = "uncertainty"


@dataclass(frozen=True)
class _CaseOutputs:
    """A case's output files: ``CASE.nii.gz``, ``CASE.dcm`` (DICOM-SEG), ``CASE.npz``
    (probabilities), ``uncertainty/CASE_entropy.nii.gz`` and ``CASE_mutual_info.nii.gz``, each
    None when not asked for."""

    nifti: Path | None
    seg: Path | None
    probabilities: Path | None
    entropy: Path | None = None
    mutual_info: Path | None = None

    @classmethod
    def of(
        cls,
        out_dir: Path,
        case_id: str,
        output_format: OutputFormat,
        save_probabilities: bool,
        save_uncertainty: bool = False,
    ) -> _CaseOutputs:
        maps = out_dir / UNCERTAINTY_DIR
        return cls(
            out_dir / f"{case_id}.nii.gz" if output_format != "dicom-seg" else None,
            out_dir / f"{case_id}.dcm" if output_format != "nifti" else None,
            out_dir / f"{case_id}.npz" if save_probabilities else None,
            maps / f"{case_id}_entropy.nii.gz" if save_uncertainty else None,
            maps / f"{case_id}_mutual_info.nii.gz" if save_uncertainty else None,
        )

    @property
    def paths(self) -> list[Path]:
        found = (self.nifti, self.seg, self.probabilities, self.entropy, self.mutual_info)
        return [p for p in found if p is not None]


@dataclass(frozen=True)
class Part:
    """Which share of a cohort one job predicts: part ``part_id`` of ``num_parts`` (``--part-id``,
    ``--num-parts``, as nnU-Net's flags), so that N jobs on N machines (a Slurm job array) write
    every case exactly once between them.

    The split is by position in the cases sorted by id (case ``i`` goes to part ``i mod N``):
    it depends only on the input folder, not on which outputs exist, so a rerun of a part after
    some of its cases were written skips those and never takes another part's.

    Examples:
        >>> [Part(k, 3).select(list("abcdefg")) for k in range(3)]
        [['a', 'd', 'g'], ['b', 'e'], ['c', 'f']]
    """

    part_id: int = 0
    num_parts: int = 1

    def __post_init__(self) -> None:
        if self.num_parts < 1 or not 0 <= self.part_id < self.num_parts:
            msg = (
                f"--part-id {self.part_id} with --num-parts {self.num_parts}: the part id must be "
                f"0 .. {max(self.num_parts - 1, 0)} (one job per part)"
            )
            raise AutosegError(msg)

    def select(self, cases: Sequence[T]) -> list[T]:
        """The share of ``cases`` for this part (they must come in a fixed order: sorted by id)."""
        return list(cases[self.part_id :: self.num_parts])


@dataclass(frozen=True)
class _Read:
    """A case read and prepared by a reader thread, or why it could not be."""

    case: Case
    prepared: PreparedCase | None = None
    sources: Any = None
    error: DatasetError | None = None


@dataclass
class _Ran:
    """What the network made of a case, handed to a writer thread, which takes it out (so that
    nothing else keeps the logits alive while the case is written)."""

    got: _Read
    out: NetworkOutput | None

    def take(self) -> NetworkOutput | None:
        out, self.out = self.out, None
        return out


@dataclass(frozen=True)
class _Written:
    """What the writer did with a case: its uncertainty row, or why it failed."""

    row: CaseUncertainty | None = None
    error: DatasetError | None = None


def predict_path(
    source: Path,
    out_dir: Path,
    predictor: Predictor,
    *,
    overwrite: bool = False,
    save_probabilities: bool = False,
    output_format: OutputFormat = "nifti",
    seg_codes: Mapping[str, SegmentCodes] | None = None,
    save_uncertainty: bool = False,
    part: Part | None = None,
    read_ahead: int | None = None,
    write_behind: int | None = None,
    overlap_voxels: float = 100e6,
) -> PredictReport:
    """Predict every case under ``source`` into ``out_dir/CASE.nii.gz`` and/or, for DICOM
    series, a DICOM-SEG ``out_dir/CASE.dcm`` (``output_format``; ``seg_codes`` name what the
    segments are, see :func:`~autoseg.io.dicom_seg.read_seg_codes`).

    With ``save_uncertainty``, also ``out_dir/uncertainty/CASE_entropy.nii.gz`` and
    ``CASE_mutual_info.nii.gz`` (float32 nats, the scan's grid) and one row per case in
    ``out_dir/uncertainty/uncertainty.csv``, least certain first
    (:mod:`autoseg.inference.uncertainty`).

    ``part`` predicts only one share of the cases (:class:`Part`). The stages overlap
    (:func:`~autoseg.inference.overlap.overlapped`): ``read_ahead`` threads read and preprocess
    the next cases while the network runs, ``write_behind`` threads take finished cases back to
    their grid and write them; 0 and 0 run every stage in turn; ``None``, the default, is 1 on
    an accelerator and 0 on the CPU (:func:`~autoseg.inference.overlap.default_depth`). Cases
    overlap only while the scans in flight hold at most ``overlap_voxels`` voxels (from their
    headers), so a large volume runs alone and memory stays that of one case: on 4 CTs of 73 M
    voxels, overlapping them anyway gained nothing (81.0 vs 80.0 s) for +64 % peak memory
    (``benchmarks/bench_cohort.py``).

    A case that cannot be read is reported and skipped; the others are still predicted.
    A case is done, and skipped unless ``overwrite``, only when every requested output (the
    label map, and ``CASE.npz`` with ``save_probabilities``) is a non-empty file that can be
    opened: an empty or unreadable one (a copy cut short, a full disk, wrong permissions) is
    predicted again, with a warning. ``out_dir`` is created with the first output, so a run in
    which every case fails leaves no empty folder behind.

    A DICOM-SEG is built (and its source headers checked) before any file of its case is
    written, so a series it cannot reference fails alone, leaving no file of that case.

    Raises:
        DatasetError: inputs are ambiguous (two files for one case), an output would overwrite
            an input, or a folder stands where an output goes; every problem is listed and
            nothing is written. With a DICOM-SEG asked for, an input that is an image file
            (nothing to reference; one line naming it).
        FileSystemError: ``out_dir`` cannot be created or written.
    """
    plan = predictor.plan
    part = part or Part()
    check_output_dir(out_dir, fix="choose another output folder with -o")
    cases, problems = find_cases(source, n_channels=len(plan.channel_names))
    if part.num_parts > 1:
        mine = part.select(cases)
        log.info("part %d of %d: %d of %d cases", part.part_id, part.num_parts, len(mine), len(cases))
        cases = mine
    if output_format != "nifti":
        _refuse_files_for_seg(cases)
    sweep_partials(out_dir)
    outputs = {
        c.case_id: _CaseOutputs.of(out_dir, c.case_id, output_format, save_probabilities, save_uncertainty)
        for c in cases
    }
    rows: list[CaseUncertainty] = []
    if save_uncertainty:
        sweep_partials(out_dir / UNCERTAINTY_DIR)
    if blocked := _blocked_outputs(cases, outputs):
        raise DatasetError(blocked)
    report = PredictReport(failed=list(problems))
    for p in problems:
        log.error(p)
    todo = []
    for case in cases:
        if not overwrite and all(_is_done(o) for o in outputs[case.case_id].paths):
            report.skipped.append(case.case_id)
        else:
            todo.append(case)
    dataset = _dataset_for(plan, source, cases)
    algorithm = _seg_algorithm(predictor) if output_format != "nifti" else None

    def read(case: Case) -> _Read:
        try:
            loaded = load_case(case, dataset, with_label=False)
            sources = None
            if algorithm is not None:
                sources = seg_sources(loaded.sources, loaded.geometry, case.images[0])
        except DatasetError as e:
            return _Read(case, error=e)
        for w in loaded.warnings:
            log.warning(w)
        return _Read(case, predictor.prepare(loaded), sources)

    def run(case: Case, got: _Read) -> _Ran:
        if got.prepared is None:
            return _Ran(got, None)
        out = predictor.run(
            got.prepared, with_probabilities=save_probabilities, with_uncertainty=save_uncertainty
        )
        return _Ran(got, out)

    def write(case: Case, ran: _Ran) -> _Written:
        got, out = ran.got, ran.take()
        if got.error is not None or got.prepared is None or out is None:
            return _Written(error=got.error)
        predicted = predictor.finish(out)
        del out  # the logits: the last reference, so their memory goes before the files are written
        try:
            return _write_case(
                predicted, got.prepared.geometry, got, outputs[case.case_id], algorithm, seg_codes, plan
            )
        except DatasetError as e:
            return _Written(error=e)

    depth = default_depth(predictor.device.type)
    stages = overlapped(
        todo,
        read,
        run,
        write,
        read_ahead=depth if read_ahead is None else read_ahead,
        write_behind=depth if write_behind is None else write_behind,
        weight=case_voxels,
        budget=overlap_voxels,
    )
    for case, done in tqdm(stages, desc="Predicting", unit="case", total=len(todo), disable=None):
        if done.error is not None:
            _failed(report, done.error)
            continue
        if done.row is not None:
            rows.append(done.row)
        report.written.append(case.case_id)
    if rows:
        write_uncertainty_csv(rows, out_dir / UNCERTAINTY_DIR / "uncertainty.csv")
    return report


def _write_case(
    predicted: Prediction,
    geometry: Geometry,
    got: _Read,
    outs: _CaseOutputs,
    algorithm: SegAlgorithm | None,
    seg_codes: Mapping[str, SegmentCodes] | None,
    plan: Plan,
) -> _Written:
    """Write one case's outputs; its DICOM-SEG is built first, so a series it cannot reference
    leaves no file of the case (:class:`DatasetError`)."""
    case = got.case
    labels, probs = predicted.labels, predicted.probabilities
    seg = None
    if got.sources is not None and algorithm is not None:
        seg = build_dicom_seg(
            labels,
            got.sources,
            plan.label_scheme,
            algorithm=algorithm,
            codes=seg_codes,
            folder=case.images[0],
        )
    if probs is not None and outs.probabilities is not None:
        ProbabilityMap.of(probs, plan.label_scheme).save(outs.probabilities)
    if outs.nifti is not None:
        write_image(labels, geometry, outs.nifti)
    if seg is not None and outs.seg is not None:
        write_dicom_seg(seg, outs.seg)
    row = None
    if (maps := predicted.uncertainty) is not None and outs.entropy and outs.mutual_info:
        outs.entropy.parent.mkdir(parents=True, exist_ok=True)
        write_image(maps.entropy, geometry, outs.entropy)
        write_image(maps.mutual_information, geometry, outs.mutual_info)
        row = _uncertainty_row(case.case_id, labels, maps, geometry.spacing, plan)
    return _Written(row)


def _uncertainty_row(
    case_id: str, labels: np.ndarray, maps: UncertaintyMaps, spacing: Sequence[float], plan: Plan
) -> CaseUncertainty:
    """The triage row of one case (volumes need only the product of ``spacing``)."""
    scheme = plan.label_scheme
    return summarize(
        case_id,
        maps.entropy,
        maps.mutual_information,
        labels,
        tuple(float(s) for s in spacing),
        max_entropy_nats=max_entropy(scheme.n_outputs, scheme.activation),
    )


def _failed(report: PredictReport, error: DatasetError) -> None:
    """Log a case's problems and count it as failed (the other cases are still predicted)."""
    for p in error.problems:
        log.error(p)
    report.failed.extend(error.problems)


def _refuse_files_for_seg(cases: list[Case]) -> None:
    """Refuse, before anything is written, inputs a DICOM-SEG cannot reference: image files."""
    files = [c.images[0] for c in cases if not c.images[0].is_dir()]
    if files:
        more = f" (and {len(files) - 1} more image files)" if len(files) > 1 else ""
        msg = (
            f"{files[0]}: a DICOM-SEG references DICOM images, and this input is an image file"
            f"{more}; give DICOM series folders, or --output-format nifti"
        )
        raise DatasetError(msg)


def _seg_algorithm(predictor: Predictor) -> SegAlgorithm:
    """How a DICOM-SEG names what made it: autoseg's version, the dataset and configurations,
    their folds and the post-processing."""
    from autoseg import __version__

    models = predictor.models
    return SegAlgorithm(
        version=__version__,
        model=f"{predictor.plan.dataset_name} {'+'.join(m.config.name for m in models)}",
        parameters={
            "folds": "; ".join(",".join(m.folds) for m in models),
            "postprocessing": str(predictor.postprocessing) if predictor.postprocessing else "none",
        },
    )


def _blocked_outputs(cases: list[Case], outputs: dict[str, _CaseOutputs]) -> list[str]:
    """Outputs that cannot be written without harm: one that is an input scan (``-o`` the input
    folder, scans named ``CASE.nii.gz``: it would be skipped as done, or overwritten), a DICOM-SEG
    inside an input DICOM series folder (the series would no longer be one), or a folder in an
    output's place (found only after the other cases were written)."""
    inputs = {os.path.realpath(p): p for c in cases for p in c.images}
    problems = []
    for cid, outs in outputs.items():
        for out in outs.paths:
            if (scan := inputs.get(os.path.realpath(out))) is not None:
                problems.append(
                    f"{out}: the output of case {cid!r} would replace the input scan {scan}; "
                    "choose another output folder with -o"
                )
            elif out == outs.seg and (series := inputs.get(os.path.realpath(out.parent))) is not None:
                problems.append(
                    f"{out}: the DICOM-SEG of case {cid!r} would be written into the input DICOM "
                    f"series folder {series}; choose another output folder with -o"
                )
            elif out.is_dir():
                problems.append(f"{out}: is a folder where an output goes; move it or choose another -o")
    return problems


def _is_done(path: Path) -> bool:
    """Whether ``path`` is a finished output: a non-empty file whose compressed stream is whole.

    Outputs are written atomically, so a damaged file under the final name did not come from
    here (a copy cut short, a full disk, wrong permissions); it is predicted again, with a
    warning, instead of being kept as done. The check reads the file once (gzip's CRC, the
    zip members' CRCs): milliseconds for a hippocampus label map, ~0.1 s for a 70-megavoxel one.
    """
    try:
        if path.stat().st_size == 0:
            log.warning("%s: existing output is empty; predicting it again", path)
            return False
        damage = _damage(path)
    except FileNotFoundError:
        return False
    except OSError as e:
        log.warning("%s: existing output cannot be read (%s); predicting it again", path, cause(e))
        return False
    if damage is not None:
        log.warning("%s: existing output is damaged (%s); predicting it again", path, damage)
        return False
    return True


def _damage(path: Path) -> str | None:
    """What is wrong with the compressed stream of ``path`` (``.gz`` or ``.npz``), or with a
    DICOM-SEG (``.dcm``), or None."""
    if path.suffix == ".dcm":
        return _seg_damage(path)
    try:
        if path.suffix == ".npz":
            with zipfile.ZipFile(path) as z:
                bad = z.testzip()
            return None if bad is None else f"member {bad} fails its checksum"
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                while f.read(1 << 22):
                    pass
    except (EOFError, gzip.BadGzipFile, zipfile.BadZipFile, zlib.error) as e:
        return str(e) or type(e).__name__
    return None


def _seg_damage(path: Path) -> str | None:
    """What is wrong with a DICOM-SEG file: not DICOM, not a Segmentation, or pixel data shorter
    than its frames need (1 bit per pixel); None when it is whole."""
    import warnings

    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # pydicom warns about what it can read anyway
            ds = pydicom.dcmread(path)
        if str(ds.get("SOPClassUID", "")) != _SEG_STORAGE:
            return "not a DICOM Segmentation"
        bits = int(ds.NumberOfFrames) * int(ds.Rows) * int(ds.Columns) * int(ds.BitsAllocated)
        if len(ds.PixelData) < (bits + 7) // 8:
            return "its pixel data is cut short"
    except (InvalidDicomError, EOFError, AttributeError, KeyError, TypeError, ValueError) as e:
        return str(e) or type(e).__name__
    return None


#: SOP Class UID of a DICOM Segmentation (Segmentation Storage).
_SEG_STORAGE = "1.2.840.10008.5.1.4.1.1.66.4"
