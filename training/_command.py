"""What the training commands share: their parser, the options several take, and how one runs.

Each command keeps its own ``build_parser`` (so ``--help`` is the command's)
and its ``main(argv)``, which hands the parsed options to :func:`run_command`:
that draws the user-error boundary of :mod:`training._errors` around the
command's work, so no command spells the boundary out again.
"""

from __future__ import annotations

import argparse
import logging
from collections.abc import Callable, Iterable
from typing import Any

from training._errors import USER_ERRORS, report_user_error

#: The help of --bundle where it names the bundle to read (default models/default).
BUNDLE_HELP = "model bundle folder (default models/default)"


def command_parser(command: str, doc: str, **kwargs) -> argparse.ArgumentParser:
    """The parser of ``python -m training.<command>``, described by the first paragraph of ``doc``."""
    return argparse.ArgumentParser(prog=f"python -m training.{command}", description=doc.split("\n\n")[0], **kwargs)


def add_bundle(parser: argparse.ArgumentParser, help: str = BUNDLE_HELP) -> None:
    """--bundle: the model bundle folder, default models/default."""
    parser.add_argument("--bundle", default="models/default", help=help)


def add_overrides(parser: argparse.ArgumentParser, help: str) -> None:
    """--set KEY=VALUE, repeatable: configuration keys over the TOML file's (``cxr_core.learn.config.parse_override``)."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help=help)


def progress_bar(unit: str) -> Callable[[Iterable], Iterable]:
    """A ``progress`` argument for cxr_core's jobs: a tqdm bar counting ``unit``, cleared when done."""
    from tqdm import tqdm

    return lambda items: tqdm(items, unit=unit, leave=False)


def run_command(parser: argparse.ArgumentParser, argv: list[str] | None,
                job: Callable[[argparse.Namespace], Any], *,
                then: Callable[[argparse.Namespace, Any], int | None] | None = None, log: bool = False) -> int:
    """Parse ``argv`` and run the command; a user's mistake ends it with one line on stderr and status 2.

    Args:
        parser: the command's parser (bad options exit with argparse's message and status 2).
        argv: the options (None: the command line).
        job: the work on ``args`` whose ``ValueError`` or ``OSError`` is the user's to fix
            (:data:`training._errors.USER_ERRORS`).
        then: given, runs on ``args`` and what ``job`` returned, outside that boundary: training and
            reports of what was done, where a ``ValueError`` (Keras raises them for defects) keeps its
            traceback.
        log: log INFO lines with their time on stderr, as the long-running commands do.

    Returns:
        The exit status: 2 after a user error, else what ``then`` (or, without it, ``job``) returned,
        None counting as 0.
    """
    args = parser.parse_args(argv)
    if log:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    try:
        result = job(args)
    except USER_ERRORS as exc:
        return report_user_error(exc)
    return (then(args, result) if then is not None else result) or 0
