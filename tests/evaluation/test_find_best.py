"""find_best on a fake trained dataset: four real hippocampus references, and validation outputs of
``3d_fullres`` and ``2d`` made from them with known damage, so the winner and every Dice are known.

Probabilities are hand-made "softmax" arrays (0.8 for the predicted class, 0.1 for the others),
with low-confidence errors where an ensemble should repair them and confident ones where it
should not.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from autoseg.errors import DatasetError, ModelError
from autoseg.evaluation.find_best import ensemble_labels, find_best
from autoseg.evaluation.metrics import dice_per_label
from autoseg.inference.choice import InferenceChoice
from autoseg.inference.postprocess import POSTPROCESSING_VERSION, Postprocessing
from autoseg.io.image import read_image, write_image
from autoseg.io.samples import copy_sample_subset
from autoseg.labels import LabelScheme
from autoseg.planning.plan import Plan
from tests.golden import GOLDEN_PLAN

N_CASES = 4
FOLDS = {"0": (0, 1), "1": (2, 3)}  # fold -> case indices
ISLAND = (slice(0, 2), slice(0, 2), slice(0, 2))  # a corner, background in every reference

Damage = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


def one_hot_probs(pred: np.ndarray) -> np.ndarray:
    p = np.full((3, *pred.shape), 0.1, np.float32)
    np.put_along_axis(p, pred[None].astype(np.int64), 0.8, axis=0)
    return p


def perfect(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return ref.copy(), one_hot_probs(ref)


def island(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A confident false island of label 1 in a corner."""
    pred = ref.copy()
    pred[ISLAND] = 1
    return pred, one_hot_probs(pred)


