"""What a dataset's labels mean, in one table: plain labels or regions, and an ignore label.

A dataset declares its labels in ``dataset.json`` (nnU-Net v2 conventions):

* **Plain labels** ``{"background": 0, "anterior": 1, "posterior": 2}``: the labels are disjoint;
  the network has one output per label (background included) with a softmax, and a voxel gets
  the label of the largest output.
* **Regions** ``{"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3],
  "enhancing": 3}`` with ``"regions_class_order": [1, 2, 3]``: any entry mapping to a list makes
  every foreground entry a region (a set of label values; regions may overlap). The network has
  one output per region with a sigmoid; a voxel is in a region when its probability exceeds 0.5,
  and the label map is painted region by region in declared order, region ``i`` with value
  ``regions_class_order[i]`` (later regions overwrite earlier ones, so list them from the
  largest to the innermost).
* **Ignore** ``{"ignore": 4}`` (the highest value, as nnU-Net requires): voxels without
  annotation. They take no part in the loss, in oversampling or in any metric, and are never
  predicted.

Every stage asks a :class:`LabelScheme` instead of branching on these cases: preprocessing stores
label maps as indices into :attr:`LabelScheme.stored_values`, training takes its targets and
mask from :meth:`LabelScheme.training_target`, prediction turns outputs into label values with
:meth:`LabelScheme.to_label_map`, and evaluation scores :meth:`LabelScheme.masks` per entry.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Literal

import numpy as np
import torch

__all__ = ["IGNORE_NAME", "LabelEntry", "LabelScheme", "LabelSchemeError", "entry_mask"]

#: The name that marks the ignore label (compared case-insensitively, as nnU-Net does).
IGNORE_NAME = "ignore"


class LabelSchemeError(ValueError):
    """The declared labels cannot be used; ``problems`` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = tuple(problems)


@dataclass(frozen=True)
class LabelEntry:
    """One foreground label (one value) or region (one or more values), as declared."""

    name: str
    values: tuple[int, ...]


