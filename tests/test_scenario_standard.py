"""nnU-Net's "standard" integration scenario, autoseg's whole chain
(tests/integration_scenario.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration_scenario import run_scenario


@pytest.mark.slow
def test_standard_scenario_through_every_configuration(tmp_path: Path) -> None:
    run_scenario(tmp_path, "standard")


def test_every_scenario_has_its_file() -> None:
    from autoseg.io.samples import SCENARIOS

    files = {p.stem.removeprefix("test_scenario_") for p in Path(__file__).parent.glob("test_scenario_*.py")}
    assert files == set(SCENARIOS)
