"""One torch thread and Flower's logging at ERROR for the duration of a run (the tests'
``quiet`` fixtures)."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager

import torch

from flwr_byz.simulations import runner


@contextmanager
def quiet_run() -> Iterator[None]:
    """One torch thread (restored afterwards) and Flower's log at ERROR."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with runner._flower_logging(False, logging.ERROR):
            yield
    finally:
        torch.set_num_threads(before)
