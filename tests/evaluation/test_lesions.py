"""Lesion-wise detection (``evaluate --lesions``): components, one-to-one matching at IoU > 0.1,
counts and their totals, volumes, the FROC from ``CASE.npz`` probabilities, and the command line,
on hand-built cubes whose answers can be counted by eye."""

from __future__ import annotations

import csv
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import DatasetError, ModelError
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.lesions import (
    FROC_FP_RATES,
    CaseLesions,
    Lesion,
    find_lesions,
    froc,
    label_components,
    match_pairs,
    total_counts,
)
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.io.image import Geometry, write_image
from autoseg.labels import LabelScheme

ISO = (1.0, 1.0, 1.0)
IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
PLAIN = LabelScheme.from_declared({"background": 0, "nodule": 1})


def _box(
    arr: np.ndarray, corner: tuple[int, int, int], size: tuple[int, int, int], value: object = True
) -> None:
    arr[tuple(slice(c, c + s) for c, s in zip(corner, size, strict=True))] = value


def _three_found_two() -> tuple[np.ndarray, np.ndarray]:
    """Reference: three 3x3x3 cubes. Prediction: the first shifted by one voxel along x (IoU
    18/36), the second exactly, the third missed, and a 2x2x2 false positive far from all."""
    ref = np.zeros((12, 12, 12), bool)
    pred = np.zeros_like(ref)
    for corner in ((1, 1, 1), (1, 1, 7), (7, 7, 7)):
        _box(ref, corner, (3, 3, 3))
    _box(pred, (1, 1, 2), (3, 3, 3))
    _box(pred, (1, 1, 7), (3, 3, 3))
    _box(pred, (7, 1, 1), (2, 2, 2))
    return pred, ref


def _at(lesions: tuple[Lesion, ...], centroid: tuple[float, ...]) -> Lesion:
    (found,) = [les for les in lesions if les.centroid == pytest.approx(centroid)]
    return found


