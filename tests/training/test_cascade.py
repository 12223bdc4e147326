"""Which 3d_lowres predictions a cascade fold reads: each case's from the fold that validated it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from autoseg.errors import ModelError
from autoseg.training.cascade import find_cv_predictions

SPLITS = [
    {"train": ["c", "d", "e", "f"], "val": ["a", "b"]},
    {"train": ["a", "b", "e", "f"], "val": ["c", "d"]},
    {"train": ["a", "b", "c", "d"], "val": ["e", "f"]},
]
ALL = ["a", "b", "c", "d", "e", "f"]


def _fold(model_dir: Path, k: int, files: list[str], validated: list[str], *, stale: bool = False) -> None:
    """A trained fold: checkpoint_final.pt, validation/CASE.nii.gz for ``files``, and a summary
    listing ``validated`` (written before the checkpoint when ``stale``)."""
    fold = model_dir / f"fold_{k}"
    (fold / "validation").mkdir(parents=True)
    for cid in files:
        (fold / "validation" / f"{cid}.nii.gz").write_bytes(b"")
    summary = fold / "validation" / "summary.json"
    summary.write_text(json.dumps({"per_case": [{"case_id": c, "dice": {}} for c in validated]}))
    (fold / "checkpoint_final.pt").write_bytes(b"")
    t = summary.stat().st_mtime_ns
    os.utime(fold / "checkpoint_final.pt", ns=(t + 10**9, t + 10**9) if stale else (t - 10**9, t - 10**9))


@pytest.fixture
def lowres(tmp_path: Path) -> Path:
    """Three folds; each also holds a leftover prediction of a case it trained on (as a fold
    retrained on another split would), which must never be read."""
    model_dir = tmp_path / "models" / "3d_lowres"
    _fold(model_dir, 0, ["a", "b", "c"], ["a", "b"])
    _fold(model_dir, 1, ["c", "d", "a"], ["c", "d"])
    _fold(model_dir, 2, ["e", "f", "a"], ["e", "f"])
    return model_dir


class TestFindCVPredictions:
    def test_each_case_from_the_fold_that_did_not_train_on_it(self, lowres):
        found = find_cv_predictions(lowres, SPLITS, ALL, dataset="hippo", needed_by="cascade fold 0")
        assert sorted(found) == ALL
        for cid, src in found.items():
            k = int(src.fold)
            assert cid in SPLITS[k]["val"]
            assert cid not in SPLITS[k]["train"]
            assert src.path == lowres / f"fold_{k}" / "validation" / f"{cid}.nii.gz"

    def test_only_the_cases_asked_for(self, lowres):
        found = find_cv_predictions(lowres, SPLITS, ["b", "e"], dataset="hippo", needed_by="x")
        assert {c: s.fold for c, s in found.items()} == {"b": "0", "e": "2"}

    @pytest.mark.parametrize(
        ("missing", "named"),
        [([1], "fold(s) 1 "), ([0, 2], "fold(s) 0, 2 ")],
        ids=["one", "two"],
    )
    def test_missing_folds_are_named_with_their_commands(self, tmp_path, missing, named):
        model_dir = tmp_path / "models" / "3d_lowres"
        for k in sorted({0, 1, 2} - set(missing)):
            _fold(model_dir, k, SPLITS[k]["val"], SPLITS[k]["val"])
        with pytest.raises(ModelError, match="train them first") as e:
            find_cv_predictions(
                model_dir, SPLITS, ALL, dataset="hippo", needed_by="3d_cascade_fullres fold 0"
            )
        msg = str(e.value)
        assert "\n" not in msg
        assert msg.startswith("3d_cascade_fullres fold 0 takes 3d_lowres's cross-validation prediction")
        assert f"3d_lowres {named}" in msg
        assert " and ".join(f"`autoseg train hippo 3d_lowres {k}`" for k in missing) in msg

    def test_a_validation_older_than_the_checkpoint_does_not_count(self, tmp_path):
        model_dir = tmp_path / "models" / "3d_lowres"
        _fold(model_dir, 0, ["a", "b"], ["a", "b"])
        _fold(model_dir, 1, ["c", "d"], ["c", "d"], stale=True)  # retrained, not validated since
        _fold(model_dir, 2, ["e", "f"], ["e", "f"])
        with pytest.raises(ModelError, match=r"3d_lowres fold\(s\) 1 "):
            find_cv_predictions(model_dir, SPLITS, ALL, dataset="hippo", needed_by="x")

    def test_a_case_in_no_validation_set(self, lowres):
        splits = [{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}]
        with pytest.raises(ModelError, match="case\\(s\\) z are in no fold's validation set"):
            find_cv_predictions(lowres, splits, ["a", "z"], dataset="hippo", needed_by="x")
