"""Where a DICOM object is sent: a remote application entity ``AE_TITLE@HOST:PORT``.

Checked when the command line is parsed (standard library only, so ``autoseg --help`` stays
fast), so that a typo in ``--send-to`` fails before hours of prediction, not after.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Longest AE title (the AE value representation: 16 characters).
MAX_AE_TITLE = 16
_FORMAT = "AE_TITLE@HOST:PORT, e.g. PACS@10.0.0.5:104"


def ae_title(text: str) -> str:
    """An application entity title, checked: 1 to 16 printable ASCII characters without a
    backslash (leading and trailing spaces are not significant in DICOM, so they are dropped).

    Raises:
        ValueError: it is empty, too long or has other characters; the message names it.

    Examples:
        >>> ae_title("AUTOSEG")
        'AUTOSEG'
    """
    title = text.strip()
    if not title:
        msg = f"AE title {text!r} is empty; give 1 to {MAX_AE_TITLE} characters"
        raise ValueError(msg)
    if len(title) > MAX_AE_TITLE:
        msg = f"AE title {title!r} has {len(title)} characters; DICOM allows at most {MAX_AE_TITLE}"
        raise ValueError(msg)
    if any(not (" " <= c <= "~") or c == "\\" for c in title):
        msg = f"AE title {title!r} may hold only printable ASCII characters without a backslash"
        raise ValueError(msg)
    return title


@dataclass(frozen=True)
class DicomNode:
    """A remote DICOM application entity (the called AE: a PACS, a router, a viewer)."""

    ae_title: str
    host: str
    port: int

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.ae_title}@{host}:{self.port}"

    @classmethod
    def parse(cls, text: str) -> DicomNode:
        """``AE_TITLE@HOST:PORT`` (an IPv6 host in brackets: ``PACS@[::1]:104``).

        Raises:
            ValueError: the text is not of that form, the AE title is invalid, or the port is not
                an integer in 1-65535; the message names the text and the expected form.

        Examples:
            >>> DicomNode.parse("ORTHANC@127.0.0.1:4242")
            DicomNode(ae_title='ORTHANC', host='127.0.0.1', port=4242)
        """
        title, at, address = text.rpartition("@")
        host, colon, port_text = address.rpartition(":")
        if not at or not colon or not host:
            msg = f"destination {text!r} is not of the form {_FORMAT}"
            raise ValueError(msg)
        if host.startswith("[") and host.endswith("]"):
            host = host[1:-1]
        if not host or any(c.isspace() for c in host):
            msg = f"destination {text!r}: host {host!r} is not a host name or address ({_FORMAT})"
            raise ValueError(msg)
        try:
            port = int(port_text)
        except ValueError:
            port = 0
        if not 1 <= port <= 65535:
            msg = f"destination {text!r}: port {port_text!r} must be an integer in 1-65535 ({_FORMAT})"
            raise ValueError(msg)
        try:
            title = ae_title(title)
        except ValueError as e:
            msg = f"destination {text!r}: {e}"
            raise ValueError(msg) from e
        return cls(title, host, port)


def destination(text: str) -> str:
    """``text`` if it parses as a :class:`DicomNode` (for an option's ``parse``: the option
    keeps the text, the command parses it again).

    Raises:
        ValueError: see :meth:`DicomNode.parse`.
    """
    DicomNode.parse(text)
    return text
