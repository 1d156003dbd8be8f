"""Named points where a crash test kills or freezes the process: ``FEDLORA_KILL_AT=<point>:<n>``.

Crash safety is only shown by crashing.  The kill tests start a run in a subprocess with, say,
``FEDLORA_KILL_AT=checkpoint:rename:2``: the process SIGKILLs itself the second (``n``-th) time
it reaches that point, and the test resumes the run and compares it with an uninterrupted one.
``FEDLORA_STOP_AT`` (same form) SIGSTOPs the process instead: it hangs without dying, the fault
a timeout must catch.  With the variables unset (everywhere else) a point does nothing.
"""

from __future__ import annotations

import os
import signal

VARIABLE = "FEDLORA_KILL_AT"
STOP_VARIABLE = "FEDLORA_STOP_AT"
_SIGNALS = {VARIABLE: signal.SIGKILL, STOP_VARIABLE: signal.SIGSTOP}
_reached: dict[tuple[str, str], int] = {}


def point(name: str) -> None:
    """Die (or freeze) here if a fault variable names this point and this is its counted arrival."""
    for variable, sent in _SIGNALS.items():
        target = os.environ.get(variable)
        if not target:
            continue
        where, _, count = target.rpartition(":")
        if where != name:
            continue
        key = (variable, name)
        _reached[key] = _reached.get(key, 0) + 1
        if str(_reached[key]) == count:
            os.kill(os.getpid(), sent)
