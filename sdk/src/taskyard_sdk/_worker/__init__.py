"""The worker (see worker.py): the public `Worker` and the error it stops with."""

from taskyard_sdk._worker.connection import WorkerStopped
from taskyard_sdk._worker.worker import Worker

__all__ = ["Worker", "WorkerStopped"]