class TestCounts:
    def test_three_lesions_two_found_one_missed_one_false_positive(self) -> None:
        pred, ref = _three_found_two()
        found = find_lesions(pred, ref, spacing=ISO)
        c = found.counts()
        assert (c["n_reference"], c["n_predicted"], c["matched"]) == (3, 3, 2)
        assert (c["false_positives"], c["false_negatives"]) == (1, 1)
        assert c["sensitivity"] == pytest.approx(2 / 3)
        assert c["precision"] == pytest.approx(2 / 3)
        assert c["f1"] == pytest.approx(2 / 3)
        assert total_counts([found])["fp_per_case"] == 1.0

        shifted, exact, missed = (_at(found.reference, (z, z, x)) for z, x in ((2, 2), (2, 8), (8, 8)))
        assert shifted.matched
        assert shifted.iou == pytest.approx(18 / 36)
        assert exact.matched
        assert exact.iou == 1.0
        assert not missed.matched
        assert missed.partner is None
        assert missed.iou == 0.0
        false_alarm = _at(found.predicted, (7.5, 1.5, 1.5))
        assert not false_alarm.matched
        assert false_alarm.voxels == 8
        # partners point at each other
        for les in found.reference:
            if les.matched:
                assert found.predicted[les.partner - 1].partner == les.id

    def test_touching_lesions_are_one_with_full_connectivity(self) -> None:
        ref = np.zeros((8, 8, 8), bool)
        _box(ref, (0, 0, 0), (2, 2, 2))
        _box(ref, (2, 2, 2), (2, 2, 2))  # meets the first at one corner only
        assert label_components(ref)[1] == 1
        found = find_lesions(ref, ref, spacing=ISO)
        assert found.counts()["n_reference"] == 1
        assert found.reference[0].voxels == 16
        ref[2:4, 2:4, 2:4] = False
        _box(ref, (3, 3, 3), (2, 2, 2))  # now a voxel apart: two lesions
        assert label_components(ref)[1] == 2

    def test_line_shaped_and_2d_masks(self) -> None:
        line = np.zeros((1, 1, 9), bool)
        line[0, 0, [0, 2, 3, 7]] = True
        assert label_components(line)[1] == 3
        flat = np.zeros((5, 5), bool)
        flat[0, 0] = flat[1, 1] = flat[3, 3] = True  # diagonal neighbours touch in 2D too
        assert label_components(flat)[1] == 2
        found = find_lesions(flat, flat, spacing=(0.5, 2.0))
        assert [les.volume_mm3 for les in found.reference] == [2 * 1.0, 1.0]

    def test_a_lesion_split_in_two_predicted_parts_matches_one_and_the_other_is_a_false_positive(
        self,
    ) -> None:
        ref = np.zeros((4, 4, 10), bool)
        _box(ref, (1, 1, 1), (2, 2, 6))
        pred = np.zeros_like(ref)
        _box(pred, (1, 1, 1), (2, 2, 2))
        _box(pred, (1, 1, 5), (2, 2, 2))
        found = find_lesions(pred, ref, spacing=ISO)
        c = found.counts()
        assert (c["n_predicted"], c["matched"], c["false_positives"]) == (2, 1, 1)
        assert (c["sensitivity"], c["precision"]) == (1.0, 0.5)
        assert sorted(les.iou for les in found.predicted) == pytest.approx([8 / 24, 8 / 24])

    def test_one_prediction_covering_two_lesions_matches_one(self) -> None:
        ref = np.zeros((3, 3, 9), bool)
        _box(ref, (0, 0, 0), (3, 3, 4))
        _box(ref, (0, 0, 5), (3, 3, 4))
        pred = np.ones_like(ref)
        found = find_lesions(pred, ref, spacing=ISO)
        c = found.counts()
        assert (c["n_reference"], c["n_predicted"], c["matched"], c["false_negatives"]) == (2, 1, 1, 1)

    @pytest.mark.parametrize("k", [1, 2, 3])
    @pytest.mark.parametrize("threshold", [0.1, 0.05])
    def test_iou_threshold_is_strict(self, k: int, threshold: float) -> None:
        ref = np.zeros((1, 2, 10), bool)
        ref[:] = True  # 20 voxels
        pred = np.zeros_like(ref)
        pred[0, 0, :k] = True
        iou = k / 20  # 0.05, 0.1 (at the default threshold: no match), 0.15
        found = find_lesions(pred, ref, spacing=ISO, iou_threshold=threshold)
        assert found.reference[0].iou == pytest.approx(iou)
        assert found.reference[0].matched is (iou > threshold)
        assert found.counts()["matched"] == int(iou > threshold)

    def test_empty_reference_empty_prediction_and_both(self) -> None:
        pred, ref = _three_found_two()
        none = np.zeros_like(ref)
        only_pred = find_lesions(pred, none, spacing=ISO).counts()
        assert (only_pred["n_predicted"], only_pred["false_positives"]) == (3, 3)
        assert math.isnan(only_pred["sensitivity"])
        assert (only_pred["precision"], only_pred["f1"]) == (0.0, 0.0)
        only_ref = find_lesions(none, ref, spacing=ISO).counts()
        assert (only_ref["false_negatives"], only_ref["sensitivity"], only_ref["f1"]) == (3, 0.0, 0.0)
        assert math.isnan(only_ref["precision"])
        neither = find_lesions(none, none, spacing=ISO).counts()
        assert all(math.isnan(neither[k]) for k in ("sensitivity", "precision", "f1"))
        assert total_counts([CaseLesions(), CaseLesions()])["fp_per_case"] == 0.0

    def test_ignore_voxels_hide_a_false_positive_and_do_not_split_a_lesion(self) -> None:
        pred, ref = _three_found_two()
        annotated = np.ones_like(ref)
        _box(annotated, (6, 0, 0), (4, 4, 4), False)  # covers the false positive at (7, 1, 1)
        _box(pred, (1, 6, 10), (1, 5, 1))  # a predicted bar, y 6-10, away from the cubes
        annotated[1, 8, :] = False  # an unannotated row across the bar's middle
        plain = find_lesions(pred, ref, spacing=ISO)
        hidden = find_lesions(pred, ref, spacing=ISO, annotated=annotated)
        assert (plain.counts()["n_predicted"], plain.counts()["false_positives"]) == (4, 2)
        # the cube in unannotated voxels is gone; the bar is one lesion of its 4 annotated voxels
        assert (hidden.counts()["n_predicted"], hidden.counts()["false_positives"]) == (3, 1)
        assert _at(hidden.predicted, (1.0, 8.0, 10.0)).voxels == 4
        assert _at(plain.predicted, (1.0, 8.0, 10.0)).voxels == 5
        assert hidden.counts()["matched"] == plain.counts()["matched"] == 2

    def test_volumes_use_the_anisotropic_spacing(self) -> None:
        ref = np.zeros((6, 6, 6), bool)
        _box(ref, (1, 1, 1), (2, 3, 4))
        spacing = (2.5, 0.7, 0.8)
        (lesion,) = find_lesions(np.zeros_like(ref), ref, spacing=spacing).reference
        assert lesion.voxels == 24
        assert lesion.volume_mm3 == pytest.approx(24 * 2.5 * 0.7 * 0.8)
        assert lesion.centroid == pytest.approx((1.5, 2.0, 2.5))

    def test_bad_arguments(self) -> None:
        pred, ref = _three_found_two()
        with pytest.raises(ValueError, match=r"iou_threshold must be in \[0, 1\], got 1.5"):
            find_lesions(pred, ref, spacing=ISO, iou_threshold=1.5)
        with pytest.raises(ValueError, match="spacing must hold 3 positive"):
            find_lesions(pred, ref, spacing=(1.0, 1.0))
        with pytest.raises(ValueError, match="probability has shape"):
            find_lesions(pred, ref, spacing=ISO, probability=np.zeros((2, 2, 2)))


