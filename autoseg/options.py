"""Command-line options described once, on the settings dataclasses they fill.

An option is a dataclass field made by :func:`option`: the field's default is the option's
default, a ``Literal`` type gives its choices, ``bool`` makes it a switch, ``tuple[X, ...]`` makes
it take several values, and the :class:`Option` in the field's metadata carries the help text, the
numeric range and the flag names. :mod:`autoseg.cli` builds its parsers from these descriptions
(:func:`describe`), so a default, a choice or a range is written here and nowhere else: the
parser, ``--help`` and the code that runs cannot disagree. Nothing here imports more than the
standard library, so ``autoseg --help`` stays fast.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, Union

#: Mixed-precision modes ("auto": fp16 autocast on CUDA, bf16 on CPUs with native bf16, else fp32).
Precision = Literal["auto", "fp32", "bf16", "fp16"]
#: Where networks run.
Device = Literal["cuda", "cpu"]

_NO_DEFAULT = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    """How a settings field appears on the command line.

    Attributes:
        help: what the option does (the default and range are appended by :meth:`Described.help`).
        flags: flag names; default ``--field-name`` (``--no-field-name`` for a switch that is on by
            default).
        metavar: the value's name in help and messages; default the field name in capitals.
        minimum: smallest allowed number (``None``: no lower bound).
        maximum: largest allowed number (``None``: no upper bound).
        above_minimum: the minimum itself is excluded (e.g. a learning rate must be > 0).
        what: the kind of value, as messages name it (default "an integer" / "a finite number").
        note: appended to an out-of-range message, e.g. what a typical value means.
        run_time_default: the default shown in help when the field's default (``None``) means
            "decided when the command runs", e.g. "cuda when available".
        parse: a converter for values that are not numbers or choices (e.g. a regular expression
            check); it raises ``ValueError`` with a message for a bad value.
        deprecated: for an alias kept so old scripts work: what to do instead ("use --x").
    """

    help: str
    flags: tuple[str, ...] = ()
    metavar: str | None = None
    minimum: float | None = None
    maximum: float | None = None
    above_minimum: bool = False
    what: str | None = None
    note: str | None = None
    run_time_default: str | None = None
    parse: Callable[[str], Any] | None = None
    deprecated: str | None = None


def option(default: Any = _NO_DEFAULT, help: str = "", **kw: Any) -> Any:  # noqa: A002
    """A dataclass field that is also a command-line option (see :class:`Option` for ``kw``).

    Examples:
        >>> @dataclass(frozen=True)
        ... class Opts:
        ...     epochs: int = option(10, "passes over the data", minimum=1)
        >>> describe(Opts)[0].flags, describe(Opts)[0].range_text()
        (('--epochs',), 'an integer >= 1')
    """
    return dataclasses.field(default=default, metadata={"option": Option(help=help, **kw)})


@dataclass(frozen=True)
class Described:
    """One option of a settings dataclass, resolved from its field: what the parser needs.

    Attributes:
        name: the field name (the parser's ``dest``).
        option: the field's :class:`Option`.
        kind: ``int``, ``float``, ``str``, ``Path`` or ``bool`` (a switch).
        choices: the allowed values of a ``Literal`` field, else ``None``.
        many: the field is a tuple: the option takes one or more values.
        default: the field's default.
    """

    name: str
    option: Option
    kind: type
    choices: tuple[str, ...] | None
    many: bool
    default: Any

    @property
    def flags(self) -> tuple[str, ...]:
        """The flag names, ``--field-name`` unless the option names them."""
        if self.option.flags:
            return self.option.flags
        stem = self.name.replace("_", "-")
        return (f"--no-{stem}",) if self.kind is bool and self.default is True else (f"--{stem}",)

    @property
    def metavar(self) -> str:
        """The value's name in help and messages."""
        return self.option.metavar or self.name.upper()

    @property
    def is_number(self) -> bool:
        """Whether values are range-checked numbers."""
        return self.kind in (int, float)

    def range_text(self) -> str:
        """The allowed values in words, e.g. ``an integer >= 1`` or ``a finite number in (0, 1]``."""
        o = self.option
        what = o.what or ("an integer" if self.kind is int else "a finite number")
        lo, hi = (_fmt(o.minimum), _fmt(o.maximum))
        if o.minimum is not None and o.maximum is not None:
            return f"{what} in {'(' if o.above_minimum else '['}{lo}, {hi}]"
        if o.minimum is not None:
            return f"{what} {'>' if o.above_minimum else '>='} {lo}"
        if o.maximum is not None:
            return f"{what} <= {hi}"
        return what

    def default_text(self) -> str | None:
        """The default as help shows it, or ``None`` for a switch or an option without one."""
        if self.option.run_time_default is not None:
            return self.option.run_time_default
        if self.kind is bool or self.default is None or self.default is _NO_DEFAULT:
            return None
        if self.many:
            return " ".join(str(v) for v in self.default)
        return _fmt(self.default) if self.is_number else str(self.default)

    def help(self) -> str:
        """Help text: what it does, the allowed range, the default (and the replacement if deprecated)."""
        parts = [self.option.help]
        extra = []
        if self.is_number:
            extra.append(self.range_text())
        default = self.default_text()
        if default is not None:
            extra.append(f"default: {default}")
        if extra:
            parts.append(f"({'; '.join(extra)})")
        if self.option.deprecated:
            parts.append(f"[deprecated: {self.option.deprecated}]")
        return " ".join(p for p in parts if p)

    def convert(self, text: str) -> Any:
        """One command-line value, converted and checked.

        Raises:
            ValueError: not a number, out of range, nan or infinite, or rejected by ``parse``;
                the message names the value and the allowed range.
        """
        if self.option.parse is not None:
            return self.option.parse(text)
        if not self.is_number:
            return self.kind(text)
        try:
            value = self.kind(text)
        except ValueError:
            value = None
        if value is None or not _in_range(value, self.option):
            msg = f"{self.metavar} must be {self.range_text()}, got {text!r}"
            if self.option.note:
                msg += f" ({self.option.note})"
            raise ValueError(msg)
        return value


def _in_range(value: float, o: Option) -> bool:
    if not math.isfinite(value):
        return False
    if o.minimum is not None and (value <= o.minimum if o.above_minimum else value < o.minimum):
        return False
    return o.maximum is None or value <= o.maximum


def _fmt(x: Any) -> str:
    return f"{x:g}" if isinstance(x, float) else str(x)


def describe(cls: type) -> list[Described]:
    """The options of a settings dataclass, in field order (fields without an :class:`Option` are
    not options: e.g. ``TrainConfig.momentum`` is fixed, ``configuration`` is positional).

    Raises:
        TypeError: a field's type is not one an option can have (a bug in the dataclass).
    """
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        o = f.metadata.get("option")
        if o is None:
            continue
        kind, choices, many = _kind(hints[f.name], f.name)
        out.append(Described(f.name, o, kind, choices, many, f.default))
    return out


def _kind(hint: Any, name: str) -> tuple[type, tuple[str, ...] | None, bool]:
    """``(kind, choices, many)`` of a field type: ``X | None`` is ``X``, ``tuple[X, ...]`` many X."""
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        if len(args) != 1:
            msg = f"option {name}: unsupported type {hint}"
            raise TypeError(msg)
        hint = args[0]
    many = typing.get_origin(hint) is tuple
    if many:
        hint = typing.get_args(hint)[0]
    if typing.get_origin(hint) is Literal:
        return str, tuple(str(a) for a in typing.get_args(hint)), many
    if hint in (int, float, str, Path, bool):
        return hint, None, many
    msg = f"option {name}: unsupported type {hint}"
    raise TypeError(msg)


def from_values(cls: type, values: dict[str, Any], **fixed: Any) -> Any:
    """An instance of ``cls`` from parsed values: ``None`` (not given) keeps the field's default;
    lists become tuples; ``fixed`` (e.g. positional arguments) is passed as is."""
    names = {f.name for f in dataclasses.fields(cls)}
    kw = {
        k: tuple(v) if isinstance(v, list) else v for k, v in values.items() if k in names and v is not None
    }
    kw.update(fixed)
    return cls(**kw)


def regex(text: str) -> str:
    r"""Checks that ``text`` compiles as a regular expression (for :attr:`Option.parse`).

    Raises:
        ValueError: it does not; the message names the pattern and the error.

    Examples:
        >>> regex(r"^(pat\d+)_")
        '^(pat\\d+)_'
    """
    try:
        re.compile(text)
    except re.error as e:
        msg = f"invalid regular expression {text!r}: {e}"
        raise ValueError(msg) from e
    return text


def parse_fold(text: str) -> int | Literal["all"]:
    """A fold argument: a cross-validation fold (0-4 with the default five; checked against the
    splits when training starts) or ``all`` (every case, no validation).

    Raises:
        ValueError: anything else.
    """
    if text == "all":
        return "all"
    if text.isdigit():
        return int(text)
    msg = f"FOLD must be a fold number (0-4 with 5 folds) or 'all', got {text!r}"
    raise ValueError(msg)


_DURATION = re.compile(r"(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?")


def duration_seconds(text: str) -> int:
    """Seconds of a duration written as whole hours, minutes and seconds, in that order, each at
    most once and with its unit: ``2h``, ``30m``, ``90s``, ``1h30m``, ``1h0m30s``.

    Strict on purpose: a bare number (seconds? minutes?), a fraction, a capital unit or a space
    would each be a guess about what was meant, and a training budget guessed wrong wastes hours.

    Raises:
        ValueError: anything else, or a duration of zero; the message shows the accepted forms.

    Examples:
        >>> duration_seconds("2h"), duration_seconds("1h30m"), duration_seconds("90s")
        (7200, 5400, 90)
    """
    m = _DURATION.fullmatch(text)
    if not text or m is None:
        msg = (
            f"DURATION must be whole hours, minutes and/or seconds in that order, like 2h, 30m, 90s "
            f"or 1h30m, got {text!r}"
        )
        raise ValueError(msg)
    h, mi, s = (int(g) if g else 0 for g in m.groups())
    seconds = 3600 * h + 60 * mi + s
    if seconds == 0:
        msg = f"DURATION must be longer than 0 s, got {text!r}"
        raise ValueError(msg)
    return seconds


def parse_duration(text: str) -> str:
    """A ``--time`` value, checked (see :func:`duration_seconds`) and kept as written, so that the
    saved settings and a fold's child command line show what the user typed.

    Raises:
        ValueError: not a duration.
    """
    duration_seconds(text)
    return text
