"""The DICOM node: a Storage SCP that a PACS routes chest films to, and that sends the results back.

Three jobs, each in its own thread, joined only by the inbox and the state
database (:mod:`cxr_core.pacs.inbox`, :mod:`cxr_core.pacs.state`):

- **receive** (pynetdicom's association threads): an allowed PACS stores a
  film; it is written durably to the inbox and recorded ``received`` *before*
  the C-STORE is answered with success;
- **analyse**: the films ``received``, in arrival order, through the model
  (:func:`cxr_core.pacs.assess.assess_film`), their results (a TID 1500
  Structured Report and, for an assessed film, a Secondary Capture overlay)
  written durably, then recorded ``analysed``;
- **send**: results ``analysed``, in arrival order, to the PACS (C-STORE or
  STOW-RS), then recorded ``sent``; a failed send is retried with backoff
  for ever, never dropped.

Killed at any moment and restarted, the node picks up where the database
says; results carry SOP Instance UIDs derived from their source instance, so
a result sent again after a kill replaces the first copy instead of doubling it.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
from pydicom.uid import UID

from cxr_core.bundle.format import bundle_sha256
from cxr_core.pacs.assess import FilmResult, assess_film
from cxr_core.pacs.assessment import Assessment
from cxr_core.pacs.capture import build_sc, capture_lines, capture_pixels
from cxr_core.pacs.inbox import Inbox, digest, write_durably
from cxr_core.pacs.results import MANUFACTURER, AlgorithmInfo, build_sr, clean_source, result_uids
from cxr_core.pacs.sender import CStoreDestination, SendError, StowDestination, backoff_delay, check_ae_title
from cxr_core.pacs.state import NodeState, open_state

log = logging.getLogger("cxr_assist.node")

#: Every transfer syntax cxr-assist decodes (cxr_core.data.dicom.DECODERS), offered for every image storage class.
ACCEPTED_TRANSFER_SYNTAXES = (
    "1.2.840.10008.1.2",         # Implicit VR Little Endian
    "1.2.840.10008.1.2.1",       # Explicit VR Little Endian
    "1.2.840.10008.1.2.1.99",    # Deflated Explicit VR Little Endian
    "1.2.840.10008.1.2.2",       # Explicit VR Big Endian
    "1.2.840.10008.1.2.5",       # RLE Lossless
    "1.2.840.10008.1.2.4.50",    # JPEG Baseline (Process 1)
    "1.2.840.10008.1.2.4.51",    # JPEG Extended (Process 2 & 4)
    "1.2.840.10008.1.2.4.57",    # JPEG Lossless (Process 14)
    "1.2.840.10008.1.2.4.70",    # JPEG Lossless (Process 14, SV1)
    "1.2.840.10008.1.2.4.80",    # JPEG-LS Lossless
    "1.2.840.10008.1.2.4.81",    # JPEG-LS Near-Lossless
    "1.2.840.10008.1.2.4.90",    # JPEG 2000 Lossless
    "1.2.840.10008.1.2.4.91",    # JPEG 2000
)
#: C-STORE failure statuses the node answers with (PS3.4 B.2.3).
CANNOT_UNDERSTAND, OUT_OF_RESOURCES, NOT_MATCHING = 0xC210, 0xA700, 0xA900


def image_storage_classes() -> list[str]:
    """Every storage SOP class pynetdicom knows whose name says it holds an image (CR, DX, SC, CT, MR ...)."""
    from pynetdicom import AllStoragePresentationContexts

    return [c.abstract_syntax for c in AllStoragePresentationContexts if "Image Storage" in UID(c.abstract_syntax).name]


def bundle_fingerprint(bundle_dir: str | os.PathLike) -> str:
    """The first 16 hex digits of the bundle's SHA-256 (:func:`cxr_core.bundle.format.bundle_sha256`).

    It names the model in the results (the SR's algorithm parameters) and
    seeds their UIDs: another model's results for a film are new objects,
    the same model's are the same objects.
    """
    return bundle_sha256(bundle_dir)[:16]


@dataclass(frozen=True)
class NodeConfig:
    """What ``python -m training.node`` is told.

    Attributes:
        ae_title: the node's own AE title (the PACS calls it).
        port: the port it listens on.
        inbox: the folder of films, results and the state database.
        allow: the calling AE titles allowed to associate (others are rejected with A-ASSOCIATE-RJ).
        destination: where results go (a :class:`~cxr_core.pacs.sender.CStoreDestination` or
            :class:`~cxr_core.pacs.sender.StowDestination`).
        bundle: the model bundle folder.
        host: the address to listen on (``0.0.0.0``: every interface).
        keep_files: keep films and results in the inbox after they are sent (default: removed once sent; the
            state database keeps the record).
        retry_base, retry_cap: the first and the longest wait between tries of a failed send (seconds).
        ssl_context: TLS for the DICOM listener (None: plain TCP).
    """

    ae_title: str
    port: int
    inbox: Path
    allow: tuple[str, ...]
    destination: CStoreDestination | StowDestination
    bundle: Path = Path("models/default")
    host: str = "127.0.0.1"
    keep_files: bool = False
    retry_base: float = 2.0
    retry_cap: float = 300.0
    ssl_context: ssl.SSLContext | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "ae_title", check_ae_title(self.ae_title, "--ae-title"))
        object.__setattr__(self, "allow", tuple(check_ae_title(a, "--allow") for a in self.allow))
        if not self.allow:
            raise ValueError("--allow needs at least one calling AE title (the PACS's): the node accepts films only "
                             "from the AE titles it is given")
        if not 0 <= int(self.port) < 65536:
            raise ValueError(f"--port {self.port} is not a TCP port (0-65535)")


class Node:
    """The running node: listener, analyser and sender over one inbox.

    Args:
        config: the node's settings.
        load_predictor: called once in the analyser thread to load the model (default: the bundle's Predictor,
            LiteRT where its serving forms exist, else Keras); the listener accepts films meanwhile.
    """

    def __init__(self, config: NodeConfig, *, load_predictor: Callable[[], object] | None = None):
        self.config = config
        self.inbox = Inbox(config.inbox)
        self.state: NodeState = open_state(config.inbox)
        self._load_predictor = load_predictor or self._default_predictor
        self._stop = threading.Event()
        self._work = threading.Event()    # a film arrived
        self._results = threading.Event()  # results are ready to send
        self._server = None
        self._threads: list[threading.Thread] = []
        self.ready = threading.Event()     # the model is loaded and the queue is being worked
        self.error: BaseException | None = None
        self._algorithm = None

    # -- the model ---------------------------------------------------------------------------------------------

    def _default_predictor(self):
        from cxr_core.serving.predictor import Predictor

        return Predictor.from_bundle(self.config.bundle, runtime="auto")

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self) -> None:
        """Listen, and start the analyser and sender threads (returns at once)."""
        from pynetdicom import AE, evt

        self._register_orphans()
        ae = AE(ae_title=self.config.ae_title)
        ae.require_calling_aet = list(self.config.allow)
        ae.require_called_aet = True
        ae.maximum_associations = 16
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 60
        ae.maximum_pdu_size = 0  # no limit on what the node accepts
        ae.add_supported_context("1.2.840.10008.1.1")  # Verification: C-ECHO
        for sop_class in image_storage_classes():
            ae.add_supported_context(sop_class, list(ACCEPTED_TRANSFER_SYNTAXES))
        handlers = [(evt.EVT_C_STORE, self._on_store), (evt.EVT_C_ECHO, lambda event: 0x0000),
                    (evt.EVT_REJECTED, self._on_rejected), (evt.EVT_ABORTED, self._on_aborted)]
        self._server = ae.start_server((self.config.host, int(self.config.port)), block=False, evt_handlers=handlers,
                                       ssl_context=self.config.ssl_context)
        for target, name in ((self._analyse_loop, "cxr-node-analyse"), (self._send_loop, "cxr-node-send")):
            thread = threading.Thread(target=self._guarded(target), name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        log.info("listening as %s on %s:%s; results to %s; films from %s", self.config.ae_title, self.config.host,
                 self.port, self.config.destination.describe(), ", ".join(self.config.allow))

    @property
    def port(self) -> int:
        """The port actually listened on (the given one, or the one the system chose for port 0)."""
        return self._server.server_address[1] if self._server else int(self.config.port)

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        self._work.set()
        self._results.set()
        if self._server is not None:
            self._server.shutdown()
        for thread in self._threads:
            thread.join(timeout)
        self.state.close()

    def _guarded(self, target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                target()
            except BaseException as exc:  # a thread that dies must not leave a node that only looks alive
                self.error = exc
                log.exception("the node's %s thread stopped", threading.current_thread().name)
                self._stop.set()
        return run

    # -- receiving ---------------------------------------------------------------------------------------------

    def _on_rejected(self, event) -> None:
        requestor = event.assoc.requestor
        log.warning("refused an association from AE %r at %s:%s (not in --allow)", requestor.ae_title,
                    requestor.address, requestor.port)

    def _on_aborted(self, event) -> None:
        requestor = event.assoc.requestor
        log.warning("association from AE %r at %s:%s aborted", requestor.ae_title, requestor.address, requestor.port)

    def _on_store(self, event) -> int:
        """Write the film durably and record it, then (only then) answer success."""
        calling = event.assoc.requestor.ae_title
        try:
            dataset = event.dataset
            uid = str(dataset.SOPInstanceUID)
            sop_class = str(dataset.SOPClassUID)
            study = str(dataset.StudyInstanceUID)
        except Exception as exc:  # an empty or unparsable data set: nothing to store
            log.warning("C-STORE from %r refused: its data set could not be read (%s)", calling, exc)
            return CANNOT_UNDERSTAND
        if uid != str(event.request.AffectedSOPInstanceUID) or sop_class != str(event.request.AffectedSOPClassUID):
            log.warning("C-STORE from %r refused: the data set's UIDs differ from the request's", calling)
            return NOT_MATCHING
        try:
            data = event.encoded_dataset(include_meta=True)
            outcome = self._record(self.inbox.store_film(uid, data), data, dataset, calling_ae=calling,
                                   transfer_syntax=str(event.context.transfer_syntax))
        except OSError as exc:  # disk full, inbox gone: the PACS keeps the film and may try again
            log.error("could not store %s from %r: %s", uid, calling, exc)
            return OUT_OF_RESOURCES
        log.info("received %s (%s, study %s) from %r: %s", uid, UID(sop_class).name, study, calling, outcome)
        if outcome != "same":
            self._work.set()
        return 0x0000

    def _record(self, film: Path, data: bytes, dataset, *, transfer_syntax: str, calling_ae: str = "") -> str:
        """Record a film written to the inbox, with what its header says (see NodeState.record_received)."""

        def text(keyword: str) -> str:
            return str(dataset.get(keyword, "") or "")

        return self.state.record_received(
            sop_instance_uid=str(dataset.SOPInstanceUID), sop_class_uid=str(dataset.SOPClassUID),
            study_instance_uid=str(dataset.StudyInstanceUID), film=film, film_sha256=digest(data),
            modality=text("Modality"), patient_id=text("PatientID"), accession_number=text("AccessionNumber"),
            calling_ae=calling_ae, transfer_syntax=transfer_syntax)

    def _register_orphans(self) -> None:
        """Films on the disk that the database lacks (killed between the write and the record): received now."""
        known = self.state.known_films()
        for film in self.inbox.films_on_disk():
            if str(film) in known:
                continue
            try:
                data = film.read_bytes()
                ds = pydicom.dcmread(film, stop_before_pixels=True)
                self._record(film, data, ds, transfer_syntax=str(ds.file_meta.TransferSyntaxUID))
                log.info("registered %s, received before the node stopped", film.name)
            except Exception as exc:
                log.error("a file in the inbox could not be registered (%s): %s; it is left where it is", film, exc)

    # -- analysing ---------------------------------------------------------------------------------------------

    def _analyse_loop(self) -> None:
        started = time.perf_counter()
        predictor = self._load_predictor()
        if self._stop.is_set():  # stopped while the model was loading
            return
        self._algorithm = self._algorithm_info(predictor)
        log.info("model %s ready (%s runtime) in %.1f s", self._algorithm.bundle_name,
                 getattr(predictor, "runtime", "?"), time.perf_counter() - started)
        self.ready.set()
        while not self._stop.is_set():
            record = self.state.next_to_analyse()
            if record is None:
                self._work.wait(1.0)
                self._work.clear()
                continue
            self._analyse(predictor, record)

    def _algorithm_info(self, predictor):
        from cxr_core import __version__

        bundle_dir = Path(getattr(getattr(predictor, "bundle", None), "path", None) or self.config.bundle)
        return AlgorithmInfo(name="cxr-assist", version=__version__, bundle_name=bundle_dir.resolve().name,
                             bundle_digest=bundle_fingerprint(bundle_dir))

    def _analyse(self, predictor, record) -> None:
        started = time.perf_counter()
        source = pydicom.dcmread(record.film, stop_before_pixels=True)
        if str(source.get("Manufacturer", "")) == MANUFACTURER:  # one of the node's own results, routed back
            film = FilmResult(Assessment.not_assessed("This is one of cxr-assist's own results; it is not read again."))
        else:
            try:
                film = assess_film(predictor, record.film, sop_class_uid=record.sop_class_uid)
            except Exception as exc:  # a fault of cxr-assist's, not of the film: say so in the SR, keep the queue going
                log.exception("analysing %s failed", record.sop_instance_uid)
                film = FilmResult(Assessment.not_assessed(f"cxr-assist failed on this film ({type(exc).__name__}); "
                                                          "see the node's log."))
        algorithm = self._algorithm
        clean = clean_source(source)
        uids = result_uids(clean, bundle_digest=algorithm.bundle_digest)
        outputs = [(self.inbox.result_path(record.sop_instance_uid, "sr"),
                    build_sr(clean, film.assessment, algorithm=algorithm, uids=uids))]
        if film.assessment.assessed and film.pixels is not None:
            rgb = capture_pixels(film.pixels, film.heatmap, lines=capture_lines(film.assessment, shown=film.heatmap_finding))
            outputs.append((self.inbox.result_path(record.sop_instance_uid, "sc"),
                            build_sc(clean, rgb, algorithm=algorithm, uids=uids)))
        for path, dataset in outputs:
            write_durably(path, _encoded(dataset))
        a = film.assessment
        if self.state.mark_analysed(record.sop_instance_uid, film_sha256=record.film_sha256, triage=a.triage,
                                    flagged="|".join(a.flagged), reason=a.reason, results=[str(p) for p, _ in outputs]):
            log.info("analysed %s: %s%s in %.2f s", record.sop_instance_uid, a.triage,
                     f", flagged {', '.join(a.flagged)}" if a.flagged else "", time.perf_counter() - started)
            self._results.set()

    # -- sending -----------------------------------------------------------------------------------------------

    def _send_loop(self) -> None:
        while not self._stop.is_set():
            due = self.state.due_to_send()
            if not due:
                upcoming = self.state.next_attempt_at()
                wait = 1.0 if upcoming is None else min(1.0, max(0.05, upcoming - time.time()))
                self._results.wait(wait)
                self._results.clear()
                continue
            for record in due:
                if self._stop.is_set() or not self._send(record):
                    break  # the destination failed: the rest wait for their own retry time

    def _send(self, record) -> bool:
        """Send one film's results; True when they were stored (or nothing was left to send)."""
        try:
            datasets = [pydicom.dcmread(p) for p in record.results]
        except (OSError, pydicom.errors.InvalidDicomError) as exc:
            # A result file lost from the disk: analyse the film again rather than send nothing.
            log.error("results of %s unreadable (%s): analysing it again", record.sop_instance_uid, exc)
            self.state.requeue(record.sop_instance_uid)
            self._work.set()
            return True
        try:
            self.config.destination.send(datasets)
        except SendError as exc:
            delay = backoff_delay(record.attempts + 1, base=self.config.retry_base, cap=self.config.retry_cap)
            self.state.mark_send_failed(record.sop_instance_uid, error=str(exc), retry_at=time.time() + delay)
            log.warning("sending the results of %s failed (try %d, next in %.0f s): %s", record.sop_instance_uid,
                        record.attempts + 1, delay, exc)
            return False
        if self.state.mark_sent(record.sop_instance_uid, film_sha256=record.film_sha256):
            log.info("sent %d result(s) of %s to %s", len(datasets), record.sop_instance_uid,
                     self.config.destination.describe())
            if not self.config.keep_files:
                self.inbox.remove(Path(record.film), *map(Path, record.results))
        return True

    def serve_forever(self) -> None:
        """Block until :meth:`stop` (or a signal's handler calling it), or until a worker thread died."""
        while not self._stop.wait(0.5):
            pass
        if self.error is not None:
            raise RuntimeError(f"the node stopped: {self.error}") from self.error


def _encoded(dataset) -> bytes:
    """A result as a DICOM file (preamble, file meta, its own transfer syntax)."""
    from io import BytesIO

    buffer = BytesIO()
    dataset.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()

