"""The label table (:mod:`autoseg.labels`): plain labels, regions, ignore, as nnU-Net v2 declares
them, and what each stage gets from it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from autoseg.labels import LabelScheme, LabelSchemeError
from autoseg.planning.plan import Plan
from tests.golden import golden_without_default_presets

PLAIN = {"background": 0, "posterior": 2, "anterior": 1}
# nnU-Net's integration scenarios on hippocampus (Dataset997..999)
REGIONS = {"background": 0, "hippocampus": [1, 2], "anterior": 1}
IGNORE = {"background": 0, "anterior": 1, "ignore": 2}
REGIONS_IGNORE = {"background": 0, "hippocampus": [1, 2], "anterior": 1, "ignore": 3}
BRATS = {"background": 0, "whole tumour": [1, 2, 3], "tumour core": [2, 3], "enhancing": [3]}


def test_plain_labels_are_softmax_channels_in_value_order() -> None:
    s = LabelScheme.from_declared(PLAIN)
    assert (s.regions, s.activation, s.n_outputs) == (False, "softmax", 3)
    assert s.output_names == ("background", "anterior", "posterior")
    assert s.output_values == s.stored_values == (0, 1, 2)
    assert s.ignore_index is None
    probs = np.array([[0.1, 0.8], [0.2, 0.1], [0.7, 0.1]])  # 3 outputs, 2 voxels
    assert s.to_label_map(probs).tolist() == [2, 0]


def test_non_consecutive_values_keep_stored_index_equal_to_channel() -> None:
    s = LabelScheme.from_declared({"bg": 0, "b": 7, "a": 3})
    assert s.output_values == s.stored_values == (0, 3, 7)
    assert s.index_lut()[[0, 3, 7]].tolist() == [0, 1, 2]


def test_regions_paint_in_order_and_overlap() -> None:
    s = LabelScheme.from_declared(BRATS, [1, 2, 3])
    assert (s.regions, s.activation, s.n_outputs) == (True, "sigmoid", 3)
    assert s.output_names == ("whole tumour", "tumour core", "enhancing")
    # voxels: outside, edema only, core, enhancing
    probs = np.array([[0.1, 0.9, 0.9, 0.9], [0.0, 0.2, 0.8, 0.9], [0.0, 0.0, 0.3, 0.6]])
    assert s.to_label_map(probs).tolist() == [0, 1, 2, 3]
    masks = s.masks(np.array([0, 1, 2, 3]))
    assert [m.tolist() for m in masks] == [[0, 1, 1, 1], [0, 0, 1, 1], [0, 0, 0, 1]]


def test_an_integer_beside_lists_is_a_one_value_region() -> None:
    s = LabelScheme.from_declared(REGIONS, [2, 1])
    assert s.regions
    assert [e.values for e in s.entries] == [(1, 2), (1,)]
    assert s.stored_values == (0, 1, 2)
    assert s.declared() == {"background": 0, "hippocampus": [1, 2], "anterior": [1]}


def test_ignore_is_stored_last_never_an_output_and_masked() -> None:
    s = LabelScheme.from_declared(IGNORE)
    assert (s.n_outputs, s.output_values, s.stored_values, s.ignore_index) == (2, (0, 1), (0, 1, 2), 2)
    idx = torch.tensor([0, 1, 2, 1]).view(1, 1, 4)
    target, mask = s.training_target(idx)
    assert target.tolist() == [[[0, 1, 0, 1]]]
    assert mask is not None
    assert mask.tolist() == [[[1.0, 1.0, 0.0, 1.0]]]
    assert [c for c, _ in s.sampling_masks(np.array([0, 1, 2]))] == [1]
    assert s.sampling_masks(np.array([0, 1, 2]))[0][1].tolist() == [False, True, False]
    ref = np.array([0, 1, 2])
    annotated = s.annotated(ref)
    assert annotated is not None
    assert annotated.tolist() == [True, True, False]


def test_regions_with_ignore_give_per_region_targets() -> None:
    s = LabelScheme.from_declared(REGIONS_IGNORE, [2, 1])
    assert s.stored_values == (0, 1, 2, 3)
    idx = torch.tensor([0, 1, 2, 3]).view(1, 1, 4)
    target, mask = s.training_target(idx)
    assert target.shape == (1, 2, 4)
    assert target[0].tolist() == [[0, 1, 1, 0], [0, 1, 0, 0]]
    assert mask is not None
    assert mask.tolist() == [[[1, 1, 1, 0]]]
    assert [c for c, _ in s.sampling_masks(np.array([0, 1, 2, 3]))] == [1, 2]


def test_without_ignore_there_is_no_mask() -> None:
    s = LabelScheme.from_declared(BRATS, [1, 2, 3])
    target, mask = s.training_target(torch.zeros(2, 1, 3, dtype=torch.uint8))
    assert mask is None
    assert target.shape == (2, 3, 3)
    assert s.annotated(np.zeros(3)) is None


@pytest.mark.parametrize(
    ("labels", "order", "said"),
    [
        ({"a": 1, "b": 2}, None, "no label has value 0"),
        ({"background": 0, "a": 1.5}, None, "values must be non-negative integers"),
        ({"background": 0, "a": -1}, None, "values must be non-negative integers"),
        ({"background": 0, "a": True}, None, "values must be non-negative integers"),
        ({"background": 0, "a": 1, "b": 1}, None, "two label names share one value"),
        ({"background": 0, "a": 2, "ignore": 1}, None, "must be the highest value"),
        ({"background": 0, "a": [1], "Ignore": [2]}, [1], "must be one integer, not a list"),
        ({"background": 0, "a": [1, 2]}, None, "'regions_class_order' is missing"),
        ({"background": 0, "a": [1, 2], "b": 1}, [1], "has 1 values for 2 regions"),
        ({"background": 0, "a": [1, 2]}, [0], "must be positive"),
        ({"background": 0, "a": [1, 2]}, "1", "must be a list of integers"),
        ({"background": 0, "a": 1}, [1], "no label maps to a list"),
        ({"background": 0, "a": [0, 1]}, [1], "holds 0, the background"),
        ({"background": 0, "a": []}, [1], "maps to an empty list"),
        ({"background": 0, "a": [1, 1]}, [1], "lists a value twice"),
        ({"background": 0}, None, "no foreground label"),
    ],
)
def test_bad_declarations_are_named(labels: dict, order: object, said: str) -> None:
    with pytest.raises(LabelSchemeError, match=said):
        LabelScheme.from_declared(labels, order)  # type: ignore[arg-type]


def test_every_problem_is_listed_at_once() -> None:
    with pytest.raises(LabelSchemeError) as info:
        LabelScheme.from_declared({"a": -1, "b": [1, 2]})
    assert len(info.value.problems) >= 3  # bad value, no background, no regions_class_order


def test_a_plan_round_trips_regions_and_reads_version_2(tmp_path) -> None:
    # a version-2 plan predates the presets planned by default: it loads without them
    plan = golden_without_default_presets()
    d = plan.to_dict()
    d["labels"] = {"background": 0, "hippocampus": [1, 2], "anterior": 1}
    d["regions_class_order"] = [2, 1]
    regions = Plan.from_dict(d)
    assert regions.label_scheme.regions
    assert (regions.num_classes, regions.label_values) == (2, (2, 1))
    assert Plan.from_dict(regions.to_dict()) == regions
    # another label scheme is another model: the configuration identity changes
    assert regions.configuration_hash("3d_fullres") != plan.configuration_hash("3d_fullres")
    v2 = plan.to_dict()
    v2["schema_version"] = 2
    del v2["regions_class_order"]
    for config in v2["configurations"].values():  # what versions 3 and 4 added
        config.pop("gpu_memory_gb", None)
        for key in ("encoder", "blocks_per_stage", "decoder_convs"):
            config["network"].pop(key, None)
    assert Plan.from_dict(v2) == plan
    # a plan without regions hashes as before regions existed (checkpoints keep matching);
    # the literal is what the version-2 code computed for this golden plan
    assert plan.configuration_hash("3d_fullres") == "7a31231b83417eb6"


# --- inference and evaluation ------------------------------------------------------------


def test_classes_from_logits_paint_the_last_region_above_half() -> None:
    s = LabelScheme.from_declared(BRATS, [1, 2, 3])
    assert s.class_values == (0, 1, 2, 3)
    # voxels: nothing, whole only, whole+core, all three, enhancing alone (painted last)
    logits = torch.tensor([[-3.0, 2.0, 2.0, 2.0, -1.0], [-1.0, -2.0, 1.0, 3.0, -1.0], [-5, -5, -1, 0.5, 4]])
    classes = s.classes(logits)
    assert classes.tolist() == [0, 1, 2, 3, 3]
    # the same along another axis, and equal to painting the sigmoid probabilities
    assert s.classes(logits.T.contiguous(), dim=1).tolist() == classes.tolist()
    probs = s.activate_(logits.clone()).numpy()
    np.testing.assert_allclose(probs, torch.sigmoid(logits).numpy())
    assert s.to_label_map(probs).tolist() == np.asarray(s.class_values)[classes.numpy()].tolist()


def test_classes_of_plain_labels_are_the_argmax_and_softmax_is_in_place() -> None:
    s = LabelScheme.from_declared(PLAIN)
    logits = torch.randn(3, 4, 5, generator=torch.Generator().manual_seed(0))
    assert torch.equal(s.classes(logits), logits.argmax(0))
    assert s.class_values == s.output_values == (0, 1, 2)
    x = logits.clone()
    out = s.activate_(x)
    assert out.data_ptr() == x.data_ptr()
    torch.testing.assert_close(out, torch.softmax(logits, 0))
    assert s.outside_probabilities == (1.0, 0.0, 0.0)
    assert s.entry_keys == ("1", "2")


def test_ignore_is_never_a_class_value() -> None:
    for s in (
        LabelScheme.from_declared(IGNORE),
        LabelScheme.from_declared(REGIONS_IGNORE, [2, 1]),
    ):
        assert s.ignore is not None
        assert s.ignore not in s.class_values
    regions = LabelScheme.from_declared(REGIONS_IGNORE, [2, 1])
    assert regions.outside_probabilities == (0.0, 0.0)
    assert regions.entry_keys == ("hippocampus", "anterior")
    with pytest.raises(LabelSchemeError, match="paints the ignore label's value 3"):
        LabelScheme.from_declared(REGIONS_IGNORE, [3, 1])


def test_output_members_say_what_each_channel_stands_for() -> None:
    assert LabelScheme.from_declared(PLAIN).output_members == ((0,), (1,), (2,))
    assert LabelScheme.from_declared(BRATS, [1, 2, 3]).output_members == ((1, 2, 3), (2, 3), (3,))
