"""Dataset fingerprint: spacings, shapes, crop sizes and foreground intensity statistics."""

from __future__ import annotations

from autoseg.fingerprint.extract import extract_fingerprint
from autoseg.fingerprint.model import CaseFingerprint, Fingerprint, IntensityStats

__all__ = ["CaseFingerprint", "Fingerprint", "IntensityStats", "extract_fingerprint"]
