"""The worker's fail-stop: say why, then exit at once with status 75 (EX_TEMPFAIL), committing nothing.

Why: a worker that cannot go on correctly (a checkpoint that failed, a generation it missed, a recovery step
that never ended) must not go on at all. Its offsets stay where its last complete checkpoint committed them, so
the worker its supervisor starts next (or the member that takes its partitions) recovers the state from the
changelog and reads on from there: nothing applied twice, nothing skipped. ``os._exit``: no cleanup that could
commit, wait on the broker, or hang.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import NoReturn

log = logging.getLogger(__name__)

#: Exit status of a fail-stop (EX_TEMPFAIL: try again; the supervisor restarts the worker)
EXIT_FAIL_STOP = 75


def fail_stop(why: str, exc: BaseException | None = None) -> NoReturn:
    """Log ``why`` (and ``exc``'s traceback) at critical level and exit with :data:`EXIT_FAIL_STOP`."""
    log.critical("exiting without commit (status %d): %s", EXIT_FAIL_STOP, why, exc_info=exc)
    logging.shutdown()
    sys.stderr.flush()
    os._exit(EXIT_FAIL_STOP)