class TestMatching:
    def test_most_pairs_before_the_largest_iou(self) -> None:
        # greedy by IoU takes (0, 0) first and leaves reference 1 with nothing
        assert match_pairs(np.array([[0.9, 0.2], [0.15, 0.0]])) == [(0, 1), (1, 0)]

    def test_largest_iou_sum_among_equal_counts_and_threshold(self) -> None:
        iou = np.array([[0.5, 0.4], [0.45, 0.3]])  # 0.5 + 0.3 < 0.4 + 0.45
        assert match_pairs(iou) == [(0, 1), (1, 0)]
        assert match_pairs(iou, threshold=0.42) == [(0, 0)]  # both want prediction 0
        assert match_pairs(np.zeros((3, 0))) == []
        assert match_pairs(np.full((2, 2), 0.1)) == []

    def test_one_to_one_on_many(self) -> None:
        rng = np.random.default_rng(0)
        iou = rng.uniform(0, 0.4, (7, 5))
        pairs = match_pairs(iou)
        assert len({r for r, _ in pairs}) == len(pairs) == len({p for _, p in pairs})
        assert all(iou[r, p] > 0.1 for r, p in pairs)


def _case(n_ref: int, predicted: list[tuple[float, bool]]) -> CaseLesions:
    """A case with ``n_ref`` reference lesions and predicted ``(score, hit)`` lesions."""
    n_hit = sum(hit for _, hit in predicted)
    ref = tuple(Lesion(i + 1, 1, 1.0, (0.0,), partner=1 if i < n_hit else None) for i in range(n_ref))
    pred = tuple(
        Lesion(j + 1, 1, 1.0, (0.0,), partner=1 if hit else None, score=s)
        for j, (s, hit) in enumerate(predicted)
    )
    return CaseLesions(ref, pred)


