"""The work folder: where plans, preprocessed data and models of each dataset live.

``<work>/<dataset name>/`` holds ``fingerprint.json``, ``plans.json``, a ``source.json`` that
remembers the dataset folder, and later the preprocessed data and trained models. The work folder
comes from ``--work-dir``, else ``AUTOSEG_WORK``, else ``./autoseg_work`` (resolved by the CLI,
never at import time).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg._atomic import write_atomic
from autoseg.errors import DatasetError


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON to a temporary file beside ``path``, then rename: never a half-written file."""
    text = json.dumps(obj, indent=2) + "\n"
    write_atomic(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


@dataclass(frozen=True)
class Workspace:
    """The work folder root; every path autoseg writes is derived from it."""

    root: Path

    def dataset_dir(self, name: str) -> Path:
        """``<work>/<name>/``."""
        return self.root / name

    def fingerprint_path(self, name: str) -> Path:
        """``<work>/<name>/fingerprint.json``."""
        return self.dataset_dir(name) / "fingerprint.json"

    def plans_path(self, name: str) -> Path:
        """``<work>/<name>/plans.json``."""
        return self.dataset_dir(name) / "plans.json"

    def remember_source(self, name: str, source: Path) -> None:
        """Record the dataset folder so that later commands can take the name alone."""
        write_json_atomic(
            self.dataset_dir(name) / "source.json", {"dataset_folder": str(Path(source).resolve())}
        )

    def resolve(self, dataset: str) -> tuple[str, Path]:
        """Turn a DATASET argument (a folder path, or a name planned before) into (name, folder).

        Raises:
            DatasetError: neither a dataset folder nor a name known in this work folder.
        """
        p = Path(dataset)
        if (p / "dataset.json").is_file():
            return p.resolve().name, p
        src = self.dataset_dir(dataset) / "source.json"
        if src.is_file():
            folder = Path(json.loads(src.read_text())["dataset_folder"])
            return dataset, folder
        if p.is_dir():
            msg = f"{p}: no dataset.json in this folder; point at a dataset folder"
        else:
            msg = (
                f"{dataset}: neither a dataset folder nor a dataset planned in {self.root}; "
                "run `autoseg plan PATH/TO/DATASET` first or pass --work-dir"
            )
        raise DatasetError(msg)
