"""Sliding-window prediction of one preprocessed case, with Gaussian blending and mirror TTA.

One code path serves all configuration kinds: the case is a ``(1, C, Z, Y, X)`` tensor and the
window is the patch (3D) or ``(1, H, W)`` (2D: one slice at a time; 2.5D: the K neighbouring
slices are stacked as channels first). :func:`sliding_window` places the windows, batches them and
blends them with a Gaussian (sigma = patch/8, as nnU-Net).

The windows, weights and blending are those of MONAI's ``sliding_window_inference`` (a test checks
equal outputs), written here in plain torch because importing anything from MONAI costs
``autoseg predict`` about 1.2 s of start-up (MONAI's package ``__init__`` imports all of it). What
differs between kinds (window, steps, mirror axes, slice stacking, batch sizes) comes from
:data:`autoseg.planning.kinds.KINDS`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from typing import cast

import torch
import torch.nn.functional as F

from autoseg.inference.uncertainty import Activation, batch_entropy
from autoseg.planning.kinds import kind_of
from autoseg.planning.plan import Configuration


def stack_neighbour_slices(x: torch.Tensor, k: int) -> torch.Tensor:
    """``(N, C, Z, Y, X)`` -> ``(N, C*K, Z, Y, X)``: channel ``c*K + j`` holds channel c of slice
    ``z + j - K//2`` (channel-major, as the training loader stacks them).

    Slices beyond the ends repeat the edge slice, as in training.
    """
    half = k // 2
    idx = torch.arange(x.shape[2], device=x.device)
    blocks = [x.index_select(2, (idx + j - half).clamp(0, x.shape[2] - 1)) for j in range(k)]
    stacked = torch.stack(blocks, dim=2)  # (N, C, K, Z, Y, X)
    return stacked.reshape(x.shape[0], x.shape[1] * k, *x.shape[2:])


def _flip_combinations(axes: Sequence[int]) -> list[tuple[int, ...]]:
    return [c for r in range(len(axes) + 1) for c in itertools.combinations(axes, r)]


def window_starts(size: int, window: int, step: float) -> list[int]:
    """Where the windows start along one axis.

    Every ``max(int(window * step), 1)`` voxels, the last window moved back to end flush with the
    axis, so that the windows cover it with the requested overlap and none hangs over the edge.
    An axis no longer than the window has one window at 0 (the caller pads it to the window).

    Examples:
        >>> window_starts(100, 40, 0.5)
        [0, 20, 40, 60]
        >>> window_starts(90, 40, 0.5)
        [0, 20, 40, 50]
    """
    if size <= window:
        return [0]
    interval = max(int(window * step), 1)
    n = -(-(size - window) // interval) + 1
    return [min(i * interval, size - window) for i in range(n)]


def gaussian_weights(
    window: Sequence[int], sigma_scale: float = 0.125, *, device: torch.device | str | None = None
) -> torch.Tensor:
    """Blending weights of one window: a separable Gaussian centred on the window.

    ``sigma = sigma_scale * size`` per axis, so that window borders (where the network sees the
    least context) count least. Floored at ``max(smallest weight, 1e-3)`` so that no voxel of a
    window gets a weight near zero (a voxel covered only by window borders would divide by ~0).
    """
    weights = torch.ones((), device=device)
    for n in window:
        x = torch.arange(-(n - 1) / 2.0, (n - 1) / 2.0 + 1, dtype=torch.float32, device=device)
        weights = weights.unsqueeze(-1) * torch.exp(x**2 / (-2 * (n * sigma_scale) ** 2))
    return weights.clamp_(min=max(weights.min().item(), 1e-3))


def sliding_window(
    x: torch.Tensor,
    window: Sequence[int],
    steps: Sequence[float],
    predictor: Callable[[torch.Tensor], torch.Tensor],
    *,
    batch_size: int,
    device: torch.device | str,
    output_device: torch.device | str,
) -> torch.Tensor:
    """Gaussian-blended window predictions over a whole case.

    Args:
        x: ``(1, C, *spatial)`` float32 input.
        window: window size per spatial axis; an axis shorter than it is zero-padded
            symmetrically (the pad is cropped off the result).
        steps: window step per axis, as a fraction of the window (see :func:`window_starts`).
        predictor: ``(B, C, *window) -> (B, K, *window)`` float32, run on ``device``.
        batch_size: windows per predictor call.
        device: where windows are predicted.
        output_device: where the ``(1, K, *spatial)`` sums accumulate (the CPU keeps a large
            case off a small GPU).

    Returns:
        ``(1, K, *spatial)`` float32 on ``output_device``: per voxel, the weighted mean of the
        windows covering it.

    Raises:
        ValueError: a step outside ``(0, 1]`` (beyond 1 the windows would leave gaps).
    """
    if not all(0 < s <= 1 for s in steps):
        msg = f"window steps must be in (0, 1] (fractions of the window), got {tuple(steps)}"
        raise ValueError(msg)
    spatial = x.shape[2:]
    short = [max(w - s, 0) for w, s in zip(window, spatial, strict=True)]
    if any(short):
        pad = [p for d in reversed(short) for p in (d // 2, d - d // 2)]  # F.pad: last axis first
        x = F.pad(x, pad, mode="constant", value=0.0)
    size = x.shape[2:]
    slices = [
        tuple(slice(s, s + w) for s, w in zip(starts, window, strict=True))
        for starts in itertools.product(
            *(window_starts(n, w, st) for n, w, st in zip(size, window, steps, strict=True))
        )
    ]
    weights = gaussian_weights(window, device=device)[None, None]
    weights_out = weights.to(output_device)
    count = torch.zeros((1, 1, *size), device=output_device)
    for sl in slices:
        count[(slice(None), slice(None), *sl)] += weights_out
    out = None
    for first in range(0, len(slices), batch_size):
        group = slices[first : first + batch_size]
        windows = torch.cat([x[(slice(None), slice(None), *sl)] for sl in group]).to(device)
        pred = (predictor(windows) * weights).to(output_device)
        if out is None:
            out = torch.zeros((1, pred.shape[1], *size), device=output_device)
        for p, sl in zip(pred, group, strict=True):
            out[(slice(None), slice(None), *sl)] += p
    assert out is not None
    out /= count
    if any(short):
        out = out[
            (
                slice(None),
                slice(None),
                *(slice(d // 2, d // 2 + n) for d, n in zip(short, spatial, strict=True)),
            )
        ]
    return out


def make_predictor(
    network: torch.nn.Module,
    config: Configuration,
    *,
    tta: bool,
    amp_dtype: torch.dtype | None,
    max_batch: int = 2,
    member_entropy: Activation | None = None,
) -> Callable[[torch.Tensor], torch.Tensor]:
    """Window -> logits function.

    Runs the network (2D kinds on the squeezed slice) and, with ``tta``, averages the logits over
    every mirror combination. Windows and their mirrored copies go through the network in
    batches of ``max_batch`` (on a CPU the kind's ``network_batch_cpu``; on a GPU larger batches
    fill the device). Returns float32. With ``member_entropy`` (the outputs' activation), one
    more channel follows the logits: the mean over the mirrors of the entropy of each mirror's
    own probabilities (:mod:`autoseg.inference.uncertainty`), blended like the logits.
    """
    kind = kind_of(config.kind)
    flips = _flip_combinations(kind.mirror_axes) if tta else [()]
    is_3d = kind.spatial_dims == 3

    def run(w: torch.Tensor) -> torch.Tensor:
        inp = w if is_3d else w[:, :, 0]
        with torch.autocast(w.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = network(inp)
        out = out.float()
        return out if is_3d else out[:, :, None]

    def predictor(w: torch.Tensor) -> torch.Tensor:
        batch = torch.cat([torch.flip(w, f) if f else w for f in flips])
        out = torch.cat([run(chunk) for chunk in batch.split(max_batch)])
        parts = out.split(w.shape[0])
        # sum() starts from the int 0, so its type includes int; the result is a tensor.
        unflipped = [torch.flip(p, f) if f else p for p, f in zip(parts, flips, strict=True)]
        mean = cast(torch.Tensor, sum(unflipped)) / len(flips)
        if member_entropy is None:
            return mean
        entropy = cast(torch.Tensor, sum(batch_entropy(p, member_entropy) for p in unflipped)) / len(flips)
        return torch.cat([mean, entropy], dim=1)

    return predictor


@torch.inference_mode()
def predict_logits(
    network: torch.nn.Module,
    data: torch.Tensor,
    config: Configuration,
    *,
    step: float = 0.5,
    tta: bool = True,
    sw_batch_size: int | None = None,
    device: torch.device | str = "cpu",
    output_device: torch.device | str | None = None,
    amp_dtype: torch.dtype | None = None,
    member_entropy: Activation | None = None,
) -> torch.Tensor:
    """Logits of one preprocessed case.

    Args:
        network: in eval mode, returning full-resolution logits.
        data: ``(C, Z, Y, X)`` preprocessed channels.
        config: the configuration the network was trained for.
        step: window step as a fraction of the patch (0.5 = half-patch overlap).
        tta: average over mirrored inputs (8 passes in 3D, 4 in 2D kinds).
        sw_batch_size: windows per sliding-window step (default: the kind's ``window_batch``,
            2 in 3D, 32 in 2D kinds).
        device: where the network runs.
        output_device: where the blended logits accumulate (default: ``device``); the CPU
            keeps large outputs off a small GPU.
        amp_dtype: autocast dtype (``torch.float16`` on CUDA, ``torch.bfloat16`` on CPU), or None.
        member_entropy: the outputs' activation, to add the mirrors' mean entropy as a last
            channel (see :func:`make_predictor`); None for logits only.

    Returns:
        ``(n_classes, Z, Y, X)`` float32 logits on ``output_device`` (one channel more with
        ``member_entropy``).
    """
    kind = kind_of(config.kind)
    x = data[None].to(device=device, dtype=torch.float32)
    if kind.stacks_slices:
        x = stack_neighbour_slices(x, config.in_slices)
    window, steps = kind.window(config.patch_size), kind.window_steps(step)
    if sw_batch_size is None:
        sw_batch_size = kind.window_batch
    on_cpu = torch.device(device).type == "cpu"
    predictor = make_predictor(
        network,
        config,
        tta=tta,
        amp_dtype=amp_dtype,
        max_batch=kind.network_batch_cpu if on_cpu else 4 * sw_batch_size,
        member_entropy=member_entropy,
    )
    out = sliding_window(
        x,
        window,
        steps,
        predictor,
        batch_size=sw_batch_size,
        device=device,
        output_device=output_device or device,
    )
    return out[0]
