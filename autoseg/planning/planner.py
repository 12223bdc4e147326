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
from collections.abc import Callable, Sequence

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
from autoseg.planning.presets import PRESETS, Preset

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


#: One sample's feature-map elements for a topology and its features (plain or residual).
Estimate = Callable[[rules.Topology, tuple[int, ...]], int]


def _plan_patch(
    spacing: Sequence[float],
    median_shape: Sequence[float],
    *,
    estimate: Estimate,
    limit: float,
    cap: int,
    edge_voxels: int,
) -> tuple[rules.Topology, tuple[int, ...], int]:
    """Largest topology/patch whose one-sample ``estimate`` is at most ``limit``: returns
    (topology, features, estimate)."""
    patch = list(rules.initial_patch_size(spacing, median_shape, edge_voxels=edge_voxels))
    # Plan again on the padded patch: padding can make room for one more downsampling step.
    topo = rules.topology(spacing, rules.topology(spacing, patch).patch_size)
    feats = rules.features_per_stage(topo.n_stages, cap=cap)
    est = estimate(topo, feats)
    while est > limit:
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
        est = estimate(topo, feats)
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
    preset: Preset | None = None,
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
        preset: plan a residual-encoder U-Net by the preset's rules (its memory reference and
            GPU, patch sized for the reference batch, its batch cap); None: the plain U-Net.
            A preset configuration records ``gpu_memory_gb`` as its own.
    """
    spec = kind_of(kind)
    plan_sp = spec.planned_axes(spacing)
    plan_shape = spec.planned_axes(median_shape)
    estimate: Estimate
    if preset is None:
        reference, reference_gb, patch_batch = spec.reference, 8.0, rules.MIN_BATCH
        max_fraction = rules.MAX_DATASET_FRACTION_PER_BATCH

        def estimate(topo: rules.Topology, feats: tuple[int, ...]) -> int:
            return rules.feature_map_elements(topo, feats, n_classes=n_classes)

    else:
        reference = preset.reference(spec)
        reference_gb, patch_batch = preset.gpu_memory_gb, reference[1]
        max_fraction = preset.max_dataset_fraction
        the_preset = preset

        def estimate(topo: rules.Topology, feats: tuple[int, ...]) -> int:
            blocks = the_preset.blocks_per_stage(topo.n_stages)
            return rules.residual_feature_map_elements(
                topo, feats, blocks, n_classes=n_classes, decoder_convs=the_preset.decoder_convs
            )

    budget = rules.memory_budget(
        reference, reference_gb=reference_gb, gpu_memory_gb=gpu_memory_gb, patch_batch=patch_batch
    )
    topo, feats, est = _plan_patch(
        plan_sp,
        plan_shape,
        estimate=estimate,
        limit=budget.patch_limit,
        cap=spec.max_features,
        edge_voxels=spec.edge_voxels,
    )
    bs = rules.batch_size(
        est,
        budget=budget.batch_budget,
        patch_voxels=int(np.prod(topo.patch_size)),
        dataset_voxels=float(np.prod(median_shape)) * n_cases,
        max_fraction=max_fraction,
    )
    network = Network(
        n_stages=topo.n_stages,
        features_per_stage=feats,
        kernel_sizes=topo.kernel_sizes,
        strides=topo.strides,
    )
    if preset is not None:
        network = dataclasses.replace(
            network,
            encoder="residual",
            blocks_per_stage=preset.blocks_per_stage(topo.n_stages),
            decoder_convs=preset.decoder_convs,
        )
    return Configuration(
        name=name,
        kind=kind,
        spacing=tuple(float(s) for s in spacing),
        median_shape=tuple(int(s) for s in median_shape),
        patch_size=topo.patch_size,
        batch_size=bs,
        in_slices=in_slices,
        network=network,
        resampling=Resampling(),
        batch_dice=batch_dice,
        estimated_feature_elements=est,
        gpu_memory_gb=None if preset is None else float(gpu_memory_gb),
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
    fp: Fingerprint,
    *,
    gpu_memory_gb: float = 8.0,
    add_2p5d: bool = False,
    add_lowres: bool = False,
    presets: Sequence[str] = (),
    preset_gpu_memory_gb: float | None = None,
) -> Plan:
    """Plan every configuration for a fingerprinted dataset.

    Args:
        fp: the dataset's fingerprint.
        gpu_memory_gb: memory budget for patch and batch sizes.
        add_2p5d: offer ``2.5d`` even where the data is not thick-sliced.
        add_lowres: offer ``3d_lowres`` + ``3d_cascade_fullres`` even where the full-resolution
            patch covers enough of the image (see :func:`_added_lowres`).
        presets: names in :data:`~autoseg.planning.presets.PRESETS`; each adds a configuration
            (see :func:`_preset_configuration`). The others are planned as without. Presets
            marked ``planned_by_default`` (``resenc``) are added for 3D data in any case.
        preset_gpu_memory_gb: the memory-sized presets' budget; None: each preset's own GPU
            (ResEnc M 8 GB, L 24 GB, XL 40 GB), as nnU-Net's preset planners default to. A
            preset ``sized_like_base`` uses ``gpu_memory_gb``, as its base does.

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
    by_default = () if is_2d_data else tuple(n for n, p in PRESETS.items() if p.planned_by_default)
    for name in dict.fromkeys((*by_default, *presets)):
        preset = PRESETS[name]
        if preset.sized_like_base:
            preset_gpu = gpu_memory_gb
        else:
            preset_gpu = preset.gpu_memory_gb if preset_gpu_memory_gb is None else preset_gpu_memory_gb
        cfg, note = _preset_configuration(
            preset,
            configs["2d" if is_2d_data else "3d_fullres"],
            n_cases=n,
            n_classes=n_classes,
            gpu_memory_gb=preset_gpu,
        )
        configs[cfg.name] = cfg
        notes.append(note)
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


