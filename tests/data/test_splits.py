"""Cross-validation splits: determinism, coverage, patient groups, reuse of the stored file."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest

from autoseg.data.splits import fold_cases, groups_from_regex, load_or_create_splits, make_splits
from autoseg.errors import DatasetError

IDS = [f"case_{i:03d}" for i in range(23)]
# 9 patients with 1..4 scans each: "pat03_s1" belongs to patient "pat03".
SCANS = {f"pat{p:02d}": 1 + p % 4 for p in range(9)}
GROUPED_IDS = [f"{p}_s{s}" for p, n in SCANS.items() for s in range(n)]
PATIENT_RE = r"^(pat\d+)_"


def _check_partition(splits: list[dict[str, list[str]]], ids: list[str]) -> None:
    vals = [c for fold in splits for c in fold["val"]]
    assert sorted(vals) == sorted(ids)  # every case validated exactly once
    for fold in splits:
        assert fold["train"] == sorted(fold["train"])
        assert fold["val"] == sorted(fold["val"])
        assert not set(fold["train"]) & set(fold["val"])
        assert set(fold["train"]) | set(fold["val"]) == set(ids)


class TestMakeSplits:
    def test_deterministic_partition(self):
        splits = make_splits(IDS)
        assert len(splits) == 5
        _check_partition(splits, IDS)
        assert make_splits(list(reversed(IDS))) == splits  # input order does not matter
        assert sorted(len(f["val"]) for f in splits) == [4, 4, 5, 5, 5]

    def test_seed_changes_assignment(self):
        assert make_splits(IDS, seed=1) != make_splits(IDS)

    def test_same_folds_as_nnunet(self):
        kfold = pytest.importorskip("sklearn.model_selection").KFold
        ours = make_splits(IDS, n_folds=5, seed=12345)
        for (_, val_idx), fold in zip(
            kfold(5, shuffle=True, random_state=12345).split(IDS), ours, strict=True
        ):
            assert sorted(np.array(IDS)[val_idx]) == fold["val"]

    @pytest.mark.parametrize(
        ("ids", "n_folds", "match"),
        [
            (["a", "b"], 5, r"2 case\(s\) cannot make 5 folds; train fold .all. .*--n-folds \(2 to 2\)"),
            (["a", "a", "b"], 2, "duplicate case ids: a"),
            (["a", "b"], 1, "at least 2"),
        ],
        ids=["too-few", "duplicate", "one-fold"],
    )
    def test_invalid(self, ids, n_folds, match):
        with pytest.raises(DatasetError, match=match):
            make_splits(ids, n_folds=n_folds)


class TestGroups:
    def test_no_patient_in_train_and_val(self):
        groups = groups_from_regex(GROUPED_IDS, PATIENT_RE)
        splits = make_splits(GROUPED_IDS, groups=groups)
        _check_partition(splits, GROUPED_IDS)
        for fold in splits:
            train = {groups[c] for c in fold["train"]}
            val = {groups[c] for c in fold["val"]}
            assert not train & val
        sizes = [len(f["val"]) for f in splits]
        assert max(sizes) - min(sizes) <= max(SCANS.values())  # balanced up to one patient
        assert make_splits(GROUPED_IDS, groups=groups) == splits

    def test_fewer_patients_than_folds(self):
        groups = {"a": "p1", "b": "p1", "c": "p2"}
        with pytest.raises(
            DatasetError, match=r"2 patient\(s\) cannot make 5 folds .*train fold 'all'.*--n-folds \(2 to 2\)"
        ):
            make_splits(["a", "b", "c"], groups=groups)

    def test_case_without_group(self):
        with pytest.raises(DatasetError, match="case c has no patient group"):
            make_splits(["a", "b", "c"], n_folds=2, groups={"a": "1", "b": "2"})

    def test_regex_whole_match_without_group(self):
        assert groups_from_regex(["ab12", "cd12"], r"\d+") == {"ab12": "12", "cd12": "12"}

    def test_regex_no_match_names_the_case(self):
        with pytest.raises(ValueError, match="'other_1' does not match"):
            groups_from_regex(["pat01_s0", "other_1"], PATIENT_RE)


class TestFoldCases:
    SPLITS = make_splits(IDS)

    def test_fold(self):
        train, val = fold_cases(self.SPLITS, 2)
        assert (train, val) == (self.SPLITS[2]["train"], self.SPLITS[2]["val"])

    def test_all(self):
        assert fold_cases(self.SPLITS, "all") == (IDS, [])

    @pytest.mark.parametrize("fold", [5, -1, "3", True], ids=["past-end", "negative", "str", "bool"])
    def test_bad_fold(self, fold):
        with pytest.raises(DatasetError, match=r"valid folds: 0-4 or 'all'"):
            fold_cases(self.SPLITS, fold)


class TestLoadOrCreate:
    def test_written_once_then_reused(self, tmp_path: Path):
        path = tmp_path / "splits.json"
        first = load_or_create_splits(path, IDS)
        assert json.loads(path.read_text()) == first
        # a hand edit survives: move one case from fold 0's val to its train
        edited = json.loads(path.read_text())
        moved = edited[0]["val"].pop()
        edited[0]["train"].append(moved)
        path.write_text(json.dumps(edited))
        assert load_or_create_splits(path, IDS) == edited
        assert not list(tmp_path.glob(".partial-*"))

    def test_other_cases_warn_and_keep_file(self, tmp_path: Path, caplog: pytest.LogCaptureFixture):
        path = tmp_path / "splits.json"
        stored = load_or_create_splits(path, IDS)
        with caplog.at_level(logging.WARNING, logger="autoseg.data.splits"):
            again = load_or_create_splits(path, [*IDS, "case_999"])
        assert again == stored
        assert "does not cover exactly" in caplog.text

    def test_stored_patient_leak(self, tmp_path: Path):
        path = tmp_path / "splits.json"
        path.write_text(
            json.dumps(
                [{"train": ["pat01_s0"], "val": ["pat01_s1"]}, {"train": ["pat01_s1"], "val": ["pat01_s0"]}]
            )
        )
        groups = groups_from_regex(["pat01_s0", "pat01_s1"], PATIENT_RE)
        with pytest.raises(DatasetError, match="fold 0 has patient pat01 in both train and val"):
            load_or_create_splits(path, ["pat01_s0", "pat01_s1"], groups=groups)

    def test_groups_used_when_creating(self, tmp_path: Path):
        groups = groups_from_regex(GROUPED_IDS, PATIENT_RE)
        splits = load_or_create_splits(tmp_path / "s.json", GROUPED_IDS, groups=groups, n_folds=3)
        assert splits == make_splits(GROUPED_IDS, groups=groups, n_folds=3)

    @pytest.mark.parametrize(
        "content",
        ["{not json", '{"train": []}', '[{"train": ["a"]}]'],
        ids=["invalid-json", "not-a-list", "no-val"],
    )
    def test_malformed_file(self, tmp_path: Path, content: str):
        path = tmp_path / "splits.json"
        path.write_text(content)
        with pytest.raises(DatasetError, match="fix or delete the file"):
            load_or_create_splits(path, IDS)
