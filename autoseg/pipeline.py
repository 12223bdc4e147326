"""The commands' work, as functions a script or test can call without the CLI.

Each function takes paths and options, does one user-level job, and raises
:class:`~autoseg.errors.AutosegError` for anything the user can fix.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from autoseg._fs import check_output_dir
from autoseg._parallel import problems_of
from autoseg.command_options import PredictOptions
from autoseg.errors import DatasetError
from autoseg.fingerprint.extract import extract_fingerprint, fingerprint_cases
from autoseg.fingerprint.model import Fingerprint
from autoseg.io.dataset import load_dataset
from autoseg.planning.plan import Plan
from autoseg.planning.planner import make_plan
from autoseg.workspace import Workspace

if TYPE_CHECKING:
    from autoseg.inference.cohort import OutputFormat, PredictReport
    from autoseg.training.config import TrainConfig

log = logging.getLogger(__name__)

_PREDICT = PredictOptions()
_PREDICT_OUT_FIX = "choose another output folder with -o"


@dataclass(frozen=True)
class VerifyReport:
    """Outcome of :func:`verify`: every problem and warning, each naming its file."""

    n_cases: int
    problems: list[str]
    warnings: list[str]


def verify(dataset_dir: Path, *, workers: int) -> VerifyReport:
    """Check a dataset folder completely; writes nothing.

    Raises:
        DatasetError: dataset.json or the folder listing is wrong (cases cannot even be listed).
    """
    dataset = load_dataset(dataset_dir)
    outcomes = fingerprint_cases(dataset, workers=workers)
    return VerifyReport(
        n_cases=len(dataset.cases),
        problems=[p for o in outcomes if o.error is not None for p in problems_of(o.error)],
        warnings=[w for o in outcomes if o.value is not None for w in o.value.warnings],
    )


def plan(
    dataset_dir: Path,
    workspace: Workspace,
    *,
    gpu_memory_gb: float,
    workers: int,
    add_2p5d: bool = False,
    add_lowres: bool = False,
    presets: Sequence[str] = (),
    preset_gpu_memory_gb: float | None = None,
) -> tuple[Fingerprint, Plan]:
    """Verify, fingerprint and plan a dataset; write ``fingerprint.json`` and ``plans.json``.

    Nothing is written unless every case passed the checks. ``presets`` and
    ``preset_gpu_memory_gb``: see :func:`~autoseg.planning.planner.make_plan`.

    Returns:
        The fingerprint and the plan (also saved under ``<work>/<dataset name>/``).
    """
    dataset = load_dataset(dataset_dir)
    log.info(
        "%s: %d cases, %d channel(s) %s, labels %s (%s layout)",
        dataset.name,
        len(dataset.cases),
        dataset.num_channels,
        list(dataset.channel_names),
        dataset.labels,
        dataset.layout,
    )
    workspace.check_writable(dataset.name)
    fp = extract_fingerprint(dataset, workers=workers)
    the_plan = make_plan(
        fp,
        gpu_memory_gb=gpu_memory_gb,
        add_2p5d=add_2p5d,
        add_lowres=add_lowres,
        presets=presets,
        preset_gpu_memory_gb=preset_gpu_memory_gb,
    )
    fp.save(workspace.fingerprint_path(dataset.name))
    the_plan.save(workspace.plans_path(dataset.name))
    workspace.remember_source(dataset.name, dataset_dir)
    return fp, the_plan


def _load_plan(workspace: Workspace, name: str) -> Plan:
    return Plan.load(workspace.plans_path(name))


def preprocess(
    dataset: str, workspace: Workspace, *, configurations: list[str] | None, workers: int
) -> list[Path]:
    """Preprocess a planned dataset for some (default: all) configurations.

    Returns:
        The store folders, each once (a preset configuration shares its base's store).
    """
    from autoseg.preprocessing.run import preprocess_dataset

    name, folder = workspace.resolve(dataset)
    the_plan = _load_plan(workspace, name)
    ds = load_dataset(folder)
    workspace.check_writable(name)
    names = configurations or [c for c in the_plan.configurations if c != "3d_cascade_fullres"]
    folders = (
        preprocess_dataset(
            ds, the_plan, the_plan.configuration(c), workspace.dataset_dir(name), workers=workers
        ).folder
        for c in names
    )
    return list(dict.fromkeys(folders))


def train(
    dataset: str,
    workspace: Workspace,
    cfg: TrainConfig,
    *,
    resume: bool = False,
    group_by: str | None = None,
    preprocess_workers: int | None = None,
    n_folds: int = 5,
) -> Path:
    """Train one configuration on one fold (preprocessing first if needed).

    ``preprocess_workers`` are the processes that preprocess the cases (default: the CPUs
    available, at most 8); the augmentation workers are ``cfg.workers``. A cascade stage
    (``3d_cascade_fullres``) also takes its previous stage's cross-validation predictions as
    input (:mod:`autoseg.training.cascade`); they are checked before anything is preprocessed.

    With ``cfg.time_limit`` the limit counts from this call: preprocessing, training and the
    final validation all fit in it (:mod:`autoseg.training.time_budget`).

    Returns:
        The fold's folder ``<work>/<name>/models/<config>/fold_<k>/``.

    Raises:
        PlanError: the plan lacks the configuration (the message lists those it has).
        DatasetError: a case cannot be read, or the fold does not exist.
        ModelError: a cascade stage's previous stage lacks the cross-validation predictions of
            some cases (the message names the folds to train).
    """
    started = time.monotonic()  # the time limit counts the imports (torch) too
    from autoseg._atomic import write_json_atomic
    from autoseg._parallel import default_workers
    from autoseg.data.splits import fold_cases, load_or_create_splits
    from autoseg.preprocessing.run import preprocess_dataset
    from autoseg.training import distributed as dist
    from autoseg.training.trainer import Trainer
    from autoseg.training.validate import validate_fold

    cfg.check_components()
    name, folder = workspace.resolve(dataset)
    the_plan = _load_plan(workspace, name)
    config = the_plan.configuration(cfg.configuration)
    world = dist.init_from_env(cfg.device)
    if not world.is_main:  # one process speaks for all
        logging.getLogger("autoseg").setLevel(logging.WARNING)
    ds = load_dataset(folder)
    workspace.check_writable(name)
    ds_dir = workspace.dataset_dir(name)
    ids = [c.case_id for c in ds.cases]
    groups = _patient_groups(ds, group_by)  # before preprocessing: a wrong pattern writes nothing
    val_ids: list[str]
    # fold "all" needs no split (small datasets may not have 5 folds' worth), unless it is a
    # cascade stage: the splits say which model predicted each case without training on it
    splits = (
        load_or_create_splits(
            ds_dir / "splits.json",
            ids,
            groups=groups,
            n_folds=n_folds,
            dataset_folder=folder,
            fold=None if cfg.fold == "all" else cfg.fold,
        )
        if cfg.fold != "all" or config.previous_stage is not None
        else []
    )
    if cfg.fold == "all":
        train_ids, val_ids = sorted(ids), []
    else:
        train_ids, val_ids = fold_cases(splits, cfg.fold)
    model_dir = ds_dir / "models" / config.name
    fold_dir = model_dir / cfg.fold_name
    cv_predictions = None
    if config.previous_stage is not None:  # before preprocessing: a missing stage fails at once
        from autoseg.training.cascade import find_cv_predictions

        cv_predictions = find_cv_predictions(
            ds_dir / "models" / config.previous_stage,
            splits,
            [*train_ids, *val_ids],
            dataset=name,
            needed_by=f"{config.name} fold {cfg.fold}",
        )
    if world.is_main:
        workers = preprocess_workers or default_workers()
        store = preprocess_dataset(ds, the_plan, config, ds_dir, workers=workers)
    dist.barrier()
    if not world.is_main:
        store = preprocess_dataset(ds, the_plan, config, ds_dir, workers=1)
    store.check([*train_ids, *val_ids])
    handler = _file_log(fold_dir / "log.txt") if world.is_main else None
    try:
        previous_stage = manifest = None
        if cv_predictions is not None:  # its digest now; the maps once --continue is accepted
            from autoseg.training.cascade import previous_stage_input, previous_stage_manifest

            manifest = previous_stage_manifest(cv_predictions, config)
            previous_stage = previous_stage_input(fold_dir, the_plan, manifest)
        log.info(
            "training %s fold %s on %d cases (%d validation), device %s",
            config.name,
            cfg.fold,
            len(train_ids),
            len(val_ids),
            cfg.device,
        )
        trainer = Trainer(
            the_plan, config, cfg, store, train_ids, val_ids, fold_dir, previous_stage=previous_stage
        )
        if resume:  # before the plan or the previous stage's maps are written: a checkpoint of
            trainer.resume()  # another plan or of other previous-stage inputs is refused first
        if manifest is not None and cv_predictions is not None:
            from autoseg.training.cascade import write_previous_stage

            if world.is_main:
                write_previous_stage(manifest, cv_predictions, the_plan, config, store, fold_dir)
            dist.barrier()
        if world.is_main:
            the_plan.save(model_dir / "plans.json")
            # the trainer's: a continued time-budgeted run keeps the epochs it decided
            write_json_atomic(fold_dir / "train_config.json", trainer.cfg.to_dict())
        trainer.run(started=started)
        if world.is_main and val_ids:
            labels = {c.case_id: c.label for c in ds.cases if c.label is not None}
            validate_fold(
                trainer.predicting_network,
                the_plan,
                config,
                store,
                val_ids,
                labels,
                fold_dir / "validation",
                device=trainer.device,
                amp_dtype=trainer.amp_dtype,
                save_probabilities=cfg.val_probabilities,
                previous_stage=previous_stage,
            )
        dist.barrier()
    finally:
        if handler is not None:
            logging.getLogger("autoseg").removeHandler(handler)
            handler.close()
    return fold_dir


def _patient_groups(ds: Any, group_by: str | None) -> dict[str, str] | None:
    """Case id -> patient: from ``--group-by`` when given, else the dataset's own, else None.

    Raises:
        DatasetError: ``group_by`` does not match every case.
    """
    from autoseg.data.splits import groups_from_regex

    ids = [c.case_id for c in ds.cases]
    if not group_by:
        return {c.case_id: c.patient for c in ds.cases if c.patient} or None
    try:
        return groups_from_regex(ids, group_by)
    except ValueError as e:
        msg = f"--group-by: {e}; it must match every case (its first group: the patient)"
        raise DatasetError(msg) from e


def prepare_folds(
    dataset: str,
    workspace: Workspace,
    cfg: TrainConfig,
    folds: Sequence[int | Literal["all"]],
    *,
    group_by: str | None = None,
    preprocess_workers: int | None = None,
    n_folds: int = 5,
) -> Path:
    """What several folds' processes share, done once before they start (they would otherwise
    all preprocess the same cases and write the same splits at the same time): the splits, with
    each numbered fold checked to exist, and the configuration's preprocessed data. Each fold's
    :func:`train` then finds them done.

    Returns:
        The configuration's model folder ``<work>/<name>/models/<config>/``.

    Raises:
        PlanError: the plan lacks the configuration.
        DatasetError: a case cannot be read, ``group_by`` does not fit, or a fold does not exist.
    """
    from autoseg._parallel import default_workers
    from autoseg.data.splits import load_or_create_splits
    from autoseg.preprocessing.run import preprocess_dataset

    cfg.check_components()
    name, folder = workspace.resolve(dataset)
    the_plan = _load_plan(workspace, name)
    config = the_plan.configuration(cfg.configuration)
    ds = load_dataset(folder)
    workspace.check_writable(name)
    ds_dir = workspace.dataset_dir(name)
    groups = _patient_groups(ds, group_by)
    numbered: list[int | None] = [f for f in folds if f != "all"]
    if numbered or config.previous_stage is not None:
        for fold in numbered or [None]:
            load_or_create_splits(
                ds_dir / "splits.json",
                [c.case_id for c in ds.cases],
                groups=groups,
                n_folds=n_folds,
                dataset_folder=folder,
                fold=fold,
            )
    preprocess_dataset(ds, the_plan, config, ds_dir, workers=preprocess_workers or default_workers())
    return ds_dir / "models" / config.name


def _file_log(path: Path) -> logging.Handler:
    """Also log to ``path`` (the fold's log.txt) for the duration of a training run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.getLogger("autoseg").addHandler(handler)
    return handler


def predict(
    source: Path,
    out_dir: Path,
    workspace: Workspace,
    *,
    dataset: str | None,
    configurations: list[str] | None,
    folds: list[str] | None,
    device: str,
    precision: str = _PREDICT.precision,
    step: float = _PREDICT.step,
    tta: bool = _PREDICT.tta,
    overwrite: bool = _PREDICT.overwrite,
    save_probabilities: bool = _PREDICT.save_probabilities,
    checkpoint: str = _PREDICT.checkpoint,
    backend: str = _PREDICT.backend,
    postprocess: bool = _PREDICT.postprocessing,
    output_format: OutputFormat = _PREDICT.output_format,
    seg_codes: Path | None = _PREDICT.seg_codes,
    save_uncertainty: bool = _PREDICT.save_uncertainty,
    part: tuple[int, int] = (_PREDICT.part_id, _PREDICT.num_parts),
    read_ahead: int | None = _PREDICT.read_ahead,
    write_behind: int | None = _PREDICT.write_behind,
    overlap_voxels: float = _PREDICT.overlap_limit * 1e6,
) -> PredictReport:
    """Predict scans with trained models (see :mod:`autoseg.inference.cohort`).

    Without ``dataset``, the work folder must hold exactly one planned dataset. Without
    ``configurations``, find-best's choice is used (its configurations, folds and
    post-processing), else the only trained configuration. ``folds`` overrides the folds of
    whichever configurations are used. ``postprocess=False`` writes the raw label maps.
    ``output_format`` ``"dicom-seg"`` or ``"both"`` also writes a DICOM-SEG per DICOM series
    (``CASE.dcm``), its segments coded from ``seg_codes`` (a JSON file, checked against the
    model's labels before anything is predicted). ``save_uncertainty`` writes the uncertainty
    maps and ``uncertainty.csv`` (:mod:`autoseg.inference.uncertainty`). ``part`` is
    ``(part_id, num_parts)``: this job's share of the cases (checked before any model loads);
    ``read_ahead`` and ``write_behind`` overlap reading and writing with the networks, as
    long as the cases in flight hold at most ``overlap_voxels``
    (:func:`~autoseg.inference.cohort.predict_path`). The defaults are
    ``autoseg predict``'s (:class:`~autoseg.command_options.PredictOptions`).
    """
    import torch

    from autoseg._precision import amp_dtype_for
    from autoseg.inference.cohort import Part, predict_path
    from autoseg.inference.model import default_models, load_model
    from autoseg.inference.predictor import Predictor

    share = Part(*part)
    check_output_dir(out_dir, fix=_PREDICT_OUT_FIX)
    if dataset is not None:
        name = workspace.resolve(dataset)[0]
    else:
        planned = sorted(p.parent.name for p in workspace.root.glob("*/models"))
        if len(planned) != 1:
            msg = (
                f"{workspace.root}: {'no' if not planned else 'several'} trained datasets "
                f"{planned or ''}; choose one with -d DATASET (and --work-dir)"
            )
            raise DatasetError(msg)
        name = planned[0]
    ds_dir = workspace.dataset_dir(name)
    if configurations:
        choice, pp = [(c, folds) for c in configurations], None
    else:
        choice, pp = default_models(ds_dir)
    dev = torch.device(device)
    models = [
        load_model(
            ds_dir / "models" / c, folds=folds or f, checkpoint=checkpoint, device=dev, backend=backend
        )
        for c, f in choice
    ]
    if pp is None and len(models) == 1:
        pp = models[0].postprocessing
    if not postprocess:
        pp = None
    log.info(
        "predicting with %s (folds %s) on %s",
        ", ".join(m.config.name for m in models),
        ", ".join(",".join(m.folds) for m in models),
        dev,
    )
    codes = None
    if seg_codes is not None and output_format != "nifti":
        from autoseg.io.dicom_seg import read_seg_codes

        codes = read_seg_codes(seg_codes, models[0].plan.label_scheme)
    amp = amp_dtype_for(precision, dev) if backend == "torch" else None
    predictor = Predictor(models, device=dev, amp_dtype=amp, step=step, tta=tta, postprocessing=pp)
    if pp:
        log.info("post-processing: %s", pp)
    return predict_path(
        source,
        out_dir,
        predictor,
        overwrite=overwrite,
        save_probabilities=save_probabilities,
        output_format=output_format,
        seg_codes=codes,
        save_uncertainty=save_uncertainty,
        part=share,
        read_ahead=read_ahead,
        write_behind=write_behind,
        overlap_voxels=overlap_voxels,
    )


def find_best(
    dataset: str, workspace: Workspace, *, configurations: list[str] | None, workers: int
) -> dict[str, Any]:
    """Choose the configuration or ensemble with the best cross-validation Dice, and its
    post-processing (see :mod:`autoseg.evaluation.find_best`)."""
    from autoseg.evaluation.find_best import find_best as _find_best

    name, _ = workspace.resolve(dataset)
    workspace.check_writable(name)
    return _find_best(workspace.dataset_dir(name), configurations=configurations, workers=workers)


def export(
    dataset: str,
    configuration: str,
    workspace: Workspace,
    *,
    fmt: str,
    folds: list[str] | None,
    out: Path | None,
    fp16: bool = False,
) -> list[Path]:
    """Export a trained configuration (see :mod:`autoseg.export`)."""
    name, _ = workspace.resolve(dataset)
    workspace.check_writable(name)
    if out is not None:
        check_output_dir(out, fix="choose another folder with --output")
    model_dir = workspace.dataset_dir(name) / "models" / configuration
    if fmt == "tensorrt":
        from autoseg.export.tensorrt import export_tensorrt

        return export_tensorrt(model_dir, folds=folds, fp16=fp16)
    from autoseg.export.onnx import export_onnx

    return export_onnx(model_dir, folds=folds, copy_to=out)
