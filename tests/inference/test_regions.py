"""Prediction of a plan whose labels are regions (sigmoid outputs painted in
``regions_class_order``) or carry an ignore label: resampling back to the source grid, painting
order, probabilities, ensembling, and the ignore label never predicted.

The region plan is nnU-Net's hippocampus regions scenario: ``{"background": 0, "hippocampus":
[1, 2], "anterior": 1}`` painted in order ``[2, 1]`` (hippocampus as 2, then anterior as 1 over
it), so the label map of perfect region outputs is the original one."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.errors import ModelError
from autoseg.inference import predictor as predictor_module
from autoseg.inference.cohort import predict_path
from autoseg.inference.model import TrainedModel
from autoseg.inference.predictor import Predictor
from autoseg.inference.probabilities import ProbabilityMap
from autoseg.inference.source_grid import (
    classes_resampled,
    logits_to_labels,
    probabilities_on_source_grid,
    probabilities_to_labels,
    resize_channels,
)
from autoseg.io.case import LoadedCase
from autoseg.io.image import read_image
from autoseg.io.samples import sample_dataset_dir
from autoseg.labels import LabelScheme
from autoseg.networks.unet import build_network
from autoseg.planning.plan import Plan
from autoseg.preprocessing.case import preprocess_arrays
from tests.golden import GOLDEN_PLAN

GOLDEN = Plan.load(GOLDEN_PLAN)
REGIONS = {"background": 0, "hippocampus": [1, 2], "anterior": 1}


def _plan(labels: dict, order: list[int] | None = None, **config_changes: object) -> Plan:
    d = GOLDEN.to_dict()
    d["labels"], d["regions_class_order"] = labels, order
    plan = Plan.from_dict(d)
    if config_changes:
        cfg = dataclasses.replace(plan.configuration("3d_fullres"), **config_changes)
        plan = dataclasses.replace(plan, configurations={**plan.configurations, "3d_fullres": cfg})
    return plan


REGION_PLAN = _plan(REGIONS, [2, 1])


def _case(name: str = "hippocampus_004") -> tuple[np.ndarray, np.ndarray, tuple[float, ...]]:
    img = read_image(sample_dataset_dir() / "imagesTr" / f"{name}.nii.gz")
    lab = read_image(sample_dataset_dir() / "labelsTr" / f"{name}.nii.gz")
    return img.array[None].astype(np.float32), np.rint(lab.array).astype(np.uint8), img.spacing


def _region_logits(seg: np.ndarray, scheme: LabelScheme) -> torch.Tensor:
    """+10 inside each region, -10 outside: what a perfect region network outputs."""
    masks = np.stack(scheme.masks(seg)).astype(np.float32)
    return torch.from_numpy(masks * 20 - 10)


@pytest.mark.parametrize("z_axis", [None, 0])
@pytest.mark.parametrize("shape", [(9, 10, 12), (6, 3, 8)])
def test_plane_by_plane_regions_equal_the_dense_decision(z_axis: int | None, shape: tuple[int, ...]) -> None:
    scheme = LabelScheme.from_declared({"background": 0, "a": [1, 2, 3], "b": [2, 3], "c": 3}, [1, 2, 3])
    logits = torch.randn(3, 6, 7, 8, generator=torch.Generator().manual_seed(sum(shape)))
    dense = scheme.classes(resize_channels(logits, shape, z_axis=z_axis), 0)
    walked = classes_resampled(logits, shape, z_axis=z_axis, decide=scheme.classes)
    assert walked.dtype == torch.uint8
    assert torch.equal(walked, dense.to(walked.dtype))
    assert set(walked.unique().tolist()) == {0, 1, 2, 3}  # every painted class occurs


@pytest.mark.parametrize(
    ("spacing", "min_dice"), [((1.0, 1.0, 1.0), 1.0), ((1.5, 1.5, 1.5), 0.8)], ids=["same", "coarser"]
)
def test_regions_come_back_painted_in_order(spacing: tuple[float, ...], min_dice: float) -> None:
    """Perfect region outputs give back the label map: hippocampus (1 or 2) painted 2 first,
    anterior (1) painted 1 over it; painted the other way round, anterior would vanish."""
    data, seg, sp = _case()
    plan = _plan(REGIONS, [2, 1], spacing=spacing)
    pre = preprocess_arrays(data, seg, sp, plan, plan.configuration("3d_fullres"), case_id="x")
    scheme = plan.label_scheme
    stored_seg = np.asarray(scheme.stored_values)[pre.seg]  # preprocessing stores indices
    back = logits_to_labels(_region_logits(stored_seg, scheme), pre.properties, plan)
    assert back.shape == seg.shape
    assert back.dtype == np.uint8
    for value in (1, 2):
        both = np.count_nonzero((back == value) & (seg == value))
        dice = 2 * both / (np.count_nonzero(back == value) + np.count_nonzero(seg == value))
        assert dice >= min_dice, (value, dice)
    if min_dice == 1.0:
        np.testing.assert_array_equal(back, seg)
    # anterior (1) painted first, then hippocampus (2) over all of it: anterior is gone
    inner_first = _plan({"background": 0, "anterior": 1, "hippocampus": [1, 2]}, [1, 2], spacing=spacing)
    wrong = logits_to_labels(
        _region_logits(stored_seg, inner_first.label_scheme), pre.properties, inner_first
    )
    assert not np.any(wrong == 1)
    assert np.count_nonzero(wrong) == np.count_nonzero(back)


def test_region_probabilities_are_sigmoids_zero_outside_the_crop() -> None:
    data, _seg, sp = _case()
    padded = np.zeros((1, *(s + 6 for s in data.shape[1:])), np.float32)
    padded[:, 3:-3, 3:-3, 3:-3] = data + 1  # a zero border: cropping removes it
    plan = _plan(REGIONS, [2, 1], spacing=(1.2, 1.1, 0.9))
    pre = preprocess_arrays(padded, None, sp, plan, plan.configuration("3d_fullres"), case_id="x")
    logits = torch.randn(2, *pre.data.shape[1:], generator=torch.Generator().manual_seed(0)) * 3
    before = logits.clone()
    prob = probabilities_on_source_grid(logits, pre.properties, plan)
    assert torch.equal(logits, before)
    assert prob.shape == (2, *padded.shape[1:])
    assert prob.dtype == np.float32
    assert float(prob[:, 0, 0, 0].max()) == 0.0  # outside the crop: in no region
    bbox = tuple(slice(lo, hi) for lo, hi in pre.properties.bbox)
    expected = torch.sigmoid(resize_channels(logits, pre.properties.shape_after_crop, z_axis=None))
    np.testing.assert_allclose(prob[(slice(None), *bbox)], expected.numpy(), atol=1e-6)
    # the label map from the probabilities is the one painted plane by plane, but at the threshold
    labels = logits_to_labels(logits, pre.properties, plan)
    from_probs = probabilities_to_labels(prob, plan.label_scheme)
    assert from_probs.dtype == labels.dtype == np.uint8
    clear = np.abs(prob - 0.5).min(0) > 1e-5
    assert clear.mean() > 0.99
    np.testing.assert_array_equal(from_probs[clear], labels[clear])


@pytest.mark.parametrize(
    ("labels", "order"),
    [({"background": 0, "anterior": 1, "ignore": 2}, None), ({**REGIONS, "ignore": 3}, [2, 1])],
    ids=["labels", "regions"],
)
def test_the_ignore_label_is_never_predicted(labels: dict, order: list[int] | None) -> None:
    data, _, sp = _case()
    plan = _plan(labels, order)
    scheme = plan.label_scheme
    assert scheme.ignore is not None
    pre = preprocess_arrays(data, None, sp, plan, plan.configuration("3d_fullres"), case_id="x")
    # outputs favouring every channel somewhere, the last one most
    logits = torch.randn(scheme.n_outputs, *pre.data.shape[1:], generator=torch.Generator().manual_seed(1))
    logits[-1] += 1
    out = logits_to_labels(logits, pre.properties, plan)
    prob = probabilities_on_source_grid(logits, pre.properties, plan)
    assert scheme.ignore not in np.unique(out)
    assert scheme.ignore not in np.unique(probabilities_to_labels(prob, scheme))
    assert set(np.unique(out)) == set(scheme.class_values)


# --- the predictor -----------------------------------------------------------------------


@pytest.fixture
def case() -> LoadedCase:
    img = read_image(sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz"))[0])
    return LoadedCase("case", img.array[None].astype(np.float32), None, img.geometry)


class _Constant:
    """Stands in for ``predict_logits``: fold ``net`` of a model gives logits ``net * bias``."""

    def __init__(self, bias: torch.Tensor) -> None:
        self.bias = bias

    def __call__(self, net: float, data: torch.Tensor, **_: object) -> torch.Tensor:
        return net * self.bias[:, None, None, None].expand(-1, *data.shape[1:]).clone()


def _model(config: str, folds: list[float]) -> TrainedModel:
    return TrainedModel(
        REGION_PLAN,
        REGION_PLAN.configuration(config),
        folds,  # type: ignore[arg-type]  # stand-ins: _Constant multiplies by them
        [str(i) for i in range(len(folds))],
        Path("unused"),
    )


def test_folds_are_averaged_as_logits_then_a_sigmoid(
    case: LoadedCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Folds 0 and 4 with logits ``k * (1, -0.5)``: their mean logits (2, -1) give
    sigmoid(2), sigmoid(-1); averaging their sigmoids would give other numbers."""
    monkeypatch.setattr(predictor_module, "predict_logits", _Constant(torch.tensor([1.0, -0.5])))
    p = Predictor([_model("3d_fullres", [0.0, 4.0])], device=torch.device("cpu"), amp_dtype=None)
    labels, probs = p.predict(case, with_probabilities=True)
    assert probs is not None
    assert probs.shape[0] == 2
    inside = probs[0] > 0  # 0 outside the crop
    got = probs[:, inside].astype(np.float32)
    want = torch.sigmoid(torch.tensor([2.0, -1.0])).numpy()
    np.testing.assert_allclose(got, np.broadcast_to(want[:, None], got.shape), atol=1e-3)
    assert set(np.unique(labels[inside])) == {2}  # hippocampus only: painted 2
    fast, _ = p.predict(case)  # the plane-by-plane path agrees
    np.testing.assert_array_equal(fast, labels)


