"""Uncertainty maps and the triage row: entropy from logits, the mirrors' mean entropy carried
through the sliding window, mutual information, the per-case summary and uncertainty.csv."""

from __future__ import annotations

import csv
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.cli import main
from autoseg.inference.sliding_window import predict_logits
from autoseg.inference.uncertainty import (
    CaseUncertainty,
    entropy_from_logits,
    entropy_from_probabilities,
    max_entropy,
    mutual_information,
    summarize,
    write_uncertainty_csv,
)
from autoseg.io.image import read_image
from autoseg.io.samples import sample_dataset_dir
from autoseg.planning.plan import Plan

PLAN = Path(__file__).resolve().parents[2] / "plans" / "hippocampus_sample" / "plans.json"


def _direct_entropy(logits: np.ndarray, activation: str) -> np.ndarray:
    z = logits.astype(np.float64)
    if activation == "softmax":
        p = np.exp(z - z.max(axis=0))
        p /= p.sum(axis=0)
        return -(p * np.log(np.clip(p, 1e-300, None))).sum(axis=0)
    p = 1 / (1 + np.exp(-z))
    q = 1 - p
    return -(p * np.log(np.clip(p, 1e-300, None)) + q * np.log(np.clip(q, 1e-300, None))).sum(axis=0)


@pytest.mark.parametrize("activation", ["softmax", "sigmoid"])
@pytest.mark.parametrize("scale", [1.0, 30.0])
def test_entropy_from_logits_is_the_entropy(activation, scale):
    z = np.random.default_rng(0).normal(size=(3, 7, 5)) * scale
    got = entropy_from_logits(torch.from_numpy(z).float(), activation).numpy()
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, _direct_entropy(z, activation), atol=2e-4)
    assert (got >= -1e-6).all()
    assert (got <= max_entropy(3, activation) + 1e-5).all()


def test_uniform_outputs_reach_the_maximum():
    for activation, k in (("softmax", 4), ("sigmoid", 2)):
        h = entropy_from_logits(torch.zeros(k, 2), activation)
        np.testing.assert_allclose(h.numpy(), max_entropy(k, activation), rtol=1e-6)


def _case(shape=(12, 14, 10)) -> torch.Tensor:
    return torch.from_numpy(np.random.default_rng(1).normal(size=(1, *shape)).astype(np.float32))


@pytest.fixture(scope="module")
def config():
    return Plan.load(PLAN).configuration("3d_fullres")


def test_without_mirrors_the_channel_is_the_entropy_of_the_logits(config):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    data = _case()  # smaller than the patch: one window
    out = predict_logits(net, data, config, tta=False, member_entropy="softmax")
    logits = predict_logits(net, data, config, tta=False)
    assert out.shape[0] == logits.shape[0] + 1
    torch.testing.assert_close(out[:3], logits)
    torch.testing.assert_close(out[3], entropy_from_logits(logits, "softmax"), atol=1e-5, rtol=1e-5)


def test_mirror_disagreement_gives_mutual_information(config):
    data = _case()
    # a 1x1x1 convolution sees no direction: every mirror agrees, so no mutual information
    torch.manual_seed(0)
    symmetric = torch.nn.Conv3d(1, 3, 1).eval()
    out = predict_logits(symmetric, data, config, tta=True, member_entropy="softmax")
    h = entropy_from_logits(out[:3], "softmax").numpy()
    assert float(mutual_information(h, out[3].numpy()).max()) < 1e-5
    # a kernel that looks one way: the mirrors disagree, the mean of their entropies is below the
    # entropy of their consensus somewhere (positive mutual information), never much above it
    torch.manual_seed(0)
    skewed = torch.nn.Conv3d(1, 3, 3, padding=1).eval()
    with torch.no_grad():
        skewed.weight[..., 0, :, :] *= 4
    out = predict_logits(skewed, data, config, tta=True, member_entropy="softmax")
    h = entropy_from_logits(out[:3], "softmax").numpy()
    mi = mutual_information(h, out[3].numpy())
    assert float(mi.max()) > 1e-3
    assert (mi >= 0).all()


