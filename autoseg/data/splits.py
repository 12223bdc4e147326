"""Cross-validation splits: made once, written as JSON, reused, and editable by hand.

``splits.json`` is a list with one ``{"train": [...], "val": [...]}`` per fold. Without groups the
folds are the same as nnU-Net v2's ``splits_final.json`` (sklearn ``KFold(5, shuffle=True,
random_state=12345)`` over the sorted case ids), so results compare fold for fold. With groups
(case -> patient) whole patients are assigned to folds, so that no patient's scans are in both the
training and the validation set of a fold, which would inflate validation scores.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

import numpy as np

from autoseg._atomic import write_json_atomic
from autoseg.errors import DatasetError

log = logging.getLogger(__name__)

Splits = list[dict[str, list[str]]]

#: What a dataset too small for its folds can do instead.
_FEWER_FOLDS = (
    "train fold 'all' (every case, no validation), choose fewer folds with --n-folds (2 to {n}), "
    "or give your own folds as splits.json"
)
#: Folds the dataset folder may bring (nnU-Net's name, and ours), used when none are stored yet.
DATASET_SPLITS = ("splits.json", "splits_final.json")


def make_splits(
    case_ids: Sequence[str], *, n_folds: int = 5, seed: int = 12345, groups: Mapping[str, str] | None = None
) -> Splits:
    """Split cases into ``n_folds`` folds; every case is validated in exactly one.

    Without ``groups`` the sorted ids are permuted by ``numpy.random.RandomState(seed)`` and cut
    into folds whose sizes differ by at most one, the first ones larger: this reproduces
    sklearn's ``KFold(n_folds, shuffle=True, random_state=seed)`` exactly. (``RandomState`` is a
    local generator object, not the global state; it is used for that equality.)

    With ``groups``, patients are shuffled by the same generator, then, largest first (stable), each
    goes to the fold with the fewest cases so far (lowest index on ties), which balances fold
    sizes while keeping each patient in one fold.

    Args:
        case_ids: the case ids (any order; duplicates are an error).
        n_folds: number of folds, at least 2.
        seed: fixes the assignment.
        groups: case id -> patient id; must cover every case.

    Returns:
        One ``{"train": [...], "val": [...]}`` per fold, each list sorted.

    Raises:
        DatasetError: fewer cases (or patients) than folds, duplicate ids, or cases without a group.

    Examples:
        >>> splits = make_splits(["a", "b", "c", "d"], n_folds=2)
        >>> sorted(c for s in splits for c in s["val"])
        ['a', 'b', 'c', 'd']
    """
    ids = sorted(case_ids)
    if len(set(ids)) != len(ids):
        dupes = sorted({c for c in ids if ids.count(c) > 1})
        msg = f"duplicate case ids: {', '.join(dupes)}"
        raise DatasetError(msg)
    if n_folds < 2:
        msg = f"n_folds must be at least 2, got {n_folds}; use fold 'all' to train on everything"
        raise DatasetError(msg)
    rs = np.random.RandomState(seed)
    if groups is None:
        if len(ids) < n_folds:
            msg = f"{len(ids)} case(s) cannot make {n_folds} folds; {_FEWER_FOLDS.format(n=len(ids))}"
            raise DatasetError(msg)
        order = np.arange(len(ids))
        rs.shuffle(order)
        val_sets = [[ids[i] for i in part] for part in np.array_split(order, n_folds)]
    else:
        val_sets = _group_folds(ids, groups, n_folds, rs)
    return [{"train": sorted(set(ids) - set(val)), "val": sorted(val)} for val in val_sets]


def _group_folds(
    ids: list[str], groups: Mapping[str, str], n_folds: int, rs: np.random.RandomState
) -> list[list[str]]:
    missing = [c for c in ids if c not in groups]
    if missing:
        raise DatasetError([f"case {c} has no patient group" for c in missing])
    members: dict[str, list[str]] = {}
    for c in ids:
        members.setdefault(str(groups[c]), []).append(c)
    if len(members) < n_folds:
        msg = (
            f"{len(members)} patient(s) cannot make {n_folds} folds without a patient "
            f"in both training and validation; {_FEWER_FOLDS.format(n=len(members))}"
        )
        raise DatasetError(msg)
    patients = sorted(members)
    rs.shuffle(patients)
    patients.sort(key=lambda p: len(members[p]), reverse=True)  # stable: shuffled order breaks ties
    folds: list[list[str]] = [[] for _ in range(n_folds)]
    for p in patients:
        smallest = min(range(n_folds), key=lambda f: len(folds[f]))
        folds[smallest].extend(members[p])
    return folds


def groups_from_regex(case_ids: Sequence[str], pattern: str | re.Pattern[str]) -> dict[str, str]:
    r"""Patient of each case from its id: the first capture group of ``pattern``, or the whole match.

    ``pattern`` is searched (not anchored), e.g. ``r"^(pat\d+)_"`` for ``pat007_scan2``. Every
    case must match (with its first group taking part), else the patients would be guessed.

    Raises:
        ValueError: ``pattern`` is not a regular expression, or case ids do not match it; the
            message names the pattern and the cases (the first few of them).

    Examples:
        >>> groups_from_regex(["p1_a", "p1_b", "p2_a"], r"^(p\d+)_")
        {'p1_a': 'p1', 'p1_b': 'p1', 'p2_a': 'p2'}
    """
    try:
        regex = re.compile(pattern)
    except re.error as e:
        msg = f"the patient pattern {pattern!r} is not a regular expression: {e}"
        raise ValueError(msg) from e
    out, unmatched = {}, []
    for cid in case_ids:
        m = regex.search(cid)
        patient = None if m is None else m.group(1) if regex.groups else m.group(0)
        if patient is None:
            unmatched.append(cid)
        else:
            out[cid] = patient
    if len(unmatched) == 1:
        msg = f"case id {unmatched[0]!r} does not match the patient pattern {regex.pattern!r}"
        raise ValueError(msg)
    if unmatched:
        shown = ", ".join(repr(c) for c in unmatched[:3]) + (", ..." if len(unmatched) > 3 else "")
        msg = (
            f"{len(unmatched)} of {len(case_ids)} case ids do not match the patient pattern "
            f"{regex.pattern!r} ({shown})"
        )
        raise ValueError(msg)
    return out


def load_or_create_splits(
    path: Path,
    case_ids: Sequence[str],
    *,
    groups: Mapping[str, str] | None = None,
    n_folds: int = 5,
    seed: int = 12345,
    dataset_folder: Path | None = None,
    fold: int | Literal["all"] | None = None,
) -> Splits:
    """Read the splits at ``path``, or make them and write them there.

    A stored file wins: users may edit it by hand. Without one, folds that the dataset folder
    brings (``splits.json`` or nnU-Net's ``splits_final.json``) are copied; else
    :func:`make_splits` makes ``n_folds``. A stored file that does not cover exactly
    ``case_ids`` is used anyway, with a warning.

    Args:
        path: the JSON file (``<work>/<dataset>/splits.json``).
        case_ids: the dataset's cases.
        groups: case id -> patient; checked against the stored folds too.
        n_folds: folds to make when creating.
        seed: seed when creating.
        dataset_folder: where a user's own splits may lie.
        fold: the fold about to be trained: new splits are written only once it exists in them.

    Returns:
        The splits.

    Raises:
        DatasetError: the stored or given file is not valid splits JSON, a fold has a patient in
            both its training and validation sets (with ``groups``), the dataset is too small
            for ``n_folds`` (the message says what to do instead), or ``fold`` is not in the
            splits.
    """
    path = Path(path)
    given = [dataset_folder / n for n in DATASET_SPLITS] if dataset_folder is not None else []
    source = path if path.is_file() else next((p for p in given if p.is_file()), None)
    if source is None:
        try:
            splits = make_splits(case_ids, n_folds=n_folds, seed=seed, groups=groups)
        except DatasetError as e:
            msg = f'{e} (as {path}: a list of {{"train": [ids], "val": [ids]}})'
            raise DatasetError(msg) from e
    else:
        splits = _read_splits(source)
        _check_stored(source, splits, case_ids, groups)
    if fold is not None:
        fold_cases(splits, fold)  # raises, before anything is written, for a fold not in them
    if source != path:
        write_json_atomic(path, splits)
        log.info("wrote %d-fold splits to %s%s", len(splits), path, f" (from {source})" if source else "")
    return splits


def _check_stored(
    path: Path, splits: Splits, case_ids: Sequence[str], groups: Mapping[str, str] | None
) -> None:
    stored = {c for fold in splits for key in ("train", "val") for c in fold[key]}
    if stored != set(case_ids):
        log.warning(
            "%s does not cover exactly the dataset's cases (%d only in the file, %d only in "
            "the dataset); using it as it is",
            path,
            len(stored - set(case_ids)),
            len(set(case_ids) - stored),
        )
    if groups is not None:
        leaks = [
            f"{path}: fold {i} has patient {p} in both train and val"
            for i, fold in enumerate(splits)
            for p in _leaked_patients(fold, groups)
        ]
        if leaks:
            raise DatasetError(leaks)


def fold_cases(splits: Splits, fold: int | Literal["all"]) -> tuple[list[str], list[str]]:
    """Training and validation ids of ``fold``; ``"all"`` trains on every case, validates on none.

    Raises:
        DatasetError: no such fold; the message lists the valid ones.

    Examples:
        >>> fold_cases([{"train": ["b"], "val": ["a"]}, {"train": ["a"], "val": ["b"]}], "all")
        (['a', 'b'], [])
    """
    if fold == "all":
        every = {c for f in splits for key in ("train", "val") for c in f[key]}
        return sorted(every), []
    if isinstance(fold, bool) or not isinstance(fold, int | np.integer) or not 0 <= fold < len(splits):
        valid = f"0-{len(splits) - 1} or 'all'" if splits else "'all' only (the splits are empty)"
        msg = f"fold {fold!r} is not in the splits; valid folds: {valid}"
        raise DatasetError(msg)
    return sorted(splits[fold]["train"]), sorted(splits[fold]["val"])


def _leaked_patients(fold: Mapping[str, list[str]], groups: Mapping[str, str]) -> list[str]:
    train = {groups.get(c, c) for c in fold["train"]}
    return sorted({groups.get(c, c) for c in fold["val"]} & train)


def _read_splits(path: Path) -> Splits:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        msg = f"{path}: cannot read splits ({e}); fix or delete the file"
        raise DatasetError(msg) from e
    ok = isinstance(data, list) and all(
        isinstance(f, dict)
        and {"train", "val"} <= set(f)
        and all(isinstance(f[k], list) and all(isinstance(c, str) for c in f[k]) for k in ("train", "val"))
        for f in data
    )
    if not ok:
        msg = f'{path}: expected a list of {{"train": [ids], "val": [ids]}}; fix or delete the file'
        raise DatasetError(msg)
    return [{"train": list(f["train"]), "val": list(f["val"])} for f in data]
