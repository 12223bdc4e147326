"""Errors autoseg raises for problems a user can fix.

The tree::

    AutosegError                  anything the user can fix; the CLI prints it and exits 2
     ├── DatasetError             dataset folder, dataset.json or case files are wrong
     ├── ImageReadError           one image file or DICOM folder cannot be read
     ├── FileSystemError          a path cannot be read or written: permission denied, read-only
     │                            file system, a file where a folder belongs (or the reverse),
     │                            a full disk, a symbolic link loop or dangling link
     ├── PlanError                plans.json or fingerprint.json missing, invalid, or lacks a configuration
     ├── PreprocessedDataError    a preprocessed case's files are invalid or of another version
     ├── TrainingOutOfMemoryError a training step does not fit in GPU memory even one sample at a time
     ├── ModelError               a trained model's files other than checkpoints are missing, unreadable
     │    │                       or inconsistent (its plan, validation outputs, post-processing,
     │    │                       find-best's choice, exported networks)
     │    └── CheckpointError     a checkpoint file is missing, corrupt or from another run
     └── MissingDependencyError   an optional extra is not installed (also an ImportError)

The CLI also prints an ``OSError`` that describes the user's machine rather than autoseg
(permission denied, read-only file system, disk full; see :mod:`autoseg._fs`) as one line.
Anything else that escapes is a bug and keeps its traceback.
"""

from __future__ import annotations


class AutosegError(Exception):
    """Base class of every error caused by input the user can fix."""


class DatasetError(AutosegError):
    """A dataset is malformed.

    Args:
        problems: one line per problem, each naming its file. The message joins them.
    """

    def __init__(self, problems: list[str] | str) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        if len(self.problems) == 1:
            msg = self.problems[0]
        else:
            msg = f"{len(self.problems)} problems found:\n  " + "\n  ".join(self.problems)
        super().__init__(msg)

    def __reduce__(self) -> tuple[type[DatasetError], tuple[list[str]]]:
        """Pickle with the problem list (errors travel back from worker processes)."""
        return (type(self), (self.problems,))


class ImageReadError(AutosegError):
    """An image file or DICOM series cannot be read."""


class FileSystemError(AutosegError):
    """A path cannot be read or written as needed; the message names the path, the cause
    (permission denied, read-only file system, not a folder, ...) and the fix."""


class PlanError(AutosegError):
    """A plan is missing, invalid, or lacks what is asked of it."""


class PreprocessedDataError(AutosegError):
    """A preprocessed case (``<work>/<dataset>/preprocessed/...``) is invalid or of another version."""


class ModelError(AutosegError):
    """A trained model's files (``<work>/<dataset>/models/...``) other than its checkpoints are
    missing, unreadable or do not fit together."""


class CheckpointError(ModelError):
    """A checkpoint file (``checkpoint_*.pt``) is missing, corrupt, or from another run."""


class MissingDependencyError(AutosegError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TrainingOutOfMemoryError(AutosegError):
    """A training step ran out of GPU memory even with micro-batches of one sample (see
    :mod:`autoseg.training.micro_batch`); the message names the patch and what to change."""