def test_regions_use_binary_entropies(config):
    torch.manual_seed(0)
    net = torch.nn.Conv3d(1, 2, 3, padding=1).eval()
    out = predict_logits(net, _case(), config, tta=False, member_entropy="sigmoid")
    want = _direct_entropy(out[:2].numpy(), "sigmoid")
    np.testing.assert_allclose(out[2].numpy(), want, atol=1e-4)


class TestSummary:
    def test_means_inside_the_foreground_and_the_uncertain_volume(self):
        labels = np.zeros((4, 4, 4), np.uint8)
        labels[:2] = 1  # 32 voxels of foreground
        h = np.full(labels.shape, 0.1, np.float32)
        h[0] = 0.9  # 16 foreground voxels above half the maximum (max 1.0)
        h[3, 0, 0] = 0.8  # one background voxel too
        row = summarize("c", h, h / 4, labels, (2.0, 1.0, 0.5), max_entropy_nats=1.0)
        assert row.foreground_ml == pytest.approx(32 / 1000)
        assert row.mean_entropy_foreground == pytest.approx(0.5, abs=1e-6)
        assert row.mean_mutual_information_foreground == pytest.approx(0.125, abs=1e-6)
        assert row.uncertain_ml == pytest.approx(17 / 1000)

    def test_no_foreground(self):
        z = np.zeros((2, 2, 2), np.float32)
        row = summarize("c", z, z, z.astype(np.uint8), (1.0, 1.0, 1.0), max_entropy_nats=1.0)
        assert math.isnan(row.mean_entropy_foreground)
        assert row.foreground_ml == 0

    def test_shapes_must_agree(self):
        z = np.zeros((2, 2, 2), np.float32)
        with pytest.raises(ValueError, match="case c: maps"):
            summarize("c", z, z, np.zeros((2, 2, 3)), (1.0,) * 3, max_entropy_nats=1.0)


def test_csv_least_certain_first_and_kept_across_runs(tmp_path):
    path = tmp_path / "uncertainty.csv"
    nan = float("nan")
    write_uncertainty_csv(
        [CaseUncertainty("a", 1.0, 0.2, 0.01, 0.5), CaseUncertainty("b", 0.0, nan, nan, 0.0)], path
    )
    write_uncertainty_csv(
        [CaseUncertainty("c", 2.0, 0.7, 0.1, 1.5), CaseUncertainty("a", 1.0, 0.1, 0.0, 0.2)], path
    )
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["case"] for r in rows] == ["c", "a", "b"]  # a's new row; no foreground last
    assert rows[1]["mean_entropy_foreground"] == "0.1"
    assert rows[2]["mean_entropy_foreground"] == ""
    assert not list(tmp_path.glob(".partial-*"))


def test_csv_ranks_by_mutual_information_then_entropy(tmp_path):
    """The members' disagreement decides the order (it tracked Dice in bench_uncertainty); with one
    member (mutual information 0 everywhere) the entropy does."""
    path = tmp_path / "uncertainty.csv"
    write_uncertainty_csv(
        [
            CaseUncertainty("high_h", 1.0, 0.9, 0.01, 0.5),
            CaseUncertainty("high_mi", 1.0, 0.3, 0.2, 0.1),
            CaseUncertainty("one_member_a", 1.0, 0.5, 0.0, 0.1),
            CaseUncertainty("one_member_b", 1.0, 0.6, 0.0, 0.1),
        ],
        path,
    )
    assert [r["case"] for r in _rows(path)] == ["high_mi", "high_h", "one_member_b", "one_member_a"]


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