class TestFroc:
    def test_hand_computed_curve(self) -> None:
        # candidates by score: 0.95 FP, 0.9 hit, 0.8 FP, 0.6 hit, 0.3 FP; 3 lesions in 2 cases
        cases = [_case(2, [(0.9, True), (0.8, False)]), _case(1, [(0.95, False), (0.6, True), (0.3, False)])]
        f = froc(cases)
        assert f.fp_per_case == pytest.approx((0.0, 0.5, 0.5, 1.0, 1.0, 1.5))
        assert f.sensitivity == pytest.approx((0, 0, 1 / 3, 1 / 3, 2 / 3, 2 / 3))
        assert f.thresholds[1:] == pytest.approx((0.95, 0.9, 0.8, 0.6, 0.3))
        # at 1/8 and 1/4 FP per case only the empty operating point fits
        assert f.fp_rates == FROC_FP_RATES
        assert f.sensitivity_at == pytest.approx((0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3))
        assert f.cpm == pytest.approx((1 / 3 + 4 * 2 / 3) / 7)

    def test_tied_scores_are_one_operating_point(self) -> None:
        f = froc([_case(1, [(0.5, True), (0.5, False)])], fp_rates=(0.5, 1.0))
        assert f.fp_per_case == (0.0, 1.0)
        assert f.sensitivity_at == (0.0, 1.0)

    def test_points_are_monotone_and_end_at_the_lesion_sensitivity(self) -> None:
        rng = np.random.default_rng(1)
        cases = []
        for _ in range(6):
            n_pred = int(rng.integers(0, 6))
            hits = rng.random(n_pred) < 0.4
            n_ref = int(hits.sum()) + int(rng.integers(0, 3))
            cases.append(
                _case(n_ref, [(float(s), bool(h)) for s, h in zip(rng.random(n_pred), hits, strict=True)])
            )
        f = froc(cases)
        assert np.all(np.diff(f.fp_per_case) >= 0)
        assert np.all(np.diff(f.sensitivity) >= 0)
        assert np.all(np.diff(f.sensitivity_at) >= 0)
        total = total_counts(cases)
        assert f.sensitivity[-1] == pytest.approx(total["sensitivity"])
        assert f.fp_per_case[-1] == pytest.approx(total["fp_per_case"])
        assert f.cpm == pytest.approx(np.mean(f.sensitivity_at))

    def test_no_predicted_lesion_is_zero_sensitivity(self) -> None:
        f = froc([_case(2, []), CaseLesions()])
        assert (f.fp_per_case, f.sensitivity) == ((0.0,), (0.0,))
        assert f.sensitivity_at == (0.0,) * len(FROC_FP_RATES)
        assert f.cpm == 0.0

    def test_no_reference_lesion_and_bad_input(self) -> None:
        f = froc([_case(0, [(0.3, False)])])
        assert math.isnan(f.cpm)
        assert all(math.isnan(s) for s in f.sensitivity_at)
        with pytest.raises(ValueError, match="needs a score"):
            froc([CaseLesions((), (Lesion(1, 1, 1.0, (0.0,)),))])
        with pytest.raises(ValueError, match="at least one case"):
            froc([])
        with pytest.raises(ValueError, match="fp_rates must be positive"):
            froc([CaseLesions()], fp_rates=(0.0, 1.0))


# --- evaluate_folders and the command line -------------------------------------------------


def _geometry(spacing: tuple[float, float, float] = ISO) -> Geometry:
    return Geometry(spacing, (0.0, 0.0, 0.0), IDENTITY)


def _probabilities(pred: np.ndarray, scores: dict[tuple[int, int, int], float]) -> np.ndarray:
    """``(2, Z, Y, X)`` softmax-like probabilities: 0.125 on the predicted voxels, ``score`` at the
    given voxel of a lesion, and a 1.0 just outside every lesion that no score may pick up."""
    fg = np.where(pred > 0, 0.125, 0.0)
    fg[0, 0, 0] = 1.0  # outside every predicted lesion
    for voxel, score in scores.items():
        fg[voxel] = score
    return np.stack([1 - fg, fg]).astype(np.float32)


def _write_cases(
    root: Path, *, probabilities: bool, spacing: tuple[float, float, float] = ISO
) -> tuple[Path, Path]:
    """Case ``c1``: :func:`_three_found_two` as label 1, plus a label-2 cube touching a label-1
    lesion (found exactly); case ``c2``: no reference lesion, two false positives of label 1.
    Scores (exact in float16): c1 shifted 0.75, exact 0.5, false positive 0.875; c2 0.625, 0.25."""
    pred_b, ref_b = _three_found_two()
    ref1, pred1 = ref_b.astype(np.uint8), pred_b.astype(np.uint8)
    _box(ref1, (1, 4, 7), (3, 2, 3), 2)  # face to face with the exact label-1 cube
    _box(pred1, (1, 4, 7), (3, 2, 3), 2)
    ref2, pred2 = np.zeros_like(ref1), np.zeros_like(ref1)
    _box(pred2, (2, 2, 2), (2, 2, 2), 1)
    _box(pred2, (8, 8, 8), (2, 2, 2), 1)
    pred_dir, ref_dir = root / "pred", root / "ref"
    for case, ref, pred in (("c1", ref1, pred1), ("c2", ref2, pred2)):
        write_image(ref, _geometry(spacing), ref_dir / f"{case}.nii.gz")
        write_image(pred, _geometry(spacing), pred_dir / f"{case}.nii.gz")
    if probabilities:
        three = ProbabilityMap.of(
            np.concatenate(
                [_probabilities(pred1, {(2, 2, 3): 0.75, (2, 2, 8): 0.5, (8, 2, 2): 0.875}), pred1[None] == 2]
            ),
            LabelScheme.from_declared({"background": 0, "nodule": 1, "vessel": 2}),
        )
        # the label-2 channel: 1 on its cube; background channel no longer sums to one (unchecked)
        three.save(pred_dir / "c1.npz")
        ProbabilityMap.of(
            np.concatenate(
                [_probabilities(pred2, {(3, 3, 3): 0.625, (9, 9, 9): 0.25}), np.zeros((1, *pred2.shape))]
            ),
            LabelScheme.from_declared({"background": 0, "nodule": 1, "vessel": 2}),
        ).save(pred_dir / "c2.npz")
    return pred_dir, ref_dir


