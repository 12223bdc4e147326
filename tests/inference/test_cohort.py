"""Predicting a cohort: ``--num-parts``/``--part-id`` shards write every case exactly once and
compose with skip-existing reruns; the overlapped stages write exactly what the in-turn loop
writes, and a bad case among good ones fails alone."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.inference.cohort import Part
from autoseg.io.image import read_image
from autoseg.io.samples import sample_dataset_dir

SAMPLE = sample_dataset_dir()


def _cohort(tmp_path: Path, n: int) -> Path:
    """``n`` real scans (sample test and training images) under distinct case ids."""
    scans = sorted((SAMPLE / "imagesTs").glob("*.nii.gz")) + sorted((SAMPLE / "imagesTr").glob("*.nii.gz"))
    src = tmp_path / "in"
    src.mkdir()
    for p in scans[:n]:
        shutil.copy(p, src / p.name)
    return src


def _predict(work: Path, src: Path, out: Path, *extra: str) -> int:
    args = ["predict", "-i", str(src), "-o", str(out), "--work-dir", str(work), "-d", "hippo"]
    return main([*args, "--device", "cpu", "-c", "2d", "--no-tta", "-q", *extra])


def _outputs(out: Path) -> dict[str, np.ndarray]:
    return {p.name: read_image(p).array for p in sorted(out.glob("*.nii.gz"))}


@pytest.mark.parametrize(("n", "parts"), [(7, 3), (2, 3), (5, 1)])
def test_select_splits_every_case_exactly_once(n: int, parts: int) -> None:
    cases = [f"c{i}" for i in range(n)]
    shares = [Part(k, parts).select(cases) for k in range(parts)]
    flat = [c for s in shares for c in s]
    assert sorted(flat) == cases
    assert len(set(flat)) == n
    assert max(map(len, shares)) - min(map(len, shares)) <= 1  # balanced


@pytest.mark.parametrize(("part_id", "num_parts"), [(3, 3), (-1, 2), (0, 0)])
def test_a_part_outside_the_range_is_refused(part_id: int, num_parts: int) -> None:
    with pytest.raises(Exception, match="part id must be"):
        Part(part_id, num_parts)


def test_parts_write_every_case_exactly_once_and_a_rerun_skips(
    trained_work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _cohort(tmp_path, 7)
    out = tmp_path / "out"
    seen: list[str] = []
    for k in range(3):
        before = set(_outputs(out)) if out.exists() else set()
        assert _predict(trained_work, src, out, "--num-parts", "3", "--part-id", str(k)) == 0
        new = set(_outputs(out)) - before
        assert new, f"part {k} wrote nothing"
        seen += sorted(new)
    assert sorted(seen) == sorted(p.name for p in src.iterdir())  # all 7, none twice
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    capsys.readouterr()
    rerun = ["-i", str(src), "-o", str(out), "--work-dir", str(trained_work), "-d", "hippo", "-c", "2d"]
    assert main(["predict", *rerun, "--device", "cpu", "--no-tta", "--num-parts", "3", "--part-id", "1"]) == 0
    assert "0 written, 2 skipped" in capsys.readouterr().err  # part 1 of 7 cases: cases 1 and 4
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps


def test_part_id_out_of_range_is_one_line_exit_2(
    trained_work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = _cohort(tmp_path, 2)
    out = tmp_path / "out"
    assert _predict(trained_work, src, out, "--num-parts", "2", "--part-id", "2") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert "--part-id 2 with --num-parts 2" in err[0]
    assert not out.exists()


def test_overlapped_stages_write_what_the_in_turn_loop_writes(trained_work: Path, tmp_path: Path) -> None:
    src = _cohort(tmp_path, 6)
    (src / "broken.nii.gz").write_bytes(b"\x1f\x8b not really a gzip stream")
    results = {}
    for name, depth in (("in_turn", "0"), ("overlapped", "2")):
        out = tmp_path / name
        args = ("--read-ahead", depth, "--write-behind", depth, "--save-probabilities")
        assert _predict(trained_work, src, out, *args) == 2  # the broken scan fails alone
        results[name] = (_outputs(out), sorted(p.name for p in out.iterdir()))
    (maps_a, files_a), (maps_b, files_b) = results["in_turn"], results["overlapped"]
    assert files_a == files_b
    assert len(maps_a) == 6
    assert "broken.nii.gz" not in maps_a
    for name, arr in maps_a.items():
        np.testing.assert_array_equal(arr, maps_b[name], err_msg=name)
    for p in (tmp_path / "in_turn").glob("*.npz"):
        a, b = np.load(p), np.load(tmp_path / "overlapped" / p.name)
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])


@pytest.mark.parametrize(
    ("extra", "depths"),
    [
        ((), (0, 0)),  # the CPU default: torch's threads already use every core
        (("--read-ahead", "2"), (2, 0)),
        (("--read-ahead", "1", "--write-behind", "3"), (1, 3)),
    ],
)
def test_on_the_cpu_the_stages_run_in_turn_unless_told(
    trained_work: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    extra: tuple[str, ...],
    depths: tuple[int, int],
) -> None:
    import autoseg.inference.cohort as cohort

    seen = []
    real = cohort.overlapped

    def spy(*args, **kw):
        seen.append((kw["read_ahead"], kw["write_behind"]))
        return real(*args, **kw)

    monkeypatch.setattr(cohort, "overlapped", spy)
    out = tmp_path / "out"
    assert _predict(trained_work, _cohort(tmp_path, 2), out, *extra) == 0
    assert seen == [depths]
    assert len(_outputs(out)) == 2
