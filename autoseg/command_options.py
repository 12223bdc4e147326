"""The options of each command (besides training's :class:`~autoseg.training.config.TrainConfig`),
each field's default, choices, range and help in one place (see :mod:`autoseg.options`).

Positional arguments and required paths (``-i``/``-o``, ``--pred``/``--ref``) have no default and
are declared in :mod:`autoseg.cli`.

Worker counts are two different things: ``--preprocess-workers`` (processes that read, check,
preprocess or score cases) and train's ``--augment-workers`` (processes feeding augmented batches
to the network, a field of TrainConfig). ``--workers`` is kept as a deprecated alias with its old
meaning for each command.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from autoseg._device import DEFAULT_GPU_MEMORY_GB
from autoseg.dicom_node import ae_title, destination
from autoseg.options import Device, Precision, option, regex


def _preprocess_workers() -> Any:
    return option(
        None,
        "processes for reading, checking, preprocessing and scoring cases",
        metavar="N",
        minimum=1,
        run_time_default="CPUs available, at most 8",
    )


def _legacy_workers(meaning: str, advice: str) -> Any:
    # dest ``legacy_workers``: TrainConfig's ``workers`` (augmentation) is another option
    return option(None, meaning, flags=("--workers",), metavar="N", minimum=0, deprecated=advice)


def _configurations(what: str, default: str) -> Any:
    return option(None, what, flags=("-c", "--configurations"), metavar="CONFIG", run_time_default=default)


def _folds(what: str, default: str) -> Any:
    return option(None, what, flags=("-f", "--folds"), metavar="FOLD", run_time_default=default)


def _calling_ae() -> Any:
    return option("AUTOSEG", "our AE title, as the PACS knows it", metavar="AE_TITLE", parse=ae_title)


def _send_timeout(flags: tuple[str, ...]) -> Any:
    return option(
        10.0,
        "seconds to wait for the PACS at each step (connecting, associating, each C-STORE response)",
        flags=flags,
        metavar="SECONDS",
        minimum=0,
        maximum=600,
        above_minimum=True,
    )


_WORKERS_MEANING = "worker processes, 0 for the default"
#: ``--read-ahead``/``--write-behind`` without a value (:func:`autoseg.inference.overlap.default_depth`).
_DEPTH_DEFAULT = "1 when the network runs on a GPU, 0 on the CPU"
#: The names of :data:`autoseg.planning.presets.PRESETS` (spelled out so that ``--help`` imports
#: no planning code; a test checks that the two agree).
PresetName = Literal["resenc", "resenc_m", "resenc_l", "resenc_xl"]


@dataclass(frozen=True)
class CommonOptions:
    """Options of every command."""

    work_dir: Path | None = option(
        None, "work folder", metavar="DIR", run_time_default="$AUTOSEG_WORK, else ./autoseg_work"
    )
    verbose: bool = option(False, "debug logging", flags=("-v", "--verbose"))
    quiet: bool = option(False, "warnings and errors only", flags=("-q", "--quiet"))


@dataclass(frozen=True)
class VerifyOptions:
    """``autoseg verify``."""

    preprocess_workers: int | None = _preprocess_workers()
    legacy_workers: int | None = _legacy_workers(_WORKERS_MEANING, "use --preprocess-workers")


@dataclass(frozen=True)
class PlanOptions:
    """``autoseg plan``."""

    gpu_memory: float | None = option(
        None,
        "memory budget for patch and batch size",
        metavar="GB",
        minimum=1,
        maximum=1024,
        run_time_default=f"the CUDA device's, else {DEFAULT_GPU_MEMORY_GB:g}",
    )
    add_2p5d: bool = option(
        False, "offer the 2.5d configuration even for data that is not thick-sliced", flags=("--add-2.5d",)
    )
    add_lowres: bool = option(
        False,
        "offer 3d_lowres and the cascade (3d_cascade_fullres) even where the full-resolution patch "
        "covers enough of the image; on small data the low-resolution stage has 8x fewer voxels",
        flags=("--add-lowres",),
    )
    presets: tuple[PresetName, ...] | None = option(
        None,
        "also plan nnU-Net's residual-encoder presets, each an extra configuration such as "
        "3d_fullres_resenc_m that trains on 3d_fullres's preprocessed data; sized for the preset's "
        "GPU (M 8 GB, L 24 GB, XL 40 GB) unless --gpu-memory is given; several may be named. "
        "3d_fullres_resenc (the residual encoder at 3d_fullres's patch and batch) is planned for "
        "3D data without asking",
        flags=("--preset",),
        run_time_default="none besides 3d_fullres_resenc",
    )
    preprocess_workers: int | None = _preprocess_workers()
    legacy_workers: int | None = _legacy_workers(_WORKERS_MEANING, "use --preprocess-workers")


@dataclass(frozen=True)
class PreprocessOptions:
    """``autoseg preprocess``."""

    configurations: tuple[str, ...] | None = _configurations(
        "configurations to preprocess", "all in the plan"
    )
    preprocess_workers: int | None = _preprocess_workers()
    legacy_workers: int | None = _legacy_workers(_WORKERS_MEANING, "use --preprocess-workers")


@dataclass(frozen=True)
class TrainRunOptions:
    """``autoseg train`` options that are not training settings (those are TrainConfig's)."""

    resume: bool = option(False, "resume from the latest checkpoint of this fold", flags=("--continue",))
    n_folds: int = option(
        5,
        "cross-validation folds, when the splits are first made (FOLD is then 0 to N-1); folds the "
        "dataset folder brings as splits.json or splits_final.json, or a stored splits.json, win",
        metavar="N",
        minimum=2,
    )
    group_by: str | None = option(
        None,
        "case-name pattern whose first group names the patient (no patient in both training and validation)",
        metavar="REGEX",
        parse=regex,
    )
    preprocess_workers: int | None = _preprocess_workers()
    legacy_workers: int | None = _legacy_workers(
        "augmentation workers, and preprocessing workers when >= 1",
        "use --augment-workers and --preprocess-workers",
    )


@dataclass(frozen=True)
class PredictOptions:
    """``autoseg predict`` (besides ``-i``/``-o``)."""

    dataset: str | None = option(
        None,
        "dataset name or folder",
        flags=("-d", "--dataset"),
        run_time_default="the only one in the work folder",
    )
    configurations: tuple[str, ...] | None = _configurations(
        "configuration(s); several are ensembled", "find-best's choice, else the only trained one"
    )
    folds: tuple[str, ...] | None = _folds("folds to average", "all trained")
    step: float = option(
        0.5,
        "sliding-window step",
        minimum=0,
        maximum=1,
        above_minimum=True,
        what="a fraction of the patch",
        note="0.5: windows overlap by half",
    )
    tta: bool = option(True, "no mirror test-time augmentation")
    device: Device | None = option(None, "where the networks run", run_time_default="cuda when available")
    precision: Precision = option("auto", "auto: fp16 on CUDA, bf16 on CPUs with native bf16, else fp32")
    overwrite: bool = option(False, "redo existing outputs")
    save_probabilities: bool = option(
        False, "also write CASE.npz with the probabilities (float16; softmax per label or sigmoid per region)"
    )
    save_uncertainty: bool = option(
        False,
        "also write uncertainty/CASE_entropy.nii.gz (predictive entropy) and CASE_mutual_info.nii.gz "
        "(disagreement of folds and mirrors), and uncertainty/uncertainty.csv, least certain case first",
    )
    postprocessing: bool = option(
        True,
        "write the raw label maps (default: apply find-best's post-processing, or the model's own)",
    )
    checkpoint: Literal["final", "best", "latest"] = option("final", "which checkpoint of each fold")
    backend: Literal["torch", "onnx", "tensorrt"] = option(
        "torch", "run the exported networks (autoseg export) with onnxruntime or TensorRT"
    )
    output_format: Literal["nifti", "dicom-seg", "both"] = option(
        "nifti",
        "what to write per case: CASE.nii.gz, or for DICOM series inputs a DICOM Segmentation "
        "CASE.dcm (one segment per label or region, referencing the series' images), or both",
    )
    seg_codes: Path | None = option(
        None,
        "JSON file naming what each DICOM-SEG segment is: label name -> {category, type} codes, "
        'each [value, scheme, meaning], e.g. ["85756007", "SCT", "Tissue"]',
        metavar="FILE.json",
        run_time_default='SCT 85756007 "Tissue" for category and type',
    )
    num_parts: int = option(
        1,
        "split the cases into N parts, one job each (e.g. a Slurm job array); see --part-id",
        metavar="N",
        minimum=1,
    )
    part_id: int = option(
        0,
        "which part this job predicts, 0 .. N-1: the cases sorted by id, every N-th from this one",
        metavar="K",
        minimum=0,
    )
    read_ahead: int | None = option(
        None,
        "cases read and preprocessed ahead of the network, on as many threads (0: in turn)",
        metavar="N",
        minimum=0,
        run_time_default=_DEPTH_DEFAULT,
    )
    write_behind: int | None = option(
        None,
        "cases taken back to their grid and written behind the network, on as many threads (0: in turn)",
        metavar="N",
        minimum=0,
        run_time_default=_DEPTH_DEFAULT,
    )
    send_to: str | None = option(
        None,
        "after predicting, send the DICOM-SEG files written (CASE.dcm) to this PACS with C-STORE, "
        "over one association; needs --output-format dicom-seg or both, and pynetdicom "
        "(pip install 'autoseg[pacs]')",
        metavar="AE@HOST:PORT",
        parse=destination,
    )
    calling_ae: str = _calling_ae()
    send_timeout: float = _send_timeout(("--send-timeout",))
    overlap_limit: float = option(
        100.0,
        "overlap cases only while the scans in flight hold at most this many million voxels; a "
        "larger one runs alone, so memory stays that of one case (a 0.8 mm CT is ~70)",
        metavar="MVOXELS",
        minimum=0,
    )
    legacy_workers: int | None = _legacy_workers("no effect on predict", "remove it")


@dataclass(frozen=True)
class EvaluateOptions:
    """``autoseg evaluate`` (besides ``--pred``/``--ref``/``-o``)."""

    labels: tuple[int, ...] | None = option(
        None,
        "labels to score",
        metavar="LABEL",
        minimum=0,
        run_time_default="every nonzero value in the references",
    )
    dataset_json: Path | None = option(
        None,
        "score the labels or regions this dataset.json (or a model's plans.json) declares, leaving "
        "out voxels of its ignore label; exclusive with --labels",
        metavar="PATH",
    )
    tolerance: float = option(1.0, "surface Dice tolerance in mm", metavar="MM", minimum=0)
    plot: bool = option(False, "also save a box plot PNG")
    images: Path | None = option(
        None,
        "folder of the scans: also save a PNG per case (a slice with the reference and predicted "
        "outlines) in <stem>_overlays/",
        metavar="DIR",
    )
    lesions: bool = option(
        False,
        "also score lesions: connected components (26-connected) of each label or region, a "
        "predicted and a reference lesion matching one-to-one when their IoU exceeds --lesion-iou; "
        "per label sensitivity, precision, F1, false positives per case, each lesion's volume "
        "(<stem>_lesions.csv); with CASE.npz probabilities beside every prediction, the FROC (a "
        "lesion's score: its largest probability; sensitivity at 1/8 to 8 false positives per "
        "case and their mean, the CPM; <stem>_froc.png)",
    )
    lesion_iou: float = option(
        0.1,
        "with --lesions: the IoU above which a predicted and a reference lesion match",
        metavar="IOU",
        minimum=0,
        maximum=1,
    )
    preprocess_workers: int | None = _preprocess_workers()
    legacy_workers: int | None = _legacy_workers(_WORKERS_MEANING, "use --preprocess-workers")


@dataclass(frozen=True)
class FindBestOptions:
    """``autoseg find-best``."""

    configurations: tuple[str, ...] | None = _configurations("configurations to consider", "all trained")
    preprocess_workers: int | None = _preprocess_workers()
    legacy_workers: int | None = _legacy_workers(_WORKERS_MEANING, "use --preprocess-workers")


@dataclass(frozen=True)
class ExportOptions:
    """``autoseg export``."""

    format: Literal["onnx", "tensorrt"] = option("onnx", "what to export to")
    folds: tuple[str, ...] | None = _folds("folds to export", "every trained fold")
    output: Path | None = option(
        None, "also copy the exported files here (ONNX)", flags=("-o", "--output"), metavar="DIR"
    )
    fp16: bool = option(False, "TensorRT: allow fp16 kernels")
    legacy_workers: int | None = _legacy_workers("no effect on export", "remove it")


@dataclass(frozen=True)
class SendOptions:
    """``autoseg send`` (besides the files and ``--to``)."""

    calling_ae: str = _calling_ae()
    timeout: float = _send_timeout(("--timeout",))
