"""From logits in the preprocessed grid back to a label map on the source scan's grid.

Steps (the inverse of preprocessing): resample the logits to the cropped source shape (linear;
nearest across thick slices), decide each voxel's class, paste into the uncropped volume, undo the
transpose, map class indices to the dataset's label values. Resampling runs in torch, one output
plane at a time for all outputs (:func:`classes_resampled`), so memory stays at a few planes of the
output grid per output rather than whole volumes (nnU-Net resamples every output channel, then
decides).

What the outputs mean comes from the plan's :class:`~autoseg.labels.LabelScheme`: for plain labels
the class is the argmax (of the logits: the softmax does not change it), for regions the last
region whose sigmoid exceeds 0.5 (painting order). As in nnU-Net, the logits are resampled and the
nonlinearity applied afterwards, for both.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from autoseg.labels import LabelScheme
from autoseg.planning.plan import Plan
from autoseg.preprocessing.properties import CaseProperties

#: ``(outputs, dim) -> class indices``: how a voxel's outputs decide its class.
Decide = Callable[[torch.Tensor, int], torch.Tensor]


def _argmax(x: torch.Tensor, dim: int) -> torch.Tensor:
    return x.argmax(dim)


def resize_channels(
    x: torch.Tensor, shape: Sequence[int], *, z_axis: int | None, mode: str = "linear"
) -> torch.Tensor:
    """Resize ``(C, Z, Y, X)`` to ``shape``: trilinear, or bilinear in-plane + nearest along
    ``z_axis`` for anisotropic data. Voxel centres are aligned (``align_corners=False``).
    """
    shape = tuple(int(s) for s in shape)
    if tuple(x.shape[1:]) == shape:
        return x
    if mode == "nearest":
        return F.interpolate(x[None], size=shape, mode="nearest-exact")[0]
    if z_axis is None:
        return F.interpolate(x[None], size=shape, mode="trilinear", align_corners=False)[0]
    perm, inv = _axis_first(z_axis)
    xs = x.permute(0, *(p + 1 for p in perm))  # (C, Zs, A, B) with the z axis first
    inplane = tuple(shape[a] for a in perm[1:])
    if tuple(xs.shape[2:]) != inplane:
        xs = F.interpolate(xs.transpose(0, 1), size=inplane, mode="bilinear", align_corners=False).transpose(
            0, 1
        )
    zshape = (shape[perm[0]], *inplane)
    xs = F.interpolate(xs[None], size=zshape, mode="nearest-exact")[0]
    return xs.permute(0, *(i + 1 for i in inv))


def argmax_resampled(logits: torch.Tensor, shape: Sequence[int], *, z_axis: int | None) -> torch.Tensor:
    """Argmax over classes of the logits resized to ``shape`` (as :func:`resize_channels`),
    without ever holding all classes at the output size (:func:`classes_resampled`).

    Returns:
        ``(Z, Y, X)`` uint8/int16 class indices (on the logits' device).
    """
    return classes_resampled(logits, shape, z_axis=z_axis, decide=_argmax)


def classes_resampled(
    logits: torch.Tensor, shape: Sequence[int], *, z_axis: int | None, decide: Decide
) -> torch.Tensor:
    """Classes decided (``decide(outputs, dim)``, e.g. an argmax or
    :meth:`~autoseg.labels.LabelScheme.classes`) on the logits resized to ``shape`` (as
    :func:`resize_channels`), without ever holding all outputs at the output size.

    Trilinear interpolation is separable: every output plane across the walked axis (``z_axis``,
    else axis 0) is a linear blend of two input planes, each first resized in-plane (bilinear).
    So each input plane is resized once, for all classes, and kept channels-last while it is in
    use; every output plane is blended from two of them (taken from one along a ``z_axis``, which
    is nearest-neighbour) and decided over its last, contiguous axis. Memory: a few in-plane
    resized planes of every class. On a 42-class CT of 458 x 379 x 420 this takes 3.6 s where
    resizing the classes in chunks of 4 with a running argmax took 17 s and resizing all of them
    at once 27-33 s and 12 GB (``benchmarks/bench_large_ct.py``). The result equals
    ``decide(resize_channels(...), 0)`` except where the two roundings of the same interpolation
    decide a near-exact tie.

    Returns:
        ``(Z, Y, X)`` uint8/int16 class indices (on the logits' device).
    """
    n = logits.shape[0]
    dtype = torch.uint8 if n < 256 else torch.int16
    shape = tuple(int(s) for s in shape)
    if tuple(logits.shape[1:]) == shape:
        return decide(logits, 0).to(dtype)
    walk = 0 if z_axis is None else z_axis
    perm, inv = _axis_first(walk)
    x = logits.permute(0, *(p + 1 for p in perm))  # (C, walked axis, in-plane axes)
    out_shape = tuple(shape[p] for p in perm)
    inplane = out_shape[1:]
    n_in, n_out = x.shape[1], out_shape[0]
    blend = z_axis is None and n_in != n_out
    i0, i1, w = _axis_sampling(n_in, n_out, linear=blend)
    cache: dict[int, torch.Tensor] = {}

    def plane(i: int) -> torch.Tensor:
        """Input plane ``i`` resized in-plane, channels last: ``(*inplane, C)``."""
        if i not in cache:
            p = x[:, i].float()
            if tuple(p.shape[1:]) != inplane:
                p = F.interpolate(p[None], size=inplane, mode="bilinear", align_corners=False)[0]
            cache[i] = p.permute(1, 2, 0).contiguous()
        return cache[i]

    result = torch.empty(out_shape, dtype=dtype, device=logits.device)
    for o in range(n_out):
        lo, hi = int(i0[o]), int(i1[o])
        for old in [k for k in cache if k < lo]:  # i0 never decreases
            del cache[old]
        vals = torch.lerp(plane(lo), plane(hi), float(w[o])) if blend else plane(lo)
        result[o] = decide(vals, -1).to(dtype)
    return result.permute(*inv)


def _axis_first(axis: int) -> tuple[list[int], list[int]]:
    """The permutation of 3 spatial axes that puts ``axis`` first, and its inverse."""
    perm = [axis] + [a for a in range(3) if a != axis]
    return perm, [perm.index(a) for a in range(3)]


def _axis_sampling(n_in: int, n_out: int, *, linear: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Where each output index reads the input along one axis: ``(i0, i1, w)``, the value being
    ``(1 - w) * x[i0] + w * x[i1]``, by PyTorch's ``align_corners=False`` rules (linear: source
    ``(o + 0.5) * n_in / n_out - 0.5`` clamped at 0; nearest-exact: ``floor((o + 0.5) * n_in / n_out)``).
    """
    o = torch.arange(n_out, dtype=torch.float32)
    scale = n_in / n_out
    if not linear:
        i0 = ((o + 0.5) * scale).floor().long().clamp(max=n_in - 1)
        return i0, i0, torch.zeros(n_out)
    src = ((o + 0.5) * scale - 0.5).clamp(min=0)
    i0 = src.floor().long().clamp(max=n_in - 1)
    return i0, (i0 + 1).clamp(max=n_in - 1), src - i0


def to_source_grid(classes: np.ndarray, props: CaseProperties, plan: Plan) -> np.ndarray:
    """Paste a cropped, transposed class map into the source volume and map to label values.

    Args:
        classes: ``(Z, Y, X)`` class indices (into the scheme's ``class_values``) in the
            transposed, cropped grid; class 0 (background, nothing painted) fills the rest.
        props: the case's preprocessing properties (bbox, shape_before_crop).
        plan: for the transpose and the label values.

    Returns:
        Label values in the source file's axis order and dtype-minimal integer type.
    """
    full = np.zeros(props.shape_before_crop, dtype=classes.dtype)
    full[tuple(slice(lo, hi) for lo, hi in props.bbox)] = classes
    return classes_to_values(full.transpose(plan.transpose_backward), plan)


def label_dtype(values: Sequence[int]) -> type[np.integer]:
    """The smallest integer type of a label map holding ``values`` (uint8, int16, int32)."""
    top = max(values, default=0)
    return np.uint8 if top < 256 else np.int16 if top < 32768 else np.int32


def classes_to_values(classes: np.ndarray, plan: Plan) -> np.ndarray:
    """Class indices -> the dataset's label values, in the smallest integer type that holds them."""
    values = plan.label_scheme.class_values
    return np.asarray(values).astype(label_dtype(values))[classes]


def probabilities_to_labels(probabilities: np.ndarray, scheme: LabelScheme) -> np.ndarray:
    """Label map of probabilities ``(n_outputs, *spatial)`` (the argmax, or regions above 0.5
    painted in order: :meth:`~autoseg.labels.LabelScheme.to_label_map`), in the type
    :func:`classes_to_values` gives, so that a map is stored alike whichever way it was made."""
    return scheme.to_label_map(probabilities).astype(label_dtype(scheme.class_values), copy=False)


def logits_to_labels(logits: torch.Tensor, props: CaseProperties, plan: Plan) -> np.ndarray:
    """Logits in the preprocessed grid -> label map on the source grid (see module docstring).

    The classes are decided one output plane at a time (:func:`classes_resampled`): the argmax
    for labels, painted regions for regions.
    """
    scheme = plan.label_scheme
    classes = classes_resampled(logits, props.shape_after_crop, z_axis=props.z_axis, decide=scheme.classes)
    return to_source_grid(classes.cpu().numpy(), props, plan)


def maps_on_source_grid(maps: torch.Tensor, props: CaseProperties, plan: Plan) -> np.ndarray:
    """Float maps ``(C, Z, Y, X)`` of the preprocessed grid (e.g. uncertainty) -> ``(C, *source)``
    float32 on the source grid: resized like probabilities, 0 outside the crop (where the
    network saw nothing and nothing is predicted)."""
    resized = resize_channels(maps.float(), props.shape_after_crop, z_axis=props.z_axis)
    return _paste_on_source_grid(resized, props, plan, outside=(0.0,) * resized.shape[0])


def _paste_on_source_grid(
    channels: torch.Tensor, props: CaseProperties, plan: Plan, *, outside: Sequence[float]
) -> np.ndarray:
    """``(C, *crop)`` channels on the cropped grid -> ``(C, *source)`` float32 in the source
    file's axis order, channel ``c`` holding ``outside[c]`` outside the crop."""
    full = np.zeros((channels.shape[0], *props.shape_before_crop), dtype=np.float32)
    for channel, value in enumerate(outside):
        if value:  # zeros stay untouched pages until the crop is pasted
            full[channel] = value
    full[(slice(None), *(slice(lo, hi) for lo, hi in props.bbox))] = channels.cpu().numpy()
    return full.transpose([0, *(a + 1 for a in plan.transpose_backward)])


def probabilities_on_source_grid(logits: torch.Tensor, props: CaseProperties, plan: Plan) -> np.ndarray:
    """Probabilities ``(n_outputs, Z, Y, X)`` float32 on the source grid, for
    ``--save-probabilities``, validation and ensembling: softmax over labels (background 1
    outside the crop) or a sigmoid per region (0 outside the crop), as the plan's label scheme says.

    float32, so that a label map taken from them (:func:`probabilities_to_labels`) is not
    decided by float16 rounding at near-ties; callers store them as float16. The activation runs
    in place on the resized logits: one full-size float32 array less at the peak.
    """
    scheme = plan.label_scheme
    prob = resize_channels(logits.float(), props.shape_after_crop, z_axis=props.z_axis)
    if prob.data_ptr() == logits.data_ptr():
        prob = prob.clone()  # not resized: do not overwrite the caller's logits
    scheme.activate_(prob, dim=0)
    return _paste_on_source_grid(prob, props, plan, outside=scheme.outside_probabilities)
