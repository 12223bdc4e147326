"""Predict new scans with trained models: same preprocessing as training, sliding window with
TTA, folds averaged (logits), configurations averaged (probabilities: softmax over labels or a
sigmoid per region, as the plan's :class:`~autoseg.labels.LabelScheme` says), back to the source
grid, post-processing. One case at a time, in three steps (:meth:`Predictor.prepare`,
:meth:`Predictor.run`, :meth:`Predictor.finish`) that a cohort overlaps across cases; reading a
folder and writing the outputs is :mod:`autoseg.inference.cohort`.

A cascade stage (``3d_cascade_fullres``) runs its previous stage first: that stage's folds
predict the scan (ensembled, raw label map on the source grid, no post-processing: what its
cross-validation predictions were when the cascade trained on them), and the label map joins the
cascade's input as one-hot channels (:mod:`autoseg.preprocessing.previous_stage`)."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from autoseg.errors import ModelError
from autoseg.inference.model import TrainedModel
from autoseg.inference.postprocess import Postprocessing, apply_postprocessing
from autoseg.inference.sliding_window import predict_logits
from autoseg.inference.source_grid import (
    logits_to_labels,
    maps_on_source_grid,
    probabilities_on_source_grid,
    probabilities_to_labels,
)
from autoseg.inference.uncertainty import (
    Activation,
    UncertaintyMaps,
    entropy_from_logits,
    entropy_from_probabilities,
    mutual_information,
)
from autoseg.io.case import LoadedCase
from autoseg.io.volume import Geometry
from autoseg.preprocessing.case import PreprocessedCase, preprocess_arrays
from autoseg.preprocessing.previous_stage import previous_stage_indices, with_previous_stage
from autoseg.preprocessing.properties import CaseProperties

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Prediction:
    """One case's prediction on its source grid.

    Attributes:
        labels: the label map (label values).
        probabilities: ``(n_outputs, *spatial)`` float16, when asked for.
        uncertainty: the uncertainty maps, when asked for.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None
    uncertainty: UncertaintyMaps | None


@dataclass(frozen=True)
class PreparedCase:
    """A case read and preprocessed (:meth:`Predictor.prepare`).

    Attributes:
        case_id: the case's id.
        geometry: the source grid, where the outputs go.
        inputs: the preprocessed case per configuration that runs on it (by model folder: each
            model of the ensemble and the previous stages of a cascade).
    """

    case_id: str
    geometry: Geometry
    inputs: dict[Path, PreprocessedCase]


@dataclass(frozen=True)
class NetworkOutput:
    """What the networks made of a case (:meth:`Predictor.run`), before :meth:`Predictor.finish`.

    Attributes:
        case_id: the case's id.
        activation: the outputs' activation when uncertainty is asked for, else None.
        logits: one configuration's fold-mean logits on its grid (the members' mean entropy as a
            last channel with uncertainty), with the ``properties`` that lead back to the source
            grid; None for an ensemble.
        properties: see ``logits``.
        probabilities: an ensemble's mean probabilities on the source grid, else None.
        expected_entropy: an ensemble's mean member entropy on the source grid, with uncertainty.
        keep_probabilities: the probabilities are to be returned (``--save-probabilities``).
    """

    case_id: str
    activation: Activation | None
    logits: torch.Tensor | None = None
    properties: CaseProperties | None = None
    probabilities: np.ndarray | None = None
    expected_entropy: np.ndarray | None = None
    keep_probabilities: bool = False


