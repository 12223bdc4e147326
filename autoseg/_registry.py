"""Named registries: the extension points of training (optimiser, learning-rate schedule, loss,
augmentation), chosen by name from the training settings.

nnU-Net users change these by subclassing its 1,400-line trainer and placing the subclass inside
nnU-Net's package tree, where it is found by class name. Here a component is a function in a
registry, and ``autoseg train --loss NAME`` (or ``TrainConfig(loss=NAME)``) picks it:

* from Python, register before training::

      from autoseg.training.losses import LOSSES

      @LOSSES.register("dice_only")
      def dice_only(*, batch_dice: bool): ...

* for the command line, a package declares an entry point in the group ``autoseg.<kind>``
  (``autoseg.loss``, ``autoseg.optimizer``, ``autoseg.schedule``, ``autoseg.augmentation``), named
  like the component and pointing at the function; it is loaded the first time an unknown name is
  asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from importlib import metadata
from typing import Generic, TypeVar

from autoseg.errors import AutosegError

F = TypeVar("F", bound=Callable[..., object])

log = logging.getLogger(__name__)


class Registry(Generic[F]):
    """Functions by name, for one kind of component.

    Args:
        kind: what the functions make (``"loss"``, ...); names the entry-point group
            ``autoseg.<kind>`` and the messages.
        flag: the command-line option that chooses one (for messages).
    """

    def __init__(self, kind: str, *, flag: str) -> None:
        self.kind, self.flag = kind, flag
        self._items: dict[str, F] = {}
        self._plugins_loaded = False

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator adding a function under ``name``.

        Raises:
            ValueError: ``name`` is taken (a second registration would silently win).
        """

        def add(fn: F) -> F:
            if name in self._items:
                msg = f"a {self.kind} named {name!r} is registered already"
                raise ValueError(msg)
            self._items[name] = fn
            return fn

        return add

    def names(self) -> list[str]:
        """The registered names (entry points not yet loaded are not listed)."""
        return sorted(self._items)

    def get(self, name: str) -> F:
        """The function registered as ``name``, loading the entry points on a miss.

        Raises:
            AutosegError: no such name (the message lists the known ones).
        """
        if name not in self._items and not self._plugins_loaded:
            self._load_plugins()
        if name not in self._items:
            msg = (
                f"{self.flag} {name!r}: no {self.kind} of that name; choose one of {self.names()} "
                f"or register yours (autoseg._registry explains how)"
            )
            raise AutosegError(msg)
        return self._items[name]

    def _load_plugins(self) -> None:
        self._plugins_loaded = True
        for ep in metadata.entry_points(group=f"autoseg.{self.kind}"):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()
                log.info("%s %r loaded from %s", self.kind, ep.name, ep.value)
