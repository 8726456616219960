"""Open a film from a PACS over DICOMweb: find studies (QIDO-RS), list a study's images, retrieve one (WADO-RS).

The Analyze page's "From the PACS" source uses it when ``CXR_ASSIST_DICOMWEB``
names a DICOMweb root (Orthanc: ``http://host:8042/dicom-web``), with HTTP
basic credentials as ``user:password`` in ``CXR_ASSIST_DICOMWEB_CREDENTIALS``
(never shown, never in a message). Every failure a person can meet (the PACS
down, a refused password, a wrong URL, an answer that cannot be read) raises
:class:`PacsError` with a message that says what to do; the retrieved film is
a DICOM Part 10 file, analysed exactly as an uploaded one.

    connection = PacsConnection.from_env()          # None when CXR_ASSIST_DICOMWEB is unset
    client = connection.client()
    studies = search_studies(client, patient_id="12345")
    images = list_instances(client, studies[0].study_instance_uid)
    data = retrieve_instance(client, images[0].study_instance_uid, images[0].series_instance_uid,
                             images[0].sop_instance_uid)
"""

from __future__ import annotations

import io
import os
import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

__all__ = ["DICOMWEB_ENV", "CREDENTIALS_ENV", "PacsError", "PacsConnection", "StudyRow", "InstanceRow",
           "client_from_env", "search_studies", "list_instances", "retrieve_instance"]

#: The DICOMweb root of the PACS the app may open films from (unset: no PACS source).
DICOMWEB_ENV = "CXR_ASSIST_DICOMWEB"
#: HTTP basic credentials for it, as ``user:password`` (unset or empty: none).
CREDENTIALS_ENV = "CXR_ASSIST_DICOMWEB_CREDENTIALS"
#: At most this many studies per search (a patient with more: narrow the search by accession number).
SEARCH_LIMIT = 50
#: The node's own results carry this Manufacturer (cxr_core.pacs.results.MANUFACTURER): listed after the films.
RESULT_MANUFACTURER = "cxr-assist"
#: Modalities of projection radiographs, listed first.
RADIOGRAPH_MODALITIES = ("CR", "DX")
#: The Secondary Capture storage classes (NIH's films converted to DICOM are often such), listed next.
_SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"

_STUDY_FIELDS = ("StudyDate", "StudyTime", "StudyDescription", "AccessionNumber", "PatientID", "PatientName",
                 "ModalitiesInStudy", "NumberOfStudyRelatedInstances")
_INSTANCE_FIELDS = ("Modality", "SOPClassUID", "SeriesNumber", "SeriesDescription", "InstanceNumber", "SeriesDate",
                    "ContentDate", "AcquisitionDate", "StudyDate", "ViewPosition", "Manufacturer", "Rows", "Columns")


class PacsError(RuntimeError):
    """The PACS could not be asked or did not answer usefully; the message says why, for a person."""


@dataclass(frozen=True)
class PacsConnection:
    """Where the PACS's DICOMweb service is and how to log in (the password is never shown).

    Attributes:
        url: the DICOMweb root, without a trailing ``/``.
        credentials: ``(user, password)`` for HTTP basic authentication, or None.
        connect_timeout: seconds to wait for the PACS to accept the connection.
        read_timeout: seconds to wait for the next part of an answer.
        attempts: tries of a request that failed (no connection, HTTP 429/503/504), half a second apart, then
            doubling: a page waits about a second for a PACS that is down, not dicomweb-client's default 30 s.
    """

    url: str
    credentials: tuple[str, str] | None = field(default=None, repr=False)
    connect_timeout: float = 5.0
    read_timeout: float = 30.0
    attempts: int = 2

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^\s/]+", self.url or ""):
            raise PacsError(f"{DICOMWEB_ENV} must be the http:// or https:// address of a DICOMweb service "
                            f"(Orthanc: http://host:8042/dicom-web), not {display_url(self.url or '')!r}")
        if "@" in urlsplit(self.url).netloc:
            raise PacsError(f"{DICOMWEB_ENV} has a user name or password in it: give the address alone, and the "
                            f"credentials as user:password in {CREDENTIALS_ENV}")
        object.__setattr__(self, "url", self.url.rstrip("/"))

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> PacsConnection | None:
        """The connection named by ``CXR_ASSIST_DICOMWEB`` (and its credentials), or None when it is unset.

        Args:
            environ: the environment to read (default ``os.environ``).

        Raises:
            PacsError: the URL is not an http(s) address, or the credentials are not ``user:password``.
        """
        environ = os.environ if environ is None else environ
        url = environ.get(DICOMWEB_ENV, "").strip()
        if not url:
            return None
        secret = environ.get(CREDENTIALS_ENV, "")
        credentials = None
        if secret:
            user, sep, password = secret.partition(":")
            if not sep or not user:
                raise PacsError(f"{CREDENTIALS_ENV} must be user:password (HTTP basic authentication)")
            credentials = (user, password)
        return cls(url=url, credentials=credentials)

    @property
    def shown_url(self) -> str:
        """The URL to show a person (any user name or password written into it left out)."""
        return display_url(self.url)

    def client(self):
        """A ``dicomweb_client.DICOMwebClient`` for this service."""
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        if self.credentials:
            session.auth = self.credentials
        client = DICOMwebClient(url=self.url, session=session, timeout=(self.connect_timeout, self.read_timeout))
        client.set_http_retry_params(max_attempts=self.attempts, wait_exponential_multiplier=250)
        return client