@dataclass(frozen=True)
class LabelScheme:
    """The labels of a dataset: see the module docstring.

    Attributes:
        background: the name of value 0.
        entries: foreground labels by value, or regions in declared order (neither background
            nor ignore).
        regions: True when the entries are (sigmoid) regions, False for (softmax) labels.
        regions_class_order: with regions, the value painted for each region, in entry order.
        ignore: the ignore label's value, or None.
    """

    background: str
    entries: tuple[LabelEntry, ...]
    regions: bool = False
    regions_class_order: tuple[int, ...] | None = None
    ignore: int | None = None

    # --- building ------------------------------------------------------------------------

    @classmethod
    def from_declared(
        cls, labels: Mapping[str, object], regions_class_order: Sequence[object] | None = None
    ) -> LabelScheme:
        """The scheme of a dataset.json ``labels`` object (name -> int or list of ints).

        Raises:
            LabelSchemeError: listing every problem (no background 0, non-integer or negative
                values, an ignore label that is not the highest value or that is a list, two
                labels with one value, regions without a matching ``regions_class_order``...).
        """
        problems: list[str] = []
        background, ignore = None, None
        parsed: list[LabelEntry] = []
        regions = any(isinstance(v, list | tuple) for v in labels.values())
        for name, raw in labels.items():
            values = _int_values(name, raw, problems)
            if values is None:
                continue
            if name.lower() == IGNORE_NAME:
                if isinstance(raw, list | tuple):
                    problems.append(f"label {name!r} must be one integer, not a list")
                else:
                    ignore = values[0]
                continue
            if values == (0,):
                background = name
                continue
            if 0 in values:
                problems.append(f"label {name!r} holds 0, the background; leave 0 out of it")
                continue
            if not regions and len(values) != 1:  # pragma: no cover - regions is set by any list
                problems.append(f"label {name!r} must be one integer")
            parsed.append(LabelEntry(str(name), values))
        if background is None:
            problems.append("no label has value 0; declare the background as 0")
        if not parsed and not problems:
            problems.append("no foreground label; declare at least one besides the background")
        if not regions:
            seen = [e.values[0] for e in parsed] + ([ignore] if ignore is not None else [])
            if len(set(seen)) != len(seen):
                problems.append("two label names share one value; each value needs one name")
        all_values = {v for e in parsed for v in e.values}
        if ignore is not None and all_values and ignore <= max(all_values):
            problems.append(
                f"the ignore label ({ignore}) must be the highest value (nnU-Net's rule); "
                f"give it a value above {max(all_values)}"
            )
        if ignore is not None and ignore in all_values:
            problems.append(f"the ignore label's value {ignore} is also a label or region value")
        order: tuple[int, ...] | None = None
        if regions:
            order = _region_order(regions_class_order, parsed, problems)
            if order is not None and ignore is not None and ignore in order:
                problems.append(
                    f"'regions_class_order' paints the ignore label's value {ignore}; the ignore "
                    "label is never predicted, paint another value"
                )
        elif regions_class_order is not None:
            problems.append("'regions_class_order' is given but no label maps to a list (regions)")
        if problems:
            raise LabelSchemeError(problems)
        assert background is not None
        if not regions:  # output channel i is the i-th value: stored index == channel
            parsed.sort(key=lambda e: e.values[0])
        return cls(background, tuple(parsed), regions, order, ignore)

    def declared(self) -> dict[str, int | list[int]]:
        """The ``labels`` object this scheme came from (regions as lists): what a plan stores."""
        out: dict[str, int | list[int]] = {self.background: 0}
        for e in self.entries:
            out[e.name] = list(e.values) if self.regions else e.values[0]
        if self.ignore is not None:
            out[IGNORE_NAME] = self.ignore
        return out

    # --- what the network outputs --------------------------------------------------------

    @property
    def activation(self) -> Literal["softmax", "sigmoid"]:
        """How outputs become probabilities."""
        return "sigmoid" if self.regions else "softmax"

    @property
    def n_outputs(self) -> int:
        """Network output channels: one per label with background, or one per region."""
        return len(self.entries) + (0 if self.regions else 1)

    @property
    def output_names(self) -> tuple[str, ...]:
        """A name per output channel."""
        names = tuple(e.name for e in self.entries)
        return names if self.regions else (self.background, *names)

    @property
    def output_values(self) -> tuple[int, ...]:
        """Label values: per output channel for labels, the painted value per region for regions."""
        if self.regions:
            assert self.regions_class_order is not None
            return self.regions_class_order
        return (0, *(e.values[0] for e in self.entries))

    @property
    def output_members(self) -> tuple[tuple[int, ...], ...]:
        """The label values each output channel stands for: one per label (background's 0
        first), a region's values per region."""
        if self.regions:
            return tuple(e.values for e in self.entries)
        return tuple((v,) for v in self.output_values)

    # --- what a label map holds ----------------------------------------------------------

    @cached_property
    def stored_values(self) -> tuple[int, ...]:
        """Every value a reference label map may hold, sorted; preprocessing stores index ``i``
        for value ``stored_values[i]`` (for plain labels without ignore: the output channel)."""
        values = {0, *(v for e in self.entries for v in e.values)}
        values |= set(self.regions_class_order or ())
        if self.ignore is not None:
            values.add(self.ignore)
        return tuple(sorted(values))

    @property
    def ignore_index(self) -> int | None:
        """The stored index of the ignore label (the last one), or None."""
        return None if self.ignore is None else len(self.stored_values) - 1

    def index_lut(self) -> np.ndarray:
        """Value -> stored index, for values up to the largest (undeclared values map to 0)."""
        lut = np.zeros(max(self.stored_values) + 1, dtype=np.int16)
        for i, v in enumerate(self.stored_values):
            lut[v] = i
        return lut

    @cached_property
    def _region_table(self) -> np.ndarray:
        """``(n_entries, n_stored)`` bool: stored index ``j`` belongs to entry ``i``."""
        table = np.zeros((len(self.entries), len(self.stored_values)), dtype=bool)
        for i, e in enumerate(self.entries):
            for v in e.values:
                table[i, self.stored_values.index(v)] = True
        return table

    # --- stages --------------------------------------------------------------------------

    def sampling_masks(self, index_map: np.ndarray) -> list[tuple[int, np.ndarray]]:
        """``(class, mask)`` per foreground entry for oversampling: class ``i + 1`` for entry
        ``i``; the ignore label is never sampled."""
        return [(i + 1, self._region_table[i][index_map]) for i in range(len(self.entries))]

    def training_target(self, index_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss's target and mask for a stored ``(B, 1, *spatial)`` index map.

        Returns:
            ``(target, mask)``: for labels, ``(B, 1, *s)`` int64 output channels (ignored voxels
            0); for regions, ``(B, R, *s)`` float32 0/1 per region. ``mask`` is ``(B, 1, *s)``
            float32, 0 where the voxel is ignored, or None without an ignore label.
        """
        idx = index_map.long()
        mask = None
        if self.ignore_index is not None:
            keep = idx != self.ignore_index
            mask = keep.float()
            idx = torch.where(keep, idx, torch.zeros_like(idx))
        if not self.regions:
            return idx, mask
        table = torch.as_tensor(self._region_table, device=idx.device)  # (R, n_stored)
        target = table[:, idx[:, 0]]  # (R, B, *s)
        return target.movedim(0, 1).float(), mask

    def predicted_masks(self, logits: torch.Tensor) -> torch.Tensor:
        """``(B, n_entries, *s)`` bool: where the network puts each label or region (argmax,
        or probability above 0.5, i.e. a positive logit)."""
        if self.regions:
            return logits > 0
        best = logits.argmax(1)
        return torch.stack([best == c for c in range(1, self.n_outputs)], dim=1)

    def reference_masks(self, index_map: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(masks, annotated)`` of a stored ``(B, 1, *s)`` index map: ``(B, n_entries, *s)``
        bool per label or region, and ``(B, 1, *s)`` bool where annotated (None without an
        ignore label)."""
        idx = index_map.long()
        table = torch.as_tensor(self._region_table, device=idx.device)
        masks = table[:, idx[:, 0]].movedim(0, 1)
        annotated = None if self.ignore_index is None else idx != self.ignore_index
        return masks, annotated

    def to_label_map(self, probabilities: np.ndarray) -> np.ndarray:
        """Label values ``(*spatial)`` from probabilities ``(n_outputs, *spatial)``: the largest
        label, or regions above 0.5 painted in order."""
        if not self.regions:
            values = np.asarray(self.output_values, dtype=_label_dtype(self.output_values))
            return values[np.argmax(probabilities, axis=0)]
        out = np.zeros(probabilities.shape[1:], dtype=_label_dtype(self.output_values))
        for prob, value in zip(probabilities, self.output_values, strict=True):
            out[prob > 0.5] = value
        return out

    # --- inference and evaluation ------------------------------------------------------

    @property
    def class_values(self) -> tuple[int, ...]:
        """The label value of each class index of :meth:`classes`: the output values for labels;
        0 (nothing painted) then the painted value of each region for regions. Never the ignore
        value, so a prediction never holds it."""
        return self.output_values if not self.regions else (0, *self.output_values)

    def classes(self, logits: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Class index per voxel (into :attr:`class_values`) from logits along ``dim``.

        For labels the largest logit (the softmax's argmax, without computing it); for regions
        ``1 +`` the last region whose sigmoid exceeds 0.5, 0 where none does: the region painted
        last wins, as in :meth:`to_label_map`. The sigmoid is computed (not ``logit > 0``) so
        that a map from stored probabilities agrees at the threshold.
        """
        if not self.regions:
            return logits.argmax(dim)
        above = torch.sigmoid(logits.float()) > 0.5
        shape = [1] * logits.ndim
        shape[dim] = logits.shape[dim]
        index = torch.arange(1, logits.shape[dim] + 1, device=logits.device).view(shape)
        return torch.where(above, index, torch.zeros_like(index)).amax(dim)

    def activate_(self, logits: torch.Tensor, dim: int = 0) -> torch.Tensor:
        """Probabilities from float logits along ``dim``, computed in place (one full-size
        array less at the peak of a large case): softmax for labels, sigmoid per region."""
        if self.regions:
            return logits.sigmoid_()
        logits.sub_(logits.amax(dim=dim, keepdim=True)).exp_()
        return logits.div_(logits.sum(dim=dim, keepdim=True))

    @property
    def outside_probabilities(self) -> tuple[float, ...]:
        """Each output's probability where the network saw nothing (outside the crop): the
        background's 1 for labels, 0 for every region."""
        return (0.0,) * self.n_outputs if self.regions else (1.0,) + (0.0,) * (self.n_outputs - 1)

    @property
    def entry_keys(self) -> tuple[str, ...]:
        """How score tables name each entry: its value for labels (as they always have), its
        name for regions (a region has no single value of its own)."""
        if self.regions:
            return tuple(e.name for e in self.entries)
        return tuple(str(e.values[0]) for e in self.entries)

    def masks(self, label_map: np.ndarray) -> list[np.ndarray]:
        """One boolean mask per entry (label or region) of a label map of values."""
        return [entry_mask(label_map, e.values) for e in self.entries]

    def annotated(self, reference: np.ndarray) -> np.ndarray | None:
        """Where ``reference`` is annotated (not the ignore value), or None when all of it is."""
        return None if self.ignore is None else reference != self.ignore


def entry_mask(label_map: np.ndarray, values: Sequence[int]) -> np.ndarray:
    """The voxels of a label or region: holding one of ``values`` (``==`` for one value, which
    is what plain labels always used, and faster than ``np.isin``)."""
    return label_map == values[0] if len(values) == 1 else np.isin(label_map, values)


def _label_dtype(values: Sequence[int]) -> type[np.integer]:
    return np.uint8 if max(values, default=0) < 256 else np.int32


def _is_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _int_values(name: str, raw: object, problems: list[str]) -> tuple[int, ...] | None:
    items = list(raw) if isinstance(raw, list | tuple) else [raw]
    if not items:
        problems.append(f"label {name!r} maps to an empty list; give its values")
        return None
    out = []
    for v in items:
        if isinstance(v, bool) or not isinstance(v, int | float) or v != int(v) or v < 0:
            problems.append(f"label {name!r} has value {v!r}; values must be non-negative integers")
            return None
        out.append(int(v))
    if len(set(out)) != len(out):
        problems.append(f"label {name!r} lists a value twice")
        return None
    return tuple(out)


def _region_order(
    raw: Sequence[object] | None, entries: list[LabelEntry], problems: list[str]
) -> tuple[int, ...] | None:
    """``regions_class_order`` checked against the regions: one positive integer per region."""
    if raw is None:
        problems.append(
            "labels map to lists (regions) but 'regions_class_order' is missing; give the value "
            f"to paint for each of the {len(entries)} regions, in their order"
        )
        return None
    if not isinstance(raw, list | tuple) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in raw
    ):
        problems.append(f"'regions_class_order' must be a list of integers, not {raw!r}")
        return None
    order = tuple(v for v in raw if isinstance(v, int))
    if len(order) != len(entries):
        problems.append(
            f"'regions_class_order' has {len(order)} values for {len(entries)} regions; give one per region"
        )
        return None
    if any(v <= 0 for v in order):
        problems.append("'regions_class_order' values must be positive (0 is the background)")
        return None
    return order
