"""``evaluate_folders`` on real hippocampus label maps (copied to tmp) and predictions made from
them: one identical, one with label 2 eroded, one shifted by a voxel, one stored as NRRD."""

from __future__ import annotations

import csv
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

from autoseg.errors import DatasetError
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.metrics import METRICS
from autoseg.io.image import Geometry, read_image, write_image

LABELS_TR = Path(__file__).resolve().parents[2] / "data" / "hippocampus_sample" / "labelsTr"
CASES = ("hippocampus_004", "hippocampus_023", "hippocampus_036")


def _erode_label(a: np.ndarray, lab: int) -> np.ndarray:
    out = a.copy()
    mask = a == lab
    out[mask & ~ndimage.binary_erosion(mask)] = 0
    return out


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
    ref_dir.mkdir()
    for case in CASES:
        shutil.copy(LABELS_TR / f"{case}.nii.gz", ref_dir)
    ims = {c: read_image(ref_dir / f"{c}.nii.gz") for c in CASES}
    write_image(ims[CASES[0]].array, ims[CASES[0]].geometry, pred_dir / f"{CASES[0]}.nii.gz")
    write_image(_erode_label(ims[CASES[1]].array, 2), ims[CASES[1]].geometry, pred_dir / f"{CASES[1]}.nii.gz")
    write_image(
        np.roll(ims[CASES[2]].array, 1, axis=2), ims[CASES[2]].geometry, pred_dir / f"{CASES[2]}.nrrd"
    )
    return pred_dir, ref_dir


def _outputs(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.glob("*") if p.is_file()) if out.parent.exists() else []


