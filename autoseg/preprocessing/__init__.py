"""Preprocessing driven only by the plan: transpose, crop, normalise, resample, store."""

from __future__ import annotations

from autoseg.preprocessing.case import PreprocessedCase, preprocess_arrays
from autoseg.preprocessing.run import preprocess_dataset
from autoseg.preprocessing.store import PreprocessedStore, store_key

__all__ = ["PreprocessedCase", "PreprocessedStore", "preprocess_arrays", "preprocess_dataset", "store_key"]