class Predictor:
    """Runs one or more trained configurations on loaded cases.

    Args:
        models: the configurations to use; with several, their probabilities are averaged.
        postprocessing: applied to every label map (find-best's decision), or None.
        device: where networks run.
        amp_dtype: autocast dtype or None.
        step: sliding-window step (fraction of the patch).
        tta: mirror test-time augmentation.
    """

    def __init__(
        self,
        models: list[TrainedModel],
        *,
        device: torch.device,
        amp_dtype: torch.dtype | None,
        step: float = 0.5,
        tta: bool = True,
        postprocessing: Postprocessing | None = None,
    ) -> None:
        if not models:
            msg = "no model to predict with; train a configuration first"
            raise ModelError(msg)
        schemes = {m.plan.label_scheme for m in models}
        if len(schemes) > 1:
            found = "; ".join(f"{m.model_dir}: {m.plan.label_scheme.declared()}" for m in models)
            msg = (
                f"the models to ensemble have different labels ({found}); their outputs mean "
                "different things: ensemble models trained from one plan"
            )
            raise ModelError(msg)
        self.models, self.device, self.amp_dtype = models, device, amp_dtype
        self.step, self.tta = step, tta
        self.plan = models[0].plan
        self.postprocessing = postprocessing

    @torch.inference_mode()
    def _logits(
        self, model: TrainedModel, data: torch.Tensor, *, member_entropy: Activation | None = None
    ) -> torch.Tensor:
        """Mean logits over the model's folds, summed in place on the CPU: memory is one fold's
        logits plus the sum, whatever the number of folds. On a CUDA out-of-memory error the
        blending moves to the CPU and the fold is tried again. With ``member_entropy`` (the
        outputs' activation) a last channel holds the mean entropy of the members (every fold,
        every mirror): :mod:`autoseg.inference.uncertainty`."""
        total: torch.Tensor | None = None
        for net in model.networks:
            kw: dict[str, Any] = {
                "config": model.config,
                "step": self.step,
                "tta": self.tta,
                "device": self.device,
                "amp_dtype": self.amp_dtype,
                "member_entropy": member_entropy,
            }
            try:
                out = predict_logits(net, data, **kw)
            except torch.cuda.OutOfMemoryError:
                torch.cuda.empty_cache()
                log.warning("CUDA out of memory: retrying with the output on the CPU")
                out = predict_logits(net, data, output_device="cpu", **kw)
            out = out.to("cpu")
            if total is None:
                total = out
            else:
                total += out
            del out
        if total is None:
            msg = f"{model.model_dir}: no fold network loaded"
            raise ModelError(msg)
        return total.div_(len(model.networks))

    @torch.inference_mode()
    def predict(
        self, case: LoadedCase, *, with_probabilities: bool = False
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """Label map (label values, source grid) and, if asked, probabilities (float16): see
        :meth:`predict_all`."""
        out = self.predict_all(case, with_probabilities=with_probabilities)
        return out.labels, out.probabilities

    def predict_all(
        self, case: LoadedCase, *, with_probabilities: bool = False, with_uncertainty: bool = False
    ) -> Prediction:
        """Label map (label values, source grid) and, if asked, probabilities (float16) and the
        uncertainty maps (float32, source grid; :mod:`autoseg.inference.uncertainty`).

        The three steps :meth:`prepare`, :meth:`run` and :meth:`finish` in turn; a cohort
        overlaps them across cases (:func:`predict_path`).
        """
        ran = self.run(
            self.prepare(case), with_probabilities=with_probabilities, with_uncertainty=with_uncertainty
        )
        return self.finish(ran)

    def prepare(self, case: LoadedCase) -> PreparedCase:
        """``case`` preprocessed for every configuration that will run on it (each model, and
        the previous stages of a cascade): CPU work that needs no network. The case's own arrays
        are not kept: from here on only the preprocessed ones and the geometry are needed."""
        inputs: dict[Path, PreprocessedCase] = {}
        for model in self.models:
            m: TrainedModel | None = model
            while m is not None and m.model_dir not in inputs:
                inputs[m.model_dir] = preprocess_arrays(
                    case.data, None, case.geometry.spacing, m.plan, m.config, case_id=case.case_id
                )
                m = m.previous
        return PreparedCase(case.case_id, case.geometry, inputs)

    @torch.inference_mode()
    def run(
        self, case: PreparedCase, *, with_probabilities: bool = False, with_uncertainty: bool = False
    ) -> NetworkOutput:
        """The networks on a prepared case. One configuration without probabilities stops at its
        fold-mean logits: the way back to the source grid is left to :meth:`finish`. An ensemble
        takes each configuration's probabilities to the source grid as it goes and keeps their
        sum in place (each configuration has its own grid), so it needs the memory of one member
        plus the sum."""
        activation = self.plan.label_scheme.activation if with_uncertainty else None
        k = self.plan.label_scheme.n_outputs
        if len(self.models) == 1 and not with_probabilities:
            model = self.models[0]
            out, props = self._network_logits(model, case, member_entropy=activation)
            return NetworkOutput(case.case_id, activation, logits=out, properties=props)
        probs: np.ndarray = np.empty(0)
        expected: np.ndarray | None = None
        for i, model in enumerate(self.models):
            out, props = self._network_logits(model, case, member_entropy=activation)
            p = probabilities_on_source_grid(out[:k], props, model.plan)
            if activation is not None:
                e = maps_on_source_grid(out[k:], props, model.plan)[0]
                expected = e if expected is None else expected + e
            del out
            if i == 0:
                probs = p
            else:
                probs += p
            del p
        probs /= len(self.models)
        if expected is not None:
            expected /= len(self.models)
        return NetworkOutput(
            case.case_id,
            activation,
            probabilities=probs,
            expected_entropy=expected,
            keep_probabilities=with_probabilities,
        )

    @torch.inference_mode()
    def finish(self, out: NetworkOutput) -> Prediction:
        """The label map, probabilities and uncertainty maps on the source grid from what
        :meth:`run` produced; post-processing applied. CPU work, done on a writer thread when a
        cohort is predicted.

        The label map comes from the plan's label scheme (argmax, or regions painted in order);
        it never holds the ignore label. One configuration without probabilities takes the
        plane-by-plane path to the source grid; its uncertainty maps are made on the network's
        grid and resized like two more channels, so they cost two source-grid maps, not the
        probabilities of every class.
        """
        k = self.plan.label_scheme.n_outputs
        if out.logits is not None and out.properties is not None:
            t0 = time.perf_counter()
            labels = logits_to_labels(out.logits[:k], out.properties, self.plan)
            maps = None
            if out.activation is not None:  # predictive and expected entropy, resized together
                both = torch.stack([entropy_from_logits(out.logits[:k], out.activation), out.logits[k]])
                h, expected_h = maps_on_source_grid(both, out.properties, self.plan)
                maps = UncertaintyMaps(h, mutual_information(h, expected_h))
            log.debug("%s: back to the source grid %.2f s", out.case_id, time.perf_counter() - t0)
            return Prediction(self._postprocess(labels), None, maps)
        if out.probabilities is None:
            msg = f"case {out.case_id}: the networks produced neither logits nor probabilities"
            raise ModelError(msg)
        probs = out.probabilities
        labels = probabilities_to_labels(probs, self.plan.label_scheme)
        uncertainty = None
        if out.activation is not None and out.expected_entropy is not None:
            predictive = entropy_from_probabilities(probs, out.activation)
            uncertainty = UncertaintyMaps(predictive, mutual_information(predictive, out.expected_entropy))
        kept = probs.astype(np.float16) if out.keep_probabilities else None
        return Prediction(self._postprocess(labels), kept, uncertainty)

    def _network_logits(
        self, model: TrainedModel, case: PreparedCase, *, member_entropy: Activation | None = None
    ) -> tuple[torch.Tensor, CaseProperties]:
        """``model``'s fold-mean logits of a prepared case (with the members' mean entropy as a
        last channel, given ``member_entropy``) and its preprocessing properties (crop,
        transpose: what the way back to the source grid needs)."""
        pre = case.inputs[model.model_dir]
        data = pre.data
        if model.previous is not None:
            previous = self._previous_stage(model, model.previous, case, pre.properties)
            data = with_previous_stage(data, previous, model.plan.label_scheme)
        t0 = time.perf_counter()
        logits = self._logits(model, torch.from_numpy(data), member_entropy=member_entropy)
        log.debug("%s %s: network %.2f s", case.case_id, model.config.name, time.perf_counter() - t0)
        return logits, pre.properties

    def _previous_stage(
        self, model: TrainedModel, previous: TrainedModel, case: PreparedCase, props: CaseProperties
    ) -> np.ndarray:
        """``previous``'s label map of ``case`` on ``model``'s grid (``props``'s), as stored
        indices (:func:`~autoseg.preprocessing.previous_stage.previous_stage_indices`)."""
        logits, previous_props = self._network_logits(previous, case)
        labels = logits_to_labels(logits, previous_props, previous.plan)
        del logits
        log.debug("%s: %s predicted for %s", case.case_id, previous.config.name, model.config.name)
        return previous_stage_indices(labels, props, model.plan)

    def _postprocess(self, labels: np.ndarray) -> np.ndarray:
        if self.postprocessing is None:
            return labels
        return apply_postprocessing(labels, self.postprocessing)