class TestOutputs:
    def test_json_csv_and_png(self, folders, tmp_path):
        pred_dir, ref_dir = folders
        out = tmp_path / "eval" / "summary.json"
        summary = evaluate_folders(pred_dir, ref_dir, out, plot=True)

        assert [p.name for p in _outputs(out)] == ["summary.csv", "summary.json", "summary_boxplot.png"]
        assert (out.parent / "summary_boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        data = json.loads(out.read_text())
        assert set(data) == {"per_case", "per_label", "mean", "settings"}
        assert data["settings"]["labels"] == [1, 2]
        assert data["settings"]["tolerance_mm"] == 1.0
        assert [c["case"] for c in data["per_case"]] == list(CASES)
        assert data["per_case"][2]["prediction"].endswith(".nrrd")
        assert data == summary  # no NaN here, so the returned dict is what was written

        identical, eroded, shifted = (c["metrics"] for c in data["per_case"])
        assert identical["1"]["dice"] == identical["2"]["dice"] == 1.0
        assert identical["2"]["hd95_mm"] == 0.0
        assert eroded["1"]["dice"] == 1.0
        assert eroded["2"]["precision"] == 1.0
        assert eroded["2"]["sensitivity"] < 1.0
        assert eroded["2"]["volume_diff_ml"] < 0.0
        assert shifted["1"]["dice"] < 1.0
        assert shifted["1"]["hd95_mm"] == pytest.approx(1.0)  # 1 voxel of 1 mm
        assert shifted["1"]["volume_diff_ml"] == pytest.approx(0.0, abs=1e-9)

        dice_2 = [c["metrics"]["2"]["dice"] for c in data["per_case"]]
        assert data["per_label"]["2"]["dice"] == pytest.approx(np.mean(dice_2))
        assert data["mean"]["dice"] == pytest.approx(
            (data["per_label"]["1"]["dice"] + data["per_label"]["2"]["dice"]) / 2
        )

        with open(out.with_suffix(".csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        assert list(rows[0]) == ["case", "label", *METRICS]
        assert [(r["case"], r["label"]) for r in rows] == [(c, lab) for c in CASES for lab in "12"]
        assert float(rows[3]["dice"]) == pytest.approx(eroded["2"]["dice"])

    def test_fixed_labels_nan_is_null(self, folders, tmp_path):
        pred_dir, ref_dir = folders
        out = tmp_path / "summary.json"
        summary = evaluate_folders(pred_dir, ref_dir, out, labels=[1, 5], tolerance_mm=2.0)
        data = json.loads(out.read_text())
        assert data["settings"]["labels"] == [1, 5]
        assert data["per_label"]["5"]["dice"] is None
        assert data["per_label"]["5"]["specificity"] == 1.0
        assert data["per_case"][0]["metrics"]["5"]["hd95_mm"] is None
        assert math.isnan(summary["per_label"]["5"]["dice"])
        # The mean over labels skips label 5's undefined Dice.
        assert data["mean"]["dice"] == data["per_label"]["1"]["dice"]
        with open(out.with_suffix(".csv"), newline="") as f:
            rows = list(csv.DictReader(f))
        assert rows[1]["label"] == "5"
        assert rows[1]["dice"] == ""
        assert not (tmp_path / "summary_boxplot.png").exists()

    def test_two_workers_match_one(self, folders, tmp_path):
        pred_dir, ref_dir = folders
        one = evaluate_folders(pred_dir, ref_dir, tmp_path / "a.json", workers=1)
        two = evaluate_folders(pred_dir, ref_dir, tmp_path / "b.json", workers=2)
        assert one["per_case"] == two["per_case"]

    def test_extra_prediction_is_ignored_with_a_warning(self, folders, tmp_path):
        pred_dir, ref_dir = folders
        shutil.copy(LABELS_TR / "hippocampus_045.nii.gz", pred_dir)
        (pred_dir / "notes.txt").write_text("not an image")
        with pytest.warns(UserWarning, match="1 prediction.*ignored: hippocampus_045"):
            summary = evaluate_folders(pred_dir, ref_dir, tmp_path / "s.json")
        assert [c["case"] for c in summary["per_case"]] == list(CASES)


class TestErrors:
    def test_missing_prediction_names_the_case(self, folders, tmp_path):
        pred_dir, ref_dir = folders
        (pred_dir / f"{CASES[1]}.nii.gz").unlink()
        out = tmp_path / "eval" / "summary.json"
        with pytest.raises(DatasetError, match=f"lacks the prediction of 1 reference case.*{CASES[1]}"):
            evaluate_folders(pred_dir, ref_dir, out, plot=True)
        assert _outputs(out) == []

    def test_shape_and_spacing_mismatches_are_listed_together(self, folders, tmp_path):
        pred_dir, ref_dir = folders
        bad_shape = pred_dir / f"{CASES[0]}.nii.gz"
        write_image(
            np.zeros((5, 6, 7), np.uint8),
            Geometry((1.0,) * 3, (0.0,) * 3, (1, 0, 0, 0, 1, 0, 0, 0, 1)),
            bad_shape,
        )
        ref1 = read_image(ref_dir / f"{CASES[1]}.nii.gz")
        bad_spacing = pred_dir / f"{CASES[1]}.nii.gz"
        write_image(
            ref1.array, Geometry((1.0, 1.0, 1.01), ref1.geometry.origin, ref1.geometry.direction), bad_spacing
        )
        out = tmp_path / "eval" / "summary.json"
        with pytest.raises(DatasetError, match="2 problems") as info:
            evaluate_folders(pred_dir, ref_dir, out)
        shape_msg, spacing_msg = info.value.problems
        assert str(bad_shape) in shape_msg
        assert str(ref_dir / f"{CASES[0]}.nii.gz") in shape_msg
        assert "(5, 6, 7)" in shape_msg
        assert str(bad_spacing) in spacing_msg
        assert "1.01" in spacing_msg
        assert _outputs(out) == []

    def test_unreadable_prediction(self, folders, tmp_path):
        pred_dir, ref_dir = folders
        bad = pred_dir / f"{CASES[2]}.nrrd"
        bad.write_bytes(b"not an image at all")
        with pytest.raises(DatasetError, match=f"{bad.name}: cannot be read"):
            evaluate_folders(pred_dir, ref_dir, tmp_path / "s.json")
        assert not (tmp_path / "s.json").exists()

    def test_two_files_for_one_case(self, folders, tmp_path):
        pred_dir, ref_dir = folders
        shutil.copy(pred_dir / f"{CASES[0]}.nii.gz", pred_dir / f"{CASES[0]}.mha")
        with pytest.raises(DatasetError, match=f"are both case '{CASES[0]}'"):
            evaluate_folders(pred_dir, ref_dir, tmp_path / "s.json")

    def test_missing_folder_and_empty_references(self, tmp_path):
        (tmp_path / "ref").mkdir()
        with pytest.raises(DatasetError, match=r"prediction folder .*nope not found"):
            evaluate_folders(tmp_path / "nope", tmp_path / "ref", tmp_path / "s.json")
        with pytest.raises(DatasetError, match="holds no reference label map"):
            evaluate_folders(tmp_path / "ref", tmp_path / "ref", tmp_path / "s.json")

    def test_background_only_references(self, tmp_path):
        ref = read_image(LABELS_TR / f"{CASES[0]}.nii.gz")
        for d in ("pred", "ref"):
            write_image(np.zeros_like(ref.array), ref.geometry, tmp_path / d / "a.nii.gz")
        with pytest.raises(DatasetError, match="hold no nonzero label; pass the labels"):
            evaluate_folders(tmp_path / "pred", tmp_path / "ref", tmp_path / "s.json")

    @pytest.mark.parametrize(
        ("kwargs", "match"),
        [
            ({"labels": []}, "labels is empty"),
            ({"tolerance_mm": -0.5}, "got -0.5"),
        ],
        ids=["no-labels", "negative-tolerance"],
    )
    def test_bad_options(self, folders, tmp_path, kwargs, match):
        with pytest.raises(ValueError, match=match):
            evaluate_folders(*folders, tmp_path / "s.json", **kwargs)


class TestGrid:
    """A prediction is scored on its reference's grid: stored flipped or with permuted axes it is
    reoriented exactly (a y-flipped copy of the reference once scored Dice 0.116); shifted or
    rotated it does not overlay the reference and is refused."""

    @pytest.mark.parametrize("orientation", ["RPI", "LAS", "SAR", "IRP"])
    def test_reoriented_copy_of_the_reference_scores_one(self, tmp_path, orientation):
        import SimpleITK as sitk

        ref_dir, pred_dir = tmp_path / "ref", tmp_path / "pred"
        ref_dir.mkdir()
        pred_dir.mkdir()
        for case in CASES:
            shutil.copy(LABELS_TR / f"{case}.nii.gz", ref_dir)
            img = sitk.ReadImage(str(ref_dir / f"{case}.nii.gz"))
            sitk.WriteImage(sitk.DICOMOrient(img, orientation), str(pred_dir / f"{case}.nii.gz"))
        turned = read_image(pred_dir / f"{CASES[0]}.nii.gz")
        assert not turned.geometry.same_grid(read_image(ref_dir / f"{CASES[0]}.nii.gz").geometry)
        summary = evaluate_folders(pred_dir, ref_dir, tmp_path / "s.json")
        for label in ("1", "2"):
            assert summary["per_label"][label]["dice"] == 1.0
            assert summary["per_label"][label]["hd95_mm"] == 0.0

    @pytest.mark.parametrize(
        ("origin_shift", "rotate"),
        [(2.0, False), (0.4, False), (0.0, True)],
        ids=["shifted_2mm", "shifted_0.4mm", "rotated"],
    )
    def test_prediction_on_another_grid_is_refused(self, folders, tmp_path, origin_shift, rotate):
        pred_dir, ref_dir = folders
        ref = read_image(ref_dir / f"{CASES[0]}.nii.gz")
        direction = ref.geometry.direction
        if rotate:
            a = np.deg2rad(5)
            rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
            direction = tuple((rot @ np.reshape(direction, (3, 3))).ravel())
        moved = pred_dir / f"{CASES[0]}.nii.gz"
        write_image(
            ref.array,
            Geometry(ref.geometry.spacing, tuple(o + origin_shift for o in ref.geometry.origin), direction),
            moved,
        )
        out = tmp_path / "eval" / "summary.json"
        with pytest.raises(DatasetError, match=r"differ from its reference .* more than a flip") as info:
            evaluate_folders(pred_dir, ref_dir, out)
        assert str(moved) in info.value.problems[0]
        assert str(ref_dir / f"{CASES[0]}.nii.gz") in info.value.problems[0]
        assert _outputs(out) == []
