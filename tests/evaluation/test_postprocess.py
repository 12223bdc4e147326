"""Largest-component post-processing: the array functions, and nnU-Net's two tests that decide it.

Label maps are small (12x24x24) and built by hand: a big and a small blob of label 1 and a blob of
label 2, so that every expected Dice can be counted.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import DatasetError, ImageReadError, ModelError
from autoseg.evaluation.postprocess_choice import determine_postprocessing
from autoseg.inference.postprocess import (
    POSTPROCESSING_VERSION,
    Postprocessing,
    apply_postprocessing,
    keep_largest_component,
)
from autoseg.io.image import Geometry, write_image
from autoseg.labels import LabelScheme

SHAPE = (12, 24, 24)
GEOMETRY = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
BIG = (slice(2, 8), slice(2, 10), slice(2, 10))  # 384 voxels of label 1
SMALL = (slice(9, 11), slice(18, 20), slice(18, 20))  # 8 voxels, apart from everything
NEXT_TO_BIG = (slice(2, 8), slice(10, 14), slice(2, 10))  # 192 voxels touching BIG
APART = (slice(2, 6), slice(16, 20), slice(2, 6))  # 64 voxels, apart from BIG


def label_map(*blobs: tuple[tuple[slice, ...], int]) -> np.ndarray:
    out = np.zeros(SHAPE, np.uint8)
    for where, value in blobs:
        out[where] = value
    return out


def write_cases(folder: Path, maps: list[np.ndarray]) -> list[Path]:
    return [write_image(m, GEOMETRY, folder / f"case_{i}.nii.gz") for i, m in enumerate(maps)]


class TestKeepLargestComponent:
    def test_keeps_the_big_blob(self):
        mask = label_map((BIG, 1), (SMALL, 1)) == 1
        out = keep_largest_component(mask)
        assert out.dtype == bool
        assert np.array_equal(out, label_map((BIG, 1)) == 1)

    def test_corners_connect(self):
        """26-connectivity: voxels touching only at a corner are one component."""
        mask = np.zeros((3, 3, 3), bool)
        mask[0, 0, 0] = mask[1, 1, 1] = mask[2, 2, 2] = True
        assert np.array_equal(keep_largest_component(mask), mask)

    def test_tie_keeps_the_first_in_raster_order(self):
        mask = np.zeros((1, 1, 7), bool)
        mask[0, 0, [0, 1, 3, 4, 6]] = True  # line-shaped: cc3d refuses it, scipy labels it
        assert keep_largest_component(mask)[0, 0].tolist() == [1, 1, 0, 0, 0, 0, 0]

    def test_empty_and_single(self):
        assert not keep_largest_component(np.zeros(SHAPE, bool)).any()
        one = label_map((BIG, 1)) == 1
        assert np.array_equal(keep_largest_component(one), one)

    def test_rejects_2d(self):
        with pytest.raises(ValueError, match=r"needs a 3D \(Z, Y, X\) mask, got 2D"):
            keep_largest_component(np.ones((4, 4), bool))


class TestApplyPostprocessing:
    labels = label_map((BIG, 1), (SMALL, 1), (APART, 2))

    @pytest.mark.parametrize(
        ("pp", "expected"),
        [
            (Postprocessing(False, ()), label_map((BIG, 1), (SMALL, 1), (APART, 2))),
            (Postprocessing(False, (1,)), label_map((BIG, 1), (APART, 2))),
            (Postprocessing(False, (2,)), label_map((BIG, 1), (SMALL, 1), (APART, 2))),
            (Postprocessing(True, ()), label_map((BIG, 1))),
        ],
        ids=["identity", "label-1", "label-2-single-blob", "foreground"],
    )
    def test_removed_voxels_become_background(self, pp, expected):
        before = self.labels.copy()
        out = apply_postprocessing(self.labels, pp)
        assert out.dtype == np.uint8
        assert np.array_equal(out, expected)
        assert np.array_equal(self.labels, before)  # input untouched

    def test_foreground_keeps_touching_labels_together(self):
        labels = label_map((BIG, 1), (NEXT_TO_BIG, 2), (SMALL, 2))
        out = apply_postprocessing(labels, Postprocessing(True, ()))
        assert np.array_equal(out, label_map((BIG, 1), (NEXT_TO_BIG, 2)))


class TestPostprocessingDict:
    def test_round_trip(self):
        pp = Postprocessing(True, (1, 3))
        assert pp.to_dict() == {"foreground_largest_only": True, "largest_only_labels": [1, 3]}
        assert Postprocessing.from_dict(pp.to_dict()) == pp
        assert Postprocessing().is_identity
        assert not pp.is_identity

    @pytest.mark.parametrize(
        "bad",
        [
            {"foreground_largest_only": True},
            {"foreground_largest_only": 1, "largest_only_labels": []},
            {"foreground_largest_only": False, "largest_only_labels": ["1"]},
            {"foreground_largest_only": False, "largest_only_labels": [], "extra": 0},
        ],
        ids=["missing-key", "int-flag", "str-label", "unknown-key"],
    )
    def test_rejects_malformed(self, bad):
        with pytest.raises(ModelError, match=r"^post-processing.*; re-run `autoseg find-best`$"):
            Postprocessing.from_dict(bad)


class TestPostprocessingFile:
    """``postprocessing.json``: the same fields with a ``schema_version``, loaded strictly."""

    FIX = "; re-run `autoseg find-best`"

    def _write(self, tmp_path, d) -> Path:
        path = tmp_path / "postprocessing.json"
        path.write_text(json.dumps(d))
        return path

    def test_save_and_load(self, tmp_path):
        pp = Postprocessing(True, (2,))
        path = tmp_path / "m" / "postprocessing.json"
        pp.save(path)
        assert json.loads(path.read_text()) == {
            "schema_version": POSTPROCESSING_VERSION,
            "foreground_largest_only": True,
            "largest_only_labels": [2],
        }
        assert Postprocessing.load(path) == pp

    def test_version_0_still_loads(self, tmp_path):
        # what find-best wrote into trained model folders before the file had a version
        path = self._write(tmp_path, {"foreground_largest_only": True, "largest_only_labels": [1]})
        assert Postprocessing.load(path) == Postprocessing(True, (1,))

    @pytest.mark.parametrize("version", [2, 0, "1", None], ids=["2", "0", "str", "none"])
    def test_wrong_version(self, tmp_path, version):
        d = {"schema_version": version, "foreground_largest_only": True, "largest_only_labels": []}
        path = self._write(tmp_path, d)
        with pytest.raises(
            ModelError,
            match=rf"^{re.escape(str(path))}: post-processing schema_version is {re.escape(repr(version))}, "
            rf"this autoseg reads 1{re.escape(self.FIX)}$",
        ):
            Postprocessing.load(path)

    def test_missing_version(self, tmp_path):
        # without a version only the exact version-0 form is accepted
        path = self._write(tmp_path, {"foreground_largest_only": True})
        with pytest.raises(
            ModelError, match=rf"^{re.escape(str(path))}: post-processing schema_version is missing"
        ):
            Postprocessing.load(path)

    def test_missing_key(self, tmp_path):
        path = self._write(tmp_path, {"schema_version": 1, "foreground_largest_only": True})
        with pytest.raises(
            ModelError,
            match=rf"^{re.escape(str(path))}: post-processing: missing key\(s\) \['largest_only_labels'\]"
            rf"{re.escape(self.FIX)}$",
        ):
            Postprocessing.load(path)

    def test_extra_key(self, tmp_path):
        d = {"schema_version": 1, "foreground_largest_only": True, "largest_only_labels": [], "min_size": 3}
        path = self._write(tmp_path, d)
        with pytest.raises(
            ModelError,
            match=rf"^{re.escape(str(path))}: post-processing: unknown key\(s\) \['min_size'\]",
        ):
            Postprocessing.load(path)

    def test_wrong_type(self, tmp_path):
        d = {"schema_version": 1, "foreground_largest_only": True, "largest_only_labels": [True]}
        path = self._write(tmp_path, d)
        with pytest.raises(
            ModelError,
            match=rf"^{re.escape(str(path))}: post-processing\.largest_only_labels\[0\]: "
            r"True is none of \['int', 'tuple'\]",
        ):
            Postprocessing.load(path)


class TestDeterminePostprocessing:
    def test_spurious_island_is_removed(self, tmp_path):
        """Labels 1 and 2 touch; a false island of label 1 lowers its Dice: step 1 is kept."""
        ref = label_map((BIG, 1), (NEXT_TO_BIG, 2))
        pred = label_map((BIG, 1), (NEXT_TO_BIG, 2), (SMALL, 1))
        preds = write_cases(tmp_path / "pred", [pred, ref])
        refs = write_cases(tmp_path / "ref", [ref, ref])
        pp, report = determine_postprocessing(preds, refs, [0, 1, 2])
        assert pp == Postprocessing(True, ())
        d1 = 2 * 384 / (2 * 384 + 8)
        assert report["labels"] == [1, 2]
        assert report["n_cases"] == 2
        assert report["baseline"]["mean"] == {"1": pytest.approx((d1 + 1) / 2), "2": 1.0}
        assert report["foreground_largest_only"]["kept"] is True
        assert report["foreground_largest_only"]["mean"] == {"1": 1.0, "2": 1.0}
        # On top of step 1 nothing is left to remove, so no label step is kept.
        assert report["per_label"] == {
            "1": {"before": 1.0, "after": 1.0, "kept": False},
            "2": {"before": 1.0, "after": 1.0, "kept": False},
        }
        assert report["final"]["foreground_mean"] == 1.0

    def test_true_small_component_is_kept(self, tmp_path):
        """The small blob is real foreground: removing it would lower Dice, so both tests fail."""
        ref = label_map((BIG, 1), (SMALL, 1), (NEXT_TO_BIG, 2))
        pred = ref.copy()
        pred[BIG[0], 2, 2:10] = 0  # some error, so Dice is below 1
        preds = write_cases(tmp_path / "pred", [pred])
        refs = write_cases(tmp_path / "ref", [ref])
        pp, report = determine_postprocessing(preds, refs, [1, 2])
        assert pp.is_identity
        assert report["foreground_largest_only"]["kept"] is False
        assert report["per_label"]["1"]["kept"] is False
        assert report["per_label"]["1"]["after"] < report["per_label"]["1"]["before"]
        assert report["final"] == report["baseline"]

    def test_per_label_kept_when_foreground_step_hurts_another_label(self, tmp_path):
        """Label 2 lies apart from label 1: step 1 would delete it, so only label 1's step is kept."""
        ref = label_map((BIG, 1), (APART, 2))
        pred = label_map((BIG, 1), (APART, 2), (SMALL, 1))
        preds = write_cases(tmp_path / "pred", [pred])
        refs = write_cases(tmp_path / "ref", [ref])
        pp, report = determine_postprocessing(preds, refs, [1, 2])
        assert pp == Postprocessing(False, (1,))
        assert report["foreground_largest_only"]["mean"]["2"] == 0.0
        assert report["per_label"]["1"] == {
            "before": pytest.approx(2 * 384 / 776),
            "after": 1.0,
            "kept": True,
        }
        assert report["final"]["mean"] == {"1": 1.0, "2": 1.0}

    def test_foreground_step_rejected_when_one_label_gets_worse(self, tmp_path):
        """Step 1 raises the mean (label 1 loses a big false island) but costs label 2 a true
        small blob: rejected, because no label may get worse."""
        ref = label_map((BIG, 1), (NEXT_TO_BIG, 2), (SMALL, 2))
        pred = label_map((BIG, 1), (NEXT_TO_BIG, 2), (SMALL, 2), (APART, 1))
        preds = write_cases(tmp_path / "pred", [pred])
        refs = write_cases(tmp_path / "ref", [ref])
        pp, report = determine_postprocessing(preds, refs, [1, 2])
        step = report["foreground_largest_only"]
        assert step["foreground_mean"] > report["baseline"]["foreground_mean"]
        assert step["mean"]["2"] == pytest.approx(2 * 192 / (2 * 192 + 8))
        assert step["kept"] is False
        assert pp == Postprocessing(False, (1,))

    def test_absent_label_is_null_and_workers_agree(self, tmp_path):
        ref = label_map((BIG, 1))
        pred = label_map((BIG, 1), (SMALL, 1))
        preds = write_cases(tmp_path / "pred", [pred, pred])
        refs = write_cases(tmp_path / "ref", [ref, ref])
        one = determine_postprocessing(preds, refs, [1, 2])
        assert one[1]["baseline"]["mean"]["2"] is None
        assert one[0] == Postprocessing(True, ())
        assert determine_postprocessing(preds, refs, [1, 2], workers=2) == one

    def test_errors(self, tmp_path):
        ref = write_cases(tmp_path / "ref", [label_map((BIG, 1))])
        other = write_image(np.zeros((4, 4, 4), np.uint8), GEOMETRY, tmp_path / "small.nii.gz")
        with pytest.raises(ValueError, match="one reference per prediction"):
            determine_postprocessing(ref, ref + ref, [1])
        with pytest.raises(
            DatasetError,
            match=r"does not lie on the grid of .*small\.nii\.gz "
            r"\(shape \(\d+, \d+, \d+\) vs \(4, 4, 4\)",
        ):
            determine_postprocessing([other], ref, [1])
        with pytest.raises(ImageReadError, match=r"missing\.nii\.gz: file not found"):
            determine_postprocessing([tmp_path / "missing.nii.gz"], ref, [1])


