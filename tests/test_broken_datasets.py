"""Broken datasets: ``autoseg verify`` and ``autoseg plan`` exit 2, name the file, write nothing.

Every dataset here starts as a copy of a few real cases of ``data/hippocampus_sample`` (MSD
layout), or of the same cases rearranged into the nnU-Net v2 layout with two channels, and then
has exactly one thing broken. The intact copies pass (see the first tests), so the exit code 2
of each broken one comes from its fault.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg.cli import main

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "hippocampus_sample"
CASES = ("hippocampus_004", "hippocampus_023", "hippocampus_036", "hippocampus_045")
VICTIM = "hippocampus_023"
NII = ".nii.gz"


# --- building the datasets -----------------------------------------------------------------


def _copy(src: Path, dst: Path) -> None:
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)  # not copy2: the sample files are read-only


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _read_json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.fixture
def msd(tmp_path: Path) -> Path:
    """Four real hippocampus cases in the MSD layout (dataset.json from the sample, cut down)."""
    root = tmp_path / "Hippo"
    for cid in CASES:
        for sub in ("imagesTr", "labelsTr"):
            _copy(SAMPLE / sub / f"{cid}{NII}", root / sub / f"{cid}{NII}")
    meta = _read_json(SAMPLE / "dataset.json")
    meta["training"] = [{"image": f"./imagesTr/{c}{NII}", "label": f"./labelsTr/{c}{NII}"} for c in CASES]
    meta["numTraining"] = len(CASES)
    meta.pop("test", None)
    _write_json(root / "dataset.json", meta)
    return root


@pytest.fixture
def nnunet(tmp_path: Path) -> Path:
    """Three real cases in the nnU-Net v2 layout, two channels (the MRI and a rescaled copy)."""
    root = tmp_path / "Dataset001_Hippo"
    for cid in CASES[:3]:
        _copy(SAMPLE / "imagesTr" / f"{cid}{NII}", root / "imagesTr" / f"{cid}_0000{NII}")
        arr, ref = _read(SAMPLE / "imagesTr" / f"{cid}{NII}")
        _write(arr * 0.5 + 10, root / "imagesTr" / f"{cid}_0001{NII}", ref)
        _copy(SAMPLE / "labelsTr" / f"{cid}{NII}", root / "labelsTr" / f"{cid}{NII}")
    _write_json(
        root / "dataset.json",
        {
            "channel_names": {"0": "MRI", "1": "MRI_rescaled"},
            "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
            "numTraining": 3,
            "file_ending": NII,
        },
    )
    return root


def _read(path: Path) -> tuple[np.ndarray, sitk.Image]:
    img = sitk.ReadImage(str(path))
    return sitk.GetArrayFromImage(img), img


def _write(
    arr: np.ndarray,
    path: Path,
    ref: sitk.Image,
    *,
    spacing: tuple[float, ...] | None = None,
    origin: tuple[float, ...] | None = None,
) -> None:
    """Write ``arr`` with ``ref``'s geometry (where the dimensions agree), some of it replaced."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(arr), isVector=False)
    if img.GetDimension() == ref.GetDimension():
        img.SetSpacing(spacing or ref.GetSpacing())
        img.SetOrigin(origin or ref.GetOrigin())
        img.SetDirection(ref.GetDirection())
    path.unlink(missing_ok=True)
    sitk.WriteImage(img, str(path), useCompression=True)


def _image(root: Path, cid: str = VICTIM) -> Path:
    return root / "imagesTr" / f"{cid}{NII}"


def _label(root: Path, cid: str = VICTIM) -> Path:
    return root / "labelsTr" / f"{cid}{NII}"


def _rel(path: Path) -> str:
    """``imagesTr/x.nii.gz``: folder and name, so that an image is not mistaken for its label."""
    return f"{path.parent.name}/{path.name}"


# --- the faults: each breaks one thing and returns what the error output must name ----------