class TestPredictSavesUncertainty:
    """``autoseg predict --save-uncertainty`` on real scans with the tiny trained model."""

    CASES = sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz"))[:2]

    @pytest.fixture
    def scans(self, tmp_path: Path) -> Path:
        src = tmp_path / "in"
        src.mkdir()
        for p in self.CASES:
            shutil.copy(p, src / p.name)
        return src

    def _predict(self, work: Path, src: Path, out: Path, *extra: str) -> int:
        args = ["predict", "-i", str(src), "-o", str(out), "-d", "hippo", "--device", "cpu"]
        return main([*args, "--work-dir", str(work), "-q", *extra])

    def test_maps_csv_and_unchanged_labels(self, trained_work, scans, tmp_path):
        plain, out = tmp_path / "plain", tmp_path / "out"
        assert self._predict(trained_work, scans, plain, "-c", "3d_fullres") == 0
        assert self._predict(trained_work, scans, out, "-c", "3d_fullres", "--save-uncertainty") == 0
        rows = _rows(out / "uncertainty" / "uncertainty.csv")
        assert sorted(r["case"] for r in rows) == sorted(p.name[:-7] for p in self.CASES)
        score = [
            (float(r["mean_mutual_information_foreground"]), float(r["mean_entropy_foreground"]))
            for r in rows
        ]
        assert score == sorted(score, reverse=True)  # least certain first
        for p in self.CASES:
            case = p.name[:-7]
            labels = read_image(out / p.name)
            np.testing.assert_array_equal(labels.array, read_image(plain / p.name).array)
            h = read_image(out / "uncertainty" / f"{case}_entropy.nii.gz")
            mi = read_image(out / "uncertainty" / f"{case}_mutual_info.nii.gz")
            for m in (h, mi):
                assert m.array.shape == labels.array.shape
                assert m.geometry.same_grid(labels.geometry, rtol=0, atol=1e-6)
            assert (h.array >= 0).all()
            assert h.array.max() <= math.log(3) + 1e-4
            assert (mi.array >= 0).all()
            assert (mi.array <= h.array + 1e-4).all()
            assert mi.array.max() > 0  # the 8 mirrors of a 2-iteration model disagree
            row = next(r for r in rows if r["case"] == case)
            fg = labels.array != 0
            if fg.any():
                assert float(row["mean_entropy_foreground"]) == pytest.approx(
                    float(h.array[fg].mean()), rel=1e-4
                )
        assert not (out / "uncertainty" / f"{self.CASES[0].name}").exists()  # only maps and the CSV

    def test_one_member_has_no_mutual_information(self, trained_work, scans, tmp_path):
        out = tmp_path / "out"
        assert self._predict(trained_work, scans, out, "-c", "2d", "--no-tta", "--save-uncertainty") == 0
        for p in self.CASES:
            mi = read_image(out / "uncertainty" / f"{p.name[:-7]}_mutual_info.nii.gz").array
            assert float(mi.max()) < 1e-4
            assert read_image(out / "uncertainty" / f"{p.name[:-7]}_entropy.nii.gz").array.max() > 0

    def test_an_ensemble_of_configurations_uses_its_mean_probabilities(self, trained_work, scans, tmp_path):
        out = tmp_path / "out"
        extra = ("-c", "3d_fullres", "2d", "--no-tta", "--save-uncertainty", "--save-probabilities")
        assert self._predict(trained_work, scans, out, *extra) == 0
        for p in self.CASES:
            case = p.name[:-7]
            with np.load(out / f"{case}.npz") as z:
                probs = z["probabilities"].astype(np.float32)
            h = read_image(out / "uncertainty" / f"{case}_entropy.nii.gz").array
            np.testing.assert_allclose(h, entropy_from_probabilities(probs, "softmax"), atol=2e-3)
            mi = read_image(out / "uncertainty" / f"{case}_mutual_info.nii.gz").array
            assert mi.max() > 1e-3  # two different networks disagree somewhere

    def test_a_missing_map_is_predicted_again(self, trained_work, scans, tmp_path):
        out = tmp_path / "out"
        assert self._predict(trained_work, scans, out, "-c", "2d", "--no-tta", "--save-uncertainty") == 0
        gone = out / "uncertainty" / f"{self.CASES[0].name[:-7]}_mutual_info.nii.gz"
        gone.unlink()
        before = {p: p.stat().st_mtime_ns for p in (out / "uncertainty").glob("*.nii.gz")}
        assert self._predict(trained_work, scans, out, "-c", "2d", "--no-tta", "--save-uncertainty") == 0
        assert gone.is_file()
        other = out / "uncertainty" / f"{self.CASES[1].name[:-7]}_entropy.nii.gz"
        assert other.stat().st_mtime_ns == before[other]  # the other case was skipped
        rows = _rows(out / "uncertainty" / "uncertainty.csv")
        assert len(rows) == 2  # the skipped case's row is kept
