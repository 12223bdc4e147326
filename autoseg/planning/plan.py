"""The plan: a typed, versioned contract that every later stage reads and nothing else decides.

On disk it is ``plans.json`` (schema: ``plans/plan.schema.json`` in the repository). Loading is
strict: unknown or missing keys, or a different ``schema_version``, are errors, so that a stale or
hand-edited plan fails loudly instead of training the wrong network.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from autoseg.errors import PlanError
from autoseg.planning.kinds import ConfigKind

PLAN_VERSION = 1


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


@dataclass(frozen=True)
class Network:
    """The U-Net's shape (MONAI ``DynUNet``-compatible: per-stage kernels and strides)."""

    n_stages: int
    features_per_stage: tuple[int, ...]
    kernel_sizes: tuple[tuple[int, ...], ...]
    strides: tuple[tuple[int, ...], ...]
    n_conv_per_stage: int = 2
    deep_supervision: bool = True


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


@dataclass(frozen=True)
class Plan:
    """Everything preprocessing, training and prediction need, decided once from the fingerprint.

    Attributes:
        dataset_name: the dataset folder's name.
        channel_names: input channel names, in order.
        labels: label name -> value; class index i of the network is the i-th value in order.
        transpose_forward: axis order applied after reading (coarsest axis first).
        transpose_backward: its inverse, applied before writing.
        original_median_spacing: median spacing of the data (transposed order).
        original_median_shape: median shape after crop (transposed order).
        normalization: one per channel.
        gpu_memory_gb: the memory budget the patch and batch sizes were planned for.
        configurations: by name.
        notes: why configurations were offered or left out, for people.
    """

    dataset_name: str
    channel_names: tuple[str, ...]
    labels: dict[str, int]
    transpose_forward: tuple[int, ...]
    transpose_backward: tuple[int, ...]
    original_median_spacing: tuple[float, ...]
    original_median_shape: tuple[int, ...]
    normalization: tuple[Normalization, ...]
    gpu_memory_gb: float
    configurations: dict[str, Configuration]
    notes: tuple[str, ...] = ()
    planner: str = "autoseg"
    schema_version: int = PLAN_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def label_values(self) -> tuple[int, ...]:
        """Label values in class-index order (background first)."""
        return tuple(sorted(self.labels.values()))

    @property
    def num_classes(self) -> int:
        """Network output channels (background included)."""
        return len(self.labels)

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (tuples become lists)."""
        return _lists(dataclasses.asdict(self))

    def save(self, path: Path) -> None:
        """Write ``plans.json`` atomically."""
        from autoseg.workspace import write_json_atomic

        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            PlanError: wrong version, unknown or missing keys, or wrongly typed values.
        """
        if not isinstance(d, dict) or d.get("schema_version") != PLAN_VERSION:
            found = d.get("schema_version") if isinstance(d, dict) else None
            msg = (
                f"plan schema_version is {found!r}, this autoseg reads {PLAN_VERSION}; "
                "run `autoseg plan` again"
            )
            raise PlanError(msg)
        return _build(cls, d, "plan")

    @classmethod
    def load(cls, path: Path) -> Plan:
        """Read and check ``plans.json``."""
        path = Path(path)
        if not path.is_file():
            msg = f"{path}: no plan here; run `autoseg plan DATASET` first"
            raise PlanError(msg)
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            msg = f"{path}: invalid JSON ({e}); run `autoseg plan` again"
            raise PlanError(msg) from e
        try:
            return cls.from_dict(data)
        except PlanError as e:
            msg = f"{path}: {e}"
            raise PlanError(msg) from e


def _lists(value: Any) -> Any:
    """``value`` with every tuple turned into a list, as JSON would give it back."""
    if isinstance(value, dict):
        return {k: _lists(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_lists(v) for v in value]
    return value


def _build(tp: Any, value: Any, where: str) -> Any:
    """Turn JSON ``value`` into type ``tp`` (dataclass, tuple, dict, Literal, Optional, scalar)."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise PlanError(f"{where}: expected an object")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        if unknown := set(value) - names:
            raise PlanError(f"{where}: unknown key(s) {sorted(unknown)}")
        # Every key, defaulted ones too: a plan missing one was hand-edited or is stale.
        if missing := names - set(value):
            raise PlanError(f"{where}: missing key(s) {sorted(missing)}")
        return tp(**{k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        return _build(inner[0], value, where)
    if origin is Literal:
        if value not in args:
            raise PlanError(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise PlanError(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise PlanError(f"{where}: expected {len(args)} values")
        return tuple(_build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise PlanError(f"{where}: expected an object")
        return {k: _build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise PlanError(f"{where}: expected {getattr(tp, '__name__', tp)}, found {value!r}")
