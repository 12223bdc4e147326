"""The plan: a typed, versioned contract that every later stage reads and nothing else decides.

On disk it is ``plans.json`` (schema: ``plans/plan.schema.json`` in the repository). Loading is
strict: unknown or missing keys, or a different ``schema_version``, are errors, so that a stale or
hand-edited plan fails loudly instead of training the wrong network.

Versions: 4 (this one) adds residual-encoder networks (the ResEnc presets, see
:mod:`autoseg.planning.presets`): ``network.encoder``, ``network.blocks_per_stage`` and
``network.decoder_convs``, and a configuration's own ``gpu_memory_gb`` where it was planned for
another GPU than the plan's. 3 had plain U-Nets only and is read as 4 (``"plain"``, null, 2,
null). 3 added regions: ``labels`` values may be lists of values, with ``regions_class_order``
(see :mod:`autoseg.labels`). 2 had integer labels only and is read as 3
(``regions_class_order`` null). 1 also had ``planner`` (always ``"autoseg"``), ``extra`` (always ``{}``)
and ``network.n_conv_per_stage`` (always 2), which nothing read. Version-1 files (on disk and
inside trained model folders) are migrated when loaded: those keys are dropped once checked to
hold the only value they could.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from autoseg._atomic import write_json_atomic
from autoseg._contract import digest, load, parse, to_json
from autoseg.errors import PlanError
from autoseg.labels import LabelScheme, LabelSchemeError
from autoseg.planning.kinds import ConfigKind, kind_of

PLAN_VERSION = 4
_FIX = "run `autoseg plan` again"
#: Version-1 keys dropped in version 2, with the only value each could hold.
_V1_PLAN_KEYS = {"planner": "autoseg", "extra": {}}
_V1_NETWORK_KEYS = {"n_conv_per_stage": 2}
#: Network keys added in version 4, with the value that describes every version-3 network.
_V4_NETWORK_KEYS = {"encoder": "plain", "blocks_per_stage": None, "decoder_convs": 2}
#: Convolutions per decoder stage of the plain U-Net (nnU-Net's ``PlainConvUNet``).
PLAIN_DECODER_CONVS = 2


@dataclass(frozen=True)
class Normalization:
    """How one input channel is normalised.

    Attributes:
        scheme: ``"ct"`` (clip to ``clip`` then ``(x - mean) / std`` with dataset statistics),
            ``"zscore"`` (per image), or ``"none"``.
        use_nonzero_mask: z-score statistics from the nonzero region only; outside stays 0.
        clip: ``(low, high)`` for CT, else None.
        mean: dataset foreground mean for CT, else None.
        std: dataset foreground std for CT, else None.
    """

    scheme: Literal["ct", "zscore", "none"]
    use_nonzero_mask: bool
    clip: tuple[float, float] | None = None
    mean: float | None = None
    std: float | None = None


Encoder = Literal["plain", "residual"]


@dataclass(frozen=True)
class Network:
    """The U-Net's shape (MONAI ``DynUNet``-compatible: per-stage kernels and strides).

    Attributes:
        n_stages: resolution stages, the bottleneck included.
        features_per_stage: channels per stage.
        kernel_sizes: per stage, one kernel size per spatial axis.
        strides: per stage, one stride per axis (the first stage's are all 1).
        deep_supervision: a logits head per decoder resolution in training.
        encoder: ``"plain"``: one block of two (conv, norm, leaky ReLU) per encoder stage
            (nnU-Net's ``PlainConvUNet``); ``"residual"``: ``blocks_per_stage[i]`` residual
            blocks at stage ``i`` after a one-conv stem (nnU-Net's ``ResidualEncoderUNet``).
        blocks_per_stage: residual blocks per encoder stage; None for the plain encoder.
        decoder_convs: (conv, norm, leaky ReLU) per decoder stage: 2 plain, 1 for ResEnc (its
            capacity is in the encoder).
    """

    n_stages: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    deep_supervision: bool = True
    encoder: Encoder = "plain"
    blocks_per_stage: tuple[int, ...] | None = None
    decoder_convs: int = PLAIN_DECODER_CONVS


@dataclass(frozen=True)
class Resampling:
    """Interpolation orders to and from the configuration's spacing.

    The coarsest axis is resampled on its own with ``z_order`` when the anisotropy (coarsest /
    finest spacing, of the source or the target) exceeds ``separate_z_anisotropy``: smooth
    interpolation across thick slices invents structure that is not there.
    """

    data_order: int = 3
    seg_order: int = 1
    probabilities_order: int = 1
    z_order: int = 0
    separate_z_anisotropy: float = 3.0


@dataclass(frozen=True)
class Configuration:
    """One trainable configuration (``2d``, ``2.5d``, ``3d_fullres``, ``3d_lowres``).

    Attributes:
        kind: ``"3d"``: 3D patches; ``"2d"``: single slices across axis 0 (the coarsest, after
            transpose); ``"2.5d"``: a 2D network fed ``in_slices`` adjacent slices as channels.
        spacing: target spacing in mm, 3 values, transposed order.
        median_shape: median image shape at that spacing (after crop), 3 values.
        patch_size: network input, 3 values for 3D, 2 for 2D/2.5D.
        batch_size: samples per step.
        in_slices: K for 2.5D, else 1.
        batch_dice: Dice computed over the whole batch (True) or per sample.
        estimated_feature_elements: the memory estimate of one sample (see planning.rules).
        previous_stage: for a cascade stage, the configuration whose prediction it takes.
        next_stage: the cascade stage that takes this one's prediction.
        gpu_memory_gb: the memory budget patch and batch were planned for, where it is not the
            plan's :attr:`Plan.gpu_memory_gb` (a preset's own GPU: ResEnc L plans for 24 GB
            unless ``--gpu-memory`` is given); None: the plan's.
    """

    name: str
    kind: ConfigKind
    spacing: tuple[float, ...]
    median_shape: tuple[int, ...]
    patch_size: tuple[int, ...]
    batch_size: int
    in_slices: int
    network: Network
    resampling: Resampling
    batch_dice: bool
    estimated_feature_elements: int
    previous_stage: str | None = None
    next_stage: str | None = None
    gpu_memory_gb: float | None = None


@dataclass(frozen=True)
class Plan:
    """Everything preprocessing, training and prediction need, decided once from the fingerprint.

    Attributes:
        dataset_name: the dataset folder's name.
        channel_names: input channel names, in order.
        labels: as declared by the dataset: name -> value, or -> list of values for regions;
            a label named ``ignore`` marks unannotated voxels. What they mean for every stage:
            :attr:`label_scheme`.
        regions_class_order: with regions, the value painted for each region.
        transpose_forward: axis order applied after reading (coarsest axis first).
        transpose_backward: its inverse, applied before writing.
        original_median_spacing: median spacing of the data (transposed order).
        original_median_shape: median shape after crop (transposed order).
        normalization: one per channel.
        gpu_memory_gb: the memory budget the patch and batch sizes were planned for (except in a
            configuration with its own, see :attr:`Configuration.gpu_memory_gb`).
        configurations: by name.
        notes: why configurations were offered or left out, for people.
    """

    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int | tuple[int, ...]]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    original_median_spacing: tuple[float, ...]
    original_median_shape: tuple[int, ...]
    normalization: tuple[Normalization, ...]
    gpu_memory_gb: float
    configurations: dict[str, Configuration]
    notes: tuple[str, ...] = ()
    regions_class_order: tuple[int, ...] | None = None
    schema_version: int = PLAN_VERSION

    @cached_property
    def label_scheme(self) -> LabelScheme:
        """What the labels mean: outputs, activation, stored values, ignore (one table).

        Raises:
            PlanError: the labels cannot be used (a hand-edited plan).
        """
        try:
            return LabelScheme.from_declared(self.labels, self.regions_class_order)
        except LabelSchemeError as e:
            msg = f"plan.labels: {e}; {_FIX}"
            raise PlanError(msg) from e

    @property
    def label_values(self) -> tuple[int, ...]:
        """Label values per output channel (labels) or painted per region (regions)."""
        return self.label_scheme.output_values

    @property
    def num_classes(self) -> int:
        """Network output channels: labels with background, or regions."""
        return self.label_scheme.n_outputs

    def previous_stage_channels(self, config: Configuration) -> int:
        """Network input channels that carry the previous stage's prediction (0 without one).

        A cascade stage (``previous_stage`` set) sees, besides the image, the previous stage's
        label map one-hot encoded: one channel per foreground label, or per region (never the
        background, never the ignore label), in :attr:`LabelScheme.entries` order. This is the
        one place that decides the count; :meth:`network_input_channels` adds it up.
        """
        return len(self.label_scheme.entries) if config.previous_stage is not None else 0

    def network_input_channels(self, config: Configuration) -> int:
        """Channels of the network input of ``config``: the image channels (times ``in_slices``
        where the kind stacks slices) plus :meth:`previous_stage_channels`: one image channel
        and labels 1, 2 give 1 for ``3d_fullres`` and 3 for ``3d_cascade_fullres``.
        """
        return kind_of(config.kind).input_channels(
            len(self.channel_names), config.in_slices, self.previous_stage_channels(config)
        )

    def configuration(self, name: str) -> Configuration:
        """The named configuration.

        Raises:
            PlanError: the plan has no such configuration (the message lists those it has).
        """
        if name not in self.configurations:
            msg = (
                f"configuration {name!r} is not in the plan of {self.dataset_name}; "
                f"the plan has: {', '.join(self.configurations)}"
            )
            raise PlanError(msg)
        return self.configurations[name]

    def configuration_hash(self, name: str) -> str:
        """A short hash of everything a network trained for configuration ``name`` takes in and
        puts out.

        The network, patch, kind, slices, spacing and resampling of the configuration, and what
        the plan decides for every configuration: channels, labels, transpose and normalisation;
        for a cascade stage also the hash of its previous stage (its inputs include that stage's
        predictions, so a cascade trained on another first stage does not fit). Stored in
        checkpoints, so that a checkpoint is never continued or used for prediction
        under another plan. Left out because the weights stay valid without them: the batch
        size and batch Dice (how training ran), the medians and memory estimate, the link to a
        next stage, notes and the GPU budget. A re-plan with another budget that changes only the
        batch size keeps the trained folds usable.
        """
        config = self.configuration(name)
        net = config.network
        # Hashed in the version-3 form, so that checkpoints of plain networks keep their hash;
        # what version 4 added is hashed on top, for residual encoders only (below).
        plain_shape = _NetworkShape(
            net.n_stages, net.features_per_stage, net.kernel_sizes, net.strides, net.deep_supervision
        )
        part = _Identity(
            self.channel_names,
            self.labels,
            self.transpose_forward,
            self.normalization,
            config.kind,
            config.spacing,
            config.patch_size,
            config.in_slices,
            plain_shape,
            config.resampling,
        )
        identity = digest(_Identity, part)
        if (
            net.encoder != "plain"
            or net.blocks_per_stage is not None
            or net.decoder_convs != PLAIN_DECODER_CONVS
        ):
            extra = (net.encoder, net.blocks_per_stage or (), net.decoder_convs)
            identity = digest(tuple[str, str, tuple[int, ...], int], (identity, *extra))
        if self.regions_class_order is not None:  # without: as before regions, old checkpoints match
            identity = digest(tuple[str, tuple[int, ...]], (identity, self.regions_class_order))
        if config.previous_stage is not None:
            previous = self.configuration_hash(config.previous_stage)
            identity = digest(tuple[str, str], (identity, previous))
        return identity

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return to_json(self)

    def save(self, path: Path) -> None:
        """Write ``plans.json`` atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Strict inverse of :meth:`to_dict`; a version-1 plan is migrated first.

        Raises:
            PlanError: wrong version, unknown or missing keys, or wrongly typed values.
        """
        if isinstance(d, dict) and type(d.get("schema_version")) is int and d["schema_version"] == 1:
            d = _migrate_v1(d)
        if isinstance(d, dict) and type(d.get("schema_version")) is int and d["schema_version"] == 2:
            d = {**d, "regions_class_order": None, "schema_version": 3}
        if isinstance(d, dict) and type(d.get("schema_version")) is int and d["schema_version"] == 3:
            d = _migrate_v3(d)
        return parse(cls, d, name="plan", version=PLAN_VERSION, error=PlanError, fix=_FIX)

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Read and check ``plans.json``; every error names the file."""
        return load(
            path,
            cls.from_dict,
            error=PlanError,
            fix=_FIX,
            missing="no plan here; run `autoseg plan DATASET` first",
        )


@dataclass(frozen=True)
class _Identity:
    """What :meth:`Plan.configuration_hash` hashes."""

    channel_names: tuple[str, ...]
    labels: dict[str, int | tuple[int, ...]]
    transpose_forward: tuple[int, ...]
    normalization: tuple[Normalization, ...]
    kind: ConfigKind
    spacing: tuple[float, ...]
    patch_size: tuple[int, ...]
    in_slices: int
    network: _NetworkShape
    resampling: Resampling


@dataclass(frozen=True)
class _NetworkShape:
    """The version-3 :class:`Network` fields, as :meth:`Plan.configuration_hash` hashes them."""

    n_stages: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    deep_supervision: bool


def _migrate_v3(d: dict[str, Any]) -> dict[str, Any]:
    """A version-3 plan as version 4: plain networks, every configuration planned for the
    plan's GPU.

    Raises:
        PlanError: a configuration already has a key that version 4 added (an edited file).
    """
    d = copy.deepcopy(d)
    configurations = d.get("configurations")
    if isinstance(configurations, dict):
        for name, config in configurations.items():
            if not isinstance(config, dict):
                continue
            _add(config, {"gpu_memory_gb": None}, f"plan.configurations.{name}")
            if isinstance(config.get("network"), dict):
                _add(config["network"], _V4_NETWORK_KEYS, f"plan.configurations.{name}.network")
    d["schema_version"] = PLAN_VERSION
    return d


def _add(d: dict[str, Any], keys: dict[str, Any], where: str) -> None:
    for key, value in keys.items():
        if key in d:
            msg = f"{where}: unknown key(s) {[key]} (schema_version 3 has no {key!r}); {_FIX}"
            raise PlanError(msg)
        d[key] = value


def _migrate_v1(d: dict[str, Any]) -> dict[str, Any]:
    """A version-1 plan as version 2: drop the keys that could hold one value only.

    Raises:
        PlanError: one of them is missing or holds another value (the file was edited).
    """
    d = copy.deepcopy(d)
    _drop(d, _V1_PLAN_KEYS, "plan")
    configurations = d.get("configurations")
    if isinstance(configurations, dict):
        for name, config in configurations.items():
            if isinstance(config, dict) and isinstance(config.get("network"), dict):
                _drop(config["network"], _V1_NETWORK_KEYS, f"plan.configurations.{name}.network")
    d["schema_version"] = 2
    return d


def _drop(d: dict[str, Any], keys: dict[str, Any], where: str) -> None:
    for key, only in keys.items():
        if key not in d:
            msg = f"{where}: missing key(s) {[key]} (schema_version 1); {_FIX}"
            raise PlanError(msg)
        value = d.pop(key)
        if value != only or type(value) is not type(only):
            msg = (
                f"{where}.{key}: {value!r}, but autoseg only ever wrote {only!r} there "
                f"(schema_version 1, the key is gone in 2); {_FIX}"
            )
            raise PlanError(msg)
