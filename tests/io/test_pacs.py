"""Sending DICOM-SEG files to a PACS: ``autoseg send`` and ``autoseg predict --send-to``.

The PACS is a pynetdicom Storage SCP started by each test on 127.0.0.1 (a free port, its own
thread); it keeps what it receives, or answers with the status a test sets. The SEGs are real:
built by autoseg from the shipped MR series (no model needed), and in the slow test predicted by
a tiny trained model. Every network wait is bounded (``--timeout``), so a failing test fails in
seconds.
"""

from __future__ import annotations

import socket
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
from pynetdicom import AE, AllStoragePresentationContexts, build_context, evt
from pynetdicom.sop_class import CTImageStorage, SegmentationStorage

from autoseg.cli import main
from autoseg.dicom_node import DicomNode
from autoseg.io.dicom_seg import SegAlgorithm, build_dicom_seg, seg_sources, write_dicom_seg
from autoseg.io.image import read_image
from autoseg.io.pacs import send_files
from autoseg.labels import LabelScheme
from tests.budget import tiny
from tests.inference.test_dicom_seg import CROPPED_MR, LABELS, OBLIQUE_MR, _dataset

#: A bound on any failing send here (the timeouts are 1 s; connecting locally is immediate).
QUICK_S = 5.0


@dataclass
class Scp:
    """A Storage SCP on 127.0.0.1: ``received`` by SOPInstanceUID; ``refuse`` maps a
    SOPInstanceUID (or ``"*"``) to the status answered instead of storing."""

    port: int
    received: dict[str, pydicom.Dataset] = field(default_factory=dict)
    calling: list[str] = field(default_factory=list)
    refuse: dict[str, int] = field(default_factory=dict)

    def to(self, ae: str = "STORESCP") -> str:
        return f"{ae}@127.0.0.1:{self.port}"

    def handle(self, event: Any) -> int:
        ds = event.dataset
        ds.file_meta = event.file_meta
        uid = str(ds.SOPInstanceUID)
        self.calling.append(event.assoc.requestor.ae_title)
        status = self.refuse.get(uid, self.refuse.get("*", 0))
        if status == 0:
            self.received[uid] = ds
        return status


def _start_scp(contexts: Any = AllStoragePresentationContexts, **kw: Any) -> tuple[Any, Scp]:
    """A Storage SCP accepting ``contexts`` (each in every uncompressed transfer syntax)."""
    ae = AE("STORESCP")
    ae.supported_contexts = contexts
    scp = Scp(port=0)
    server = ae.start_server(
        ("127.0.0.1", 0), block=False, evt_handlers=[(evt.EVT_C_STORE, scp.handle)], **kw
    )
    scp.port = server.server_address[1]
    return server, scp


@pytest.fixture
def scp() -> Iterator[Scp]:
    server, scp = _start_scp()
    yield scp
    server.shutdown()


