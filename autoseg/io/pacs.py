"""Sending DICOM Segmentation files to a PACS with C-STORE (pynetdicom, the ``pacs`` extra).

One association carries every file: a PACS logs and throttles associations, and a batch of SEGs
needs only one. Each file gets its own result, so one refused file does not hide the others:
success, or a one-line reason (the connection, the association, or the DIMSE status, e.g.
``status 0xA700 (Refused: Out of Resources)``). Warning statuses (0xB000, 0xB006, 0xB007: the
PACS stored the object, perhaps with coerced elements) count as stored, with a warning: sending
again would only store a duplicate.

Every wait is bounded by one ``timeout_s`` (TCP connect, association answer, C-STORE response,
an idle network), so a PACS that is down or hung fails in seconds instead of hanging a run.
Each file is proposed in its own transfer syntax; for an uncompressed one, Explicit and Implicit VR
Little Endian (the syntax every PACS must accept) are proposed too, in contexts of their own,
which pynetdicom converts to only when the PACS refuses the file's own syntax.
"""

from __future__ import annotations

import logging
import socket
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID, ExplicitVRLittleEndian, ImplicitVRLittleEndian

from autoseg._optional import get_pynetdicom
from autoseg.command_options import SendOptions
from autoseg.dicom_node import DicomNode
from autoseg.errors import DatasetError

log = logging.getLogger(__name__)

#: SOP Class UID of Segmentation Storage.
SEGMENTATION_STORAGE = UID("1.2.840.10008.5.1.4.1.1.66.4")
#: The defaults of ``autoseg send`` (the timeout: long enough for a PACS to store a SEG, short
#: enough that a dead one is noticed at once).
_SEND = SendOptions()


@dataclass(frozen=True)
class SendResult:
    """What became of one file: ``error`` is ``None`` when the PACS stored it."""

    path: Path
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Whether the PACS stored the file."""
        return self.error is None


def seg_files(paths: Iterable[Path]) -> list[Path]:
    """The files to send: each file given, and each folder's ``*.dcm`` files (sorted, not
    recursive: ``predict``'s output folder holds its SEGs at the top).

    Raises:
        DatasetError: a path does not exist, or a folder holds no ``.dcm`` file; every problem
            is listed.
    """
    files: list[Path] = []
    problems = []
    for p in paths:
        if p.is_dir():
            found = sorted(f for f in p.glob("*.dcm") if f.is_file())
            if not found:
                problems.append(f"{p}: no .dcm file in this folder; give the SEG files or their folder")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            problems.append(f"{p}: no such file or folder")
    if problems:
        raise DatasetError(problems)
    return files


def send_files(
    paths: Sequence[Path],
    node: DicomNode,
    *,
    calling_ae: str = _SEND.calling_ae,
    timeout_s: float = _SEND.timeout,
) -> list[SendResult]:
    """C-STORE each DICOM-SEG file of ``paths`` to ``node``, over one association.

    Returns one :class:`SendResult` per path, in order. A file that is not a readable DICOM
    Segmentation fails alone; a connection or association failure fails every file with its
    reason; after a C-STORE that broke the association (a timeout, an abort) the files left
    are not sent. Nothing is raised for network failures: the caller decides what they mean.

    Raises:
        MissingDependencyError: pynetdicom is not installed.
    """
    pynetdicom = get_pynetdicom()
    results: dict[Path, SendResult] = {}
    syntaxes: dict[Path, UID] = {}
    for p in paths:
        syntax, error = _seg_syntax(p)
        if error is not None:
            results[p] = SendResult(p, error)
        else:
            syntaxes[p] = syntax
    if syntaxes:
        results.update(_store_all(pynetdicom, syntaxes, node, calling_ae, timeout_s))
    return [results[p] for p in paths]


def _seg_syntax(path: Path) -> tuple[UID, str | None]:
    """The file's transfer syntax, or why it cannot be sent."""
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        return UID(""), f"not a readable DICOM file ({e})"
    sop_class = ds.get("SOPClassUID")
    if sop_class != SEGMENTATION_STORAGE:
        what = getattr(UID(str(sop_class)), "name", sop_class) if sop_class else "no SOP Class UID"
        return UID(""), f"not a DICOM Segmentation ({what}); only SEG files are sent"
    syntax = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if not syntax:
        return UID(""), "no transfer syntax in its file meta header; write it again with `autoseg predict`"
    return UID(syntax), None


def _proposed(syntaxes: Iterable[UID]) -> list[UID]:
    """The transfer syntaxes to propose, one presentation context each: the files' own, then
    (for uncompressed little endian files) Explicit and Implicit VR Little Endian as fallbacks.
    Separate contexts, so that a PACS accepting the file's own syntax gets the file byte for
    byte (pynetdicom prefers an exact match), and one that does not still gets it converted.
    """
    own = list(dict.fromkeys(syntaxes))
    fallback = [ExplicitVRLittleEndian, ImplicitVRLittleEndian]
    if any(s.is_little_endian and not s.is_compressed for s in own):
        own += fallback
    return list(dict.fromkeys(own))


