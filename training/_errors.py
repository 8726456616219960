"""How every training command reports a user's mistake: one line on stderr, exit status 2.

A wrong path, a malformed file, a bundle from elsewhere or a bad option value
is the user's to fix, so the command says what is wrong instead of printing a
traceback. Every error cxr_core raises for such input derives from
``ValueError`` (``BundleError``, ``CacheError``, ``DataFormatError`` ...), and
``OSError`` covers files that are missing or cannot be read or written.
Anything else is a defect and keeps its traceback.
"""

from __future__ import annotations

import sys

#: Exceptions a command turns into ``error: <message>`` and exit status 2.
USER_ERRORS: tuple[type[BaseException], ...] = (ValueError, OSError)

#: Exit status of a command stopped by a user error (argparse uses 2 for bad options too).
USER_ERROR_STATUS = 2


def report_user_error(exc: BaseException) -> int:
    """Print ``error: <exc>`` on stderr; return the exit status for ``main`` to return.

    Args:
        exc: one of :data:`USER_ERRORS`, whose message is written for the user.
    """
    print(f"error: {exc}", file=sys.stderr)
    return USER_ERROR_STATUS
