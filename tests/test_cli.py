"""The command line is built from the options dataclasses: bad values are refused while parsing
(exit 2, one line naming the flag and the value, nothing written), ``--help`` shows the
dataclasses' defaults, no flag given means the dataclasses' defaults, the worker-count flags (and
the deprecated ``--workers``) reach the pipeline, and every flag a message names exists."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import re
from pathlib import Path
from typing import Any

import pytest

import autoseg
import autoseg.pipeline
from autoseg import cli
from autoseg._device import cuda_available
from autoseg._parallel import default_workers
from autoseg.command_options import CommonOptions
from autoseg.io.samples import copy_sample_subset
from autoseg.options import describe, from_values
from autoseg.training.config import TrainConfig

EVAL = ["evaluate", "--pred", "p", "--ref", "r", "-o", "m.json"]
TRAIN = ["train", "ds", "3d_fullres", "0"]
PREDICT = ["predict", "-i", "in", "-o", "out"]

#: (command line before the flag, flag, bad values): out of range, nan, inf, not a number.
BAD_VALUES = [
    (TRAIN, "--epochs", ["0", "-1", "1.5", "nan", "ten"]),
    (TRAIN, "--iters-per-epoch", ["0", "-250", "inf"]),
    (TRAIN, "--val-iters", ["-1", "x"]),
    (TRAIN, "--checkpoint-every", ["0", "-5", "2.5"]),
    (TRAIN, "--lr", ["0", "-0.01", "nan", "inf", "-inf", "fast"]),
    (TRAIN, "--batch-size", ["0", "-2", "two"]),
    (TRAIN, "--accumulate", ["0", "-1"]),
    (TRAIN, "--augment-workers", ["-1", "many"]),
    (TRAIN, "--preprocess-workers", ["0", "-1"]),
    (TRAIN, "--workers", ["-1", "x"]),
    (TRAIN, "--seed", ["-1", str(2**32), "1e3"]),
    (["plan", "ds"], "--gpu-memory", ["0", "-8", "0.5", "nan", "inf", "lots"]),
    (["plan", "ds"], "--preprocess-workers", ["0", "-3", "nan"]),
    (["plan", "ds"], "--workers", ["-1"]),
    (["verify", "ds"], "--preprocess-workers", ["0"]),
    (["preprocess", "ds"], "--workers", ["-2"]),
    (["find-best", "ds"], "--preprocess-workers", ["-1"]),
    (EVAL, "--tolerance", ["-1", "nan", "inf", "one"]),
    (EVAL, "--labels", ["-1", "x"]),
    (EVAL, "--workers", ["-1"]),
    (PREDICT, "--step", ["0", "1.5", "-0.5", "nan", "half"]),
]
CASES = [
    pytest.param(before, flag, value, id=f"{before[0]}{flag}={value}")
    for before, flag, values in BAD_VALUES
    for value in values
]


def _error_lines(err: str) -> list[str]:
    """The lines after argparse's usage: the error itself."""
    lines = err.strip().splitlines()
    first = next(i for i, line in enumerate(lines) if ": error: " in line)
    return lines[first:]


