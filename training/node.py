"""The DICOM node: take chest films routed from a PACS, send a TID 1500 SR and an overlay back into the same study.

    python -m training.node --port 11112 --ae-title CXR_ASSIST --send-to ORTHANC@127.0.0.1:4242 \\
        --inbox /var/lib/cxr-assist/inbox --allow ORTHANC
    python -m training.node --config node.toml               # the same settings from a file (options override it)
    python -m training.node --inbox DIR --status [--json]    # what the node has received, analysed and sent

Results go back by C-STORE (``--send-to AET@HOST:PORT``) or by DICOMweb STOW-RS
(``--stow URL``; HTTP basic credentials as ``user:password`` in the environment
variable CXR_ASSIST_STOW_CREDENTIALS, never on the command line). A film is
written durably to the inbox before the PACS is told it was stored; killed and
restarted, the node sends every film's results exactly once. See docs/use/pacs.md.
"""

from __future__ import annotations

import argparse
import json
import logging
import signal
import sys
import tomllib
from pathlib import Path

from training._command import command_parser
from training._errors import USER_ERRORS, report_user_error

#: Settings a --config TOML file may hold (the option names with "_" for "-").
CONFIG_KEYS = ("port", "ae_title", "send_to", "stow", "inbox", "allow", "bundle", "host", "keep_files", "tls_cert",
               "tls_key", "tls_ca", "retry_max_delay")


def build_parser() -> argparse.ArgumentParser:
    parser = command_parser("node", __doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                            epilog="\n\n".join(__doc__.split("\n\n")[1:]))
    parser.add_argument("--config", type=Path, help="a TOML file with any of: " + ", ".join(CONFIG_KEYS))
    parser.add_argument("--port", type=int, help="the port to listen on (DICOM's registered port is 11112)")
    parser.add_argument("--ae-title", help="the node's AE title (default CXR_ASSIST)")
    parser.add_argument("--send-to", metavar="AET@HOST:PORT", help="the PACS that stores the results (C-STORE)")
    parser.add_argument("--stow", metavar="URL", help="send the results by STOW-RS to this DICOMweb root instead "
                                                      "(credentials: $CXR_ASSIST_STOW_CREDENTIALS = user:password)")
    parser.add_argument("--inbox", type=Path, help="folder for received films, results and the state database")
    parser.add_argument("--allow", metavar="AET[,AET...]", help="calling AE titles allowed to send films")
    parser.add_argument("--bundle", type=Path, help="model bundle folder (default models/default)")
    parser.add_argument("--host", help="the address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--keep-files", action="store_true", default=None,
                        help="keep films and results in the inbox after they are sent (default: removed once sent)")
    parser.add_argument("--retry-max-delay", type=float, help="longest wait between tries of a failed send, seconds "
                                                               "(default 300; failed sends are retried for ever)")
    parser.add_argument("--tls-cert", type=Path, help="TLS: the node's certificate (PEM); with --tls-key")
    parser.add_argument("--tls-key", type=Path, help="TLS: the node's private key (PEM)")
    parser.add_argument("--tls-ca", type=Path, help="TLS: accept only PACS presenting a certificate signed by this CA")
    parser.add_argument("--status", action="store_true", help="print the state of the node's inbox and exit")
    parser.add_argument("--json", action="store_true", help="with --status: as JSON")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


def _settings(args: argparse.Namespace) -> dict:
    """The options given, over the --config file's values, over the defaults."""
    settings = {"ae_title": "CXR_ASSIST", "bundle": "models/default", "host": "127.0.0.1", "keep_files": False,
                "retry_max_delay": 300.0}
    if args.config is not None:
        with open(args.config, "rb") as handle:
            try:
                from_file = tomllib.load(handle)
            except tomllib.TOMLDecodeError as exc:
                raise ValueError(f"{args.config} is not valid TOML: {exc}") from exc
        unknown = sorted(set(from_file) - set(CONFIG_KEYS))
        if unknown:
            raise ValueError(f"{args.config}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(CONFIG_KEYS)}")
        settings.update(from_file)
    settings.update({k: v for k, v in vars(args).items() if k in CONFIG_KEYS and v is not None})
    if isinstance(settings.get("allow"), str):
        settings["allow"] = [a for a in settings["allow"].split(",") if a.strip()]
    return settings


def _config(settings: dict, parser: argparse.ArgumentParser):
    from cxr_core.pacs.node import NodeConfig
    from cxr_core.pacs.sender import CStoreDestination, StowDestination

    for key in ("port", "inbox", "allow"):
        if settings.get(key) in (None, "", []):
            parser.error(f"--{key.replace('_', '-')} is required (or give it in --config)")
    if bool(settings.get("send_to")) == bool(settings.get("stow")):
        parser.error("give exactly one of --send-to AET@HOST:PORT and --stow URL: where the results go")
    if settings.get("stow"):
        destination = StowDestination(url=settings["stow"])
    else:
        destination = CStoreDestination.parse(settings["send_to"], calling_ae_title=settings["ae_title"])
    bundle = Path(settings["bundle"])
    if not (bundle / "bundle.json").is_file():
        raise ValueError(f"{bundle} is not a model bundle (no bundle.json there)")
    return NodeConfig(ae_title=settings["ae_title"], port=int(settings["port"]), inbox=Path(settings["inbox"]),
                      allow=tuple(settings["allow"]), destination=destination, bundle=bundle, host=settings["host"],
                      keep_files=bool(settings["keep_files"]), retry_cap=float(settings["retry_max_delay"]),
                      ssl_context=_ssl_context(settings))


def _ssl_context(settings: dict):
    """TLS for the listener when a certificate is given (DICOM TLS: PS3.15 B.1)."""
    import ssl

    cert, key, ca = settings.get("tls_cert"), settings.get("tls_key"), settings.get("tls_ca")
    if not cert and not key and not ca:
        return None
    if not cert or not key:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(certfile=str(cert), keyfile=str(key))
    if ca:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=str(ca))
    return context


def _status(inbox: Path, as_json: bool) -> int:
    from cxr_core.pacs.state import read_only_state
    from cxr_core.pacs.status import status_lines, status_summary

    state = read_only_state(inbox)
    try:
        if as_json:
            print(json.dumps(status_summary(state), indent=2))
        else:
            print("\n".join(status_lines(state)))
    finally:
        state.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=args.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("pynetdicom").setLevel(logging.WARNING)  # its INFO lines repeat every PDU
    try:
        settings = _settings(args)
        if args.status:
            if not settings.get("inbox"):
                parser.error("--status needs --inbox (or a --config that names it)")
            return _status(Path(settings["inbox"]), args.json)
        config = _config(settings, parser)
        from cxr_core.pacs.node import Node

        node = Node(config)
        node.start()
    except USER_ERRORS as exc:
        return report_user_error(exc)

    def stop(signum, frame) -> None:
        logging.getLogger("cxr_assist.node").info("stopping (signal %d)", signum)
        node.stop()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    try:
        node.serve_forever()
    except RuntimeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