def _seg_of(series: Path, out: Path) -> Path:
    """A DICOM-SEG of two blocks on ``series``' own grid, as predict builds it."""
    image = read_image(series)
    labels = np.zeros(image.array.shape, np.uint8)
    z, y, x = image.array.shape
    labels[: max(1, z // 2), : y // 2, : x // 2] = 1
    labels[z // 2 :, y // 2 :, x // 2 :] = 2
    seg = build_dicom_seg(
        labels,
        seg_sources(image.sources, image.geometry, series),
        LabelScheme.from_declared(LABELS),
        algorithm=SegAlgorithm("test", "test model", {}),
        folder=series,
    )
    return write_dicom_seg(seg, out)


@pytest.fixture(scope="module")
def segs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with two SEGs (of the oblique and the cropped MR series)."""
    folder = tmp_path_factory.mktemp("segs")
    for series in (OBLIQUE_MR, CROPPED_MR):
        _seg_of(series, folder / f"{series.name}.dcm")
    return folder


def _send(*args: str) -> int:
    return main(["send", *args, "-q", "--timeout", "1"])


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return capsys.readouterr().err.strip().splitlines()


def _free_port() -> int:
    """A port nothing listens on (bound, then closed again)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _assert_received_as_sent(scp: Scp, files: list[Path]) -> None:
    assert len(scp.received) == len(files)
    for f in files:
        sent = pydicom.dcmread(f)
        got = scp.received[str(sent.SOPInstanceUID)]
        assert got.SOPClassUID == sent.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4"
        assert got.PixelData == sent.PixelData
        assert got.SegmentSequence == sent.SegmentSequence
        assert got.file_meta.TransferSyntaxUID == sent.file_meta.TransferSyntaxUID


class TestSend:
    def test_folder_stored_as_written(self, scp: Scp, segs: Path) -> None:
        assert _send(str(segs), "--to", scp.to()) == 0
        _assert_received_as_sent(scp, sorted(segs.glob("*.dcm")))
        assert scp.calling == ["AUTOSEG", "AUTOSEG"]

    def test_one_file_and_calling_ae(self, scp: Scp, segs: Path) -> None:
        one = segs / f"{OBLIQUE_MR.name}.dcm"
        assert _send(str(one), "--to", scp.to(), "--calling-ae", "READER 7") == 0
        _assert_received_as_sent(scp, [one])
        assert scp.calling == ["READER 7"]

    def test_refused_file_named_with_status(
        self, scp: Scp, segs: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        refused, stored = segs / f"{CROPPED_MR.name}.dcm", segs / f"{OBLIQUE_MR.name}.dcm"
        scp.refuse[str(pydicom.dcmread(refused, stop_before_pixels=True).SOPInstanceUID)] = 0xA700
        assert _send(str(segs), "--to", scp.to()) == 2
        lines = _error_lines(capsys)
        assert len(lines) == 2, lines  # the refused file, then what to do
        assert str(refused) in lines[0]
        assert "0xA700" in lines[0]
        assert "Out of Resources" in lines[0]
        assert "not sent" in lines[1]
        assert str(stored) not in "".join(lines)
        _assert_received_as_sent(scp, [stored])  # the other file was still sent
        assert refused.is_file()

    def test_every_file_refused(self, scp: Scp, segs: Path, capsys: pytest.CaptureFixture[str]) -> None:
        scp.refuse["*"] = 0xC001
        assert _send(str(segs), "--to", scp.to()) == 2
        lines = _error_lines(capsys)
        files = sorted(segs.glob("*.dcm"))
        assert len(lines) == len(files) + 1
        for f, line in zip(files, lines, strict=False):
            assert str(f) in line
            assert "0xC001" in line
        assert not scp.received

    def test_warning_status_counts_as_stored(self, scp: Scp, segs: Path) -> None:
        scp.refuse["*"] = 0xB000  # coercion of data elements: stored
        results = send_files(sorted(segs.glob("*.dcm")), DicomNode.parse(scp.to()), timeout_s=1)
        assert [r.ok for r in results] == [True, True]

    # pynetdicom leaves the socket of a refused connection unclosed (its _shutdown_socket calls
    # shutdown() first, which raises on an unconnected socket, so close() is skipped)
    @pytest.mark.filterwarnings(
        "ignore:Exception ignored in. <socket:pytest.PytestUnraisableExceptionWarning"
    )
    def test_nothing_listening(self, segs: Path, capsys: pytest.CaptureFixture[str]) -> None:
        start = time.monotonic()
        assert _send(str(segs), "--to", f"PACS@127.0.0.1:{_free_port()}") == 2
        assert time.monotonic() - start < QUICK_S
        lines = _error_lines(capsys)
        assert len(lines) == 3
        for f, line in zip(sorted(segs.glob("*.dcm")), lines, strict=False):
            assert str(f) in line
            assert "connection refused" in line

    def test_hung_pacs_times_out(self, segs: Path, capsys: pytest.CaptureFixture[str]) -> None:
        """A socket that accepts connections but never answers (a hung PACS)."""
        with socket.socket() as hung:
            hung.bind(("127.0.0.1", 0))
            hung.listen(4)
            start = time.monotonic()
            assert _send(str(segs), "--to", f"PACS@127.0.0.1:{hung.getsockname()[1]}") == 2
            assert time.monotonic() - start < QUICK_S
        lines = _error_lines(capsys)
        assert "no answer" in lines[0]
        assert "within 1 s" in lines[0]

    def test_association_rejected(self, segs: Path, capsys: pytest.CaptureFixture[str]) -> None:
        server, scp = _start_scp()
        server.ae.require_called_aet = True
        try:
            assert _send(str(segs), "--to", scp.to("WRONG")) == 2
        finally:
            server.shutdown()
        line = _error_lines(capsys)[0]
        assert "rejected the association" in line
        assert "Called AE title not recognised" in line
        assert not scp.received

    def test_pacs_without_segmentation_storage(self, segs: Path, capsys: pytest.CaptureFixture[str]) -> None:
        server, scp = _start_scp(contexts=[build_context(CTImageStorage)])
        try:
            assert _send(str(segs), "--to", scp.to()) == 2
        finally:
            server.shutdown()
        assert "accepts no Segmentation Storage" in _error_lines(capsys)[0]

    def test_converted_for_a_pacs_with_implicit_vr_only(self, segs: Path) -> None:
        server, scp = _start_scp(contexts=[build_context(SegmentationStorage, ImplicitVRLittleEndian)])
        files = sorted(segs.glob("*.dcm"))
        try:
            results = send_files(files, DicomNode.parse(scp.to()), timeout_s=1)
        finally:
            server.shutdown()
        assert all(r.ok for r in results)
        for f in files:
            sent = pydicom.dcmread(f)
            assert sent.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
            got = scp.received[str(sent.SOPInstanceUID)]
            assert got.file_meta.TransferSyntaxUID == ImplicitVRLittleEndian
            assert got.PixelData == sent.PixelData

    def test_not_a_seg(self, scp: Scp, segs: Path, capsys: pytest.CaptureFixture[str]) -> None:
        mr = OBLIQUE_MR / "000010.dcm"
        assert _send(str(mr), str(segs / f"{OBLIQUE_MR.name}.dcm"), "--to", scp.to()) == 2
        line = _error_lines(capsys)[0]
        assert str(mr) in line
        assert "not a DICOM Segmentation" in line
        assert len(scp.received) == 1

    def test_missing_path(self, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
        assert _send(str(tmp_path / "nope.dcm"), "--to", "PACS@127.0.0.1:104") == 2
        assert "nope.dcm: no such file or folder" in _error_lines(capsys)[0]

    def test_without_pynetdicom(
        self, segs: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        monkeypatch.setitem(sys.modules, "pynetdicom", None)  # import fails
        assert _send(str(segs), "--to", "PACS@127.0.0.1:104") == 2
        (line,) = _error_lines(capsys)
        assert "pip install 'autoseg[pacs]'" in line


class TestDestination:
    @pytest.mark.parametrize(
        ("text", "node"),
        [
            ("PACS@10.0.0.5:104", DicomNode("PACS", "10.0.0.5", 104)),
            ("MY AE@pacs.example.org:11112", DicomNode("MY AE", "pacs.example.org", 11112)),
            ("A@B@[::1]:4242", DicomNode("A@B", "::1", 4242)),
            ("SIXTEEN_CHARS_AE@h:1", DicomNode("SIXTEEN_CHARS_AE", "h", 1)),
        ],
    )
    def test_parsed(self, text: str, node: DicomNode) -> None:
        assert DicomNode.parse(text) == node
        assert DicomNode.parse(str(node)) == node

    @pytest.mark.parametrize(
        ("text", "words"),
        [
            ("PACS127.0.0.1:104", "not of the form AE_TITLE@HOST:PORT"),
            ("PACS@127.0.0.1", "not of the form"),
            ("PACS@:104", "not of the form"),
            ("PACS@127.0.0.1:abc", "port 'abc' must be an integer in 1-65535"),
            ("PACS@127.0.0.1:0", "must be an integer in 1-65535"),
            ("PACS@127.0.0.1:65536", "must be an integer in 1-65535"),
            ("SEVENTEEN_CHARS_A@h:104", "has 17 characters; DICOM allows at most 16"),
            ("@h:104", "is empty"),
            ("PA\\CS@h:104", "without a backslash"),
            ("PACS@my host:104", "is not a host name"),
        ],
    )
    def test_refused(self, text: str, words: str, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(ValueError, match="destination") as e:
            DicomNode.parse(text)
        assert words in str(e.value)
        for argv in (["send", "x.dcm", "--to", text], ["predict", "-i", "a", "-o", "b", "--send-to", text]):
            with pytest.raises(SystemExit) as stop:
                main(argv)
            assert stop.value.code == 2
            (line,) = [s for s in capsys.readouterr().err.splitlines() if "error" in s]
            assert words in line

    def test_calling_ae_refused(self, capsys: pytest.CaptureFixture[str]) -> None:
        with pytest.raises(SystemExit) as stop:
            main(["send", "x.dcm", "--to", "PACS@h:104", "--calling-ae", "X" * 17])
        assert stop.value.code == 2
        assert "--calling-ae: AE title 'XXXXXXXXXXXXXXXXX' has 17 characters" in capsys.readouterr().err

    def test_send_to_with_nifti_refused_first(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Refused before the model is looked for: the work folder here is empty."""
        out = tmp_path / "out"
        argv = ["predict", "-i", str(OBLIQUE_MR), "-o", str(out), "--work-dir", str(tmp_path / "work")]
        assert main([*argv, "--send-to", "PACS@127.0.0.1:104", "--device", "cpu", "-q"]) == 2
        (line,) = _error_lines(capsys)
        assert "--send-to PACS@127.0.0.1:104" in line
        assert "--output-format dicom-seg" in line
        assert not out.exists()


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A work folder with a tiny ``parts`` model (3d_fullres, fold all)."""
    root = tmp_path_factory.mktemp("pacs_model")
    common = ["--work-dir", str(root / "work"), "-q"]
    ds = _dataset(root / "parts", LABELS)
    assert main(["plan", str(ds), "--preprocess-workers", "1", *common]) == 0
    assert main(["train", "parts", "3d_fullres", "all", *tiny(), *common]) == 0
    return root / "work"


@pytest.mark.slow
class TestPredictSendTo:
    def _predict(self, work: Path, out: Path, *extra: str) -> int:
        args = ["predict", "-i", str(CROPPED_MR), "-o", str(out), "-d", "parts", "-c", "3d_fullres"]
        return main([*args, "--work-dir", str(work), "--device", "cpu", "-q", *extra])

    def test_written_seg_is_sent(self, work: Path, scp: Scp, tmp_path: Path) -> None:
        out = tmp_path / "out"
        assert self._predict(work, out, "--output-format", "both", "--send-to", scp.to()) == 0
        _assert_received_as_sent(scp, [out / f"{CROPPED_MR.name}.dcm"])
        # a second run skips the case: nothing written, nothing sent again
        assert self._predict(work, out, "--output-format", "both", "--send-to", scp.to()) == 0
        assert len(scp.calling) == 1

    def test_refused_seg_is_kept(
        self, work: Path, scp: Scp, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        scp.refuse["*"] = 0xA700
        out = tmp_path / "out"
        assert self._predict(work, out, "--output-format", "dicom-seg", "--send-to", scp.to()) == 2
        seg = out / f"{CROPPED_MR.name}.dcm"
        lines = _error_lines(capsys)
        assert str(seg) in lines[0]
        assert "0xA700" in lines[0]
        assert seg.is_file()
        assert sorted(p.name for p in out.iterdir()) == [seg.name]
