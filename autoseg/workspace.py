"""The work folder: where plans, preprocessed data and models of each dataset live.

``<work>/<dataset name>/`` holds ``fingerprint.json``, ``plans.json``, a ``source.json`` that
remembers the dataset folder, and later the preprocessed data and trained models. The work folder
comes from ``--work-dir``, else ``AUTOSEG_WORK``, else ``./autoseg_work`` (resolved by the CLI,
never at import time).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoseg._atomic import write_json_atomic
from autoseg._contract import load, parse, to_json
from autoseg._fs import check_output_dir
from autoseg.errors import DatasetError

SOURCE_VERSION = 1
_SOURCE_FIX = "run `autoseg plan PATH/TO/DATASET` again with this work folder"
_WRITABLE_FIX = "choose another work folder with --work-dir (or $AUTOSEG_WORK), or fix this one"


@dataclass(frozen=True)
class SourceRecord:
    """``<work>/<dataset>/source.json``: the dataset folder a planned dataset was read from.

    Later commands take the dataset's name alone, and find-best reads the reference labels
    from this folder. Version 0 (no ``schema_version``, only ``dataset_folder``: what autoseg
    wrote before the file was versioned) still loads, so existing work folders keep working.

    Attributes:
        dataset_folder: absolute path of the dataset folder.
        schema_version: the file's version.
    """

    dataset_folder: str
    schema_version: int = SOURCE_VERSION

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return to_json(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> SourceRecord:
        """Strict inverse of :meth:`to_dict`; a version-0 record is migrated.

        Raises:
            DatasetError: wrong or missing version, missing or unknown keys, or wrong types.
        """
        if isinstance(d, dict) and set(d) == {"dataset_folder"}:
            d = {**d, "schema_version": SOURCE_VERSION}
        return parse(
            cls, d, name="source record", version=SOURCE_VERSION, error=DatasetError, fix=_SOURCE_FIX
        )

    @classmethod
    def load(cls, path: Path) -> SourceRecord:
        """Read and check ``source.json``; every error names the file."""
        return load(
            path,
            cls.from_dict,
            error=DatasetError,
            fix=_SOURCE_FIX,
            missing=f"missing, so the dataset folder is unknown; {_SOURCE_FIX}",
        )


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

    def source_path(self, name: str) -> Path:
        """``<work>/<name>/source.json``."""
        return self.dataset_dir(name) / "source.json"

    def check_writable(self, name: str) -> None:
        """Refuse at once a work folder that ``<work>/<name>/`` cannot be created or written in
        (read-only, no permission, a file on the way); creates nothing.

        Commands that write into the work folder call this before their work starts, so that a
        bad ``--work-dir`` costs no fingerprinting or training, and leaves nothing half-written.

        Raises:
            FileSystemError: naming the folder and the cause.
        """
        check_output_dir(self.dataset_dir(name), fix=_WRITABLE_FIX)

    def remember_source(self, name: str, source: Path) -> None:
        """Record the dataset folder so that later commands can take the name alone."""
        record = SourceRecord(dataset_folder=str(Path(source).resolve()))
        write_json_atomic(self.source_path(name), record.to_dict())

    def resolve(self, dataset: str) -> tuple[str, Path]:
        """Turn a DATASET argument (a folder path, or a name planned before) into (name, folder).

        Raises:
            DatasetError: neither a dataset folder nor a name known in this work folder, or its
                ``source.json`` is invalid.
        """
        p = Path(dataset)
        if (p / "dataset.json").is_file():
            return p.resolve().name, p
        src = self.source_path(dataset)
        if src.is_file():
            return dataset, Path(SourceRecord.load(src).dataset_folder)
        if p.is_dir():
            msg = f"{p}: no dataset.json in this folder; point at a dataset folder"
        else:
            msg = (
                f"{dataset}: neither a dataset folder nor a dataset planned in {self.root}; "
                "run `autoseg plan PATH/TO/DATASET` first or pass --work-dir"
            )
        raise DatasetError(msg)