def client_from_env(environ: Mapping[str, str] | None = None):
    """A DICOMweb client for ``CXR_ASSIST_DICOMWEB``, or None when it is unset (see :meth:`PacsConnection.from_env`)."""
    connection = PacsConnection.from_env(environ)
    return None if connection is None else connection.client()


def display_url(url: str) -> str:
    """``url`` without any ``user:password@`` in it."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "(not a URL)"
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=netloc))


@dataclass(frozen=True)
class StudyRow:
    """One study a search found (DICOM's words; empty where the PACS did not say)."""

    study_instance_uid: str
    patient_id: str = ""
    patient_name: str = ""
    accession_number: str = ""
    study_date: str = ""
    study_time: str = ""
    study_description: str = ""
    modalities: tuple[str, ...] = ()
    instances: int | None = None

    @property
    def label(self) -> str:
        """One line to choose it by: date, description, modalities, accession, patient, number of instances."""
        parts = [_date(self.study_date) or "no date", self.study_description or "no description",
                 "/".join(self.modalities) or "modality not given"]
        if self.accession_number:
            parts.append(f"accession {self.accession_number}")
        name = self.patient_name if self.patient_name.rstrip("^") != self.patient_id else ""
        who = " ".join(p for p in (self.patient_id and f"patient {self.patient_id}", name) if p)
        if who:
            parts.append(who)
        if self.instances is not None:
            parts.append(f"{self.instances} instance{'s' if self.instances != 1 else ''}")
        return " · ".join(parts)


@dataclass(frozen=True)
class InstanceRow:
    """One image instance of a study."""

    study_instance_uid: str
    series_instance_uid: str
    sop_instance_uid: str
    sop_class_uid: str = ""
    modality: str = ""
    date: str = ""
    series_number: str = ""
    series_description: str = ""
    instance_number: str = ""
    view_position: str = ""
    manufacturer: str = ""

    @property
    def from_cxr_assist(self) -> bool:
        """A result the cxr-assist node put into the study (its overlay), not a film."""
        return self.manufacturer == RESULT_MANUFACTURER

    @property
    def sop_class_name(self) -> str:
        from pydicom.uid import UID

        name = UID(self.sop_class_uid).name if self.sop_class_uid else ""
        return "" if name == self.sop_class_uid else name

    @property
    def label(self) -> str:
        """One line to choose it by: modality, date, series (number and description), view, instance."""
        series = " ".join(p for p in (self.series_number and f"series {self.series_number}",
                                      self.series_description and f"“{self.series_description}”") if p)
        parts = [self.modality or "modality not given", _date(self.date) or "no date", series or "series not named"]
        if self.view_position:
            parts.append(f"view {self.view_position}")
        if self.instance_number:
            parts.append(f"image {self.instance_number}")
        if self.sop_class_name:
            parts.append(self.sop_class_name)
        if self.from_cxr_assist:
            parts.append("made by cxr-assist")
        return " · ".join(parts)


def _date(value: str) -> str:
    """A DICOM date (YYYYMMDD) as YYYY-MM-DD; anything else as it is."""
    return f"{value[:4]}-{value[4:6]}-{value[6:8]}" if re.fullmatch(r"\d{8}", value or "") else (value or "")


def _value(item: Mapping, keyword: str) -> str:
    """The first value of a DICOM JSON attribute as text ("" when absent); a person name as its alphabetic form."""
    from pydicom.datadict import tag_for_keyword

    attribute = item.get(f"{tag_for_keyword(keyword):08X}") or {}
    values = attribute.get("Value") or []
    if not values:
        return ""
    first = values[0]
    if isinstance(first, dict):  # PN: {"Alphabetic": "DOE^JOHN"}
        first = first.get("Alphabetic", "")
    return str(first).strip()


def _values(item: Mapping, keyword: str) -> tuple[str, ...]:
    from pydicom.datadict import tag_for_keyword

    attribute = item.get(f"{tag_for_keyword(keyword):08X}") or {}
    return tuple(str(v).strip() for v in attribute.get("Value") or [] if str(v).strip())


@contextmanager
def _asking(client, what: str, *, not_found: str | None = None) -> Iterator[None]:
    """Turn what can go wrong talking to the PACS into a :class:`PacsError` that says what to do.

    Args:
        what: what was asked for, in words ("the search").
        not_found: the message for HTTP 404 (None: the URL is not a DICOMweb service's).
    """
    import requests
    from pydicom.errors import InvalidDicomError

    where = display_url(getattr(client, "base_url", "") or "the PACS")
    unreachable = (f"The PACS at {where} could not be reached for {what}: is it running, and is {DICOMWEB_ENV} its "
                   "DICOMweb address?")
    try:
        yield
    except requests.exceptions.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else None
        if code in (401, 403):
            raise PacsError(f"The PACS at {where} refused {what} (HTTP {code}): check the user name and password in "
                            f"{CREDENTIALS_ENV} (user:password).") from None
        if code == 404 and not_found:
            raise PacsError(not_found) from None
        if code == 404:
            raise PacsError(f"{where} has no DICOMweb service for {what} (HTTP 404): check {DICOMWEB_ENV} "
                            "(Orthanc: http://host:8042/dicom-web).") from None
        raise PacsError(f"The PACS at {where} could not answer {what} (HTTP {code}).") from None
    except requests.exceptions.Timeout:
        raise PacsError(f"The PACS at {where} did not answer {what} in time; try again, or check that it is "
                        "running.") from None
    except requests.exceptions.ConnectionError:
        raise PacsError(unreachable) from None
    except requests.exceptions.RequestException as exc:  # an invalid URL, too many redirects ...
        raise PacsError(f"The PACS at {where} could not be asked for {what} ({type(exc).__name__}): check "
                        f"{DICOMWEB_ENV}.") from None
    except OSError:
        raise PacsError(unreachable) from None
    except (ValueError, KeyError, TypeError, IndexError, AttributeError, InvalidDicomError):
        raise PacsError(f"The PACS at {where} gave an answer to {what} that cxr-assist could not read.") from None


def search_studies(client, *, patient_id: str | None = None, accession_number: str | None = None,
                   limit: int = SEARCH_LIMIT) -> list[StudyRow]:
    """Studies matching a Patient ID or an Accession Number (QIDO-RS), newest first.

    Args:
        client: a ``DICOMwebClient`` (:meth:`PacsConnection.client`).
        patient_id, accession_number: what to match, exactly (at least one).
        limit: the most studies to return.

    Raises:
        ValueError: neither ``patient_id`` nor ``accession_number`` given.
        PacsError: the PACS could not be reached, refused the search, or answered what cannot be read.
    """
    filters = {k: v.strip() for k, v in (("PatientID", patient_id), ("AccessionNumber", accession_number))
               if v and v.strip()}
    if not filters:
        raise ValueError("give a Patient ID or an Accession Number to search for")
    with _asking(client, "the search"):
        found = client.search_for_studies(search_filters=filters, fields=list(_STUDY_FIELDS), limit=limit)
        rows = [StudyRow(study_instance_uid=_value(item, "StudyInstanceUID"), patient_id=_value(item, "PatientID"),
                         patient_name=_value(item, "PatientName"), accession_number=_value(item, "AccessionNumber"),
                         study_date=_value(item, "StudyDate"), study_time=_value(item, "StudyTime"),
                         study_description=_value(item, "StudyDescription"),
                         modalities=_values(item, "ModalitiesInStudy"),
                         instances=_count(_value(item, "NumberOfStudyRelatedInstances")))
                for item in found]
    rows = [r for r in rows if r.study_instance_uid]
    return sorted(rows, key=lambda r: (r.study_date, r.study_time), reverse=True)


def _count(text: str) -> int | None:
    return int(text) if text.isdigit() else None


def _is_image(sop_class_uid: str) -> bool:
    """An image storage class (what the model can read), not a report, a presentation state or a document.

    An instance whose class the PACS did not give is kept (the analysis says if it is no image).
    """
    if not sop_class_uid:
        return True
    from pydicom.uid import UID

    return "Image Storage" in UID(sop_class_uid).name


def _rank(row: InstanceRow) -> tuple:
    """CR and DX films first, then Secondary Captures, then other images; the node's own overlays last."""
    if row.modality in RADIOGRAPH_MODALITIES:
        kind = 0
    elif row.sop_class_uid.startswith(_SECONDARY_CAPTURE) or row.modality in ("SC", "OT"):
        kind = 1
    else:
        kind = 2
    return (row.from_cxr_assist, kind, _number(row.series_number), _number(row.instance_number), row.sop_instance_uid)


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("inf")


def list_instances(client, study_uid: str) -> list[InstanceRow]:
    """The image instances of a study (QIDO-RS): CR and DX films first, then Secondary Captures, then other images.

    Reports (SR), presentation states and other non-image objects are left out; the cxr-assist node's own overlays
    come last, marked.

    Args:
        client: a ``DICOMwebClient``.
        study_uid: the Study Instance UID.

    Raises:
        PacsError: the PACS could not be reached, refused, or answered what cannot be read.
    """
    with _asking(client, "the study's images"):
        found = client.search_for_instances(study_instance_uid=study_uid, fields=list(_INSTANCE_FIELDS))
        rows = [InstanceRow(
            study_instance_uid=_value(item, "StudyInstanceUID") or study_uid,
            series_instance_uid=_value(item, "SeriesInstanceUID"),
            sop_instance_uid=_value(item, "SOPInstanceUID"),
            sop_class_uid=_value(item, "SOPClassUID"),
            modality=_value(item, "Modality"),
            date=next((d for d in (_value(item, k) for k in ("ContentDate", "AcquisitionDate", "SeriesDate",
                                                            "StudyDate")) if d), ""),
            series_number=_value(item, "SeriesNumber"),
            series_description=_value(item, "SeriesDescription"),
            instance_number=_value(item, "InstanceNumber"),
            view_position=_value(item, "ViewPosition"),
            manufacturer=_value(item, "Manufacturer"),
        ) for item in found]
    rows = [r for r in rows if r.series_instance_uid and r.sop_instance_uid and _is_image(r.sop_class_uid)]
    return sorted(rows, key=_rank)


def retrieve_instance(client, study: str, series: str, instance: str) -> bytes:
    """One instance as a DICOM Part 10 file (WADO-RS), in the transfer syntax the PACS holds it in.

    Args:
        client: a ``DICOMwebClient``.
        study, series, instance: its Study, Series and SOP Instance UIDs.

    Raises:
        PacsError: the PACS could not be reached, refused, or sent something that is not a DICOM instance.
    """
    import pydicom

    with _asking(client, "the image", not_found=f"The PACS no longer has image {instance} (HTTP 404); search again."):
        # ("application/dicom", "*"): as stored, no transcoding by the PACS (cxr-assist decodes every syntax it
        # accepts on upload).
        dataset = client.retrieve_instance(study, series, instance, media_types=(("application/dicom", "*"),))
    buffer = io.BytesIO()
    try:
        pydicom.dcmwrite(buffer, dataset, enforce_file_format=True)
    except Exception as exc:  # noqa: BLE001 - whatever pydicom finds wrong, the person gets one message
        raise PacsError(f"The PACS sent instance {instance}, but it is not a DICOM file cxr-assist can read "
                        f"({type(exc).__name__}).") from None
    return buffer.getvalue()