def upper_half(ref: np.ndarray) -> np.ndarray:
    m = np.zeros(ref.shape, bool)
    m[: ref.shape[0] // 2] = True
    return m


def _missed(
    ref: np.ndarray, mask: np.ndarray, probs: tuple[float, float, float]
) -> tuple[np.ndarray, np.ndarray]:
    """``ref`` with the voxels of ``mask`` predicted as background, with probabilities ``probs`` there."""
    pred = ref.copy()
    pred[mask] = 0
    p = one_hot_probs(pred)
    p[:, mask] = np.array(probs, np.float32)[:, None]
    return pred, p


def no_label2_upper_confident(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label 2 missed in the upper half, with confidence 0.9 for background."""
    return _missed(ref, (ref == 2) & upper_half(ref), (0.9, 0.05, 0.05))


def no_label1_upper_unsure(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label 1 missed in the upper half, but only just (0.5 background, 0.4 label 1)."""
    return _missed(ref, (ref == 1) & upper_half(ref), (0.5, 0.4, 0.1))


def no_label2_lower_unsure(ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label 2 missed in the lower half, but only just (0.5 background, 0.4 label 2)."""
    return _missed(ref, (ref == 2) & ~upper_half(ref), (0.5, 0.1, 0.4))


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four sample cases in MSD layout."""
    return copy_sample_subset(tmp_path_factory.mktemp("find_best") / "hippo", N_CASES)


@pytest.fixture
def make_dataset_dir(source: Path, tmp_path: Path):
    """``make(damage per config, folds per config, probabilities per config) -> dataset_dir``."""
    refs = sorted((source / "labelsTr").glob("*.nii.gz"))
    plan = Plan.load(GOLDEN_PLAN)

    def make(
        damage: dict[str, Damage],
        *,
        folds: dict[str, tuple[str, ...]] | None = None,
        probabilities: tuple[str, ...] | None = None,
    ) -> Path:
        d = tmp_path / "work" / "hippo"
        (d / "source.json").parent.mkdir(parents=True)
        (d / "source.json").write_text(json.dumps({"dataset_folder": str(source)}))
        for config, fn in damage.items():
            plan.save(d / "models" / config / "plans.json")
            for fold in (folds or {}).get(config, tuple(FOLDS)):
                val = d / "models" / config / f"fold_{fold}" / "validation"
                for i in FOLDS[fold]:
                    img = read_image(refs[i])
                    pred, p = fn(img.array)
                    cid = refs[i].name.removesuffix(".nii.gz")
                    write_image(pred, img.geometry, val / f"{cid}.nii.gz")
                    if probabilities is None or config in probabilities:
                        np.savez_compressed(val / f"{cid}.npz", probabilities=p.astype(np.float16))
                (val / "summary.json").write_text("{}")
        return d

    return make


def expected_dice(source: Path, damage: Damage) -> tuple[dict[str, float], float]:
    per_case = []
    for ref_path in sorted((source / "labelsTr").glob("*.nii.gz")):
        ref = read_image(ref_path).array
        per_case.append(dice_per_label(damage(ref)[0], ref, [1, 2]))
    mean = {str(k): float(np.mean([c[k] for c in per_case])) for k in (1, 2)}
    return mean, float(np.mean(list(mean.values())))


class TestFindBest:
    def test_single_wins_and_island_is_removed(self, make_dataset_dir, source):
        d = make_dataset_dir({"3d_fullres": island, "2d": no_label2_upper_confident})
        info = find_best(d)
        mean_3d, fg_3d = expected_dice(source, island)
        _, fg_2d = expected_dice(source, no_label2_upper_confident)
        assert info["best"] == "3d_fullres"
        assert info["configurations"] == ["3d_fullres"]
        assert info["folds"] == {"3d_fullres": ["0", "1"]}
        assert list(info["cv_dice"]) == ["2d", "3d_fullres", "2d__3d_fullres"]
        assert info["cv_dice"]["3d_fullres"] == pytest.approx(fg_3d)
        assert info["cv_dice"]["2d"] == pytest.approx(fg_2d)
        # The ensemble drops the island (2d is sure it is background) but keeps 2d's confident miss.
        assert info["cv_dice"]["2d__3d_fullres"] == pytest.approx(fg_2d)
        assert fg_2d < fg_3d < 1.0
        assert info["postprocessing"] == {"foreground_largest_only": True, "largest_only_labels": []}
        report = info["report"]
        assert report["labels"] == [1, 2]
        assert report["n_cases"] == N_CASES
        assert report["candidates"]["3d_fullres"]["mean"] == pytest.approx(mean_3d)
        assert report["ensemble_folder"] is None
        assert report["skipped"] == {}
        assert report["postprocessing"]["n_cases"] == N_CASES
        assert report["postprocessing"]["final"]["foreground_mean"] == 1.0
        assert json.loads((d / "inference.json").read_text()) == info
        assert InferenceChoice.load(d / "inference.json").postprocessing == Postprocessing(True, ())
        pp_path = d / "models" / "3d_fullres" / "postprocessing.json"
        assert json.loads(pp_path.read_text())["schema_version"] == POSTPROCESSING_VERSION
        assert Postprocessing.load(pp_path) == Postprocessing(True, ())
        assert not (d / "models" / "2d" / "postprocessing.json").exists()

    def test_ensemble_wins(self, make_dataset_dir, source):
        """Each configuration misses, unsure, what the other gets right: the mean is perfect."""
        d = make_dataset_dir({"3d_fullres": no_label1_upper_unsure, "2d": no_label2_lower_unsure})
        info = find_best(d, workers=2)
        assert info["best"] == "2d__3d_fullres"
        assert info["configurations"] == ["2d", "3d_fullres"]
        assert info["folds"] == {"2d": ["0", "1"], "3d_fullres": ["0", "1"]}
        assert info["cv_dice"]["2d__3d_fullres"] == 1.0
        assert info["cv_dice"]["3d_fullres"] == pytest.approx(
            expected_dice(source, no_label1_upper_unsure)[1]
        )
        assert info["postprocessing"] == Postprocessing().to_dict()
        assert info["report"]["ensemble_folder"] == "ensembles/2d__3d_fullres"
        ens = sorted((d / "ensembles" / "2d__3d_fullres").glob("*.nii.gz"))
        refs = sorted((source / "labelsTr").glob("*.nii.gz"))
        assert [p.name for p in ens] == [p.name for p in refs]
        for e, r in zip(ens, refs, strict=True):
            e_img, r_img = read_image(e), read_image(r)
            assert np.array_equal(e_img.array, r_img.array)
            assert e_img.geometry.same_grid(r_img.geometry)
        for config in ("2d", "3d_fullres"):  # an ensemble's post-processing is in inference.json
            assert not (d / "models" / config / "postprocessing.json").exists()

    @pytest.mark.parametrize(
        ("configurations", "best"),
        [
            (None, "2d"),
            (["3d_fullres", "2d"], "3d_fullres"),
        ],
        ids=["sorted-names", "given-order"],
    )
    def test_tie_prefers_a_single_configuration_listed_first(self, make_dataset_dir, configurations, best):
        d = make_dataset_dir({"3d_fullres": perfect, "2d": perfect})
        info = find_best(d, configurations=configurations)
        assert set(info["cv_dice"].values()) == {1.0}
        assert info["best"] == best
        assert info["configurations"] == [best]

    def test_pair_without_probabilities_is_skipped(self, make_dataset_dir):
        d = make_dataset_dir({"3d_fullres": island, "2d": perfect}, probabilities=("3d_fullres",))
        with pytest.warns(UserWarning, match="2d kept no probabilities"):
            info = find_best(d)
        assert list(info["cv_dice"]) == ["2d", "3d_fullres"]
        assert "2d__3d_fullres" in info["report"]["skipped"]
        assert info["best"] == "2d"

    def test_configuration_without_validation_is_skipped(self, make_dataset_dir):
        d = make_dataset_dir({"3d_fullres": island})
        Plan.load(d / "models" / "3d_fullres" / "plans.json").save(d / "models" / "2d" / "plans.json")
        (d / "models" / "2d" / "fold_0" / "validation").mkdir(parents=True)  # no summary.json
        with (
            pytest.warns(UserWarning, match="configuration 2d skipped"),
            pytest.warns(UserWarning, match="validation incomplete"),
        ):
            info = find_best(d)
        assert info["configurations"] == ["3d_fullres"]
        assert list(info["cv_dice"]) == ["3d_fullres"]

    def test_different_folds_are_compared_on_shared_cases(self, make_dataset_dir):
        d = make_dataset_dir({"3d_fullres": island, "2d": no_label2_upper_confident}, folds={"2d": ("0",)})
        with pytest.warns(UserWarning, match="compared on the 2 cases they share"):
            info = find_best(d)
        assert info["report"]["n_cases"] == 2
        assert info["folds"] == {"3d_fullres": ["0", "1"]}
        assert info["report"]["postprocessing"]["n_cases"] == N_CASES  # all the winner's cases

    def test_nothing_trained(self, tmp_path):
        with pytest.raises(ModelError, match="no configuration has validation predictions"):
            find_best(tmp_path / "hippo")
        (tmp_path / "hippo" / "models" / "2d").mkdir(parents=True)
        with (
            pytest.raises(ModelError, match="run `autoseg train`"),
            pytest.warns(UserWarning, match="no plans.json"),
        ):
            find_best(tmp_path / "hippo")

    def test_missing_source(self, make_dataset_dir):
        d = make_dataset_dir({"2d": perfect})
        (d / "source.json").unlink()
        with pytest.raises(DatasetError, match=r"source\.json: missing"):
            find_best(d)


def test_ensemble_labels_maps_classes_to_values():
    a = np.zeros((3, 2, 1, 1), np.float16)
    a[:, 0, 0, 0] = [0.2, 0.5, 0.3]
    a[:, 1, 0, 0] = [0.4, 0.3, 0.3]
    b = a[::-1].copy()  # class 1 stays, 0 and 2 swap
    out = ensemble_labels([a, b], LabelScheme.from_declared({"background": 0, "a": 3, "b": 7}))
    assert out.dtype == np.uint8
    assert out.ravel().tolist() == [3, 0]  # a tie (0.7 vs 0.7) goes to the lower class
