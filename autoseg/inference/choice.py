"""``<work>/<dataset>/inference.json``: find-best's choice, which ``predict`` uses without ``-c``.

A typed, versioned contract: find-best writes it (:func:`autoseg.evaluation.find_best.find_best`),
:func:`autoseg.inference.model.default_models` reads it strictly, so a stale or edited file is an
error naming it instead of a prediction with the wrong models or post-processing.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg._atomic import write_json_atomic
from autoseg._contract import load, parse, to_json
from autoseg.errors import ModelError
from autoseg.inference.postprocess import Postprocessing

INFERENCE_VERSION = 1
_FIX = "re-run `autoseg find-best`"


@dataclass(frozen=True)
class InferenceChoice:
    """What to predict with.

    Attributes:
        best: the winning candidate, a configuration or a pair ``<a>__<b>``.
        configurations: the configurations it ensembles (one or two).
        folds: the folds of each of them that were cross-validated.
        postprocessing: decided on the winner's cross-validation predictions.
        cv_dice: every candidate's foreground-mean Dice (None: no foreground anywhere).
        report: how it was decided, for people (candidates, cases, skipped ones, the
            post-processing tests); not read by autoseg.
        schema_version: the file's version.
    """

    best: str
    configurations: tuple[str, ...]
    folds: dict[str, tuple[str, ...]]
    postprocessing: Postprocessing
    cv_dice: dict[str, float | None]
    report: dict[str, Any]
    schema_version: int = INFERENCE_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (the content of ``inference.json``, its version first)."""
        d = to_json(self)
        return {
            "schema_version": d.pop("schema_version"),
            **d,
            "postprocessing": self.postprocessing.to_dict(),
        }

    def save(self, path: Path) -> None:
        """Write ``inference.json`` atomically."""
        write_json_atomic(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> InferenceChoice:
        """Strict inverse of :meth:`to_dict`.

        Raises:
            ModelError: wrong or missing version, missing or unknown keys, wrongly typed
                values, or no configuration, or one without its folds.
        """
        choice = parse(cls, d, name="inference choice", version=INFERENCE_VERSION, error=ModelError, fix=_FIX)
        if not choice.configurations or set(choice.folds) != set(choice.configurations):
            msg = (
                f"inference choice: configurations {list(choice.configurations)} and the "
                f"configurations with folds {sorted(choice.folds)} differ; {_FIX}"
            )
            raise ModelError(msg)
        return choice

    @classmethod
    def load(cls, path: Path) -> InferenceChoice:
        """Read and check ``inference.json``; every error names the file."""
        return load(path, cls.from_dict, error=ModelError, fix=_FIX, missing=f"no choice made here; {_FIX}")
