"""Tests of the deep-supervision segmentation losses."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from monai.losses import DiceCELoss

from autoseg._device import cuda_available
from autoseg.errors import AutosegError
from autoseg.networks import build_network
from autoseg.planning.plan import Configuration, Network, Resampling
from autoseg.training.losses import DeepSupervisionLoss, DiceFocalLoss, deep_supervision_weights, make_loss

N_CLASSES = 3


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def label_map(batch: int = 2, size: tuple[int, ...] = (8, 8, 8), seed: int = 0) -> torch.Tensor:
    """Blocky labels (2-voxel blocks, so every level's nearest sampling keeps all classes present)."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, N_CLASSES, (batch, 1, *(s // 2 for s in size)), generator=gen)
    return F.interpolate(coarse.float(), size=size, mode="nearest").long()


def logits_for(target: torch.Tensor, scale: float, n_levels: int = 3) -> list[torch.Tensor]:
    """Logits ``scale * one_hot(target)`` at full, 1/2, 1/4 ... resolution."""
    out = []
    for i in range(n_levels):
        size = [s // 2**i for s in target.shape[2:]]
        t = F.interpolate(target.float(), size=size, mode="nearest-exact").long()
        out.append(scale * F.one_hot(t[:, 0], N_CLASSES).movedim(-1, 1).float())
    return out


def tiny_config(kind: str = "2d") -> Configuration:
    dims = 3 if kind == "3d" else 2
    network = Network(
        n_stages=3,
        features_per_stage=(8, 16, 32),
        kernel_sizes=((3,) * dims,) * 3,
        strides=((1,) * dims, (2,) * dims, (2,) * dims),
    )
    return Configuration(
        name="tiny",
        kind=kind,
        spacing=(1.0, 1.0, 1.0),
        median_shape=(16, 16, 16),  # type: ignore[arg-type]
        patch_size=(16,) * dims,
        batch_size=1,
        in_slices=1,
        network=network,
        resampling=Resampling(),
        batch_dice=False,
        estimated_feature_elements=0,
    )


class TestWeights:
    @pytest.mark.parametrize("n", [2, 3, 5], ids=["2", "3", "5"])
    def test_sum_one_last_zero_halving(self, n):
        w = deep_supervision_weights(n)
        assert len(w) == n
        assert sum(w) == pytest.approx(1.0)
        assert w[-1] == 0.0
        for a, b in itertools.pairwise(w[:-1]):
            assert b == pytest.approx(a / 2)

    def test_single_output(self):
        assert deep_supervision_weights(1) == (1.0,)

    def test_rejects_zero(self):
        with pytest.raises(ValueError, match="n_outputs must be >= 1, got 0"):
            deep_supervision_weights(0)

    def test_loss_uses_them(self):
        assert make_loss("dice_ce", n_outputs=4, batch_dice=True).weights == deep_supervision_weights(4)


class TestDiceCE:
    @pytest.mark.parametrize("batch_dice", [False, True], ids=["per_sample", "batch"])
    def test_perfect_logits_give_about_zero(self, batch_dice):
        target = label_map()
        loss = make_loss("dice_ce", n_outputs=3, batch_dice=batch_dice)
        assert loss(logits_for(target, 50.0), target).item() < 1e-4

    def test_decreases_towards_target(self):
        target = label_map()
        loss = make_loss("dice_ce", n_outputs=3, batch_dice=False)
        values = [loss(logits_for(target, s), target).item() for s in (0.0, 0.5, 1.0, 2.0, 4.0)]
        assert all(a > b for a, b in itertools.pairwise(values))

    def test_matches_weighted_monai_terms(self):
        target = label_map(seed=1)
        outputs = [torch.randn(2, N_CLASSES, *(8 // 2**i,) * 3) for i in range(3)]
        base = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5
        )
        half = F.interpolate(target.float(), size=(4, 4, 4), mode="nearest-exact").long()
        expected = (2 / 3) * base(outputs[0], target) + (1 / 3) * base(outputs[1], half)
        got = make_loss("dice_ce", n_outputs=3, batch_dice=False)(outputs, target)
        torch.testing.assert_close(got, expected)

    def test_single_tensor(self):
        target = label_map()
        logits = torch.randn(2, N_CLASSES, 8, 8, 8)
        base = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5
        )
        got = make_loss("dice_ce", n_outputs=3, batch_dice=False)(logits, target)
        torch.testing.assert_close(got, base(logits, target))

    def test_batch_dice_differs(self):
        target = label_map(seed=2)
        logits = torch.randn(2, N_CLASSES, 8, 8, 8)
        per_sample = make_loss("dice_ce", n_outputs=1, batch_dice=False)(logits, target)
        batch = make_loss("dice_ce", n_outputs=1, batch_dice=True)(logits, target)
        assert not torch.isclose(per_sample, batch)

    def test_zero_weight_head_gets_zero_gradient_without_loss(self):
        calls = []

        def base(logits, labels):
            calls.append(tuple(logits.shape[2:]))
            return logits.mean()

        outputs = [torch.randn(1, N_CLASSES, *(8 // 2**i,) * 2, requires_grad=True) for i in range(3)]
        DeepSupervisionLoss(base, deep_supervision_weights(3))(outputs, label_map(1, (8, 8))).backward()
        assert calls == [(8, 8), (4, 4)]  # the base loss never sees the zero-weight head
        assert outputs[2].grad is not None  # but it stays in the graph (DDP needs every parameter)
        assert torch.count_nonzero(outputs[2].grad) == 0

    def test_every_parameter_gets_a_gradient(self):
        net = build_network(tiny_config("2d"), in_channels=1, n_classes=N_CLASSES)
        target = label_map(batch=1, size=(16, 16))
        make_loss("dice_ce", n_outputs=2, batch_dice=False)(net(torch.randn(1, 1, 16, 16)), target).backward()
        assert all(p.grad is not None for p in net.parameters())


class TestTargets:
    def test_downsampled_with_nearest_labels(self):
        seen = []

        def base(logits, labels):
            seen.append(labels)
            return logits.sum() * 0

        target = torch.arange(16).reshape(1, 1, 4, 4) % N_CLASSES
        loss = DeepSupervisionLoss(base, [0.5, 0.5])
        loss([torch.zeros(1, N_CLASSES, 4, 4), torch.zeros(1, N_CLASSES, 2, 2)], target)
        assert seen[0].dtype == torch.int64
        torch.testing.assert_close(seen[0], target)
        # nearest-exact at factor 2 takes the voxel at 2i + 1
        torch.testing.assert_close(seen[1], target[:, :, 1::2, 1::2])

    def test_float_target_accepted(self):
        target = label_map()
        loss = make_loss("dice_ce", n_outputs=3, batch_dice=False)
        outputs = logits_for(target, 1.0)
        torch.testing.assert_close(loss(outputs, target.float()), loss(outputs, target))

    def test_wrong_number_of_outputs(self):
        target = label_map()
        with pytest.raises(ValueError, match="made for 3 outputs, got 2"):
            make_loss("dice_ce", n_outputs=3, batch_dice=False)(logits_for(target, 1.0, 2), target)

    def test_target_without_channel_axis(self):
        target = label_map()
        with pytest.raises(ValueError, match=r"target must be \(B, 1, \*spatial\)"):
            make_loss("dice_ce", n_outputs=3, batch_dice=False)(logits_for(target, 1.0), target[:, 0])

    def test_unknown_kind(self):
        with pytest.raises(AutosegError, match=r"--loss 'dice': no loss of that name; choose one of "):
            make_loss("dice", n_outputs=1, batch_dice=False)

    def test_negative_weights(self):
        with pytest.raises(ValueError, match="values >= 0"):
            DeepSupervisionLoss(torch.nn.MSELoss(), [1.0, -0.5])


class TestDiceFocal:
    def test_perfect_logits_give_about_zero(self):
        target = label_map()
        loss = make_loss("dice_focal", n_outputs=3, batch_dice=False)
        assert loss(logits_for(target, 50.0), target).item() < 1e-4

    def test_decreases_towards_target(self):
        target = label_map()
        loss = make_loss("dice_focal", n_outputs=3, batch_dice=True)
        values = [loss(logits_for(target, s), target).item() for s in (0.0, 1.0, 2.0, 4.0)]
        assert all(a > b for a, b in itertools.pairwise(values))

    def test_gamma_zero_is_dice_ce(self):
        target = label_map(seed=3)
        logits = torch.randn(2, N_CLASSES, 8, 8, 8)
        dice_ce = DiceCELoss(
            include_background=False, to_onehot_y=True, softmax=True, smooth_nr=1e-5, smooth_dr=1e-5
        )
        torch.testing.assert_close(
            DiceFocalLoss(batch_dice=False, gamma=0.0)(logits, target), dice_ce(logits, target)
        )


class TestAutocast:
    @pytest.mark.parametrize("kind", ["dice_ce", "dice_focal"], ids=["dice_ce", "dice_focal"])
    def test_bf16_on_cpu(self, kind):
        torch.manual_seed(0)
        net = build_network(tiny_config("3d"), in_channels=1, n_classes=N_CLASSES)
        x = torch.randn(2, 1, 16, 16, 16)
        target = label_map(size=(16, 16, 16))
        loss = make_loss(kind, n_outputs=2, batch_dice=False)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            outputs = net(x)
            value = loss(outputs, target)
        assert outputs[0].dtype == torch.bfloat16
        assert value.dtype == torch.float32
        value.backward()
        assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
        reference = loss([o.float() for o in outputs], target)
        assert value.item() == pytest.approx(reference.item(), rel=1e-6)

    @pytest.mark.cuda
    @pytest.mark.skipif(not cuda_available(), reason="needs a CUDA GPU")
    def test_fp16_on_cuda(self):
        net = build_network(tiny_config("3d"), in_channels=1, n_classes=N_CLASSES).cuda()
        target = label_map(size=(16, 16, 16)).cuda()
        loss = make_loss("dice_ce", n_outputs=2, batch_dice=False)
        with torch.autocast("cuda", dtype=torch.float16):
            outputs = net(torch.randn(2, 1, 16, 16, 16, device="cuda"))
            value = loss(outputs, target)
        assert outputs[0].dtype == torch.float16
        assert value.dtype == torch.float32
        value.backward()


def test_overfits_one_example():
    torch.manual_seed(0)
    net = build_network(tiny_config("2d"), in_channels=1, n_classes=N_CLASSES)
    target = label_map(batch=1, size=(16, 16), seed=4)
    x = target.float() + 0.3 * torch.randn(1, 1, 16, 16)
    loss = make_loss("dice_ce", n_outputs=2, batch_dice=False)
    optimizer = torch.optim.SGD(net.parameters(), lr=1e-2, momentum=0.99, nesterov=True)
    values = []
    for _ in range(30):
        optimizer.zero_grad()
        value = loss(net(x), target)
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[-1] < 0.5 * values[0]
