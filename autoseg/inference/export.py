"""From logits in the preprocessed grid back to a label map on the source scan's grid.

Steps (the inverse of preprocessing): resample the logits to the cropped source shape (linear;
nearest across thick slices), argmax, paste into the uncropped volume, undo the transpose, map
class indices to the dataset's label values. Resampling runs in torch: many-class volumes are
resampled in chunks of channels with a running argmax, so memory stays at a few channels of the
output grid rather than all of them (nnU-Net resamples every class channel, then argmaxes).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from autoseg.planning.plan import Plan


def resize_channels(x: torch.Tensor, shape: Sequence[int], *, z_axis: int | None,
                    mode: str = "linear") -> torch.Tensor:
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
    perm = [z_axis] + [a for a in range(3) if a != z_axis]
    inv = [perm.index(a) for a in range(3)]
    xs = x.permute(0, *(p + 1 for p in perm))  # (C, Zs, A, B) with the z axis first
    inplane = tuple(shape[a] for a in perm[1:])
    if tuple(xs.shape[2:]) != inplane:
        xs = F.interpolate(xs.transpose(0, 1), size=inplane, mode="bilinear",
                           align_corners=False).transpose(0, 1)
    zshape = (shape[perm[0]], *inplane)
    xs = F.interpolate(xs[None], size=zshape, mode="nearest-exact")[0]
    return xs.permute(0, *(i + 1 for i in inv))


def argmax_resampled(logits: torch.Tensor, shape: Sequence[int], *, z_axis: int | None,
                     chunk: int = 8) -> torch.Tensor:
    """Argmax over classes of the logits resized to ``shape``, ``chunk`` channels at a time.

    Returns:
        ``(Z, Y, X)`` uint8/int16 class indices (on the logits' device).
    """
    n = logits.shape[0]
    dtype = torch.uint8 if n < 256 else torch.int16
    best_val = None
    best_idx = None
    for start in range(0, n, chunk):
        part = resize_channels(logits[start:start + chunk].float(), shape, z_axis=z_axis)
        val, idx = part.max(dim=0)
        idx = (idx + start).to(dtype)
        if best_val is None:
            best_val, best_idx = val, idx
        else:
            better = val > best_val
            best_val = torch.where(better, val, best_val)
            best_idx = torch.where(better, idx, best_idx)
        del part
    assert best_idx is not None
    return best_idx


def to_source_grid(classes: np.ndarray, props: dict[str, Any], plan: Plan) -> np.ndarray:
    """Paste a cropped, transposed class map into the source volume and map to label values.

    Args:
        classes: ``(Z, Y, X)`` class indices in the transposed, cropped grid.
        props: the case's preprocessing properties (bbox, shape_before_crop).
        plan: for the transpose and the label values.

    Returns:
        Label values in the source file's axis order and dtype-minimal integer type.
    """
    full = np.zeros(props["shape_before_crop"], dtype=classes.dtype)
    full[tuple(slice(lo, hi) for lo, hi in props["bbox"])] = classes
    return classes_to_values(full.transpose(plan.transpose_backward), plan)


def classes_to_values(classes: np.ndarray, plan: Plan) -> np.ndarray:
    """Class indices -> the dataset's label values, in the smallest integer type that holds them."""
    values = np.asarray(plan.label_values)
    out_dtype = np.uint8 if values.max() < 256 else np.int16 if values.max() < 32768 else np.int32
    return values.astype(out_dtype)[classes]


def logits_to_labels(logits: torch.Tensor, props: dict[str, Any], plan: Plan, *,
                     chunk: int = 4) -> np.ndarray:
    """Logits in the preprocessed grid -> label map on the source grid (see module docstring).

    ``chunk`` classes are resampled at a time (memory: ``chunk`` float32 volumes of the output
    grid); ``chunk >= n_classes`` resamples all at once, with the same result.
    """
    classes = argmax_resampled(logits, props["shape_after_crop"], z_axis=props.get("z_axis"),
                               chunk=chunk)
    return to_source_grid(classes.cpu().numpy(), props, plan)


def probabilities_on_source_grid(logits: torch.Tensor, props: dict[str, Any],
                                 plan: Plan) -> np.ndarray:
    """Softmax probabilities ``(n_classes, Z, Y, X)`` float16 on the source grid (background
    1 outside the crop), for ``--save-probabilities`` and ensembling."""
    res = resize_channels(logits.float(), props["shape_after_crop"], z_axis=props.get("z_axis"))
    prob = torch.softmax(res, dim=0).to(torch.float16).cpu().numpy()
    full = np.zeros((prob.shape[0], *props["shape_before_crop"]), dtype=np.float16)
    full[0] = 1
    full[(slice(None), *(slice(lo, hi) for lo, hi in props["bbox"]))] = prob
    return full.transpose([0, *(a + 1 for a in plan.transpose_backward)])