def _no_constant(name: str) -> None:
    raise AssertionError(f"{name} in JSON")


class TestEvaluateFolders:
    def test_per_case_and_pooled_counts_two_labels_and_the_froc(self, tmp_path: Path) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=True)
        out = tmp_path / "eval" / "summary.json"
        summary = evaluate_folders(pred_dir, ref_dir, out, lesions=True)
        data = json.loads(out.read_text(), parse_constant=_no_constant)  # strict JSON
        assert data["lesions"]["settings"]["iou_threshold"] == 0.1
        one, two = data["lesions"]["per_label"]["1"], data["lesions"]["per_label"]["2"]
        # label 1: c1 as in the hand-built case, c2 two false positives and no lesion
        assert (one["n_reference"], one["n_predicted"], one["matched"]) == (3, 5, 2)
        assert one["sensitivity"] == pytest.approx(2 / 3)
        assert one["precision"] == pytest.approx(2 / 5)
        assert one["fp_per_case"] == pytest.approx((1 + 2) / 2)
        assert one["f1"] == pytest.approx(2 * 2 / (3 + 5))
        # label 2 touches a label-1 lesion but is a lesion of its own, found
        assert (two["n_reference"], two["matched"], two["false_positives"]) == (1, 1, 0)
        c1, c2 = (c["labels"]["1"] for c in data["lesions"]["per_case"])
        assert c1["sensitivity"] == pytest.approx(2 / 3)
        assert math.isnan(summary["lesions"]["per_case"][1]["labels"]["1"]["sensitivity"])
        assert c2["sensitivity"] is None  # NaN in JSON
        scores = sorted(les["score"] for c in (c1, c2) for les in c["predicted"])
        assert scores == [0.25, 0.5, 0.625, 0.75, 0.875]  # the maxima, never the 1.0 outside
        # the FROC: same candidates as TestFroc.test_hand_computed_curve, by score
        f = one["froc"]
        assert f["curve"]["threshold"] == [None, 0.875, 0.75, 0.625, 0.5, 0.25]
        assert f["sensitivity"] == pytest.approx([0, 0, 1 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3])
        assert f["cpm"] == pytest.approx(3 / 7)
        assert two["froc"]["cpm"] == 1.0
        assert (out.parent / "summary_froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        with open(out.parent / "summary_lesions.csv", newline="") as fh:
            rows = list(csv.DictReader(fh))
        n_lesions = sum(
            len(c["labels"][k][g])
            for c in data["lesions"]["per_case"]
            for k in "12"
            for g in ("reference", "predicted")
        )
        assert len(rows) == n_lesions == 3 + 3 + 1 + 1 + 2
        missed = [r for r in rows if r["kind"] == "reference" and r["matched"] == "0"]
        assert [(r["case"], r["label"], r["centroid_z"], r["partner"]) for r in missed] == [
            ("c1", "1", "8.00", "")
        ]
        assert float(missed[0]["volume_mm3"]) == 27.0

    def test_without_probabilities_no_froc_and_volumes_in_mm3(self, tmp_path: Path) -> None:
        spacing = (2.5, 0.7, 0.8)
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=False, spacing=spacing)
        out = tmp_path / "s.json"
        summary = evaluate_folders(pred_dir, ref_dir, out, labels=[1], lesions=True)
        assert list(summary["lesions"]["per_label"]) == ["1"]
        assert summary["lesions"]["per_label"]["1"]["froc"] is None
        assert not (tmp_path / "s_froc.png").exists()
        ref_vols = [
            les["volume_mm3"] for les in summary["lesions"]["per_case"][0]["labels"]["1"]["reference"]
        ]
        assert ref_vols == pytest.approx([27 * 2.5 * 0.7 * 0.8] * 3, rel=1e-6)  # NIfTI stores float32
        rows = (tmp_path / "s_lesions.csv").read_text().splitlines()
        assert rows[0].split(",")[-1] == "score"
        assert all(r.endswith(",") for r in rows[1:])

    def test_regions_and_ignore(self, tmp_path: Path) -> None:
        scheme = LabelScheme.from_declared({"background": 0, "whole": [1, 2], "core": 2, "ignore": 3}, [1, 2])
        ref = np.zeros((10, 10, 12), np.uint8)
        _box(ref, (1, 1, 1), (4, 4, 4), 1)
        _box(ref, (2, 2, 2), (2, 2, 2), 2)  # lesion A: whole, with a core
        _box(ref, (6, 6, 7), (3, 3, 3), 1)  # lesion B: whole only, missed
        _box(ref, (0, 6, 0), (4, 4, 4), 3)  # unannotated
        pred = ref.copy()
        pred[ref == 3] = 0
        pred[6:9, 6:9, 7:10] = 0
        _box(pred, (1, 7, 1), (2, 2, 2), 2)  # inside the unannotated block: hidden
        _box(pred, (7, 1, 8), (2, 2, 2), 2)  # a false positive of both regions
        for d, arr in (("ref", ref), ("pred", pred)):
            write_image(arr, _geometry(), tmp_path / d / "a.nii.gz")
        s = evaluate_folders(
            tmp_path / "pred", tmp_path / "ref", tmp_path / "s.json", scheme=scheme, lesions=True
        )
        whole, core = s["lesions"]["per_label"]["whole"], s["lesions"]["per_label"]["core"]
        assert (whole["n_reference"], whole["n_predicted"], whole["matched"]) == (2, 2, 1)
        assert (core["n_reference"], core["n_predicted"], core["matched"]) == (1, 2, 1)
        assert (whole["sensitivity"], whole["precision"], core["sensitivity"], core["precision"]) == (
            0.5,
            0.5,
            1.0,
            0.5,
        )
        # without the ignore label the hidden prediction is one more false positive of each region
        plain = LabelScheme.from_declared(
            {"background": 0, "whole": [1, 2], "core": 2, "other": 3}, [1, 2, 3]
        )
        s = evaluate_folders(
            tmp_path / "pred", tmp_path / "ref", tmp_path / "t.json", scheme=plain, lesions=True
        )
        assert s["lesions"]["per_label"]["core"]["false_positives"] == 2

    def test_flipped_prediction_and_its_probabilities_are_reoriented(self, tmp_path: Path) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path / "a", probabilities=True)
        straight = evaluate_folders(pred_dir, ref_dir, tmp_path / "a.json", lesions=True)["lesions"]
        from autoseg.io.image import read_image

        flipped_dir = tmp_path / "flipped"
        for case in ("c1", "c2"):
            img = read_image(pred_dir / f"{case}.nii.gz")
            nx = img.array.shape[2]
            geo = Geometry(ISO, (nx - 1.0, 0.0, 0.0), (-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
            write_image(img.array[:, :, ::-1], geo, flipped_dir / f"{case}.nii.gz")
            pm = ProbabilityMap.load(
                pred_dir / f"{case}.npz",
                scheme=LabelScheme.from_declared({"background": 0, "nodule": 1, "vessel": 2}),
            )
            ProbabilityMap(
                np.ascontiguousarray(pm.probabilities[..., ::-1]),
                pm.label_values,
                pm.activation,
                pm.channel_names,
                pm.channel_values,
            ).save(flipped_dir / f"{case}.npz")
        turned = evaluate_folders(flipped_dir, ref_dir, tmp_path / "b.json", lesions=True)["lesions"]
        assert turned["per_label"]["1"]["froc"] == straight["per_label"]["1"]["froc"]
        assert turned["per_case"] == straight["per_case"]


class TestErrors:
    def test_probabilities_of_another_shape(self, tmp_path: Path) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=True)
        bad = pred_dir / "c2.npz"
        ProbabilityMap.of(
            np.full((3, 4, 4, 4), 1 / 3, np.float32),
            LabelScheme.from_declared({"background": 0, "nodule": 1, "vessel": 2}),
        ).save(bad)
        out = tmp_path / "eval" / "summary.json"
        with pytest.raises(
            ModelError,
            match=rf"^{re.escape(str(bad))}: probabilities of shape \(3, 4, 4, 4\), "
            r"expected \(3, 12, 12, 12\).*predict again with --save-probabilities",
        ):
            evaluate_folders(pred_dir, ref_dir, out, lesions=True)
        assert not out.parent.exists()
        # without --lesions the probabilities are not looked at
        evaluate_folders(pred_dir, ref_dir, out)
        assert sorted(p.name for p in out.parent.iterdir()) == ["summary.csv", "summary.json"]

    def test_some_predictions_without_probabilities(self, tmp_path: Path) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=True)
        (pred_dir / "c2.npz").unlink()
        with pytest.raises(DatasetError, match=r"probabilities for 1 case\(s\) but not for 1: c2"):
            evaluate_folders(pred_dir, ref_dir, tmp_path / "s.json", lesions=True)
        assert not (tmp_path / "s.json").exists()

    def test_region_probabilities_need_the_dataset_json(self, tmp_path: Path) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=False)
        regions = LabelScheme.from_declared({"background": 0, "whole": [1, 2], "core": 2}, [1, 2])
        for case in ("c1", "c2"):
            ProbabilityMap.of(np.zeros((2, 12, 12, 12), np.float32), regions).save(pred_dir / f"{case}.npz")
        with pytest.raises(
            ModelError, match=r"c1\.npz: holds sigmoid probabilities of regions; pass --dataset-json"
        ):
            evaluate_folders(pred_dir, ref_dir, tmp_path / "s.json", lesions=True)
        # with the scheme, a region file is read; its regions are scored
        s = evaluate_folders(pred_dir, ref_dir, tmp_path / "s.json", scheme=regions, lesions=True)
        assert s["lesions"]["per_label"]["whole"]["froc"]["fp_rates"] == list(FROC_FP_RATES)

    def test_bad_threshold(self, tmp_path: Path) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=False)
        with pytest.raises(ValueError, match=r"lesion_iou must be in \[0, 1\]"):
            evaluate_folders(pred_dir, ref_dir, tmp_path / "s.json", lesions=True, lesion_iou=-0.1)


