"""Hostile paths inside datasets (issue 12, class 1): every path built from a dataset stays in
its folder.

Case ids become file names in the work folder (``preprocessed/<key>/CASE.npy``), so an nnU-Net
``"dataset"`` key such as ``../../../../escaped`` once made ``autoseg preprocess`` write beside
the work folder. Entry paths are judged by their text (an absolute path or a ``..`` that climbs
out is refused), not by where a symbolic link leads: a link inside the dataset to a file elsewhere
is a normal way to assemble a dataset and is accepted; a link that leads nowhere, or in a loop,
is one line naming the link.

Every dataset starts as real hippocampus cases copied from ``data/hippocampus_sample`` and has
one thing made hostile. Each refusal asserts exit code 2, a message line naming the file and the
fix, no traceback, and no file written or changed anywhere under the test's folder (which holds
the dataset, the work folder and the places an escaping path would reach).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.io.samples import sample_dataset_dir

SAMPLE = sample_dataset_dir()
CASES = ("hippocampus_004", "hippocampus_023", "hippocampus_036")
VICTIM = CASES[1]
NII = ".nii.gz"


# --- helpers -------------------------------------------------------------------------------


def _tree(root: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under ``root`` (links not followed): files with size and mtime, folders and
    links as None. Two equal trees mean nothing was written, changed or removed."""
    out: dict[str, tuple[int, int] | None] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (
                None if p.is_symlink() or p.is_dir() else (st.st_size, st.st_mtime_ns)
            )
    return out


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(argv)
    return code, capsys.readouterr().err


def _refused(err: str, *needles: str) -> str:
    """The one error line holding every needle; the output holds no traceback."""
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if all(n in line for n in needles)]
    assert lines, f"no line with {needles} in:\n{err}"
    return lines[0]


def _nnunet(root: Path, ids: dict[str, str] | None = None) -> Path:
    """Three real cases in the nnU-Net v2 layout; with ``ids``, listed in a ``"dataset"`` object
    under the given case ids (``{case id: sample case}``)."""
    for cid in CASES:
        (root / "imagesTr").mkdir(parents=True, exist_ok=True)
        (root / "labelsTr").mkdir(exist_ok=True)
        shutil.copyfile(SAMPLE / "imagesTr" / f"{cid}{NII}", root / "imagesTr" / f"{cid}_0000{NII}")
        shutil.copyfile(SAMPLE / "labelsTr" / f"{cid}{NII}", root / "labelsTr" / f"{cid}{NII}")
    meta: dict[str, object] = {
        "channel_names": {"0": "MRI"},
        "labels": {"background": 0, "Anterior": 1, "Posterior": 2},
        "numTraining": len(CASES),
        "file_ending": NII,
    }
    if ids is not None:
        meta["dataset"] = {
            cid: {"images": [f"imagesTr/{src}_0000{NII}"], "label": f"labelsTr/{src}{NII}"}
            for cid, src in ids.items()
        }
    _write_json(root / "dataset.json", meta)
    return root


def _msd(root: Path) -> Path:
    """Three real cases in the MSD layout."""
    for cid in CASES:
        for sub in ("imagesTr", "labelsTr"):
            (root / sub).mkdir(parents=True, exist_ok=True)
            shutil.copyfile(SAMPLE / sub / f"{cid}{NII}", root / sub / f"{cid}{NII}")
    meta = json.loads((SAMPLE / "dataset.json").read_text(encoding="utf-8"))
    meta["training"] = [{"image": f"./imagesTr/{c}{NII}", "label": f"./labelsTr/{c}{NII}"} for c in CASES]
    meta["numTraining"] = len(CASES)
    meta.pop("test", None)
    _write_json(root / "dataset.json", meta)
    return root


def _write_json(path: Path, obj: object) -> None:
    path.write_text(json.dumps(obj, indent=1), encoding="utf-8")


