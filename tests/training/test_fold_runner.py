"""Several folds from one ``autoseg train``: which device trains which fold, the children's command
lines, and two tiny folds run one after the other (one failing, then both resumed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from autoseg import cli
from autoseg.cli.train import child_options
from autoseg.io.samples import copy_sample_subset
from autoseg.training.config import TrainConfig
from autoseg.training.fold_runner import FoldResult, Lane, assign_folds, exit_code, visible_device
from autoseg.training.progress import read_records
from tests.budget import tiny


@pytest.mark.parametrize(
    ("folds", "device", "gpus", "expected"),
    [
        ([0, 1, 2, 3, 4], "cuda", 2, [Lane(0, (0, 2, 4)), Lane(1, (1, 3))]),
        ([0, 1, 2, 3, 4], "cuda", 1, [Lane(None, (0, 1, 2, 3, 4))]),
        ([0, 1], "cuda", 4, [Lane(0, (0,)), Lane(1, (1,))]),
        ([3, "all"], "cuda", 2, [Lane(0, (3,)), Lane(1, ("all",))]),
        ([0, 1, 2], "cpu", 0, [Lane(None, (0, 1, 2))]),
        ([0, 1, 2], "cpu", 4, [Lane(None, (0, 1, 2))]),  # --device cpu ignores the GPUs
    ],
    ids=["5folds-2gpus", "5folds-1gpu", "2folds-4gpus", "all-2gpus", "cpu", "cpu-with-gpus"],
)
def test_folds_are_spread_over_the_gpus(folds: list, device: str, gpus: int, expected: list[Lane]) -> None:
    lanes = assign_folds(folds, device=device, gpu_count=gpus)
    assert lanes == expected
    assert sorted((f for lane in lanes for f in lane.folds), key=str) == sorted(folds, key=str)


def test_a_child_sees_only_its_gpu_among_those_visible_here() -> None:
    assert visible_device(0, None) == "0"
    assert visible_device(1, "") == "1"
    assert visible_device(1, "2, 5") == "5"


def test_exit_code_says_how_the_worst_fold_ended() -> None:
    def r(code: int | None) -> FoldResult:
        return FoldResult(0, code, Path("c"))

    assert exit_code([r(0), r(0)]) == 0
    assert exit_code([r(0), r(2)]) == 2
    assert exit_code([r(1), r(2)]) == 1
    assert exit_code([r(2), r(130), r(None)]) == 130


def test_children_get_the_same_settings() -> None:
    argv = ["train", "ds", "2d", "0", "1", "--epochs", "3", "--lr", "0.001", "--no-val-probabilities"]
    argv += ["--continue", "--group-by", "(p\\d+)_", "--accumulate", "2", "--device", "cpu", "-v"]
    args = cli.build_parser().parse_args(argv)
    assert args.fold == [0, 1]
    flags = child_options(args, work_dir=Path("/w"), device="cpu")
    child = cli.build_parser().parse_args(["train", "ds", "2d", "1", *flags])
    assert cli.train_config(child) == cli.train_config(args, fold=1)
    assert cli.train_config(child) == TrainConfig(
        "2d", 1, epochs=3, lr=0.001, val_probabilities=False, accumulate=2, device="cpu"
    )
    assert child.resume
    assert child.group_by == "(p\\d+)_"
    assert child.work_dir == Path("/w")
    assert child.quiet
    assert not child.verbose


def test_a_fold_given_twice_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["train", "ds", "2d", "1", "1", "--device", "cpu"]) == 2
    assert "FOLD 1 given more than once" in capsys.readouterr().err


def test_two_folds_run_one_after_the_other(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the children inherit it
    ds = copy_sample_subset(tmp_path / "hippo", 6)
    work = tmp_path / "work"
    assert cli.main(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
    models = work / "hippo" / "models" / "2d"
    (models / "fold_1").mkdir(parents=True)
    (models / "fold_1" / "checkpoint_latest.pt").write_bytes(b"not a checkpoint")
    args = ["train", "hippo", "2d", "0", "1", "--work-dir", str(work), "--n-folds", "2"]
    args += [*tiny(iters=1, val_iters=0), "--precision", "fp32", "--no-val-probabilities", "--continue"]
    capsys.readouterr()

    assert cli.main(args) == 2  # fold 1's checkpoint is refused: bad input
    err = capsys.readouterr().err
    assert err.count("preprocessing 6 of 6 cases for 2d") == 1  # once, before the folds start
    assert "fold 0 finished" in err
    assert "autoseg: error: fold(s) 1 (exit 2" in err
    assert "finished: 0" in err
    assert (models / "fold_0" / "checkpoint_final.pt").is_file()
    assert not (models / "fold_1" / "checkpoint_final.pt").exists()
    assert "checkpoint" in (models / "fold_1" / "console.txt").read_text()

    (models / "fold_1" / "checkpoint_latest.pt").unlink()
    assert cli.main(args) == 0  # --continue per fold: fold 0 from its final checkpoint, fold 1 anew
    err = capsys.readouterr().err
    assert "preprocessed data for 2d is up to date" in err
    assert "resumed from checkpoint_latest.pt at epoch 1" in (models / "fold_0" / "log.txt").read_text()
    for fold in ("fold_0", "fold_1"):
        assert (models / fold / "checkpoint_final.pt").is_file()
        assert [r["epoch"] for r in read_records(models / fold / "progress.jsonl")] == [0]
