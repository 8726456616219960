"""Where the node sends its results: a PACS over DICOM (C-STORE) or over DICOMweb (STOW-RS).

A destination's :meth:`send` stores every dataset or raises :class:`SendError`;
the node retries a failed send with :func:`backoff_delay` and never drops a
result.
"""

from __future__ import annotations

import os
import random
import re
from collections.abc import Sequence
from dataclasses import dataclass

from pydicom import Dataset
from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

#: C-STORE statuses that mean "stored": success, and the warnings (coercion of data elements 0xB000, elements
#: discarded 0xB006, data set does not match SOP class 0xB007), which store the instance all the same.
STORED_STATUSES = frozenset({0x0000, 0xB000, 0xB006, 0xB007})
#: Where the user name and password for STOW-RS come from, as ``user:password`` (never the command line).
STOW_CREDENTIALS_ENV = "CXR_ASSIST_STOW_CREDENTIALS"

_AE_TITLE = re.compile(r"^[\x20-\x5b\x5d-\x7e]{1,16}$")  # the AE VR: 16 characters, no backslash or control codes


class SendError(RuntimeError):
    """A result could not be stored at the destination (it is kept and sent again later)."""


def check_ae_title(title: str, what: str = "AE title") -> str:
    """``title`` stripped, or ValueError unless it is a valid DICOM AE title (1-16 printable characters, no ``\\``)."""
    stripped = str(title).strip()
    if not _AE_TITLE.match(stripped):
        raise ValueError(f"{what} {title!r} is not a DICOM AE title: 1 to 16 printable characters, no backslash")
    return stripped


def backoff_delay(attempts: int, *, base: float = 2.0, cap: float = 300.0, jitter: float = 0.1,
                  rng: random.Random | None = None) -> float:
    """Seconds to wait before the next try after ``attempts`` failed sends: doubling from ``base`` up to ``cap``.

    Args:
        attempts: failed sends so far (>= 1).
        base: the first wait.
        cap: the longest wait (a PACS down for hours is tried every ``cap`` seconds, for ever).
        jitter: +- this share at random, so many nodes restarted together do not retry in step.
        rng: the random source (tests pass a seeded one).
    """
    delay = min(cap, base * 2.0 ** max(0, attempts - 1))
    return delay * (1.0 + jitter * (2.0 * (rng or random).random() - 1.0))


@dataclass(frozen=True)
class CStoreDestination:
    """A DICOM Storage SCP (the PACS) reached by C-STORE.

    Attributes:
        ae_title: the PACS's AE title (the called AE).
        host, port: where it listens.
        calling_ae_title: the node's own AE title.
        timeout: seconds for the association and each message.
    """

    ae_title: str
    host: str
    port: int
    calling_ae_title: str = "CXR_ASSIST"
    timeout: float = 30.0

    @classmethod
    def parse(cls, text: str, *, calling_ae_title: str = "CXR_ASSIST") -> CStoreDestination:
        """From ``AET@HOST:PORT`` (``--send-to``).

        Raises:
            ValueError: naming what is wrong with ``text``.
        """
        match = re.fullmatch(r"\s*([^@]+)@(\[[^\]]+\]|[^:@]+):(\d+)\s*", str(text))
        if not match:
            raise ValueError(f"--send-to {text!r} is not AET@HOST:PORT (e.g. ORTHANC@127.0.0.1:4242)")
        port = int(match.group(3))
        if not 0 < port < 65536:
            raise ValueError(f"--send-to {text!r}: the port must be between 1 and 65535")
        return cls(ae_title=check_ae_title(match.group(1), "--send-to's AE title"), host=match.group(2).strip("[]"),
                   port=port, calling_ae_title=check_ae_title(calling_ae_title))

    def describe(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port} (C-STORE)"

    def send(self, datasets: Sequence[Dataset]) -> None:
        """Store every dataset in one association.

        Raises:
            SendError: the association failed or a dataset was not stored (the status and its meaning say why).
        """
        from pynetdicom import AE

        ae = AE(ae_title=self.calling_ae_title)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.timeout
        for sop_class, syntax in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
            ae.add_requested_context(sop_class, list(dict.fromkeys([syntax, ExplicitVRLittleEndian,
                                                                    ImplicitVRLittleEndian])))
        assoc = ae.associate(self.host, self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            why = "rejected the association" if assoc.is_rejected else "could not be reached"
            raise SendError(f"{self.describe()} {why}")
        try:
            for ds in datasets:
                status = assoc.send_c_store(ds)
                code = int(status.Status) if status and "Status" in status else None
                if code not in STORED_STATUSES:
                    meaning = "no answer (the connection failed or timed out)" if code is None else f"status 0x{code:04X}"
                    comment = f": {status.ErrorComment}" if status and "ErrorComment" in status else ""
                    raise SendError(f"{self.describe()} did not store {ds.SOPInstanceUID}: {meaning}{comment}")
        finally:
            if assoc.is_established:
                assoc.release()


@dataclass(frozen=True)
class StowDestination:
    """A DICOMweb service reached by STOW-RS (``--stow URL``), with HTTP basic credentials from the environment.

    Attributes:
        url: the DICOMweb root (Orthanc: ``http://host:8042/dicom-web``).
        credentials_env: the environment variable holding ``user:password`` (empty or unset: no credentials).
        timeout: seconds for each request.
    """

    url: str
    credentials_env: str = STOW_CREDENTIALS_ENV
    timeout: float = 30.0

    def __post_init__(self) -> None:
        if not re.match(r"^https?://[^\s/]+", self.url):
            raise ValueError(f"--stow {self.url!r} is not an http:// or https:// URL of a DICOMweb service")

    def describe(self) -> str:
        return f"{self.url} (STOW-RS)"

    def _client(self):
        import requests
        from dicomweb_client.api import DICOMwebClient

        session = requests.Session()
        secret = os.environ.get(self.credentials_env, "")
        if secret:
            user, sep, password = secret.partition(":")
            if not sep:
                raise SendError(f"{self.credentials_env} must be user:password")
            session.auth = (user, password)
        client = DICOMwebClient(url=self.url.rstrip("/"), session=session, timeout=(5.0, self.timeout))
        # One try per send: the node's own backoff (kept in its state database, visible in --status) retries, and
        # dicomweb-client's retries would block the sender for about 30 s per attempt while the PACS is down.
        client.set_http_retry_params(retry=False)
        return client

    def send(self, datasets: Sequence[Dataset]) -> None:
        """Store every dataset with one STOW-RS request.

        Raises:
            SendError: the service could not be reached, refused the request, or reported a failed instance.
        """
        import requests

        try:
            response = self._client().store_instances(list(datasets))
        except requests.exceptions.HTTPError as exc:
            code = exc.response.status_code if exc.response is not None else "?"
            hint = " (check the credentials in $" + self.credentials_env + ")" if code in (401, 403) else ""
            raise SendError(f"{self.describe()} refused the results: HTTP {code}{hint}") from exc
        except (requests.exceptions.RequestException, OSError) as exc:
            raise SendError(f"{self.describe()} could not be reached: {exc}") from exc
        failed = response.get("FailedSOPSequence") if isinstance(response, Dataset) else None
        if failed:
            raise SendError(f"{self.describe()} did not store {len(failed)} of {len(datasets)} results")
