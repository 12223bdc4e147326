"""Compose the planning rules into a :class:`~autoseg.planning.plan.Plan` from a fingerprint.

The data flow: fingerprint -> target spacing and transpose -> per configuration: median shape at
that spacing -> initial patch -> topology -> shrink the patch until the batch of 2 fits the
memory budget -> batch size. Then the optional configurations: ``3d_lowres`` (+ cascade) when the
full-resolution patch covers little of the image (or when asked for, ``--add-lowres``), ``2.5d``
for thick-sliced data (or when asked for, ``--add-2.5d``).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
from collections.abc import Sequence

import numpy as np

from autoseg.fingerprint.model import Fingerprint
from autoseg.labels import LabelScheme
from autoseg.planning import rules
from autoseg.planning.kinds import ConfigKind, kind_of
from autoseg.planning.plan import (
    Configuration,
    Network,
    Normalization,
    Plan,
    Resampling,
)

log = logging.getLogger(__name__)

#: Below this fraction of the median image covered by the full-resolution patch, a low-resolution
#: stage is planned (nnU-Net's value).
LOWRES_COVERAGE = 0.25
LOWRES_STEP = 1.03
#: A low-resolution stage must cut the voxels at least this much to be worth training.
LOWRES_MIN_REDUCTION = 2.0
#: With ``--add-lowres`` where the rule plans no low-resolution stage (the data is small enough
#: for the full-resolution patch, or a stage covering a quarter would be too close to full
#: resolution), the spacing grows by the same steps until the stage has at least this many times
#: fewer voxels: 8x is twice the spacing of isotropic data, a stage genuinely coarser than full
#: resolution, whose prediction the cascade can learn to refine.
ADDED_LOWRES_REDUCTION = 8.0
#: The fewest stages a U-Net can have (``networks.topology.check_network`` refuses fewer).
MIN_STAGES = 3
#: Growth steps tried before giving up (1.03**200 is a factor of ~370 per axis).
_MAX_LOWRES_STEPS = 200


def _median_shape(
    fp: Fingerprint, spacing: Sequence[float] | np.ndarray, forward: Sequence[int]
) -> np.ndarray:
    """Median cropped shape when every case is resampled to ``spacing`` (transposed order)."""
    sp = fp.spacings[:, list(forward)]
    shapes = fp.shapes_after_crop[:, list(forward)]
    return np.median(np.round(shapes * sp / np.asarray(spacing)), axis=0)


def _plan_patch(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    *,
    n_classes: int,
    budget: float,
    ref_batch: int,
    cap: int,
    edge_voxels: int,
) -> tuple[rules.Topology, tuple[int, ...], int]:
    """Largest topology/patch whose batch of 2 fits ``budget``: returns (topology, features, est)."""
    patch = list(rules.initial_patch_size(spacing, median_shape, edge_voxels=edge_voxels))
    # Plan again on the padded patch: padding can make room for one more downsampling step.
    topo = rules.topology(spacing, rules.topology(spacing, patch).patch_size)
    feats = rules.features_per_stage(topo.n_stages, cap=cap)
    est = rules.feature_map_elements(topo, feats, n_classes=n_classes)
    per_sample_budget = budget * ref_batch / rules.MIN_BATCH
    while est > per_sample_budget:
        ratios = np.asarray(topo.patch_size) / np.asarray(median_shape)
        # The axis that overshoots the image most; among ties the last (as nnU-Net), which
        # keeps the coarse first axis (after transpose) whole when in-plane axes can give.
        axis = len(ratios) - 1 - int(np.argmax(ratios[::-1]))
        patch = list(topo.patch_size)
        # Step by the divisor of the *smaller* patch (nnU-Net does the same): stepping by the
        # current one would skip valid sizes, e.g. 256 (divisor 64) -> 192 instead of 224.
        smaller = [*patch[:axis], patch[axis] - topo.divisor[axis], *patch[axis + 1 :]]
        if smaller[axis] < 1:
            break
        patch[axis] -= rules.topology(spacing, smaller).divisor[axis]
        topo = rules.topology(spacing, patch)
        feats = rules.features_per_stage(topo.n_stages, cap=cap)
        est = rules.feature_map_elements(topo, feats, n_classes=n_classes)
    return topo, feats, est


def plan_configuration(
    name: str,
    kind: ConfigKind,
    spacing: Sequence[float] | np.ndarray,
    median_shape: Sequence[float] | np.ndarray,
    *,
    n_cases: int,
    n_classes: int,
    gpu_memory_gb: float,
    in_slices: int = 1,
    batch_dice: bool = False,
) -> Configuration:
    """Plan one configuration at a given spacing.

    Args:
        name: configuration name.
        kind: ``"3d"``, ``"2d"`` or ``"2.5d"``.
        spacing: 3 values (transposed order); 2D kinds plan on axes 1 and 2.
        median_shape: 3 values at ``spacing``.
        n_cases: training cases (for the dataset-coverage cap on the batch).
        n_classes: network outputs, background included.
        gpu_memory_gb: memory budget.
        in_slices: K for 2.5D.
        batch_dice: see :class:`Configuration`.
    """
    spec = kind_of(kind)
    ref_elements, ref_batch = spec.reference
    budget = ref_elements * gpu_memory_gb / 8.0
    plan_sp = spec.planned_axes(spacing)
    plan_shape = spec.planned_axes(median_shape)
    topo, feats, est = _plan_patch(
        plan_sp,
        plan_shape,
        n_classes=n_classes,
        budget=budget,
        ref_batch=ref_batch,
        cap=spec.max_features,
        edge_voxels=spec.edge_voxels,
    )
    bs = rules.batch_size(
        est,
        budget=budget * ref_batch,
        patch_voxels=int(np.prod(topo.patch_size)),
        dataset_voxels=float(np.prod(median_shape)) * n_cases,
    )
    return Configuration(
        name=name,
        kind=kind,
        spacing=tuple(float(s) for s in spacing),
        median_shape=tuple(int(s) for s in median_shape),
        patch_size=topo.patch_size,
        batch_size=bs,
        in_slices=in_slices,
        network=Network(
            n_stages=topo.n_stages,
            features_per_stage=feats,
            kernel_sizes=topo.kernel_sizes,
            strides=topo.strides,
        ),
        resampling=Resampling(),
        batch_dice=batch_dice,
        estimated_feature_elements=est,
    )


def _grow_spacing(spacing: np.ndarray) -> np.ndarray:
    """One growth step of the low-resolution spacing (nnU-Net's): axes finer than half the
    coarsest grow first (by :data:`LOWRES_STEP`), then all axes together."""
    grow = spacing < spacing.max() / 2
    return spacing * np.where(grow, LOWRES_STEP, 1.0) if grow.any() else spacing * LOWRES_STEP


def _lowres(
    fp: Fingerprint,
    fullres: Configuration,
    forward: Sequence[int],
    *,
    n_classes: int,
    gpu_memory_gb: float,
    asked: bool = False,
) -> tuple[Configuration | None, str]:
    """A coarser 3D stage whose patch covers at least a quarter of the median image, or None;
    and the plan note that says why (each of the two rules can decide).

    With ``asked`` (``--add-lowres``), a stage is planned where the rules would plan none: its
    spacing grows until it has :data:`ADDED_LOWRES_REDUCTION` times fewer voxels than full
    resolution (see :func:`_added_lowres`); the note gives the rule's reason and the stage's.
    """
    full_voxels = float(np.prod(fullres.median_shape))
    coverage = float(np.prod(fullres.patch_size) / full_voxels)
    if coverage >= LOWRES_COVERAGE:
        why_not = (
            f"the full-resolution patch covers {min(coverage, 1):.0%} of "
            f"the median image (>= {LOWRES_COVERAGE:.0%})"
        )
        return _added_lowres(fp, fullres, forward, n_classes, gpu_memory_gb, why_not, asked)
    planned = functools.partial(
        plan_configuration,
        "3d_lowres",
        "3d",
        n_cases=len(fp.cases),
        n_classes=n_classes,
        gpu_memory_gb=gpu_memory_gb,
    )
    spacing = np.asarray(fullres.spacing, dtype=np.float64)
    for _ in range(_MAX_LOWRES_STEPS):
        spacing = _grow_spacing(spacing)
        shape = _median_shape(fp, spacing, forward)
        cfg = planned(spacing, shape)
        if np.prod(cfg.patch_size) / np.prod(shape) >= LOWRES_COVERAGE:
            break
    reduction = full_voxels / float(np.prod(cfg.median_shape))
    if reduction < LOWRES_MIN_REDUCTION:
        why_not = (
            f"the full-resolution patch covers only {coverage:.0%} of the "
            f"median image, but a stage coarse enough for its patch to cover "
            f"{LOWRES_COVERAGE:.0%} would have only {reduction:.2f}x fewer voxels "
            f"(< {LOWRES_MIN_REDUCTION:g}x): too close to full resolution to help"
        )
        return _added_lowres(fp, fullres, forward, n_classes, gpu_memory_gb, why_not, asked)
    return cfg, (
        f"3d_lowres + cascade: the full-resolution patch covers {coverage:.0%} of the "
        f"median image (< {LOWRES_COVERAGE:.0%}); the low-resolution stage has "
        f"{reduction:.1f}x fewer voxels"
    )


def _added_lowres(
    fp: Fingerprint,
    fullres: Configuration,
    forward: Sequence[int],
    n_classes: int,
    gpu_memory_gb: float,
    why_not: str,
    asked: bool,
) -> tuple[Configuration | None, str]:
    """The low-resolution stage ``--add-lowres`` asks for where the rules plan none (``why_not``).

    The spacing grows by the rule's steps (:func:`_grow_spacing`) until the median image has
    :data:`ADDED_LOWRES_REDUCTION` times fewer voxels than at full resolution, or until the
    planned network would have fewer than the :data:`MIN_STAGES` stages a U-Net needs (tiny
    images: the last spacing that still gives them is kept, if it has at least
    :data:`LOWRES_MIN_REDUCTION` times fewer voxels; else no stage). Without ``asked``: no stage,
    and the note says why.
    """
    if not asked:
        return None, f"no 3d_lowres: {why_not}"
    full_voxels = float(np.prod(fullres.median_shape))
    spacing = np.asarray(fullres.spacing, dtype=np.float64)
    cfg: Configuration | None = None
    for _ in range(_MAX_LOWRES_STEPS):
        grown = _grow_spacing(spacing)
        candidate = plan_configuration(
            "3d_lowres",
            "3d",
            grown,
            _median_shape(fp, grown, forward),
            n_cases=len(fp.cases),
            n_classes=n_classes,
            gpu_memory_gb=gpu_memory_gb,
        )
        if candidate.network.n_stages < MIN_STAGES:
            break
        spacing, cfg = grown, candidate
        if full_voxels / float(np.prod(cfg.median_shape)) >= ADDED_LOWRES_REDUCTION:
            break
    if cfg is None or full_voxels / float(np.prod(cfg.median_shape)) < LOWRES_MIN_REDUCTION:
        return None, (
            f"no 3d_lowres although asked for with --add-lowres: {why_not}, and a spacing "
            f"with {LOWRES_MIN_REDUCTION:g}x fewer voxels than {_fmt_spacing(fullres.spacing)} "
            f"leaves too small an image for a {MIN_STAGES}-stage U-Net"
        )
    reduction = full_voxels / float(np.prod(cfg.median_shape))
    return cfg, (
        f"3d_lowres + cascade asked for with --add-lowres (the rule plans none: {why_not}): "
        f"spacing {_fmt_spacing(cfg.spacing)} mm instead of {_fmt_spacing(fullres.spacing)}, "
        f"{reduction:.1f}x fewer voxels"
    )


def _fmt_spacing(spacing: Sequence[float]) -> str:
    return "x".join(f"{s:.3g}" for s in spacing)


def _normalization(fp: Fingerprint) -> tuple[Normalization, ...]:
    out = []
    for name, stats in zip(fp.channel_names, fp.foreground_intensity, strict=True):
        scheme, mask = rules.normalization_scheme(name, fp.median_relative_size_after_crop)
        if scheme == "ct":
            out.append(
                Normalization(
                    "ct",
                    False,
                    (stats.percentile_00_5, stats.percentile_99_5),
                    stats.mean,
                    max(stats.std, 1e-8),
                )
            )
        else:
            out.append(Normalization(scheme, mask))
    return tuple(out)


def make_plan(
    fp: Fingerprint, *, gpu_memory_gb: float = 8.0, add_2p5d: bool = False, add_lowres: bool = False
) -> Plan:
    """Plan every configuration for a fingerprinted dataset.

    Args:
        fp: the dataset's fingerprint.
        gpu_memory_gb: memory budget for patch and batch sizes.
        add_2p5d: offer ``2.5d`` even where the data is not thick-sliced.
        add_lowres: offer ``3d_lowres`` + ``3d_cascade_fullres`` even where the full-resolution
            patch covers enough of the image (see :func:`_added_lowres`).

    Returns:
        The plan; ``notes`` says which optional configurations were offered and why.
    """
    n_classes = LabelScheme.from_declared(fp.labels, fp.regions_class_order).n_outputs
    spacing_raw = rules.target_spacing(fp.spacings, fp.shapes_after_crop)
    forward, backward = rules.transpose_order(spacing_raw, np.median(fp.shapes_after_crop, axis=0))
    spacing = tuple(spacing_raw[a] for a in forward)
    median_spacing = tuple(float(v) for v in np.median(fp.spacings, axis=0)[list(forward)])
    median_shape_orig = tuple(int(v) for v in np.median(fp.shapes_after_crop, axis=0)[list(forward)])
    shape = _median_shape(fp, spacing, forward)
    n = len(fp.cases)
    notes: list[str] = []
    configs: dict[str, Configuration] = {}

    is_2d_data = shape[0] <= 1
    if not is_2d_data:
        full = plan_configuration(
            "3d_fullres", "3d", spacing, shape, n_cases=n, n_classes=n_classes, gpu_memory_gb=gpu_memory_gb
        )
        low, note = _lowres(
            fp, full, forward, n_classes=n_classes, gpu_memory_gb=gpu_memory_gb, asked=add_lowres
        )
        notes.append(note)
        if low is not None:
            full = _replace(full, batch_dice=True, previous_stage=None)
            configs["3d_fullres"] = full
            configs["3d_lowres"] = _replace(low, next_stage="3d_cascade_fullres")
            configs["3d_cascade_fullres"] = _replace(
                full, name="3d_cascade_fullres", previous_stage="3d_lowres"
            )
        else:
            configs["3d_fullres"] = full
    configs["2d"] = plan_configuration(
        "2d",
        "2d",
        spacing,
        shape,
        n_cases=n,
        n_classes=n_classes,
        gpu_memory_gb=gpu_memory_gb,
        batch_dice=True,
    )
    thick = rules.offers_2p5d(spacing)
    if not is_2d_data and (thick or add_2p5d):
        k = rules.slices_for_2p5d(spacing[0])
        configs["2.5d"] = plan_configuration(
            "2.5d",
            "2.5d",
            spacing,
            shape,
            n_cases=n,
            n_classes=n_classes,
            gpu_memory_gb=gpu_memory_gb,
            in_slices=k,
            batch_dice=True,
        )
        why = (
            f"slices are {spacing[0] / min(spacing[1:]):.1f}x thicker than the in-plane spacing"
            if thick
            else "asked for with --add-2.5d"
        )
        notes.append(f"2.5d offered with K={k} slices ({k * spacing[0]:g} mm): {why}")
    else:
        notes.append(
            f"no 2.5d: slice/in-plane spacing ratio "
            f"{spacing[0] / min(spacing[1:]):.1f} < {rules.ANISOTROPY_THRESHOLD:g}"
        )
    return Plan(
        dataset_name=fp.dataset_name,
        channel_names=tuple(fp.channel_names),
        labels=dict(fp.labels),
        regions_class_order=fp.regions_class_order,
        transpose_forward=forward,
        transpose_backward=backward,
        original_median_spacing=median_spacing,
        original_median_shape=median_shape_orig,
        normalization=_normalization(fp),
        gpu_memory_gb=float(gpu_memory_gb),
        configurations=configs,
        notes=tuple(notes),
    )


def _replace(cfg: Configuration, **changes: object) -> Configuration:
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
