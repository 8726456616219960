"""A real PACS for the node's tests and benchmark: Debian's Orthanc, started here on 127.0.0.1.

Orthanc runs with its own configuration in a temporary folder (storage, index,
a Lua script), HTTP and DICOM bound to the loopback, ``RemoteAccessAllowed``
false, the DICOMweb plugin loaded. Its Lua ``OnStoredInstance`` routes every CR
and DX film to the node, and never the node's own results back (skipped by the
calling AE title, and by their Manufacturer for results stored over STOW-RS).

    with Orthanc(tmp_path, node=("CXR_ASSIST", 11112)) as pacs:
        pacs.store_files([...])           # C-STORE with each file's own transfer syntax
        pacs.instances_of_study(uid)      # what the PACS holds
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ORTHANC = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
DICOMWEB_PLUGIN = "/usr/share/orthanc/plugins/libOrthancDicomWeb.so"
ROUTE_LUA = """
-- Route chest radiographs to the cxr-assist node, never its own results back.
function OnStoredInstance(instanceId, tags, metadata, origin)
   if origin['RemoteAet'] == '{node_aet}' then
      return
   end
   if tags['Manufacturer'] == 'cxr-assist' then
      return
   end
   local modality = tags['Modality']
   if modality == 'CR' or modality == 'DX' then
      SendToModality(instanceId, 'cxr')
   end
end
"""


def free_port() -> int:
    """A TCP port nobody listens on now (bound to the loopback)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def terminate(process: subprocess.Popen | None, *, timeout: float) -> None:
    """Stop a process politely (SIGTERM), and with SIGKILL when it has not ended after ``timeout`` seconds."""
    if process is None or process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