Fault = Callable[[Path], tuple[str, ...]]


def missing_image(root: Path) -> tuple[str, ...]:
    _image(root).unlink()
    return (_rel(_image(root)),)


def missing_label(root: Path) -> tuple[str, ...]:
    _label(root).unlink()
    return (_rel(_label(root)),)


def corrupt_image(root: Path) -> tuple[str, ...]:
    _image(root).write_bytes(np.random.default_rng(0).bytes(20_000))
    return (_rel(_image(root)),)


def empty_image_file(root: Path) -> tuple[str, ...]:
    _image(root).write_bytes(b"")
    return (_rel(_image(root)),)


def truncated_gz(root: Path) -> tuple[str, ...]:
    data = _image(root).read_bytes()
    _image(root).write_bytes(data[: len(data) // 2])
    return (_rel(_image(root)),)


def truncated_nii(root: Path) -> tuple[str, ...]:
    """An uncompressed .nii cut in half: SimpleITK reads it silently, zero-filling the rest."""
    ref = sitk.ReadImage(str(_image(root)))
    nii = root / "imagesTr" / f"{VICTIM}.nii"
    sitk.WriteImage(ref, str(nii), useCompression=False)
    data = nii.read_bytes()
    nii.write_bytes(data[: len(data) // 2])
    _image(root).unlink()
    meta = _read_json(root / "dataset.json")
    for e in meta["training"]:
        e["image"] = e["image"].replace(f"{VICTIM}{NII}", f"{VICTIM}.nii")
    _write_json(root / "dataset.json", meta)
    return (_rel(nii),)


def _edit_image(root: Path, edit: Callable[[np.ndarray], np.ndarray]) -> tuple[str, ...]:
    arr, ref = _read(_image(root))
    _write(edit(arr.astype(np.float32)), _image(root), ref)
    return (_rel(_image(root)),)


def _set(arr: np.ndarray, value: float, at: tuple[int, ...] = (5, 10, 10)) -> np.ndarray:
    arr[at] = value
    return arr


def nan_image(root: Path) -> tuple[str, ...]:
    return _edit_image(root, lambda a: _set(a, np.nan))


def inf_image(root: Path) -> tuple[str, ...]:
    return _edit_image(root, lambda a: _set(a, -np.inf))


def image_2d(root: Path) -> tuple[str, ...]:
    return _edit_image(root, lambda a: a[a.shape[0] // 2])


def image_4d(root: Path) -> tuple[str, ...]:
    return _edit_image(root, lambda a: np.stack([a, a]))


def _edit_label(root: Path, edit: Callable[[np.ndarray], np.ndarray], **geometry) -> tuple[str, ...]:
    arr, ref = _read(_label(root))
    _write(edit(arr), _label(root), ref, **geometry)
    return (_rel(_label(root)),)


def shape_mismatch(root: Path) -> tuple[str, ...]:
    return _edit_label(root, lambda a: a[:-1])


def spacing_mismatch(root: Path) -> tuple[str, ...]:
    return _edit_label(root, lambda a: a, spacing=(1.0, 1.0, 2.0))


def label_2d(root: Path) -> tuple[str, ...]:
    return _edit_label(root, lambda a: a[a.shape[0] // 2])


def undeclared_label(root: Path) -> tuple[str, ...]:
    return _edit_label(root, lambda a: _set(a, 5))


def huge_label(root: Path) -> tuple[str, ...]:
    """A corrupt uint32 value: must be reported, not allocate a 4e9-long histogram."""
    return _edit_label(root, lambda a: _set(a.astype(np.uint32), 4_000_000_000))


def fractional_label(root: Path) -> tuple[str, ...]:
    return _edit_label(root, lambda a: _set(a.astype(np.float32), 1.5))


def nan_label(root: Path) -> tuple[str, ...]:
    return _edit_label(root, lambda a: _set(a.astype(np.float32), np.nan))


def negative_label(root: Path) -> tuple[str, ...]:
    return _edit_label(root, lambda a: _set(a.astype(np.int16), -1))


def _edit_json(root: Path, edit: Callable[[dict], object]) -> tuple[str, ...]:
    """Change dataset.json in place (``edit``'s return value is ignored)."""
    meta = _read_json(root / "dataset.json")
    edit(meta)
    _write_json(root / "dataset.json", meta)
    return ("dataset.json",)


def invalid_json(root: Path) -> tuple[str, ...]:
    text = (root / "dataset.json").read_text(encoding="utf-8")
    (root / "dataset.json").write_text(text.rstrip()[:-1] + ",\n", encoding="utf-8")
    return ("dataset.json", "invalid JSON")


def json_not_object(root: Path) -> tuple[str, ...]:
    _write_json(root / "dataset.json", [_read_json(root / "dataset.json")])
    return ("dataset.json", "JSON object")


def no_layout_keys(root: Path) -> tuple[str, ...]:
    return _edit_json(root, lambda m: m.pop("modality"))


def no_training_list(root: Path) -> tuple[str, ...]:
    return _edit_json(root, lambda m: m.pop("training"))


def entry_outside(root: Path) -> tuple[str, ...]:
    # The file exists, next to the dataset folder: the check is on where it is, not whether.
    _copy(_image(root), root.parent / f"x{NII}")

    def edit(m: dict) -> None:
        m["training"][1]["image"] = f"../x{NII}"

    return (*_edit_json(root, edit), f"../x{NII}")


def entry_nul_character(root: Path) -> tuple[str, ...]:
    def edit(m: dict) -> None:
        m["training"][1]["label"] = f"./labelsTr/{VICTIM}\x00{NII}"

    return (*_edit_json(root, edit), "not a valid path")


def duplicate_entry(root: Path) -> tuple[str, ...]:
    return (*_edit_json(root, lambda m: m["training"].append(m["training"][1])), VICTIM)


def label_value_not_integer(root: Path) -> tuple[str, ...]:
    return _edit_json(
        root, lambda m: m.update(labels={"0": "background", "1.5": "Anterior", "2": "Posterior"})
    )


def label_negative_declared(root: Path) -> tuple[str, ...]:
    return _edit_json(
        root, lambda m: m.update(labels={"0": "background", "-1": "Anterior", "2": "Posterior"})
    )


def modalities_without_4d(root: Path) -> tuple[str, ...]:
    """Two modalities declared (one 4D file per case in MSD) but the files are 3D."""
    _edit_json(root, lambda m: m.update(modality={"0": "T1", "1": "T2"}))
    return (_rel(_image(root, CASES[0])),)


def no_dataset_json(root: Path) -> tuple[str, ...]:
    (root / "dataset.json").unlink()
    return ("dataset.json",)


# nnU-Net v2 layout


def _chan(root: Path, c: int, cid: str = VICTIM) -> Path:
    return root / "imagesTr" / f"{cid}_{c:04d}{NII}"


def nn_missing_channel(root: Path) -> tuple[str, ...]:
    _chan(root, 1).unlink()
    return (_rel(_chan(root, 1)),)


def nn_channel_shapes_differ(root: Path) -> tuple[str, ...]:
    arr, ref = _read(_chan(root, 1))
    _write(arr[:, :-2], _chan(root, 1), ref)
    return (_rel(_chan(root, 1)),)


def nn_extra_channel(root: Path) -> tuple[str, ...]:
    _copy(_chan(root, 1), _chan(root, 2))
    return (_rel(_chan(root, 2)),)


def nn_no_channel_suffix(root: Path) -> tuple[str, ...]:
    bad = root / "imagesTr" / f"{VICTIM}{NII}"
    _chan(root, 1).rename(bad)
    return (_rel(bad),)


def nn_missing_label(root: Path) -> tuple[str, ...]:
    _label(root).unlink()
    return (_rel(_label(root)),)


def nn_num_training(root: Path) -> tuple[str, ...]:
    return (*_edit_json(root, lambda m: m.update(numTraining=5)), "numTraining")


def nn_label_region(root: Path) -> tuple[str, ...]:
    return _edit_json(
        root, lambda m: m.update(labels={"background": 0, "Anterior": 1, "Posterior": 2, "whole": [1, 2]})
    )


def nn_label_float_value(root: Path) -> tuple[str, ...]:
    return _edit_json(root, lambda m: m.update(labels={"background": 0, "Anterior": 1.5, "Posterior": 2}))


def nn_no_file_ending(root: Path) -> tuple[str, ...]:
    return (*_edit_json(root, lambda m: m.pop("file_ending")), "file_ending")


FAULTS = [
    pytest.param("msd", missing_image, id="missing-image"),
    pytest.param("msd", missing_label, id="missing-label"),
    pytest.param("msd", corrupt_image, id="corrupt-image"),
    pytest.param("msd", empty_image_file, id="empty-image-file"),
    pytest.param("msd", truncated_gz, id="truncated-nii-gz"),
    pytest.param("msd", truncated_nii, id="truncated-nii"),
    pytest.param("msd", nan_image, id="nan-in-image"),
    pytest.param("msd", inf_image, id="inf-in-image"),
    pytest.param("msd", shape_mismatch, id="label-shape-mismatch"),
    pytest.param("msd", spacing_mismatch, id="label-spacing-mismatch"),
    pytest.param("msd", undeclared_label, id="undeclared-label-value"),
    pytest.param("msd", huge_label, id="huge-label-value"),
    pytest.param("msd", fractional_label, id="fractional-label"),
    pytest.param("msd", nan_label, id="nan-in-float-label"),
    pytest.param("msd", negative_label, id="negative-label"),
    pytest.param("msd", image_2d, id="2d-image"),
    pytest.param("msd", image_4d, id="4d-image-single-channel"),
    pytest.param("msd", label_2d, id="2d-label"),
    pytest.param("msd", invalid_json, id="invalid-json"),
    pytest.param("msd", json_not_object, id="json-not-an-object"),
    pytest.param("msd", no_layout_keys, id="no-channel-names-nor-modality"),
    pytest.param("msd", no_training_list, id="msd-no-training-list"),
    pytest.param("msd", entry_outside, id="entry-outside-dataset"),
    pytest.param("msd", entry_nul_character, id="entry-with-nul-character"),
    pytest.param("msd", duplicate_entry, id="duplicate-training-entry"),
    pytest.param("msd", label_value_not_integer, id="declared-label-not-integer"),
    pytest.param("msd", label_negative_declared, id="declared-label-negative"),
    pytest.param("msd", modalities_without_4d, id="msd-2-modalities-3d-files"),
    pytest.param("msd", no_dataset_json, id="no-dataset-json"),
    pytest.param("nnunet", nn_missing_channel, id="nnunet-missing-channel"),
    pytest.param("nnunet", nn_channel_shapes_differ, id="nnunet-channel-shapes-differ"),
    pytest.param("nnunet", nn_extra_channel, id="nnunet-undeclared-channel"),
    pytest.param("nnunet", nn_no_channel_suffix, id="nnunet-no-channel-suffix"),
    pytest.param("nnunet", nn_missing_label, id="nnunet-missing-label"),
    pytest.param("nnunet", nn_num_training, id="nnunet-numtraining-mismatch"),
    pytest.param("nnunet", nn_label_region, id="nnunet-label-region-list"),
    pytest.param("nnunet", nn_label_float_value, id="nnunet-label-float-value"),
    pytest.param("nnunet", nn_no_file_ending, id="nnunet-no-file-ending"),
]


# --- running the CLI ---------------------------------------------------------------------


def _run(command: str, root: Path, work: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """``autoseg COMMAND ROOT`` in-process; returns the exit code and what it logged to stderr.

    capsys, not caplog: ``main`` re-configures logging with ``force=True``, which removes
    pytest's log-capture handler, and logs to the ``sys.stderr`` of the moment (capsys's).
    """
    argv = [command, str(root), "--workers", "1", "--work-dir", str(work)]
    if command == "plan":
        argv += ["--gpu-memory", "8"]
    capsys.readouterr()
    rc = main(argv)
    return rc, capsys.readouterr().err


def _assert_rejected(
    root: Path, work: Path, expected: tuple[str, ...], capsys: pytest.CaptureFixture[str]
) -> None:
    for command in ("verify", "plan"):
        rc, err = _run(command, root, work, capsys)
        assert rc == 2, f"autoseg {command} exited {rc}:\n{err}"
        for what in expected:
            assert what in err, f"autoseg {command} did not name {what!r}:\n{err}"
        assert "Traceback" not in err
        assert not any(work.rglob("*")), f"autoseg {command} wrote {list(work.rglob('*'))}"


@pytest.mark.parametrize(("layout", "fault"), FAULTS)
def test_broken_dataset_is_rejected(
    layout: str,
    fault: Fault,
    tmp_path: Path,
    request: pytest.FixtureRequest,
    capsys: pytest.CaptureFixture[str],
) -> None:
    root = request.getfixturevalue(layout)
    expected = fault(root)
    _assert_rejected(root, tmp_path / "work", expected, capsys)


def test_all_broken_cases_reported_in_one_run(
    msd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _image(msd, CASES[0]).unlink()
    arr, ref = _read(_image(msd, CASES[1]))
    _write(_set(arr.astype(np.float32), np.nan), _image(msd, CASES[1]), ref)
    arr, ref = _read(_label(msd, CASES[2]))
    _write(_set(arr, 7), _label(msd, CASES[2]), ref)
    expected = (_rel(_image(msd, CASES[0])), _rel(_image(msd, CASES[1])), _rel(_label(msd, CASES[2])))
    _assert_rejected(msd, tmp_path / "work", expected, capsys)
    _, err = _run("verify", msd, tmp_path / "work", capsys)
    assert "3 problem(s) in 4 cases" in err


# --- what is accepted ----------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["msd", "nnunet"])
def test_intact_copy_passes(
    layout: str, tmp_path: Path, request: pytest.FixtureRequest, capsys: pytest.CaptureFixture[str]
) -> None:
    root = request.getfixturevalue(layout)
    work = tmp_path / "work"
    rc, err = _run("verify", root, work, capsys)
    assert rc == 0, err
    assert not any(work.rglob("*"))
    rc, err = _run("plan", root, work, capsys)
    assert rc == 0, err
    assert (work / root.name / "plans.json").is_file()
    assert (work / root.name / "fingerprint.json").is_file()


def test_float32_label_holding_integers_is_accepted(
    msd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    arr, ref = _read(_label(msd))
    _write(arr.astype(np.float32), _label(msd), ref)
    assert sitk.ReadImage(str(_label(msd))).GetPixelID() == sitk.sitkFloat32
    work = tmp_path / "work"
    rc, err = _run("verify", msd, work, capsys)
    assert rc == 0, err
    rc, err = _run("plan", msd, work, capsys)
    assert rc == 0, err
    fp = _read_json(work / msd.name / "fingerprint.json")
    assert fp["labels"] == {"background": 0, "Anterior": 1, "Posterior": 2}


def _shifted(img: sitk.Image, mm: float) -> sitk.Image:
    img.SetOrigin(tuple(o + mm for o in img.GetOrigin()))
    return img


def _rotated(img: sitk.Image, degrees: float) -> sitk.Image:
    a = np.deg2rad(degrees)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    img.SetDirection(tuple((rot @ np.reshape(img.GetDirection(), (3, 3))).ravel()))
    return img


def _respaced(img: sitk.Image, factor: float) -> sitk.Image:
    img.SetSpacing(tuple(s * factor for s in img.GetSpacing()))
    return img


def _cropped(img: sitk.Image, _: float) -> sitk.Image:
    return img[:, :, 1:]  # drops one slice; the origin moves with it: a sub-box of the grid


MISALIGNED = {
    "shifted_5mm": (_shifted, 5.0),
    "shifted_a_third_voxel": (_shifted, 0.3),
    "rotated_10deg": (_rotated, 10.0),
    "rotated_half_deg": (_rotated, 0.5),
    "other_spacing": (_respaced, 1.01),
    "cropped": (_cropped, 0.0),
}


@pytest.mark.parametrize("change", list(MISALIGNED.values()), ids=list(MISALIGNED))
def test_label_on_another_grid_is_refused(
    msd: Path, tmp_path: Path, change, capsys: pytest.CaptureFixture[str]
) -> None:
    """A label that does not lie on its image's grid would be trained on misaligned: refused,
    naming both files."""
    fn, amount = change
    img = sitk.ReadImage(str(_label(msd)))
    sitk.WriteImage(fn(img, amount), str(_label(msd)), useCompression=True)
    _assert_rejected(msd, tmp_path / "work", (_rel(_label(msd)), _rel(_image(msd))), capsys)


@pytest.mark.parametrize("orientation", ["LPS", "RAI", "SAR", "PIL", "ASR"])
@pytest.mark.parametrize("what", ["label", "channel"])
def test_flipped_or_permuted_file_is_reoriented_exactly(
    nnunet: Path, tmp_path: Path, what: str, orientation: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same grid stored in another axis order or direction: reoriented without interpolation,
    so the fingerprint and the preprocessed label equal those of the intact dataset."""
    from autoseg.io.case import load_case
    from autoseg.io.dataset import load_dataset

    intact = load_dataset(nnunet)
    before = {c.case_id: load_case(c, intact) for c in intact.cases}
    path = (
        nnunet / "labelsTr" / f"{VICTIM}{NII}"
        if what == "label"
        else nnunet / "imagesTr" / f"{VICTIM}_0001{NII}"
    )
    img = sitk.ReadImage(str(path))
    turned = sitk.DICOMOrient(img, orientation)
    assert sitk.GetArrayFromImage(turned).shape != sitk.GetArrayFromImage(img).shape or (
        turned.GetDirection() != img.GetDirection()
    )
    sitk.WriteImage(turned, str(path), useCompression=True)
    work = tmp_path / "work"
    rc, err = _run("verify", nnunet, work, capsys)
    assert rc == 0, err
    assert f"{path.parent.name}/{path.name}" in err
    assert "reoriented exactly" in err
    after = load_case(next(c for c in intact.cases if c.case_id == VICTIM), intact)
    np.testing.assert_array_equal(after.data, before[VICTIM].data)
    np.testing.assert_array_equal(after.label, before[VICTIM].label)
    assert after.geometry == before[VICTIM].geometry


def test_empty_label_is_a_warning(msd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    arr, ref = _read(_label(msd))
    _write(np.zeros_like(arr), _label(msd), ref)
    work = tmp_path / "work"
    rc, err = _run("verify", msd, work, capsys)
    assert rc == 0, err
    assert _rel(_label(msd)) in err
    assert "empty" in err
    rc, err = _run("plan", msd, work, capsys)
    assert rc == 0, err
    assert (work / msd.name / "plans.json").is_file()


def test_large_declared_label_value_does_not_crash(
    msd: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Label counts are taken up to the largest value present, not declared (was a 8 GB bincount)."""
    _edit_json(msd, lambda m: m["labels"].update({"1000000000": "far"}))
    rc, err = _run("verify", msd, tmp_path / "work", capsys)
    assert rc in (0, 2), err
    assert "Traceback" not in err
