"""The worker: claims tasks (``scheduler``), drives each to an end (``driver``) and takes
the vendor's results in (``intake``; the vendor-callback route has one too). Through a
database outage its tasks wait for the store (``patience``)."""

from tools.worker.intake import Intake, fetch_result
from tools.worker.scheduler import Worker

__all__ = ["Intake", "Worker", "fetch_result"]
