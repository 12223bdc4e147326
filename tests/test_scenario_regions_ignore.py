"""nnU-Net's "regions_ignore" integration scenario, autoseg's whole chain
(tests/integration_scenario.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration_scenario import run_scenario


@pytest.mark.slow
def test_regions_ignore_scenario_through_every_configuration(tmp_path: Path) -> None:
    run_scenario(tmp_path, "regions_ignore")