class _Negotiation:
    """What the association attempt saw (pynetdicom keeps neither in the association)."""

    def __init__(self) -> None:
        self.connected = False
        self.answer: Any = None  # the A-ASSOCIATE response, or an A-ABORT / A-P-ABORT

    def on_open(self, event: Any) -> None:
        self.connected = True

    def on_acse(self, event: Any) -> None:
        if self.answer is None:
            self.answer = event.primitive


def _store_all(
    pynetdicom: Any, syntaxes: dict[Path, UID], node: DicomNode, calling_ae: str, timeout_s: float
) -> dict[Path, SendResult]:
    ae = pynetdicom.AE(ae_title=calling_ae)
    ae.connection_timeout = timeout_s
    ae.acse_timeout = timeout_s
    ae.dimse_timeout = timeout_s
    ae.network_timeout = timeout_s
    for syntax in _proposed(syntaxes.values()):
        ae.add_requested_context(SEGMENTATION_STORAGE, [syntax])
    seen = _Negotiation()
    evt = pynetdicom.evt
    assoc = ae.associate(
        node.host,
        node.port,
        ae_title=node.ae_title,
        evt_handlers=[(evt.EVT_CONN_OPEN, seen.on_open), (evt.EVT_ACSE_RECV, seen.on_acse)],
    )
    if not assoc.is_established:
        reason = _not_associated(seen, node, timeout_s, sorted(set(syntaxes.values())))
        return {p: SendResult(p, reason) for p in syntaxes}
    out: dict[Path, SendResult] = {}
    broken: str | None = None
    try:
        for p in syntaxes:
            if broken is not None:
                out[p] = SendResult(p, f"not sent: the association ended after {broken}")
                continue
            out[p] = _store_one(pynetdicom, assoc, p, node, timeout_s)
            if not assoc.is_established:
                broken = p.name
    finally:
        if assoc.is_established:
            assoc.release()
    return out


def _store_one(pynetdicom: Any, assoc: Any, path: Path, node: DicomNode, timeout_s: float) -> SendResult:
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, OSError, ValueError, EOFError) as e:
        return SendResult(path, f"cannot be read ({e})")
    try:
        rsp = assoc.send_c_store(ds)
    except ValueError:  # no accepted presentation context fits this file
        syntax = UID(ds.file_meta.TransferSyntaxUID)
        return SendResult(path, f"{node} accepts Segmentation Storage, but not in {syntax.name} ({syntax})")
    code = rsp.get("Status")
    if code is None:
        return SendResult(
            path, f"no C-STORE response from {node} within {timeout_s:g} s (or it aborted the association)"
        )
    code = int(code)
    status = pynetdicom.status
    category, meaning = status.STORAGE_SERVICE_CLASS_STATUS.get(code, ("Unknown", "unknown status"))
    if code == 0:
        log.info("%s: stored by %s", path, node)
        return SendResult(path)
    if category == status.STATUS_WARNING:
        log.warning("%s: stored by %s with warning status 0x%04X (%s)", path, node, code, meaning)
        return SendResult(path)
    return SendResult(path, f"{node} refused it: status 0x{code:04X} ({meaning})")


def _not_associated(seen: _Negotiation, node: DicomNode, timeout_s: float, syntaxes: list[UID]) -> str:
    """Why no association was established, in one line."""
    if not seen.connected:
        return f"cannot connect to {node.host}:{node.port}: {_connect_error(node, timeout_s)}"
    answer = seen.answer
    result = getattr(answer, "result", None)
    if result in (1, 2):  # A-ASSOCIATE-RJ
        return (
            f"{node} rejected the association: {answer.reason_str} ({answer.result_str}, "
            f"{answer.source_str}); check the called AE title and that {node.host} knows this calling AE"
        )
    if result == 0:  # accepted, but not one presentation context
        names = ", ".join(s.name for s in syntaxes)
        return f"{node} accepts no Segmentation Storage in {names}; ask its administrator to allow it"
    if answer is None:
        return f"no answer from {node} to the association request within {timeout_s:g} s"
    return f"{node} aborted the association request"


def _connect_error(node: DicomNode, timeout_s: float) -> str:
    """Why a TCP connection to ``node`` fails, found by trying once more (pynetdicom only logs
    the error); only on the failure path, so a working PACS sees one connection."""
    try:
        with socket.create_connection((node.host, node.port), timeout=timeout_s):
            return "the connection failed (it works now: try again)"
    except socket.gaierror:
        return f"unknown host {node.host!r}; check the address"
    except TimeoutError:
        return f"no answer within {timeout_s:g} s; check the address, port and firewall"
    except ConnectionRefusedError:
        return "connection refused; check that the PACS is running and listens on that port"
    except OSError as e:
        return f"{e.strerror or e}; check the address and port"