def _preset_configuration(
    preset: Preset, base: Configuration, *, n_cases: int, n_classes: int, gpu_memory_gb: float
) -> tuple[Configuration, str]:
    """The configuration a preset adds next to ``base``, and the plan note that says how.

    The base is ``3d_fullres``, or ``2d`` for 2D data (a single slice per case): the presets
    target the configuration that usually wins. For 3D data the 2D twin is left out: nnU-Net's
    evaluation of the presets is of 3D networks only, and each added configuration costs five
    more trainings for cross-validation. The preset keeps the base's spacing, batch Dice and
    resampling, so it reuses the base's preprocessed data.
    """
    if preset.sized_like_base:
        return _base_sized_configuration(
            preset, base, n_cases=n_cases, n_classes=n_classes, gpu_memory_gb=gpu_memory_gb
        )
    cfg = plan_configuration(
        preset.configuration_name(base.name),
        base.kind,
        base.spacing,
        base.median_shape,
        n_cases=n_cases,
        n_classes=n_classes,
        gpu_memory_gb=gpu_memory_gb,
        in_slices=base.in_slices,
        batch_dice=base.batch_dice,
        preset=preset,
    )
    reference, ref_batch = preset.reference(kind_of(base.kind))
    note = (
        f"{cfg.name}: preset {preset.title} (residual encoder, blocks "
        f"{','.join(map(str, cfg.network.blocks_per_stage or ()))}, {preset.decoder_convs} decoder "
        f"conv per stage), sized against {reference:.3g} feature-map elements at batch {ref_batch} "
        f"for {preset.gpu_memory_gb:g} GB, planned for {gpu_memory_gb:g} GB; a batch may cover "
        f"{preset.max_dataset_fraction:.0%} of the dataset (not "
        f"{rules.MAX_DATASET_FRACTION_PER_BATCH:.0%}); trains on {base.name}'s preprocessed data"
    )
    return cfg, note


def _base_sized_configuration(
    preset: Preset, base: Configuration, *, n_cases: int, n_classes: int, gpu_memory_gb: float
) -> tuple[Configuration, str]:
    """A preset that keeps ``base``'s patch, topology and batch and swaps in the residual
    encoder: what the budget curve measured against the plain U-Net (same data per step, so
    the comparison is of networks alone). The batch is ``base``'s unless the residual network's
    estimate at the preset's memory reference, scaled to ``gpu_memory_gb``, holds fewer."""
    spec = kind_of(base.kind)
    topo = rules.Topology(base.patch_size, base.network.kernel_sizes, base.network.strides)
    blocks = preset.blocks_per_stage(base.network.n_stages)
    est = rules.residual_feature_map_elements(
        topo, base.network.features_per_stage, blocks, n_classes=n_classes, decoder_convs=preset.decoder_convs
    )
    reference = preset.reference(spec)
    budget = rules.memory_budget(
        reference, reference_gb=preset.gpu_memory_gb, gpu_memory_gb=gpu_memory_gb, patch_batch=reference[1]
    )
    fits = rules.batch_size(
        est,
        budget=budget.batch_budget,
        patch_voxels=int(np.prod(base.patch_size)),
        dataset_voxels=float(np.prod(base.median_shape)) * n_cases,
        max_fraction=preset.max_dataset_fraction,
    )
    network = dataclasses.replace(
        base.network, encoder="residual", blocks_per_stage=blocks, decoder_convs=preset.decoder_convs
    )
    cfg = _replace(
        base,
        name=preset.configuration_name(base.name),
        network=network,
        batch_size=min(base.batch_size, fits),
        estimated_feature_elements=est,
        previous_stage=None,
        next_stage=None,
    )
    batch = f"batch {cfg.batch_size}"
    if cfg.batch_size != base.batch_size:
        batch += f", not {base.batch_size}: the residual network holds fewer"
    over = est / budget.patch_limit
    fit = ""
    if over > 1:
        fit = f" (its estimate is {over - 1:.0%} above the memory reference for the smallest batch)"
    note = (
        f"{cfg.name}: preset {preset.title} (residual encoder, blocks {','.join(map(str, blocks))}, "
        f"{preset.decoder_convs} decoder conv per stage) at {base.name}'s patch, {batch}{fit}; "
        "planned by default for 3D data: at 1440 iterations on hippocampus it beat the plain U-Net "
        "beyond the seed spread (benchmarks/results/budget_curve.md); trains on "
        f"{base.name}'s preprocessed data"
    )
    return cfg, note


def _replace(cfg: Configuration, **changes: object) -> Configuration:
    return dataclasses.replace(cfg, **changes)  # type: ignore[arg-type]