@pytest.mark.parametrize(("before", "flag", "value"), CASES)
def test_bad_number_exits_2_naming_flag_value_and_range(
    before: list[str],
    flag: str,
    value: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as stop:
        cli.main([*before, f"{flag}={value}", "--work-dir", str(tmp_path / "work")])
    assert stop.value.code == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert f"argument {flag}: " in line
    assert f"got {value!r}" in line
    assert " must be " in line
    assert re.search(r"(>=?|<=) -?\d|in [\[(]", line), line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([*TRAIN, "--group-by", "(pat"], "invalid regular expression '(pat'"),
        ([*TRAIN, "--group-by", "pat[0-"], "invalid regular expression 'pat[0-'"),
        (
            ["train", "ds", "3d_fullres", "first"],
            "FOLD must be a fold number (0-4 with 5 folds) or 'all', got 'first'",
        ),
        (["train", "ds", "3d_fullres", "-1"], "FOLD must be a fold number"),
        (["train", "ds", "3d_fullres", "0", "--n-folds", "1"], "--n-folds: N must be an integer >= 2"),
        ([*PREDICT, "--checkpoint", "last"], "argument --checkpoint: invalid choice: 'last'"),
        ([*TRAIN, "--precision", "fp8"], "argument --precision: invalid choice: 'fp8'"),
    ],
)
def test_bad_pattern_fold_or_choice_exits_2(
    argv: list[str], expected: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main([*argv, "--work-dir", str(tmp_path / "work")])
    assert stop.value.code == 2
    [line] = _error_lines(capsys.readouterr().err)
    assert expected in line
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize(
    ("flag", "kind"),
    [
        ("--loss", "loss"),
        ("--optimizer", "optimizer"),
        ("--schedule", "schedule"),
        ("--augmentation", "augmentation"),
    ],
)
def test_unknown_component_name_exits_2_before_anything_is_written(
    planned: Path, flag: str, kind: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Training components are chosen by name from registries users can extend, so argparse
    cannot list the choices: an unknown name is refused before preprocessing."""
    before = _tree(planned)
    capsys.readouterr()
    code = cli.main(["train", "hippo", "3d_fullres", "0", flag, "nope", "--work-dir", str(planned), "-q"])
    assert code == 2
    err = capsys.readouterr().err
    assert f"{flag} 'nope': no {kind} of that name; choose one of [" in err
    assert _tree(planned) == before


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with a planned 5-case dataset ``hippo`` (nothing preprocessed)."""
    root = tmp_path_factory.mktemp("planned")
    ds = copy_sample_subset(root / "hippo", 5)
    work = root / "work"
    argv = ["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "--gpu-memory", "8", "-q"]
    assert cli.main(argv) == 0
    return work


def _tree(root: Path) -> list[Path]:
    return sorted(root.rglob("*"))


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        (r"^nomatch_(\d+)", "5 of 5 case ids do not match the patient pattern"),
        (r"^hippocampus_(0[0-3]\d)$", "2 of 5 case ids do not match the patient pattern"),
        (r"^hippocampus_(0[0-4]\d)$", "case id 'hippocampus_051' does not match the patient pattern"),
        (r"^(x)?hippo", "5 of 5 case ids do not match"),  # the first group takes no part: no patient
    ],
)
def test_group_by_matching_no_case_is_one_line_exit_2(
    planned: Path, pattern: str, expected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    before = _tree(planned)
    argv = ["train", "hippo", "2d", "0", "--group-by", pattern, "--device", "cpu", "--work-dir", str(planned)]
    assert cli.main([*argv, "-q"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("autoseg: error: --group-by: ")
    assert repr(pattern) in err
    assert expected in err
    assert len(err.splitlines()) == 1
    assert _tree(planned) == before  # checked before preprocessing: nothing written


def _help_of(parser: argparse.ArgumentParser, dest: str) -> str:
    return next(a.help for a in parser._actions if a.dest == dest) or ""


def _default_words(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def test_help_shows_the_dataclass_defaults() -> None:
    parsers = cli.commands(cli.build_parser())
    assert set(parsers) == set(cli.COMMAND_OPTIONS)
    checked = 0
    for name, parser in parsers.items():
        text = "".join(parser.format_help().split())  # wrapped anywhere, even after a hyphen
        for cls in (CommonOptions, *cli.COMMAND_OPTIONS[name]):
            for f in dataclasses.fields(cls):
                option = f.metadata.get("option")
                if option is None or isinstance(f.default, bool):
                    continue
                if f.default is None and option.run_time_default is None:
                    continue
                shown = option.run_time_default or _default_words(f.default)
                expected = f"default: {shown})"
                assert expected in _help_of(parser, f.name), (name, f.name)
                assert "".join(expected.split()) in text, (name, f.name)
                checked += 1
    assert checked >= 30


def test_every_option_is_on_its_command_with_a_flag_and_help() -> None:
    parsers = cli.commands(cli.build_parser())
    for name, parser in parsers.items():
        dests = {a.dest for a in parser._actions}
        for cls in (CommonOptions, *cli.COMMAND_OPTIONS[name]):
            for d in describe(cls):
                assert d.name in dests, (name, d.name)
                assert d.option.help, (name, d.name)


def test_no_flag_means_the_dataclass_defaults() -> None:
    parser = cli.build_parser()
    args = parser.parse_args(TRAIN)
    device = "cuda" if cuda_available() else "cpu"
    assert cli.train_config(args) == TrainConfig("3d_fullres", 0, device=device)
    argv_of = {
        "verify": ["verify", "ds"],
        "plan": ["plan", "ds"],
        "preprocess": ["preprocess", "ds"],
        "train": TRAIN,
        "predict": PREDICT,
        "evaluate": EVAL,
        "find-best": ["find-best", "ds"],
        "export": ["export", "ds", "3d_fullres"],
        "send": ["send", "out", "--to", "PACS@127.0.0.1:104"],
    }
    for name, classes in cli.COMMAND_OPTIONS.items():
        values = vars(parser.parse_args(argv_of[name]))
        assert from_values(CommonOptions, values) == CommonOptions()
        for cls in classes:
            if cls is not TrainConfig:
                assert from_values(cls, values) == cls(), name


def test_flags_reach_the_train_config() -> None:
    argv = [*TRAIN, "--epochs", "3", "--iters-per-epoch", "7", "--val-iters", "0", "--lr", "0.1"]
    argv += ["--loss", "dice_focal", "--precision", "fp32", "--accumulate", "2", "--augment-workers", "0"]
    argv += ["--seed", "0", "--checkpoint-every", "2", "--no-val-probabilities", "--batch-size", "4"]
    cfg = cli.train_config(cli.build_parser().parse_args([*argv, "--device", "cpu"]))
    assert cfg == TrainConfig(
        "3d_fullres",
        0,
        epochs=3,
        iters_per_epoch=7,
        val_iters=0,
        lr=0.1,
        loss="dice_focal",
        device="cpu",
        precision="fp32",
        accumulate=2,
        workers=0,
        seed=0,
        checkpoint_every=2,
        val_probabilities=False,
        batch_size=4,
    )
    assert cli.train_config(cli.build_parser().parse_args(["train", "ds", "2d", "all"])).fold == "all"


@pytest.mark.parametrize(
    ("flags", "augment", "preprocess", "deprecated"),
    [
        ([], 2, None, False),
        (["--augment-workers", "0", "--preprocess-workers", "3"], 0, 3, False),
        (["--workers", "3"], 3, 3, True),  # the old meaning: both
        (["--workers", "0"], 0, None, True),  # 0: augment in the training process, default preprocess
        (["--workers", "3", "--augment-workers", "1", "--preprocess-workers", "2"], 1, 2, True),
    ],
)
def test_worker_flags_reach_train(
    flags: list[str],
    augment: int,
    preprocess: int | None,
    deprecated: bool,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    seen: dict[str, Any] = {}

    def fake_train(dataset: str, workspace: Any, cfg: TrainConfig, **kw: Any) -> Path:
        seen.update(kw, cfg=cfg)
        return tmp_path

    monkeypatch.setattr(autoseg.pipeline, "train", fake_train)
    assert cli.main([*TRAIN, "--device", "cpu", "--work-dir", str(tmp_path), "-q", *flags]) == 0
    assert seen["cfg"].workers == augment
    assert seen["preprocess_workers"] == (preprocess or default_workers())
    err = capsys.readouterr().err
    assert ("--workers is deprecated: use --augment-workers and --preprocess-workers" in err) == deprecated


@pytest.mark.parametrize(
    ("flags", "workers"),
    [([], None), (["--preprocess-workers", "2"], 2), (["--workers", "3"], 3), (["--workers", "0"], None)],
)
def test_worker_flags_reach_find_best(
    flags: list[str], workers: int | None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def fake_find_best(dataset: str, workspace: Any, **kw: Any) -> dict:
        seen.update(kw)
        return {"cv_dice": {}, "best": "x", "postprocessing": None}

    monkeypatch.setattr(autoseg.pipeline, "find_best", fake_find_best)
    assert cli.main(["find-best", "ds", "--work-dir", str(tmp_path), "-q", *flags]) == 0
    assert seen == {"configurations": None, "workers": workers or default_workers()}


#: A long option as messages write it, e.g. ``--work-dir`` or ``--add-2.5d`` (not ``--no-{x}``).
FLAG = re.compile(r"(?<![\w-])--[a-z](?:[a-z0-9-]*[a-z0-9])?(?:\.[0-9][a-z0-9]*)?(?![\w{-])")
#: ``autoseg COMMAND ...`` up to the end of a quoted command line (a backtick) or of the string.
COMMAND_LINE = re.compile(r"autoseg ([a-z][a-z-]*)([^`]*)")


def _message_strings() -> list[tuple[str, int, str]]:
    """Every string literal of the package but docstrings: messages, help and hints."""
    out = []
    for path in sorted(Path(autoseg.__file__).parent.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        docstrings = {
            id(node.body[0].value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
            and node.body
            and isinstance(node.body[0], ast.Expr)
            and isinstance(node.body[0].value, ast.Constant)
        }
        out += [
            (path.name, node.lineno, node.value)
            for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
        ]
    return out


def test_every_flag_a_message_names_exists() -> None:
    parser = cli.build_parser()
    parsers = cli.commands(parser)
    flags_of = {name: {s for a in p._actions for s in a.option_strings} for name, p in parsers.items()}
    every = set().union(*flags_of.values(), *(a.option_strings for a in parser._actions))
    named = 0
    for file, line, text in _message_strings():
        for flag in FLAG.findall(text):
            assert flag in every, f"{file}:{line} names {flag}, which no command has: {text!r}"
            named += 1
        for command, rest in COMMAND_LINE.findall(text):
            for flag in FLAG.findall(rest) if command in flags_of else []:
                assert flag in flags_of[command], f"{file}:{line}: `autoseg {command}` has no {flag}"
    assert named >= 20  # the scan sees the messages (e.g. "resume with --continue")


def test_flag_scan_catches_a_wrong_hint() -> None:
    assert FLAG.findall("re-run it with `autoseg train --resume`") == ["--resume"]
    assert FLAG.findall("asked for with --add-2.5d.") == ["--add-2.5d"]
    assert FLAG.findall(f"--no-{{stem}} or x--y or --{1}") == []
    assert COMMAND_LINE.findall("run `autoseg export DATASET CONFIG --format onnx` first") == [
        ("export", " DATASET CONFIG --format onnx")
    ]


def _doc_flags(text: str) -> list[tuple[str | None, str]]:
    """``(command, flag)`` for every flag a Markdown text names; ``command`` is None in prose.

    Other programs' flags are told apart by where they stand, not by a list of their names: the
    launcher's part of a ``... -m autoseg ...`` line (torchrun, srun) and ``#SBATCH`` directives; a
    shell comment after a command line is prose.
    """
    out: list[tuple[str | None, str]] = []
    for line in text.replace("\\\n", " ").splitlines():
        if line.lstrip().startswith("#SBATCH"):
            continue
        _, launched, rest = line.partition("-m autoseg ")
        for piece in re.split(r"(?=autoseg [a-z])", "autoseg " + rest if launched else line):
            match = COMMAND_LINE.match(piece)
            if match is None:
                out += [(None, flag) for flag in FLAG.findall(piece)]
                continue
            args, _, comment = match.group(2).partition(" # ")
            out += [(match.group(1), flag) for flag in FLAG.findall(args)]
            out += [(None, flag) for flag in FLAG.findall(comment + " " + piece[match.end() :])]
    return out


def test_doc_flag_scan_tells_commands_prose_and_launchers_apart() -> None:
    text = (
        "#SBATCH --array=0-7\n"
        "srun torchrun --nnodes 2 --rdzv-id 9 \\\n  -m autoseg train D 3d_fullres 0 --resume  # or --epochs\n"
        "run `autoseg plan D --preset x` then `autoseg predict -i a --save-probabilities` or use --time.\n"
    )
    assert _doc_flags(text) == [
        ("train", "--resume"),
        (None, "--epochs"),
        ("plan", "--preset"),
        ("predict", "--save-probabilities"),
        (None, "--time"),
    ]


@pytest.mark.parametrize("doc", ["README.md", "plans/README.md"])
def test_every_flag_the_readme_names_exists(doc: str) -> None:
    path = Path(__file__).parents[1] / doc
    if not path.is_file():
        pytest.skip(f"{doc} is not beside the tests")
    parser = cli.build_parser()
    own = {s for a in parser._actions for s in a.option_strings}
    flags_of = {
        name: own | {s for a in p._actions for s in a.option_strings}
        for name, p in cli.commands(parser).items()
    }
    every = set().union(*flags_of.values())
    named = _doc_flags(path.read_text(encoding="utf-8"))
    assert any(command for command, _ in named)  # the scan sees its command lines
    assert [(c, f) for c, f in named if f not in flags_of.get(c or "", every)] == []
