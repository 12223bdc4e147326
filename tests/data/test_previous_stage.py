"""A cascade stage's extra input: the previous stage's map on the case's grid, one-hot, moved with
the spatial augmentation exactly as the segmentation, and perturbed in training."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from autoseg.data.loader import make_loader
from autoseg.data.previous_stage import PreviousStageInput, perturb, random_morphology
from autoseg.io.dataset import load_dataset
from autoseg.io.image import read_image, write_image
from autoseg.preprocessing.previous_stage import one_hot, previous_stage_indices

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def cascade(prepared, tmp_path_factory):
    """The 3d_fullres store seen as a cascade stage whose previous stage predicted every case
    perfectly: its map is the case's own segmentation."""
    plan = prepared.plan
    config = dataclasses.replace(plan.configuration("3d_fullres"), previous_stage="3d_lowres")
    folder = tmp_path_factory.mktemp("previous_stage")
    store = prepared.store("3d_fullres")
    for cid in prepared.case_ids:
        np.save(folder / f"{cid}.npy", np.asarray(store.load(cid).seg))
    return config, store, PreviousStageInput(folder, plan.label_scheme)


def test_a_reference_label_map_lands_on_the_stored_segmentation(prepared):
    # hippocampus is at the plan's 1 mm already: the map is transposed and cropped, not resized
    store = prepared.store("3d_fullres")
    labels = {c.case_id: c.label for c in load_dataset(ROOT / "data" / "hippocampus_sample").cases}
    for cid in prepared.case_ids[:2]:
        case = store.load(cid)
        indices = previous_stage_indices(read_image(labels[cid]).array, case.properties, prepared.plan)
        np.testing.assert_array_equal(indices, case.seg)


def test_the_wrong_shape_is_refused(prepared):
    props = prepared.store("3d_fullres").properties(prepared.case_ids[0])
    with pytest.raises(ValueError, match="the previous stage's label map has shape"):
        previous_stage_indices(np.zeros((2, 2, 2), dtype=np.uint8), props, prepared.plan)


@pytest.mark.parametrize("augment", [True, False], ids=["training", "validation"])
def test_channels_move_with_the_segmentation(cascade, prepared, augment):
    config, store, previous = cascade
    n_img = len(prepared.plan.channel_names)
    with make_loader(
        store,
        prepared.case_ids,
        config,
        batch_size=2,
        workers=0,
        seed=3,
        augment=augment,
        previous_stage=previous,
    ) as loader:
        loader.dataset.perturb_previous = False  # the spatial part alone: exact agreement
        for _ in range(4):
            batch = next(loader)
            assert batch["data"].shape == (2, n_img + 2, *config.patch_size)
            assert batch["target"].shape == (2, 1, *config.patch_size)
            expected = np.stack([one_hot(t[0].numpy(), prepared.plan.label_scheme) for t in batch["target"]])
            np.testing.assert_array_equal(batch["data"][:, n_img:].numpy(), expected)


def test_training_perturbs_the_channels(cascade, prepared):
    config, store, previous = cascade
    n_img = len(prepared.plan.channel_names)
    differs = 0
    ids = prepared.case_ids
    with make_loader(
        store, ids, config, batch_size=2, workers=0, seed=0, augment=True, previous_stage=previous
    ) as loader:
        for _ in range(6):
            batch = next(loader)
            hot = batch["data"][:, n_img:].numpy()
            assert set(np.unique(hot)) <= {0.0, 1.0}
            assert hot.sum(axis=1).max() <= 1  # plain labels stay one-hot
            expected = np.stack([one_hot(t[0].numpy(), prepared.plan.label_scheme) for t in batch["target"]])
            differs += int((hot != expected).any(axis=(1, 2, 3, 4)).sum())
    assert differs > 0  # with p 0.4 and 0.2 per sample, 12 samples


class TestPerturbations:
    def test_gained_voxels_leave_the_other_channels(self):
        ch = np.zeros((2, 12, 12, 12), dtype=bool)
        ch[0, 2:6, 2:10, 2:10] = True
        ch[1, 6:10, 2:10, 2:10] = True
        for seed in range(10):
            out = random_morphology(ch.copy(), np.random.default_rng(seed))
            assert out.sum(axis=0).max() <= 1

    def test_reproducible_from_the_generator(self):
        ch = np.zeros((1, 16, 16, 16), dtype=bool)
        ch[0, 4:12, 4:12, 4:12] = True
        ch[0, 1, 1, 1] = True
        runs = [perturb(ch.copy(), np.random.default_rng(7)) for _ in range(2)]
        np.testing.assert_array_equal(runs[0], runs[1])

    def test_regions_share_voxels(self):
        from autoseg.labels import LabelScheme

        scheme = LabelScheme.from_declared(
            {"background": 0, "whole": [1, 2], "core": [2], "ignore": 3}, regions_class_order=[1, 2]
        )
        # stored indices: values (0, 1, 2, 3) -> 0..3; a voxel of value 2 is in both regions
        hot = one_hot(np.array([0, 1, 2, 3]), scheme)
        assert hot.tolist() == [[0.0, 1.0, 1.0, 0.0], [0.0, 0.0, 1.0, 0.0]]


