"""``train --time``: the duration is parsed strictly, the rule that fixes the epochs keeps the
final validation and the safety margin inside the limit, ``--continue`` keeps the decision, and
``--time`` with ``--epochs`` is refused. The real run is in test_trainer.py."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from autoseg import cli
from autoseg._contract import parse
from autoseg.cli.train import child_options
from autoseg.errors import CheckpointError
from autoseg.options import duration_seconds, parse_duration
from autoseg.training.config import ADDED_SETTINGS, TrainConfig
from autoseg.training.time_budget import (
    SAFETY,
    BudgetDecision,
    continued,
    epochs_for_budget,
    final_validation_s,
    sliding_windows,
    steady_seconds_per_step,
)

DECISION = BudgetDecision(
    limit_s=7200.0,
    epochs=40,
    decided_after=1,
    seconds_per_iter=0.6,
    val_s=12.0,
    epoch_s=165.0,
    elapsed_s=200.0,
    final_s=300.0,
    safety_s=360.0,
)


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("2h", 7200), ("30m", 1800), ("90s", 90), ("1h30m", 5400), ("1h0m5s", 3605), ("2m30s", 150)],
)
def test_durations(text: str, seconds: int) -> None:
    assert duration_seconds(text) == seconds
    assert parse_duration(text) == text


@pytest.mark.parametrize(
    "text", ["", "2", "1.5h", "2H", "30 m", " 30m", "m", "1m1h", "30s2m", "1d", "-1h", "1h1h", "0s", "0h0m"]
)
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match=f"DURATION must be .*got {text!r}"):
        duration_seconds(text)


def test_epochs_fill_the_budget_less_the_final_validation_and_the_margin() -> None:
    # 2 h, 200 s spent on start-up and the first epoch, 300 s kept for the end, 165 s an epoch:
    # 7200 * 0.95 - 200 - 300 = 6340 s for floor(6340 / 165) = 38 more epochs
    assert epochs_for_budget(7200, 200, 165, 300) == 39
    assert epochs_for_budget(7200, 200, 165, 300, safety=0) == 1 + (7200 - 500) // 165
    # every further epoch and the end fit: the margin is what is left over
    for limit, elapsed, epoch, final in [(7200, 200, 165, 300), (600, 40, 30, 90), (90, 10, 2, 20)]:
        n = epochs_for_budget(limit, elapsed, epoch, final)
        planned = elapsed + (n - 1) * epoch + final
        assert planned <= limit * (1 - SAFETY)
        assert planned + epoch > limit * (1 - SAFETY)  # one more would not fit


def test_more_time_more_epochs_and_a_larger_end_fewer() -> None:
    counts = [epochs_for_budget(limit, 60, 30, 60) for limit in (300, 600, 1800, 3600)]
    assert counts == sorted(counts)
    assert len(set(counts)) == 4
    assert epochs_for_budget(3600, 60, 30, 600) < epochs_for_budget(3600, 60, 30, 60)


def test_when_not_one_more_epoch_fits_the_run_stops_after_those_done() -> None:
    assert epochs_for_budget(100, 90, 60, 20) == 1
    assert epochs_for_budget(100, 150, 60, 20) == 1  # already over: never fewer than done
    assert epochs_for_budget(100, 90, 60, 20, done=3) == 3
    assert epochs_for_budget(1000, 100, 60, 20, done=3) == 3 + (950 - 120) // 60


def test_the_rule_refuses_nonsense() -> None:
    with pytest.raises(ValueError, match="epoch must take some time"):
        epochs_for_budget(100, 1, 0, 1)
    with pytest.raises(ValueError, match="safety"):
        epochs_for_budget(100, 1, 1, 1, safety=1.0)


def test_the_first_steps_start_up_does_not_count_as_every_steps_cost() -> None:
    # 20 steps of 1 s after a first one of 11 s (start-up): the steady time is 1 s
    ends = [11.0 + i for i in range(20)]
    assert steady_seconds_per_step(ends, start=0.0) == pytest.approx(1.0)
    # too few steps to leave any out: the mean over all
    assert steady_seconds_per_step([4.0, 5.0], start=0.0) == pytest.approx(2.5)
    with pytest.raises(ValueError, match="no training step"):
        steady_seconds_per_step([], start=0.0)


def test_final_validation_counts_windows_mirrors_and_cases() -> None:
    # 3d: 8 mirrors; a 100 x 100 x 100 case at patch 40: 4 x 4 x 4 windows at half-patch steps
    assert sliding_windows((100, 100, 100), (40, 40, 40), "3d") == 64 * 8
    assert sliding_windows((100, 100, 100), (40, 40, 40), "3d", tta=False) == 64
    # 2d: one window per slice in plane, 4 mirrors
    assert sliding_windows((30, 40, 40), (40, 40), "2d") == 30 * 4
    assert final_validation_s(0, 0.0, 0) > 0  # the final checkpoint still takes time
    assert final_validation_s(1000, 0.01, 4) > 1000 * 0.01 + 4  # more than the network time


def _cfg(**kw: object) -> TrainConfig:
    return TrainConfig("2d", 0, **kw)  # type: ignore[arg-type]


def test_continue_with_the_same_time_keeps_the_decision() -> None:
    old = _cfg(time_limit="2h", epochs=40, budget=DECISION)
    new = continued(old, _cfg(time_limit="120m", workers=0))
    assert (new.epochs, new.budget, new.time_limit, new.workers) == (40, DECISION, "2h", 0)
    # stopped before it decided: decides in the continued run
    undecided = continued(_cfg(time_limit="2h"), _cfg(time_limit="2h"))
    assert undecided.budget is None


def test_continue_with_another_time_or_a_time_for_an_epochs_run_is_refused() -> None:
    old = _cfg(time_limit="2h", epochs=40, budget=DECISION)
    with pytest.raises(ValueError, match=r"began with --time 2h, which decided 40 epochs.* --time 2h"):
        continued(old, _cfg(time_limit="3h"))
    with pytest.raises(ValueError, match=r"trained for 12 epochs, not for a time.*--epochs 12"):
        continued(_cfg(epochs=12), _cfg(time_limit="2h"))
    # without --time, --epochs replaces the budget (the trainer warns, naming the change)
    assert continued(old, _cfg(epochs=60)) == _cfg(epochs=60)


def test_the_decision_is_saved_with_the_settings_and_old_settings_still_load() -> None:
    cfg = _cfg(time_limit="2h", epochs=40, budget=DECISION)

    def load(d: dict[str, object]) -> TrainConfig:
        return parse(TrainConfig, d, name="train_config", version=None, error=CheckpointError, fix="")

    assert load(cfg.to_dict()) == cfg
    assert cfg.to_dict()["budget"]["epochs"] == 40
    before = {k: v for k, v in _cfg().to_dict().items() if k not in ("time_limit", "budget")}
    assert load({**ADDED_SETTINGS, **before}) == _cfg()
    assert dataclasses.replace(DECISION, epochs=41).expected_s == DECISION.expected_s + DECISION.epoch_s


def _error_lines(err: str) -> list[str]:
    lines = err.strip().splitlines()
    return lines[next(i for i, line in enumerate(lines) if ": error: " in line) :]


def test_time_and_epochs_together_exit_2_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    work = tmp_path / "work"
    argv = ["train", "ds", "2d", "0", "--time", "2h", "--epochs", "5", "--device", "cpu"]
    assert cli.main([*argv, "--work-dir", str(work)]) == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert "--time and --epochs exclude each other" in line
    assert not work.exists()
    # several folds too, before anything is prepared
    assert cli.main([*argv[:4], "1", *argv[4:], "--work-dir", str(work)]) == 2
    assert "--time and --epochs exclude each other" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["2", "1.5h", "2 h"])
def test_a_bad_time_exits_2_naming_the_flag(
    value: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["train", "ds", "2d", "0", "--time", value, "--work-dir", str(tmp_path / "w")])
    assert stop.value.code == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert "argument --time: DURATION must be whole hours, minutes and/or seconds" in line
    assert f"got {value!r}" in line


def test_folds_get_the_time_each() -> None:
    args = cli.build_parser().parse_args(
        ["train", "ds", "2d", "0", "1", "--time", "1h30m", "--device", "cpu"]
    )
    flags = child_options(args, work_dir=Path("/w"), device="cpu")
    assert flags[flags.index("--time") + 1] == "1h30m"
    child = cli.build_parser().parse_args(["train", "ds", "2d", "1", *flags])
    assert cli.train_config(child) == TrainConfig("2d", 1, time_limit="1h30m", device="cpu")
    assert "each fold gets this time" in " ".join(
        cli.commands(cli.build_parser())["train"].format_help().split()
    )
