"""Strict typed loading of the files stages pass to each other (plan, fingerprint, properties, ...).

Every such file is a frozen dataclass in code and a versioned JSON object (or, in a checkpoint, a
plain dict) on disk. Loading goes through :func:`parse`: the version must be the one this autoseg
reads, every key of the dataclass must be there (defaulted ones too: a file missing one was
hand-edited or is stale), no other key may be, and every value must have its declared type. Each
failure is one line naming where in the file it is and how to fix it, raised as the
:class:`~autoseg.errors.AutosegError` subclass of the stage that owns the file, so the CLI prints
it and exits 2. One builder serves every contract, so they all reject the same things alike.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, TypeVar

from autoseg.errors import AutosegError

T = TypeVar("T")

#: The key holding a file's version, unless a contract names another.
VERSION_KEY = "schema_version"


class _Invalid(Exception):
    """A value does not fit its declared type; the message says where (``plan.configurations...``)."""


def to_json(value: Any) -> Any:
    """``value`` as JSON would give it back: dataclasses become dicts, tuples become lists."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_json(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [to_json(v) for v in value]
    return value


def digest(tp: Any, value: Any) -> str:
    """A short hash of ``value`` in its canonical form: as loaded back as ``tp`` from JSON.

    Going through the builder makes the hash independent of how the value was made (``1`` and
    ``1.0`` in a float field, tuples or lists), so a plan in memory and the same plan read from
    its file hash alike.
    """
    canonical = to_json(build(tp, to_json(value), "value"))
    blob = json.dumps(canonical, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def parse(
    tp: type[T],
    data: Any,
    *,
    name: str,
    version: int | None,
    error: type[AutosegError],
    fix: str,
    version_key: str = VERSION_KEY,
) -> T:
    """Check the version of ``data``, then build the dataclass ``tp`` from it strictly.

    Args:
        tp: the contract's dataclass. If it has a field named ``version_key``, the version is
            part of it; otherwise the key is checked and left out.
        data: the decoded JSON object.
        name: what to call the object in messages (``"plan"``, ``"case properties"``).
        version: the only version this autoseg reads; None for an object without a version of
            its own (a part of a versioned file, such as the post-processing in inference.json).
        error: the error class of the stage that owns the file.
        fix: what the user should do, appended to every message.
        version_key: the key holding the version.

    Raises:
        error: wrong or missing version, missing or unknown keys, or wrongly typed values.
    """
    if not isinstance(data, dict):
        msg = f"{name}: expected a JSON object, found {type(data).__name__}; {fix}"
        raise error(msg)
    found = data.get(version_key)
    if version is not None and (type(found) is not int or found != version):
        shown = repr(found) if version_key in data else "missing"
        msg = f"{name} {version_key} is {shown}, this autoseg reads {version}; {fix}"
        raise error(msg)
    if version is not None and version_key not in {f.name for f in dataclasses.fields(tp)}:  # type: ignore[arg-type]
        data = {k: v for k, v in data.items() if k != version_key}
    try:
        return build(tp, data, name)
    except _Invalid as e:
        msg = f"{e}; {fix}"
        raise error(msg) from None


def read_json(path: Path, *, error: type[AutosegError], fix: str, missing: str) -> Any:
    """The decoded content of a JSON file.

    Args:
        path: the file.
        error: raised on a missing or undecodable file.
        fix: what to do about an undecodable file.
        missing: the whole message tail for a missing file (what to run to make it).
    """
    path = Path(path)
    if not path.is_file():
        msg = f"{path}: {missing}"
        raise error(msg)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        msg = f"{path}: invalid JSON ({e}); {fix}"
        raise error(msg) from e


def load(
    path: Path, parse_dict: Callable[[Any], T], *, error: type[AutosegError], fix: str, missing: str
) -> T:
    """Read ``path`` and parse it with ``parse_dict``; every message starts with the path.

    Args:
        path: the JSON file.
        parse_dict: the contract's strict ``from_dict``.
        error: the error class ``parse_dict`` raises.
        fix: what to do about an undecodable file.
        missing: the message tail for a missing file.
    """
    data = read_json(path, error=error, fix=fix, missing=missing)
    try:
        return parse_dict(data)
    except error as e:
        msg = f"{path}: {e}"
        raise error(msg) from e


def build(tp: Any, value: Any, where: str) -> Any:
    """Turn JSON ``value`` into type ``tp`` (dataclass, tuple, dict, Literal, Union, scalar).

    Raises:
        _Invalid: the value does not fit; the message starts with ``where`` (the dotted path).
    """
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Invalid(f"{where}: expected an object")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        if unknown := set(value) - names:
            raise _Invalid(f"{where}: unknown key(s) {sorted(unknown)}")
        if missing := names - set(value):
            raise _Invalid(f"{where}: missing key(s) {sorted(missing)}")
        return tp(**{k: build(hints[k], v, f"{where}.{k}") for k, v in value.items()})
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1:
            return build(inner[0], value, where)
        for alternative in inner:
            try:
                return build(alternative, value, where)
            except _Invalid:
                continue
        raise _Invalid(f"{where}: {value!r} is none of {[_name(a) for a in args]}")
    if origin is Literal:
        if value not in args or type(value) not in {type(a) for a in args}:
            raise _Invalid(f"{where}: {value!r} is not one of {list(args)}")
        return value
    if origin is tuple:
        if not isinstance(value, list):
            raise _Invalid(f"{where}: expected a list")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(build(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise _Invalid(f"{where}: expected {len(args)} values")
        return tuple(build(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict:
        if not isinstance(value, dict):
            raise _Invalid(f"{where}: expected an object")
        return {k: build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if tp in (int, str, bool) and type(value) is tp:
        return value
    raise _Invalid(f"{where}: expected {_name(tp)}, found {value!r}")


def _name(tp: Any) -> str:
    """``int``, ``NoneType`` -> ``None``, ``Literal['all']`` as written."""
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")
