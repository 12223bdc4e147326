"""Scoring per region and with an ignore label: region masks are the voxels holding any of the
region's values, and the voxels the reference marks as ignore count for nothing (nnU-Net's rule);
``autoseg evaluate --dataset-json`` reads the scheme from a dataset.json or a plans.json."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.errors import DatasetError
from autoseg.evaluation.evaluate import evaluate_folders
from autoseg.evaluation.metrics import case_metrics, dice_per_entry, entry_metrics
from autoseg.io.dataset import read_label_scheme
from autoseg.io.image import Geometry, write_image
from autoseg.labels import LabelScheme
from tests.golden import GOLDEN_PLAN

ISO = (1.0, 1.0, 1.0)
REGIONS_IGNORE = LabelScheme.from_declared(
    {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3}, [2, 1]
)
PLAIN_IGNORE = LabelScheme.from_declared({"background": 0, "anterior": 1, "posterior": 2, "ignore": 3})


def _maps() -> tuple[np.ndarray, np.ndarray]:
    """One row of 10 voxels: the reference has 1 1 2 2 | 3 3 3 | 0 0 0 (ignore in the middle);
    the prediction agrees on the first four, paints the ignored voxels 1 2 1, and 2 once after."""
    ref = np.array([1, 1, 2, 2, 3, 3, 3, 0, 0, 0], np.uint8).reshape(1, 1, 10)
    pred = np.array([1, 1, 2, 2, 1, 2, 1, 2, 0, 0], np.uint8).reshape(1, 1, 10)
    return pred, ref


def test_region_dice_leaves_ignored_voxels_out() -> None:
    pred, ref = _maps()
    # hippocampus {1, 2}: ref 4 voxels, pred 4 annotated (+1 FP at 7) -> 2*4/(4+5)
    # anterior {1}: ref 2, pred 2 annotated -> 1.0; the three 1/2 on ignored voxels count for nothing
    assert dice_per_entry(pred, ref, REGIONS_IGNORE) == {"hippocampus": 8 / 9, "anterior": 1.0}
    no_ignore = LabelScheme.from_declared({"background": 0, "hippocampus": [1, 2], "anterior": 1}, [2, 1])
    got = dice_per_entry(pred, ref, no_ignore)  # the same voxels without an ignore label: FPs
    assert got["hippocampus"] == pytest.approx(8 / 12)
    assert got["anterior"] == pytest.approx(4 / 6)


def test_plain_labels_with_ignore_are_keyed_by_value_and_equal_case_metrics_on_annotated_voxels() -> None:
    pred, ref = _maps()
    got = entry_metrics(pred, ref, PLAIN_IGNORE, spacing=ISO)
    assert list(got) == ["1", "2"]
    keep = ref != 3
    plain = case_metrics(pred[keep].reshape(1, 1, -1), ref[keep].reshape(1, 1, -1), [1, 2], spacing=ISO)
    for key, label in (("1", 1), ("2", 2)):
        for metric in ("dice", "iou", "sensitivity", "specificity", "precision", "volume_pred_ml"):
            assert got[key][metric] == pytest.approx(plain[label][metric]), (key, metric)
    assert got["2"]["specificity"] == pytest.approx(4 / 5)  # 5 annotated negatives, 1 FP
    assert dice_per_entry(pred, ref, PLAIN_IGNORE) == {k: m["dice"] for k, m in got.items()}


def _folders(tmp_path: Path) -> tuple[Path, Path]:
    pred, ref = _maps()
    geo = Geometry(ISO, (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    write_image(pred, geo, tmp_path / "pred" / "c1.nii.gz")
    write_image(ref, geo, tmp_path / "ref" / "c1.nii.gz")
    return tmp_path / "pred", tmp_path / "ref"


def test_evaluate_folders_scores_regions_over_annotated_voxels(tmp_path: Path) -> None:
    pred_dir, ref_dir = _folders(tmp_path)
    out = tmp_path / "eval" / "summary.json"
    summary = evaluate_folders(pred_dir, ref_dir, out, scheme=REGIONS_IGNORE)
    assert list(summary["per_label"]) == ["hippocampus", "anterior"]
    assert summary["per_label"]["hippocampus"]["dice"] == pytest.approx(8 / 9)
    assert summary["per_label"]["anterior"]["dice"] == pytest.approx(1.0)
    assert summary["mean"]["dice"] == pytest.approx((8 / 9 + 1) / 2)
    written = json.loads(out.read_text())
    assert written["settings"]["labels"] == ["hippocampus", "anterior"]
    assert written["settings"]["label_scheme"] == {
        "labels": {"background": 0, "hippocampus": [1, 2], "anterior": [1], "ignore": 3},
        "regions_class_order": [2, 1],
    }
    rows = (out.parent / "summary.csv").read_text().splitlines()
    assert [r.split(",")[1] for r in rows[1:]] == ["hippocampus", "anterior"]
    # without a scheme the same files score each value, the ignore value 3 a label like any other
    plain = evaluate_folders(pred_dir, ref_dir, tmp_path / "plain.json")
    assert list(plain["per_label"]) == ["1", "2", "3"]
    assert math.isclose(plain["per_label"]["3"]["dice"], 0.0)
    with pytest.raises(ValueError, match="labels and scheme both say what to score"):
        evaluate_folders(pred_dir, ref_dir, out, labels=[1], scheme=REGIONS_IGNORE)


def test_label_schemes_are_read_from_dataset_json_msd_and_plans(tmp_path: Path) -> None:
    nnunet = tmp_path / "dataset.json"
    nnunet.write_text(
        json.dumps(
            {
                "channel_names": {"0": "MRI"},
                "labels": {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3},
                "regions_class_order": [2, 1],
                "file_ending": ".nii.gz",
            }
        )
    )
    assert read_label_scheme(nnunet) == REGIONS_IGNORE
    msd = tmp_path / "msd.json"
    msd.write_text(json.dumps({"modality": {"0": "MRI"}, "labels": {"0": "bg", "1": "a", "2": "p"}}))
    assert read_label_scheme(msd).entry_keys == ("1", "2")
    plans = read_label_scheme(GOLDEN_PLAN)
    assert (plans.regions, plans.entry_keys) == (False, ("1", "2"))
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"labels": {"background": 0, "a": [1, 2]}}))
    with pytest.raises(
        DatasetError, match=rf"^{bad}: labels map to lists \(regions\) but 'regions_class_order'"
    ):
        read_label_scheme(bad)
    with pytest.raises(DatasetError, match=rf"^{tmp_path / 'none.json'}: not found"):
        read_label_scheme(tmp_path / "none.json")


def test_cli_evaluate_with_dataset_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    pred_dir, ref_dir = _folders(tmp_path)
    ds = tmp_path / "dataset.json"
    ds.write_text(json.dumps({"labels": REGIONS_IGNORE.declared(), "regions_class_order": [2, 1]}))
    out = tmp_path / "s.json"
    args = ["evaluate", "--pred", str(pred_dir), "--ref", str(ref_dir), "-o", str(out)]
    assert main([*args, "--dataset-json", str(ds), "-q"]) == 0
    assert json.loads(out.read_text())["per_label"]["hippocampus"]["dice"] == pytest.approx(8 / 9)
    assert main([*args, "--dataset-json", str(ds), "--labels", "1", "-q"]) == 2
    assert f"--labels and --dataset-json both say what to score ({ds})" in capsys.readouterr().err