def _edit(root: Path, edit: Callable[[dict], None]) -> None:
    meta = json.loads((root / "dataset.json").read_text(encoding="utf-8"))
    edit(meta)
    _write_json(root / "dataset.json", meta)


def _ids_with(bad: str) -> dict[str, str]:
    """The sample cases under their own ids, the victim's id replaced by ``bad``."""
    return {(bad if c == VICTIM else c): c for c in CASES}


def _verify_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str], ds: Path, *needles: str) -> str:
    """``verify`` and ``plan`` both exit 2 with a line holding ``needles``; nothing written."""
    before = _tree(tmp_path)
    code, err = _run(["verify", str(ds), "--preprocess-workers", "1"], capsys)
    assert code == 2, err
    line = _refused(err, *needles)
    work = tmp_path / "work"
    code, err = _run(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1"], capsys)
    assert code == 2, err
    _refused(err, *needles)
    assert _tree(tmp_path) == before
    return line


# --- case ids ------------------------------------------------------------------------------

#: (case id, what the message says about it)
BAD_IDS = [
    pytest.param("../../../../escaped", "path separator", id="dotdot-escape"),
    pytest.param("/tmp/autoseg_escaped", "path separator", id="absolute"),
    pytest.param("sub/case", "path separator", id="separator"),
    pytest.param("back\\slash", "path separator", id="backslash"),
    pytest.param("..", "folder reference", id="dotdot"),
    pytest.param(".", "folder reference", id="dot"),
    pytest.param("", "is empty", id="empty"),
    pytest.param("line\nbreak", "control character", id="newline"),
    pytest.param("x" * 250, "longer than 200 bytes", id="too-long"),
]


@pytest.mark.parametrize(("bad", "why"), BAD_IDS)
def test_case_id_that_is_not_a_plain_name_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str, why: str
) -> None:
    ds = _nnunet(tmp_path / "Dataset001_Hippo", _ids_with(bad))
    line = _verify_refused(tmp_path, capsys, ds, "dataset.json", why)
    assert str(ds / "dataset.json") in line
    assert "give a plain name" in line
    assert "numTraining" not in capsys.readouterr().err  # the bad entry is not also miscounted


def test_every_bad_case_id_is_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ids = {"../a": CASES[0], "b/../../c": CASES[1], "fine": CASES[2]}
    ds = _nnunet(tmp_path / "Dataset001_Hippo", ids)
    code, err = _run(["verify", str(ds)], capsys)
    assert code == 2
    assert "2 problems found" in err
    _refused(err, "'../a'", "path separator")
    _refused(err, "'b/../../c'", "path separator")


def test_preprocess_refuses_a_case_id_added_after_planning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The path that once escaped: planned with good ids, then a ``"dataset"`` key climbing out of
    ``<work>/<name>/preprocessed/<key>/`` to the test folder. ``preprocess`` now writes nothing,
    neither there nor in the work folder."""
    ds = _nnunet(tmp_path / "Dataset001_Hippo")
    work = tmp_path / "work"
    assert main(["plan", str(ds), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
    escaping = {
        cid: {"images": [f"imagesTr/{src}_0000{NII}"], "label": f"labelsTr/{src}{NII}"}
        for cid, src in _ids_with("../../../../escaped").items()
    }
    _edit(ds, lambda m: m.update(dataset=escaping))
    before = _tree(tmp_path)
    code, err = _run(
        ["preprocess", "Dataset001_Hippo", "--work-dir", str(work), "--preprocess-workers", "1"], capsys
    )
    assert code == 2, err
    _refused(err, "'../../../../escaped'", "path separator", "give a plain name")
    assert _tree(tmp_path) == before
    assert not list(tmp_path.glob("escaped*"))


def test_case_id_from_a_file_name_with_a_control_character(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Listing mode: ids come from file names, which cannot hold ``/`` but can hold a newline
    (it would break every one-line message and file name after it)."""
    ds = _nnunet(tmp_path / "Dataset001_Hippo")
    for sub, suffix in (("imagesTr", "_0000"), ("labelsTr", "")):
        src = ds / sub / f"{VICTIM}{suffix}{NII}"
        src.rename(ds / sub / f"bad\rname{suffix}{NII}")
    line = _verify_refused(tmp_path, capsys, ds, "control character", "rename the file")
    assert "imagesTr" in line


