"""Keep library chatter (transformers' load reports and progress bars) off the CLI's output."""

from __future__ import annotations


def quiet_libraries() -> None:
    from transformers.utils import logging

    logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    logging.disable_progress_bar()  # type: ignore[no-untyped-call]
