"""Bad label declarations in a dataset.json (regions, ignore) stop ``verify`` and ``plan`` with one
line per problem naming the file, exit 2, nothing written; good ones are read as declared."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from autoseg.cli import main
from autoseg.io.dataset import load_dataset
from autoseg.io.samples import make_scenario_dataset

HIPPO = {"background": 0, "hippocampus": [1, 2], "anterior": 1}
PLAIN = {"background": 0, "anterior": 1, "posterior": 2}
BAD: dict[str, tuple[dict[str, object], list[object] | None, str]] = {
    "regions-without-order": (HIPPO, None, "regions_class_order' is missing"),
    "order-too-short": (HIPPO, [2], "has 1 values for 2 regions"),
    "order-paints-background": ({"background": 0, "hippocampus": [1, 2]}, [0], "must be positive"),
    "ignore-not-highest": ({**PLAIN, "posterior": 3, "ignore": 2}, None, "must be the highest"),
    "ignore-as-list": ({"background": 0, "a": [1, 2], "ignore": [3]}, [1], "not a list"),
    "region-holds-background": ({"background": 0, "a": [0, 1]}, [1], "holds 0, the background"),
    "order-without-regions": (PLAIN, [1, 2], "no label maps to a list"),
    "region-value-text": ({"background": 0, "a": [1, "2"]}, [1], "non-negative integers"),
}


@pytest.mark.parametrize("variant", list(BAD))
@pytest.mark.parametrize("command", ["verify", "plan"])
def test_bad_declaration_is_one_line_naming_dataset_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], variant: str, command: str
) -> None:
    ds = make_scenario_dataset(tmp_path / "hippo", "standard", 2)
    labels, order, said = BAD[variant]
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = labels
    if order is not None:
        meta["regions_class_order"] = order
    (ds / "dataset.json").write_text(json.dumps(meta))
    work = tmp_path / "work"
    argv = [command, str(ds)] + (["--work-dir", str(work)] if command == "plan" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if said in line]
    assert len(lines) == 1, err
    assert str(ds / "dataset.json") in lines[0]
    assert not work.exists()


def test_label_values_outside_every_region_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A label map value that no region (and not the ignore label) declares, e.g. posterior 2
    when only anterior is a region: the case is named, as for plain labels."""
    ds = make_scenario_dataset(tmp_path / "hippo", "standard", 2)
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "anterior": [1]}
    meta["regions_class_order"] = [1]
    (ds / "dataset.json").write_text(json.dumps(meta))
    assert main(["verify", str(ds)]) == 2
    err = capsys.readouterr().err
    assert "label value(s) [2] not declared" in err


@pytest.mark.parametrize("scenario", ["ignore", "regions", "regions_ignore"])
def test_scenarios_are_read_as_declared(tmp_path: Path, scenario: str) -> None:
    ds = load_dataset(make_scenario_dataset(tmp_path / scenario, scenario, 2))
    scheme = ds.label_scheme
    declared = json.loads((tmp_path / scenario / "dataset.json").read_text())
    assert scheme.regions == ("regions_class_order" in declared)
    assert (scheme.ignore is not None) == ("ignore" in declared["labels"])
    assert ds.label_values == scheme.stored_values