# --- entry paths ---------------------------------------------------------------------------


def _entry(key: str, value: object) -> Callable[[dict], None]:
    """Set the victim's ``"dataset"`` entry ``key`` (``images`` or ``label``) to ``value``."""

    def edit(m: dict) -> None:
        m["dataset"][VICTIM][key] = value

    return edit


BAD_ENTRIES = [
    pytest.param("label", f"../outside{NII}", "points outside the dataset folder", id="label-dotdot"),
    pytest.param(
        "images",
        [f"imagesTr/../../outside_0000{NII}"],
        "points outside the dataset folder",
        id="image-dotdot",
    ),
    pytest.param("label", "/etc/hostname", "is absolute", id="label-absolute"),
    pytest.param("images", ["/etc/hostname"], "is absolute", id="image-absolute"),
    pytest.param("label", ".", "names the dataset folder itself", id="label-dot"),
    pytest.param("images", [3], "must be a file path", id="image-number"),
    pytest.param(
        "images", f"imagesTr/{VICTIM}_0000{NII}", "must be a list of file paths", id="images-string"
    ),
    pytest.param("label", f"labelsTr/{VICTIM}\x00{NII}", "not a valid path", id="label-nul"),
]


@pytest.mark.parametrize(("key", "value", "why"), BAD_ENTRIES)
def test_entry_path_outside_or_invalid_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: object, why: str
) -> None:
    ds = _nnunet(tmp_path / "Dataset001_Hippo", _ids_with(VICTIM))
    # the escaping targets exist: the check is on where a path is, not whether it exists
    shutil.copyfile(SAMPLE / "labelsTr" / f"{VICTIM}{NII}", tmp_path / f"outside{NII}")
    shutil.copyfile(SAMPLE / "imagesTr" / f"{VICTIM}{NII}", tmp_path / f"outside_0000{NII}")
    _edit(ds, _entry(key, value))
    line = _verify_refused(tmp_path, capsys, ds, why)
    assert f"'dataset' entry '{VICTIM}'" in line
    assert str(ds / "dataset.json") in line


@pytest.mark.parametrize(
    ("key", "value", "why"),
    [
        pytest.param("image", f"../outside{NII}", "points outside", id="msd-image-dotdot"),
        pytest.param("label", "/etc/hostname", "is absolute", id="msd-label-absolute"),
        pytest.param("image", f"./imagesTr/../../outside{NII}", "points outside", id="msd-image-deep-dotdot"),
    ],
)
def test_msd_entry_outside_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], key: str, value: str, why: str
) -> None:
    ds = _msd(tmp_path / "Task04_Hippo")
    shutil.copyfile(SAMPLE / "imagesTr" / f"{VICTIM}{NII}", tmp_path / f"outside{NII}")
    _edit(ds, lambda m: m["training"][1].update({key: value}))
    line = _verify_refused(tmp_path, capsys, ds, why)
    assert f"training entry 1 {key}" in line


# --- symbolic links ------------------------------------------------------------------------


def _store(tmp_path: Path) -> Path:
    """A folder outside the dataset that links may point into (a shared image store)."""
    store = tmp_path / "store"
    store.mkdir()
    return store


