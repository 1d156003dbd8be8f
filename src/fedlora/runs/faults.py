"""Named points where a crash test kills the process: ``FEDLORA_KILL_AT=<point>:<count>``.

Crash safety is only shown by crashing.  The kill tests start a run in a subprocess with, say,
``FEDLORA_KILL_AT=checkpoint:rename:2``: the process SIGKILLs itself the second time it reaches
that point, and the test resumes the run and compares it with an uninterrupted one.  With the
variable unset (everywhere else) a point does nothing.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "FEDLORA_KILL_AT"
_reached: dict[str, int] = {}


def point(name: str) -> None:
    """Die here if ``FEDLORA_KILL_AT`` names this point and this is its counted arrival."""
    target = os.environ.get(VARIABLE)
    if not target:
        return
    where, _, count = target.rpartition(":")
    if where != name:
        return
    _reached[name] = _reached.get(name, 0) + 1
    if str(_reached[name]) == count:
        os.kill(os.getpid(), signal.SIGKILL)