class Orthanc:
    """Orthanc in a temporary folder, stopped on exit.

    Args:
        folder: where its configuration, storage and log go.
        node: ``(AE title, port)`` of the cxr-assist node it routes films to (None: no route).
        aet: Orthanc's own AE title.
        credentials: ``(user, password)`` to require on HTTP (DICOMweb), or None for none.
    """

    def __init__(self, folder: str | os.PathLike, *, node: tuple[str, int] | None = None, aet: str = "ORTHANC",
                 credentials: tuple[str, str] | None = None):
        self.folder = Path(folder)
        self.aet = aet
        self.node = node
        self.credentials = credentials
        self.dicom_port = free_port()
        self.http_port = free_port()
        self.process: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def dicomweb(self) -> str:
        return f"{self.url}/dicom-web"

    def _config(self) -> dict:
        config = {
            "Name": "cxr-assist-test-pacs",
            "StorageDirectory": str(self.folder / "storage"),
            "IndexDirectory": str(self.folder / "storage"),
            "DicomAet": self.aet,
            "DicomPort": self.dicom_port,
            "HttpPort": self.http_port,
            "HttpBindAddress": "127.0.0.1",  # never on another interface
            "DicomBindAddress": "127.0.0.1",
            "RemoteAccessAllowed": False,
            "AuthenticationEnabled": self.credentials is not None,
            "RegisteredUsers": dict([self.credentials]) if self.credentials else {},
            "DicomModalities": {"cxr": [self.node[0], "127.0.0.1", self.node[1]]} if self.node else {},
            "DicomScuTimeout": 10,
            "LuaScripts": [str(self.folder / "route.lua")] if self.node else [],
            "Plugins": [DICOMWEB_PLUGIN],
            "DicomWeb": {"Enable": True, "Root": "/dicom-web/", "EnableWado": True, "StudiesMetadata": "Full"},
            "StorageCompression": False,
            "SaveJobs": False,
        }
        return config

    def start(self, timeout: float = 30.0) -> Orthanc:
        self.folder.mkdir(parents=True, exist_ok=True)
        if self.node:
            (self.folder / "route.lua").write_text(ROUTE_LUA.replace("{node_aet}", self.node[0]))
        (self.folder / "orthanc.json").write_text(json.dumps(self._config(), indent=2))
        log = open(self.folder / "orthanc.log", "wb")
        self.process = subprocess.Popen([ORTHANC, str(self.folder / "orthanc.json")], stdout=log, stderr=subprocess.STDOUT,
                                        cwd=self.folder)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"Orthanc exited at start: {self.log_tail()}")
            try:
                if self.get("/system").status_code == 200:
                    return self
            except requests.ConnectionError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Orthanc did not answer within {timeout} s: {self.log_tail()}")

    def stop(self) -> None:
        terminate(self.process, timeout=15)

    def __enter__(self) -> Orthanc:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def log_tail(self, lines: int = 30) -> str:
        path = self.folder / "orthanc.log"
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:]) if path.exists() else ""

    # -- REST ------------------------------------------------------------------------------------------------------

    def get(self, path: str, **kwargs) -> requests.Response:
        return requests.get(self.url + path, auth=self.credentials, timeout=30, **kwargs)

    def instances(self) -> list[dict]:
        """Every instance Orthanc holds, with its main tags (``MainDicomTags``) and its parent study's."""
        return [self.instance(i) for i in self.get("/instances").json()]

    def instance(self, orthanc_id: str) -> dict:
        info = self.get(f"/instances/{orthanc_id}").json()
        info["Tags"] = self.get(f"/instances/{orthanc_id}/simplified-tags").json()
        return info

    def file(self, orthanc_id: str) -> bytes:
        return self.get(f"/instances/{orthanc_id}/file").content

    def wait_for(self, predicate, *, timeout: float = 60.0, interval: float = 0.25):
        """Poll ``predicate(instances)`` until it returns something truthy (returned), or fail with the log."""
        deadline = time.monotonic() + timeout
        while True:
            result = predicate(self.instances())
            if result:
                return result
            if time.monotonic() > deadline:
                raise AssertionError(f"Orthanc did not get what was awaited within {timeout} s; its log:\n"
                                     f"{self.log_tail()}")
            time.sleep(interval)

    # -- DICOM -----------------------------------------------------------------------------------------------------

    def store_files(self, paths, *, calling_aet: str = "STORESCU") -> list[int]:
        """C-STORE files to Orthanc, each in its own transfer syntax (pynetdicom proposes it as it is: DCMTK's
        storescu would not propose JPEG-LS, JPEG 2000 or RLE). Returns the status of each."""
        return store(paths, host="127.0.0.1", port=self.dicom_port, called_aet=self.aet, calling_aet=calling_aet)


