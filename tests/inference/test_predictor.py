"""The predictor's ensembling with stand-in networks: means are right, inference tensors are summed
(the fold average once crashed on the CPU: an in-place add on a tensor made under
``torch.inference_mode``), and memory holds one member plus the sum, whatever the member count."""

from __future__ import annotations

import weakref
from pathlib import Path

import numpy as np
import pytest
import torch

from autoseg.inference import predictor as predictor_module
from autoseg.inference.model import TrainedModel
from autoseg.inference.predictor import Predictor
from autoseg.io.case import LoadedCase
from autoseg.io.image import read_image
from autoseg.io.samples import sample_dataset_dir
from autoseg.planning.plan import Plan
from tests.golden import GOLDEN_PLAN

PLAN = Plan.load(GOLDEN_PLAN)


@pytest.fixture
def case() -> LoadedCase:
    img = read_image(sorted((sample_dataset_dir() / "imagesTs").glob("*.nii.gz"))[0])
    return LoadedCase("case", img.array[None].astype(np.float32), None, img.geometry)


class _Recorder:
    """Stands in for ``predict_logits``: fold k of a model gives logits ``k * bias``, made under
    inference mode as the real one; checks how many earlier outputs are still alive."""

    def __init__(self, bias: torch.Tensor) -> None:
        self.bias, self.alive, self.most_alive = bias, [], 0

    def __call__(self, net, data: torch.Tensor, **_: object) -> torch.Tensor:
        live = [r for r in self.alive if r() is not None]
        self.most_alive = max(self.most_alive, len(live))
        with torch.inference_mode():
            out = net * self.bias[:, None, None, None].expand(-1, *data.shape[1:]).clone()
        self.alive.append(weakref.ref(out))
        return out


def _model(config: str, folds: list[float]) -> TrainedModel:
    return TrainedModel(
        PLAN, PLAN.configuration(config), folds, [str(i) for i in range(len(folds))], Path("unused")
    )


@pytest.mark.parametrize("n_folds", [1, 2, 5])
def test_fold_logits_are_averaged_in_place(
    case: LoadedCase, monkeypatch: pytest.MonkeyPatch, n_folds: int
) -> None:
    """Fold k's logits are ``k * (0, 1, -1)``: the mean favours class 1 everywhere but on fold 0
    alone (all zero: class 0, the first of a tie)."""
    rec = _Recorder(torch.tensor([0.0, 1.0, -1.0]))
    monkeypatch.setattr(predictor_module, "predict_logits", rec)
    p = Predictor(
        [_model("3d_fullres", [float(k) for k in range(n_folds)])], device=torch.device("cpu"), amp_dtype=None
    )
    labels, probs = p.predict(case, with_probabilities=True)
    mean = (n_folds - 1) / 2
    expected = torch.softmax(torch.tensor([0.0, mean, -mean]), 0).numpy()
    assert probs is not None
    assert probs.dtype == np.float16
    inside = probs[0] < 1  # background is 1 outside the crop
    got = probs[:, inside].astype(np.float32)
    np.testing.assert_allclose(got, np.broadcast_to(expected[:, None], got.shape), atol=1e-3)
    assert set(np.unique(labels[inside])) == ({1} if n_folds > 1 else {0})
    assert rec.most_alive <= 1  # the running sum only: no fold's output is kept beside it


def test_configurations_are_averaged_as_probabilities(
    case: LoadedCase, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two configurations with opposite votes of different confidence: the mean of their
    probabilities decides, one member's probabilities live beside the sum at a time."""
    rec = _Recorder(torch.tensor([0.0, 1.0, 0.0]))
    monkeypatch.setattr(predictor_module, "predict_logits", rec)
    real = predictor_module.probabilities_on_source_grid
    sums: list[weakref.ref] = []
    most = [0]

    def recording(logits, props, plan):
        most[0] = max(most[0], sum(r() is not None for r in sums))
        out = real(logits, props, plan)
        sums.append(weakref.ref(out.base if out.base is not None else out))
        return out

    monkeypatch.setattr(predictor_module, "probabilities_on_source_grid", recording)
    models = [_model("3d_fullres", [3.0]), _model("2d", [-1.0]), _model("3d_fullres", [0.5])]
    p = Predictor(models, device=torch.device("cpu"), amp_dtype=None)
    labels, probs = p.predict(case)
    assert probs is None  # not asked for
    per_model = [torch.softmax(torch.tensor([0.0, b, 0.0]), 0) for b in (3.0, -1.0, 0.5)]
    mean = torch.stack(per_model).mean(0)
    _, probs = p.predict(case, with_probabilities=True)
    inside = probs[0] < 1
    got = probs[:, inside].astype(np.float32)
    np.testing.assert_allclose(got, np.broadcast_to(mean.numpy()[:, None], got.shape), atol=1e-3)
    assert set(np.unique(labels[inside])) == {int(PLAN.label_values[int(mean.argmax())])}
    assert most[0] <= 1


def test_no_model_is_refused() -> None:
    from autoseg.errors import ModelError

    with pytest.raises(ModelError, match="no model to predict with"):
        Predictor([], device=torch.device("cpu"), amp_dtype=None)
