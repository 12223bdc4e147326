"""Class 5 of the hostile inputs: a preprocessed store whose arrays are of the wrong kind (an
object array where a ``.npy`` of numbers belongs, another dtype, a truncated or foreign file, a
missing file, shapes that disagree) is refused before training with one line per bad file naming
it and the fix, not a traceback from a data-loading worker."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autoseg.cli import main
from autoseg.io.samples import copy_sample_subset
from tests.budget import tiny

TRAIN = [*tiny(iters=1, val_iters=0), "--no-val-probabilities"]


@pytest.fixture(scope="module")
def preprocessed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("arrays")
    ds = copy_sample_subset(root / "hippo", 5)
    work = root / "work"
    assert main(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
    assert main(["preprocess", "hippo", "-c", "3d_fullres", "--work-dir", str(work), "-q"]) == 0
    return work


def _object_array(path: Path) -> None:
    np.save(path, np.array([{"not": "numbers"}, 1], dtype=object), allow_pickle=True)


def _float_seg(path: Path) -> None:
    np.save(path, np.load(path).astype(np.float32))


def _truncated(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:200])


def _foreign(path: Path) -> None:
    path.write_bytes(b"this is not a numpy file at all")


def _missing(path: Path) -> None:
    path.unlink()


def _wrong_axes(path: Path) -> None:
    np.save(path, np.load(path)[0])


def _shape_mismatch(path: Path) -> None:
    np.save(path, np.load(path)[:, :-1])


DAMAGE: dict[str, tuple[str, Callable[[Path], None], str]] = {
    "object_data": ("{c}.npy", _object_array, "not a plain numeric array"),
    "object_locations": ("{c}_fg.npy", _object_array, "not a plain numeric array"),
    "float_segmentation": ("{c}_seg.npy", _float_seg, "expected 3 axes of kind 'iu'"),
    "truncated_data": ("{c}.npy", _truncated, "not a plain numeric array"),
    "foreign_segmentation": ("{c}_seg.npy", _foreign, "not a plain numeric array"),
    "missing_locations": ("{c}_fg.npy", _missing, "missing"),
    "data_without_channel_axis": ("{c}.npy", _wrong_axes, "expected 4 axes of kind 'f'"),
    "segmentation_of_another_shape": ("{c}_seg.npy", _shape_mismatch, "segmentation of shape"),
}


@pytest.mark.parametrize(("pattern", "damage", "words"), list(DAMAGE.values()), ids=list(DAMAGE))
def test_damaged_store_is_refused_naming_the_file(
    preprocessed: Path,
    tmp_path: Path,
    pattern: str,
    damage: Callable[[Path], None],
    words: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import shutil

    work = tmp_path / "work"
    shutil.copytree(preprocessed, work)
    (store,) = (work / "hippo" / "preprocessed").iterdir()
    case = sorted(p.name.removesuffix(".json") for p in store.glob("*.json") if p.name != "plan_part.json")[0]
    bad = store / pattern.format(c=case)
    damage(bad)
    capsys.readouterr()
    assert main(["train", "hippo", "3d_fullres", "all", *TRAIN, "--work-dir", str(work), "-q"]) == 2
    err = capsys.readouterr().err
    assert f"{bad}: " in err
    assert words in err
    assert f"delete {store} and run `autoseg preprocess` (or train) again" in err
    assert "Traceback" not in err
    assert not (work / "hippo" / "models").exists()
    assert json.loads((store / "plan_part.json").read_text())  # the store itself is left as it was
