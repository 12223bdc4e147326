"""The own sliding window (plain torch, so that ``predict`` need not import MONAI) gives exactly
what MONAI's ``sliding_window_inference`` gave before it: same windows, weights, blending."""

from __future__ import annotations

import itertools

import pytest
import torch
from monai.data.utils import compute_importance_map
from monai.inferers import sliding_window_inference

from autoseg.inference.sliding_window import (
    gaussian_weights,
    make_predictor,
    predict_logits,
    sliding_window,
    stack_neighbour_slices,
    window_starts,
)
from autoseg.networks import build_network
from autoseg.planning.plan import Configuration, Network
from tests.configs import configuration

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _net(dims: int, cin: int = 2, cout: int = 3) -> torch.nn.Module:
    """A window function whose output depends on position and neighbourhood."""
    torch.manual_seed(0)
    conv = torch.nn.Conv3d if dims == 3 else torch.nn.Conv2d
    return torch.nn.Sequential(conv(cin, cout, 3, padding=1), torch.nn.Tanh()).eval()


@pytest.mark.parametrize("window", [(8, 12, 10), (1, 16, 8), (5, 7, 9), (64, 1, 3)])
def test_gaussian_weights_equal_monai(window):
    ours = gaussian_weights(window)
    assert torch.equal(ours, compute_importance_map(window, mode="gaussian", sigma_scale=0.125))
    assert ours.min() >= 1e-3
    centre = tuple(n // 2 for n in window)
    assert ours[centre] == ours.max()


@pytest.mark.parametrize(
    ("size", "window", "step"),
    [
        (100, 40, 0.5),
        (90, 40, 0.5),
        (41, 40, 0.5),
        (40, 40, 0.5),
        (10, 40, 0.5),
        (97, 13, 0.3),
        (50, 7, 0.01),
        (35, 1, 1.0),
    ],
)
def test_window_starts_cover_the_axis_flush(size, window, step):
    starts = window_starts(size, window, step)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if size > window:
        assert starts[-1] == size - window
        gaps = [b - a for a, b in itertools.pairwise(starts)]
        assert max(gaps) <= max(int(window * step), 1)
    else:
        assert starts == [0]


CASES = {
    "3d_bigger": ((20, 30, 25), (8, 12, 10), 0.5, 2),
    "3d_smaller_axes_padded": ((6, 30, 7), (8, 12, 10), 0.5, 3),
    "3d_step_0.3_batch_1": ((20, 30, 25), (8, 12, 10), 0.3, 1),
    "3d_window_equals_axes": ((20, 30, 25), (20, 12, 25), 0.7, 2),
    "slices": ((9, 33, 20), (1, 16, 8), 0.5, 4),
    "slices_padded": ((3, 10, 20), (1, 16, 8), 0.25, 5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_equal_to_monai_sliding_window_inference(name):
    shape, window, step, batch = CASES[name]
    net = _net(3)
    torch.manual_seed(1)
    x = torch.randn(1, 2, *shape)
    steps = tuple(1.0 if w == 1 else step for w in window)
    with torch.no_grad():
        ours = sliding_window(x, window, steps, net, batch_size=batch, device="cpu", output_device="cpu")
        theirs = sliding_window_inference(
            x, window, batch, net, overlap=[1.0 - s for s in steps], mode="gaussian", sigma_scale=0.125
        )
    assert ours.shape == (1, 3, *shape)
    assert torch.equal(ours, theirs)


def _config(kind: str, patch: tuple[int, ...], in_slices: int = 1) -> Configuration:
    dims = 3 if kind == "3d" else 2
    network = Network(
        n_stages=3,
        features_per_stage=(4, 8, 8),
        kernel_sizes=((3,) * dims,) * 3,
        strides=((1,) * dims, (2,) * dims, (2,) * dims),
        deep_supervision=True,
    )
    return configuration(kind, network, patch, in_slices=in_slices, name=kind)


@pytest.mark.parametrize("tta", [True, False], ids=["tta", "no_tta"])
@pytest.mark.parametrize(("kind", "patch"), [("3d", (8, 16, 8)), ("2d", (16, 8)), ("2.5d", (16, 8))])
def test_predict_logits_equal_to_the_monai_path(kind, patch, tta):
    """The whole case path (2.5D slice stacking, batched mirror TTA) against MONAI's window."""
    config = _config(kind, patch, in_slices=3 if kind == "2.5d" else 1)
    torch.manual_seed(2)
    net = build_network(config, in_channels=1, n_classes=3, deep_supervision=False).eval()
    data = torch.randn(1, 11, 21, 13)
    ours = predict_logits(net, data, config, step=0.5, tta=tta)
    x = data[None]
    if kind == "2.5d":
        x = stack_neighbour_slices(x, 3)
    window = patch if kind == "3d" else (1, *patch)
    overlap = (0.5,) * 3 if kind == "3d" else (0.0, 0.5, 0.5)
    with torch.inference_mode():
        theirs = sliding_window_inference(
            x,
            window,
            2 if kind == "3d" else 32,
            make_predictor(net, config, tta=tta, amp_dtype=None, max_batch=2 if kind == "3d" else 16),
            overlap=overlap,
            mode="gaussian",
            sigma_scale=0.125,
        )[0]
    assert ours.shape == (3, 11, 21, 13)
    assert torch.equal(ours, theirs)


_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
DEVICE_PAIRS = [
    ("cpu", "cpu"),
    pytest.param("cuda", "cuda", marks=[pytest.mark.cuda, _CUDA]),
    pytest.param("cuda", "cpu", marks=[pytest.mark.cuda, _CUDA]),
]


@pytest.mark.parametrize(("device", "output_device"), DEVICE_PAIRS)
def test_windows_on_one_device_sums_on_another(device, output_device):
    """Windows run on ``device``, the blended sums live on ``output_device`` (the OOM fallback)."""
    shape, window, step, batch = CASES["3d_smaller_axes_padded"]
    net = _net(3)
    torch.manual_seed(1)
    x = torch.randn(1, 2, *shape)
    with torch.no_grad():
        reference = sliding_window(
            x, window, (step,) * 3, net, batch_size=batch, device="cpu", output_device="cpu"
        )
        out = sliding_window(
            x.to(device),
            window,
            (step,) * 3,
            net.to(device),
            batch_size=batch,
            device=device,
            output_device=output_device,
        )
    assert out.device.type == output_device
    torch.testing.assert_close(out.cpu(), reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("step", [0.0, -0.5, 1.5])
def test_steps_outside_0_1_are_refused(step):
    with pytest.raises(ValueError, match=r"steps must be in \(0, 1\]"):
        sliding_window(
            torch.zeros(1, 1, 8, 8, 8),
            (4, 4, 4),
            (step,) * 3,
            _net(3, 1, 1),
            batch_size=1,
            device="cpu",
            output_device="cpu",
        )