def test_configurations_are_averaged_as_probabilities(
    case: LoadedCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sigmoids 0.9 and 0.2 of both regions average to 0.55 > 0.5: anterior painted 1 over
    hippocampus. The mean of the logits would give sigmoid(0.41) = 0.6 instead."""
    a, b = np.log(0.9 / 0.1), np.log(0.2 / 0.8)
    monkeypatch.setattr(predictor_module, "predict_logits", _Constant(torch.tensor([1.0, 1.0])))
    models = [_model("3d_fullres", [float(a)]), _model("2d", [float(b)])]
    p = Predictor(models, device=torch.device("cpu"), amp_dtype=None)
    labels, probs = p.predict(case, with_probabilities=True)
    assert probs is not None
    inside = probs[0] > 0
    np.testing.assert_allclose(probs[:, inside].astype(np.float32), 0.55, atol=1e-3)
    assert set(np.unique(labels[inside])) == {1}
    assert set(np.unique(labels[~inside])) <= {0}


def test_predict_path_writes_region_label_maps_and_probabilities(tmp_path: Path) -> None:
    """An untrained network built from the region plan: the files written say they are sigmoid
    regions, and the label map is the painting of the stored probabilities."""
    plan = REGION_PLAN
    config = plan.configuration("3d_fullres")
    torch.manual_seed(0)
    net = build_network(config, in_channels=1, n_classes=plan.num_classes, deep_supervision=False).eval()
    model = TrainedModel(plan, config, [net], ["0"], tmp_path / "model")
    src = tmp_path / "in"
    src.mkdir()
    scan = sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz"))[0]
    shutil.copy(scan, src / scan.name)
    predictor = Predictor([model], device=torch.device("cpu"), amp_dtype=None, tta=False)
    report = predict_path(src, tmp_path / "out", predictor, save_probabilities=True)
    assert len(report.written) == 1
    assert not report.failed
    cid = report.written[0]
    labels = read_image(tmp_path / "out" / f"{cid}.nii.gz").array
    stored = ProbabilityMap.load(
        tmp_path / "out" / f"{cid}.npz", scheme=plan.label_scheme, shape=labels.shape
    )
    assert (stored.activation, stored.channel_names) == ("sigmoid", ("hippocampus", "anterior"))
    from_probs = probabilities_to_labels(stored.probabilities.astype(np.float32), plan.label_scheme)
    clear = np.abs(stored.probabilities.astype(np.float32) - 0.5).min(0) > 1e-2
    np.testing.assert_array_equal(labels[clear], from_probs[clear])
    assert set(np.unique(labels)) <= {0, 1, 2}
    with pytest.raises(ModelError, match="another label scheme"):
        ProbabilityMap.load(tmp_path / "out" / f"{cid}.npz", scheme=GOLDEN.label_scheme)


def test_models_of_other_label_schemes_are_not_ensembled() -> None:
    plain = TrainedModel(GOLDEN, GOLDEN.configuration("2d"), [], ["0"], Path("plain"))
    with pytest.raises(ModelError, match=r"different labels \(unused: .*'hippocampus': \[1, 2\].*; plain: "):
        Predictor([_model("3d_fullres", [1.0]), plain], device=torch.device("cpu"), amp_dtype=None)