def _evaluate_args(pred_dir: Path, ref_dir: Path, out: Path) -> list[str]:
    return [
        "evaluate",
        "--pred",
        str(pred_dir),
        "--ref",
        str(ref_dir),
        "-o",
        str(out),
        "--preprocess-workers",
        "1",
    ]


class TestCommandLine:
    def test_lesions_end_to_end(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=True)
        out = tmp_path / "eval" / "m.json"
        args = _evaluate_args(pred_dir, ref_dir, out)
        assert main([*args, "--lesions", "--lesion-iou", "0.6"]) == 0
        err = capsys.readouterr().err
        assert "lesions (IoU > 0.6, one-to-one) -> m_lesions.csv, m_froc.png" in err
        assert sorted(p.name for p in out.parent.iterdir()) == [
            "m.csv",
            "m.json",
            "m_froc.png",
            "m_lesions.csv",
        ]
        data = json.loads(out.read_text())
        # at IoU > 0.6 the shifted cube (IoU 0.5) no longer matches
        assert data["lesions"]["per_label"]["1"]["matched"] == 1
        assert data["lesions"]["settings"]["iou_threshold"] == 0.6

    def test_without_lesions_nothing_changes(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=True)
        out = tmp_path / "m.json"
        args = _evaluate_args(pred_dir, ref_dir, out)
        assert main([*args, "--lesion-iou", "0.3"]) == 0
        assert "--lesion-iou has no effect without --lesions" in capsys.readouterr().err
        assert "lesions" not in json.loads(out.read_text())
        assert not (tmp_path / "m_lesions.csv").exists()

    def test_bad_probability_file_is_one_line_exit_2_nothing_written(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        pred_dir, ref_dir = _write_cases(tmp_path, probabilities=True)
        bad = pred_dir / "c1.npz"
        bad.write_bytes(b"not a zip file")
        out = tmp_path / "eval" / "m.json"
        args = _evaluate_args(pred_dir, ref_dir, out)
        assert main([*args, "--lesions", "-q"]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith(f"autoseg: error: {bad}: cannot be read as probabilities")
        assert not out.parent.exists()

    def test_out_of_range_threshold_is_refused_while_parsing(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        with pytest.raises(SystemExit) as info:
            main(
                ["evaluate", "--pred", "p", "--ref", "r", "-o", "m.json", "--lesions", "--lesion-iou", "1.5"]
            )
        assert info.value.code == 2
        assert "IOU must be a finite number in [0, 1], got '1.5'" in capsys.readouterr().err