class TestRegionsAndIgnore:
    """Regions keep the largest component of their mask (any of their values); the ignore label's
    voxels count for nothing when deciding."""

    HIPPOCAMPUS = LabelScheme.from_declared(
        {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3}, [2, 1]
    )
    BRATS = LabelScheme.from_declared(
        {"background": 0, "whole": [1, 2, 3], "core": [2, 3], "enh": 3}, [1, 2, 3]
    )

    def test_a_region_keeps_its_largest_component_across_its_labels(self):
        labels = label_map((BIG, 2), (APART, 1), (SMALL, 1))
        # label 1 alone: APART is its largest component; region {1, 2}: BIG is
        assert np.array_equal(
            apply_postprocessing(labels, Postprocessing(False, (1,))), label_map((BIG, 2), (APART, 1))
        )
        assert np.array_equal(
            apply_postprocessing(labels, Postprocessing(False, ((1, 2),))), label_map((BIG, 2))
        )

    def test_regions_round_trip_as_lists(self, tmp_path):
        pp = Postprocessing(True, ((1, 2), 3))
        assert pp.to_dict()["largest_only_labels"] == [[1, 2], 3]
        pp.save(tmp_path / "postprocessing.json")
        assert Postprocessing.load(tmp_path / "postprocessing.json") == pp

    def test_a_region_step_is_decided_on_its_own_dice(self, tmp_path):
        """A false enhancing island (3) lies apart; a true edema blob (1) too. The foreground
        step would delete the true edema: rejected. The core region {2, 3} loses the island:
        kept, as a region."""
        ref = label_map((BIG, 1), (NEXT_TO_BIG, 2), (APART, 1))
        pred = label_map((BIG, 1), (NEXT_TO_BIG, 2), (APART, 1), (SMALL, 3))
        pp, report = determine_postprocessing(
            write_cases(tmp_path / "pred", [pred]), write_cases(tmp_path / "ref", [ref]), self.BRATS
        )
        assert pp == Postprocessing(False, ((2, 3),))
        assert report["labels"] == [[1, 2, 3], [2, 3], 3]
        assert report["foreground_largest_only"]["kept"] is False
        assert report["per_label"]["core"] == {"before": pytest.approx(384 / 392), "after": 1.0, "kept": True}
        assert report["per_label"]["whole"]["kept"] is False
        assert report["final"]["mean"] == {"whole": pytest.approx(1280 / 1288), "core": 1.0, "enh": 0.0}
        assert np.array_equal(apply_postprocessing(pred, pp), ref)

    @pytest.mark.parametrize("island_ignored", [True, False], ids=["on_ignore", "on_background"])
    def test_an_island_on_ignored_voxels_costs_nothing(self, tmp_path, island_ignored):
        ref = label_map((BIG, 1), (NEXT_TO_BIG, 2), (APART, 3 if island_ignored else 0))
        pred = label_map((BIG, 1), (NEXT_TO_BIG, 2), (APART, 2))
        pp, report = determine_postprocessing(
            write_cases(tmp_path / "pred", [pred]), write_cases(tmp_path / "ref", [ref]), self.HIPPOCAMPUS
        )
        assert report["labels"] == [[1, 2], 1]
        base = report["baseline"]["mean"]
        if island_ignored:
            assert base == {"hippocampus": 1.0, "anterior": 1.0}
            assert pp.is_identity  # nothing to gain: removing it is not an improvement
        else:
            assert base == {"hippocampus": pytest.approx(1152 / 1216), "anterior": 1.0}
            assert pp == Postprocessing(True, ())