class TestPrepare:
    """``write_previous_stage``: maps on the store's grid, a strict manifest whose digest
    follows the predictions' contents, and no maps left of cases the fold no longer has."""

    @pytest.fixture
    def sources(self, prepared, tmp_path):
        from autoseg.training.cascade import CVPrediction

        labels = {c.case_id: c.label for c in load_dataset(ROOT / "data" / "hippocampus_sample").cases}
        out = {}
        for k, cid in enumerate(prepared.case_ids[:3]):
            path = tmp_path / "lowres" / f"fold_{k}" / "validation" / f"{cid}.nii.gz"
            path.parent.mkdir(parents=True)
            path.write_bytes(Path(labels[cid]).read_bytes())
            out[cid] = CVPrediction(cid, str(k), path)
        return out

    def _prepare(self, prepared, sources, fold_dir):
        """What training does: the manifest, the maps, and where the loader finds them."""
        from autoseg.training.cascade import (
            previous_stage_input,
            previous_stage_manifest,
            write_previous_stage,
        )

        config = dataclasses.replace(prepared.plan.configuration("3d_fullres"), previous_stage="3d_lowres")
        manifest = previous_stage_manifest(sources, config)
        write_previous_stage(manifest, sources, prepared.plan, config, prepared.store("3d_fullres"), fold_dir)
        return previous_stage_input(fold_dir, prepared.plan, manifest)

    def test_maps_manifest_and_a_digest_that_follows_the_contents(self, prepared, sources, tmp_path):
        from autoseg.training.cascade import MANIFEST, PreviousStageManifest

        fold_dir = tmp_path / "fold_0"
        first = self._prepare(prepared, sources, fold_dir)
        store = prepared.store("3d_fullres")
        for cid in sources:
            np.testing.assert_array_equal(first.load(cid), store.load(cid).seg)
        manifest = PreviousStageManifest.load(fold_dir / MANIFEST)
        assert manifest.digest == first.digest
        assert {c: e.fold for c, e in manifest.cases.items()} == {c: s.fold for c, s in sources.items()}
        assert self._prepare(prepared, sources, fold_dir).digest == first.digest  # same inputs
        # the previous stage retrained: one prediction changed (one voxel) -> another digest
        cid, src = next(iter(sources.items()))
        img = read_image(src.path)
        changed = img.array.copy()
        changed.flat[0] = 1 - changed.flat[0]
        write_image(changed, img.geometry, src.path)
        assert self._prepare(prepared, sources, fold_dir).digest != first.digest

    def test_maps_of_other_cases_are_removed(self, prepared, sources, tmp_path):
        fold_dir = tmp_path / "fold_0"
        self._prepare(prepared, sources, fold_dir)
        fewer = dict(list(sources.items())[:2])
        previous = self._prepare(prepared, fewer, fold_dir)
        assert sorted(p.stem for p in previous.folder.glob("*.npy")) == sorted(fewer)

    @pytest.mark.parametrize(
        ("edit", "match"),
        [
            (lambda d: d.pop("schema_version"), "version"),
            (lambda d: d.update(extra=1), "extra"),
            (lambda d: next(iter(d["cases"].values())).pop("sha256"), "sha256"),
        ],
        ids=["no-version", "unknown-key", "no-hash"],
    )
    def test_a_damaged_manifest_is_named(self, prepared, sources, tmp_path, edit, match):
        import json

        from autoseg.errors import ModelError
        from autoseg.training.cascade import MANIFEST, PreviousStageManifest

        fold_dir = tmp_path / "fold_0"
        self._prepare(prepared, sources, fold_dir)
        d = json.loads((fold_dir / MANIFEST).read_text())
        edit(d)
        (fold_dir / MANIFEST).write_text(json.dumps(d))
        with pytest.raises(ModelError, match=match) as e:
            PreviousStageManifest.load(fold_dir / MANIFEST)
        assert str(fold_dir / MANIFEST) in str(e.value)