def store(paths, *, host: str, port: int, called_aet: str, calling_aet: str) -> list[int]:
    """C-STORE files in one association, each proposed in its own transfer syntax; the status of each (-1: none)."""
    import pydicom
    from pynetdicom import AE

    datasets = [pydicom.dcmread(p) for p in paths]
    ae = AE(ae_title=calling_aet)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 30
    for pair in {(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets}:
        ae.add_requested_context(*pair)
    assoc = ae.associate(host, port, ae_title=called_aet)
    if not assoc.is_established:
        return [-1] * len(datasets)
    statuses = []
    try:
        for ds in datasets:
            status = assoc.send_c_store(ds)
            statuses.append(int(status.Status) if status and "Status" in status else -1)
    finally:
        if assoc.is_established:
            assoc.release()
    return statuses


class NodeProcess:
    """``python -m training.node`` as a separate process (so a test can ``kill -9`` it), its log in a file.

    Args:
        inbox: the node's inbox.
        send_to: ``AET@HOST:PORT`` of the PACS, or None with ``stow``.
        allow: the calling AE titles allowed.
        stow: a DICOMweb root for STOW-RS instead of ``send_to``.
        env: extra environment (e.g. the STOW credentials).
        extra: more command-line options.
    """

    def __init__(self, inbox, *, send_to: str | None = None, allow: str = "ORTHANC,STORESCU", stow: str | None = None,
                 ae_title: str = "CXR_ASSIST", port: int | None = None, env: dict | None = None, extra=()):
        self.inbox = Path(inbox)
        self.port = port or free_port()
        self.ae_title = ae_title
        self.argv = [sys.executable, "-m", "training.node", "--port", str(self.port), "--ae-title", ae_title,
                     "--inbox", str(self.inbox), "--allow", allow, "--retry-max-delay", "2", *extra]
        self.argv += ["--stow", stow] if stow else ["--send-to", send_to]
        self.env = {**os.environ, **(env or {})}
        self.process: subprocess.Popen | None = None
        self.log_path = self.inbox.parent / f"{self.inbox.name}-node.log"

    def start(self, *, wait_ready: bool = True, timeout: float = 180.0) -> NodeProcess:
        self.inbox.parent.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")
        self._offset = self.log_path.stat().st_size
        self.process = subprocess.Popen(self.argv, stdout=self._log, stderr=subprocess.STDOUT,
                                        cwd=Path(__file__).resolve().parents[1], env=self.env)
        if wait_ready:
            self.wait_for_log("ready", timeout=timeout)
        return self

    def log(self, since_start: bool = False) -> str:
        text = self.log_path.read_bytes()
        return (text[self._offset:] if since_start else text).decode(errors="replace")

    def wait_for_log(self, needle: str, *, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.log(since_start=True):
            if self.process.poll() is not None:
                raise AssertionError(f"the node exited ({self.process.returncode}):\n{self.log()[-4000:]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"the node's log has no {needle!r} after {timeout} s:\n{self.log()[-4000:]}")
            time.sleep(0.2)

    def kill9(self) -> None:
        """Kill the node with SIGKILL: no clean-up of any kind runs."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def stop(self) -> None:
        terminate(self.process, timeout=20)
        if getattr(self, "_log", None):
            self._log.close()

    def status(self) -> dict:
        out = subprocess.run([sys.executable, "-m", "training.node", "--inbox", str(self.inbox), "--status", "--json"],
                             capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1], check=True)
        return json.loads(out.stdout)

    def store(self, paths, *, calling_aet: str = "STORESCU") -> list[int]:
        return store(paths, host="127.0.0.1", port=self.port, called_aet=self.ae_title, calling_aet=calling_aet)

    def echo(self, calling_aet: str = "STORESCU") -> int:
        """C-ECHO status (-1: no association)."""
        from pynetdicom import AE

        ae = AE(ae_title=calling_aet)
        ae.add_requested_context("1.2.840.10008.1.1")
        assoc = ae.associate("127.0.0.1", self.port, ae_title=self.ae_title)
        if not assoc.is_established:
            return -1
        status = assoc.send_c_echo()
        assoc.release()
        return int(status.Status) if status and "Status" in status else -1


def chest_films(folder, count: int, *, cases=None, seed: str = "cxr-assist-test") -> list[Path]:
    """``count`` chest films with their own SOP, series and study UIDs, cycling through transfer syntaxes.

    Synthetic in their UIDs and patient IDs only: the pixels are the real film of ``tests/dicom_sources.py``
    (``../shared/dicom/udacity_test1.dcm`` at half or quarter size), in each transfer syntax of
    ``tests/test_dicom_syntaxes.CASES`` given in ``cases``; Modality DX, as the source.
    """
    import io

    import pydicom
    from pydicom.uid import generate_uid

    from tests.data.test_dicom_syntaxes import CASES

    cases = list(cases or CASES)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(count):
        case = cases[i % len(cases)]
        ds = pydicom.dcmread(io.BytesIO(CASES[case].make()))
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=[seed, case, str(i), "sop"])
        ds.SeriesInstanceUID = generate_uid(entropy_srcs=[seed, case, str(i), "series"])
        ds.StudyInstanceUID = generate_uid(entropy_srcs=[seed, case, str(i), "study"])
        ds.PatientID = f"SYNTH-{i:03d}"
        ds.AccessionNumber = f"ACC{i:05d}"
        path = folder / f"{i:03d}-{case}.dcm"
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths
