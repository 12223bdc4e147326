"""``autoseg predict`` end to end on real scans with a model trained for a few iterations:
outputs overlay their inputs exactly (whatever the orientation), DICOM series are predicted,
bad inputs are reported without stopping the others, and nothing half-written is left."""

from __future__ import annotations

import gzip
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main
from autoseg.io.image import read_image
from autoseg.io.samples import DATA_DIR, sample_dataset_dir

SAMPLE = sample_dataset_dir()
TEST_CASES = sorted((SAMPLE / "imagesTs").glob("*.nii.gz"))[:3]


@pytest.fixture
def work(trained_work: Path) -> Path:
    return trained_work


def _predict(work: Path, src: Path, out: Path, *extra: str) -> int:
    return main(
        [
            "predict",
            "-i",
            str(src),
            "-o",
            str(out),
            "--work-dir",
            str(work),
            "-d",
            "hippo",
            "--device",
            "cpu",
            "-q",
            *extra,
        ]
    )


def _reoriented(path: Path, dest: Path) -> Path:
    """The same scan stored in another orientation (axes permuted and flipped)."""
    img = sitk.ReadImage(str(path))
    sitk.WriteImage(sitk.DICOMOrient(img, "SAR"), str(dest))
    return dest


def test_outputs_overlay_inputs_in_any_orientation(work: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    for p in TEST_CASES:
        shutil.copy(p, src / p.name)
    _reoriented(TEST_CASES[0], src / "turned.nii.gz")
    resampled = sitk.Resample(
        sitk.ReadImage(str(TEST_CASES[1])),
        [30, 40, 30],
        sitk.Transform(),
        sitk.sitkLinear,
        sitk.ReadImage(str(TEST_CASES[1])).GetOrigin(),
        (1.3, 1.2, 1.1),
    )
    sitk.WriteImage(resampled, str(src / "respaced.nrrd"))
    out = tmp_path / "out"
    assert _predict(work, src, out, "-c", "3d_fullres") == 0
    assert sorted(p.name for p in out.iterdir()) == sorted(
        [p.name for p in TEST_CASES] + ["turned.nii.gz", "respaced.nii.gz"]
    )
    for name in ("turned", "respaced", TEST_CASES[2].name[:-7]):
        inp = read_image(next(src.glob(f"{name}.*")))
        pred = read_image(out / f"{name}.nii.gz")
        assert pred.array.shape == inp.array.shape
        assert pred.geometry.same_grid(inp.geometry, rtol=0, atol=1e-5)
        assert set(np.unique(pred.array)) <= {0, 1, 2}


def test_channel_suffix_single_file_and_dicom_series(work: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(TEST_CASES[0], src / "caseA_0000.nii.gz")
    shutil.copytree(DATA_DIR / "fixtures" / "dicom_mr" / "13_HCropVolume", src / "mr_series")
    out = tmp_path / "out"
    assert _predict(work, src, out) == 2  # two trained models and no find-best choice: refused
    assert _predict(work, src, out, "-c", "3d_fullres") == 0
    assert sorted(p.name for p in out.iterdir()) == ["caseA.nii.gz", "mr_series.nii.gz"]
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(src / "mr_series")))
    ref = reader.Execute()
    pred = sitk.ReadImage(str(out / "mr_series.nii.gz"))
    assert pred.GetSize() == ref.GetSize()
    np.testing.assert_allclose(pred.GetSpacing(), ref.GetSpacing(), atol=1e-5)
    np.testing.assert_allclose(pred.GetOrigin(), ref.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(pred.GetDirection(), ref.GetDirection(), atol=1e-6)
    single = tmp_path / "single"
    assert _predict(work, TEST_CASES[1], single, "-c", "2d") == 0
    assert [p.name for p in single.iterdir()] == [TEST_CASES[1].name]


def test_bad_inputs_are_reported_and_the_rest_predicted(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(TEST_CASES[0], src / "good.nii.gz")
    (src / "broken.nii.gz").write_bytes(TEST_CASES[1].read_bytes()[:500])
    shutil.copy(TEST_CASES[2], src / "two_0000.nii.gz")
    shutil.copy(TEST_CASES[2], src / "two_0001.nii.gz")
    out = tmp_path / "out"
    assert _predict(work, src, out, "-c", "3d_fullres") == 2
    err = capsys.readouterr().err
    assert "broken.nii.gz" in err
    assert "case two" in err
    assert [p.name for p in out.iterdir()] == ["good.nii.gz"]


def test_empty_or_missing_input_fails_cleanly(
    work: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "empty").mkdir()
    assert _predict(work, tmp_path / "empty", tmp_path / "out", "-c", "2d") == 2
    assert "no scans found" in capsys.readouterr().err
    assert _predict(work, tmp_path / "nope", tmp_path / "out", "-c", "2d") == 2
    assert "input not found" in capsys.readouterr().err
    for step in ("0", "1.5", "half"):  # no windows / gaps between windows / not a number
        with pytest.raises(SystemExit) as stop:
            _predict(work, TEST_CASES[0], tmp_path / "out", "-c", "2d", "--step", step)
        assert stop.value.code == 2
        assert "STEP must be a fraction of the patch in (0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_skip_existing_overwrite_probabilities_and_ensemble(work: Path, tmp_path: Path) -> None:
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(TEST_CASES[0], src / "a.nii.gz")
    out = tmp_path / "out"
    (out).mkdir()
    kept = gzip.compress(b"keep me")  # a whole gzip stream: done (tests/hostile: damaged ones)
    (out / "a.nii.gz").write_bytes(kept)
    assert _predict(work, src, out, "-c", "3d_fullres") == 0
    assert (out / "a.nii.gz").read_bytes() == kept
    assert (
        _predict(work, src, out, "-c", "3d_fullres", "2d", "--overwrite", "--save-probabilities", "--no-tta")
        == 0
    )
    pred = read_image(out / "a.nii.gz")
    with np.load(out / "a.npz", allow_pickle=False) as z:
        prob = z["probabilities"].astype(np.float32)
        assert prob.shape == (3, *pred.array.shape)
        np.testing.assert_allclose(prob.sum(0), 1.0, atol=5e-3)
        # the label map comes from float32 probabilities, the file keeps float16: they agree
        # wherever float16 rounding cannot swap the top two classes
        top2 = np.sort(prob, axis=0)[-2:]
        clear = top2[1] - top2[0] > 1e-2
        assert clear.mean() > 0.5
        np.testing.assert_array_equal(z["label_values"][prob.argmax(0)][clear], pred.array[clear])
    assert not list(out.glob(".partial-*"))


def test_predict_starts_without_monai(work: Path, tmp_path: Path) -> None:
    """``autoseg predict`` imports neither MONAI nor what MONAI's package import drags in
    (matplotlib, pandas, scipy.signal): about 1.2 s of its start-up (issue 4: <= 3 s)."""
    code = (
        "import sys; from autoseg.cli import main; rc = main(sys.argv[1:]); "
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('monai', 'matplotlib', 'pandas', 'sklearn') or m == 'scipy.signal'); "
        "print('HEAVY', heavy); sys.exit(rc)"
    )
    out = tmp_path / "out"
    args = [
        "predict",
        "-i",
        str(TEST_CASES[0]),
        "-o",
        str(out),
        "--work-dir",
        str(work),
        "-d",
        "hippo",
        "-c",
        "3d_fullres",
        "--device",
        "cpu",
        "--no-tta",
        "-q",
    ]
    run = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stderr
    assert "HEAVY []" in run.stdout
    assert (out / TEST_CASES[0].name).is_file()


@pytest.mark.parametrize("command", ["predict", "train"])
def test_cuda_asked_without_cuda_is_bad_input(
    work: Path,
    tmp_path: Path,
    command: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    import autoseg._device

    monkeypatch.setattr(autoseg._device, "cuda_available", lambda: False)
    if command == "predict":
        code = _predict(work, TEST_CASES[0], tmp_path / "out", "-c", "3d_fullres", "--device", "cuda")
    else:
        code = main(["train", "hippo", "3d_fullres", "0", "--work-dir", str(work), "--device", "cuda", "-q"])
    assert code == 2
    assert "--device cuda: no CUDA device is available here; use --device cpu" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