def test_link_to_a_file_elsewhere_is_accepted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A dataset assembled from links into a shared store is fine, in every layout and for
    entries that name the link; the case keeps the link's name, not its target's."""
    store = _store(tmp_path)
    explicit = _nnunet(tmp_path / "Dataset001_Hippo", _ids_with(VICTIM))
    listing = _nnunet(tmp_path / "Dataset002_Hippo")
    msd = _msd(tmp_path / "Task04_Hippo")
    for ds, image in (
        (explicit, explicit / "imagesTr" / f"{VICTIM}_0000{NII}"),
        (listing, listing / "imagesTr" / f"{VICTIM}_0000{NII}"),
        (msd, msd / "imagesTr" / f"{VICTIM}{NII}"),
    ):
        target = store / f"{ds.name}_stored{NII}"
        image.rename(target)
        image.symlink_to(target)
    linked_labels = store / "labels"
    shutil.move(str(listing / "labelsTr"), linked_labels)  # a linked folder, too
    (listing / "labelsTr").symlink_to(linked_labels, target_is_directory=True)
    for ds in (explicit, listing, msd):
        code, err = _run(["verify", str(ds), "--preprocess-workers", "1"], capsys)
        assert code == 0, err
        assert "3 cases, no problems" in err
    work = tmp_path / "work"
    assert main(["plan", str(msd), "--work-dir", str(work), "--preprocess-workers", "1", "-q"]) == 0
    fingerprint = json.loads((work / "Task04_Hippo" / "fingerprint.json").read_text(encoding="utf-8"))
    assert VICTIM in json.dumps(fingerprint)


def _dangling(link: Path, tmp_path: Path) -> None:
    link.unlink()
    link.symlink_to(tmp_path / "store" / f"gone{NII}")


def _self_loop(link: Path, tmp_path: Path) -> None:
    link.unlink()
    link.symlink_to(link.name)


def _two_link_loop(link: Path, tmp_path: Path) -> None:
    other = link.with_name("other_link")
    link.unlink()
    link.symlink_to(other.name)
    other.symlink_to(link.name)


BROKEN_LINKS = [
    pytest.param(_dangling, "which does not exist", id="dangling"),
    pytest.param(_self_loop, "symbolic link loop", id="self-loop"),
    pytest.param(_two_link_loop, "symbolic link loop", id="two-link-loop"),
]


@pytest.mark.parametrize("layout", ["nnunet-explicit", "nnunet-listing", "msd"])
@pytest.mark.parametrize(("breaks", "why"), BROKEN_LINKS)
def test_broken_link_is_named(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    layout: str,
    breaks: Callable[[Path, Path], None],
    why: str,
) -> None:
    _store(tmp_path)
    if layout == "msd":
        ds = _msd(tmp_path / "Task04_Hippo")
    else:
        ds = _nnunet(
            tmp_path / "Dataset001_Hippo", _ids_with(VICTIM) if layout == "nnunet-explicit" else None
        )
    link = ds / "labelsTr" / f"{VICTIM}{NII}"
    breaks(link, tmp_path)
    line = _verify_refused(tmp_path, capsys, ds, str(link), why)
    assert "point the link at" in line


def test_looping_images_folder_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    ds = _nnunet(tmp_path / "Dataset001_Hippo")
    shutil.rmtree(ds / "imagesTr")
    (ds / "imagesTr").symlink_to("imagesTr")
    _verify_refused(tmp_path, capsys, ds, str(ds / "imagesTr"), "symbolic link loop")


def test_entry_through_a_linked_folder_cannot_climb_out(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``linked/../imagesTr/x`` names ``imagesTr/x`` of the dataset (the text is normalised), not
    a file beside the link's target: a ``..`` after a link cannot leave the dataset."""
    store = _store(tmp_path)
    (store / "deep").mkdir()
    (store / "imagesTr").mkdir()  # where the link's target's parent would lead: left empty
    ds = _nnunet(tmp_path / "Dataset001_Hippo", _ids_with(VICTIM))
    (ds / "linked").symlink_to(store / "deep", target_is_directory=True)
    _edit(ds, _entry("images", [f"linked/../imagesTr/{VICTIM}_0000{NII}"]))
    code, err = _run(["verify", str(ds), "--preprocess-workers", "1"], capsys)
    assert code == 0, err
