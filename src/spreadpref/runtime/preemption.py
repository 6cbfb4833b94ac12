"""SIGTERM, as SLURM and Kubernetes send it before they kill a job, handled like Ctrl-C.

Outside training the signal ends the command at once: every other stage writes its work in resumable parts,
so a resubmitted job picks up where this one stopped. While the Trainer runs, the signal only asks it to
stop: at the end of the optimizer step under way it saves a checkpoint through its own save path
(``dpo.trainer.StopOnTermination``), and the stage then ends as an interruption. The resumed job continues from
that checkpoint to the same weights as a run that was never stopped. Schedulers wait a grace period between
SIGTERM and SIGKILL (SLURM's KillWait, Kubernetes' terminationGracePeriodSeconds: 30 s by default): one
step and a checkpoint must fit in it.

Only the command line installs the handler (:func:`handle_sigterm`): a library call leaves the caller's
signal handling alone.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from types import FrameType


class Terminated(KeyboardInterrupt):
    """The job was asked to stop (SIGTERM): handled wherever Ctrl-C is, with the same exit status."""


_state = {"requested": False, "training": 0}


def requested() -> bool:
    """Whether a SIGTERM arrived (and the training loop was asked to stop at its next step)."""
    return _state["requested"]


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    _state["requested"] = True
    if not _state["training"]:
        raise Terminated()
    # In training: dpo.trainer.StopOnTermination saves a checkpoint at the end of the step and stops the loop.


def handle_sigterm() -> None:
    """Install the SIGTERM handler (main thread only; elsewhere Python cannot, and the default stays)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)


@contextlib.contextmanager
def training() -> Iterator[None]:
    """The body runs the Trainer: a SIGTERM waits for the step's end (dpo.trainer.StopOnTermination) instead of raising."""
    _state["training"] += 1
    try:
        yield
    finally:
        _state["training"] -= 1


def raise_if_requested(where: str) -> None:
    """After the Trainer returned: end the stage as an interruption if it stopped for a SIGTERM."""
    if _state["requested"]:
        raise Terminated(f"stopped by SIGTERM during {where}; its last checkpoint is saved")
