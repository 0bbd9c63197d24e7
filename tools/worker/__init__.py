"""The worker: claims tasks (``scheduler``), drives each to an end (``driver``) and takes
the vendor's results in (``intake``, shared with the vendor-callback route)."""

from tools.worker.intake import Intake, fetch_result
from tools.worker.scheduler import Worker

__all__ = ["Intake", "Worker", "fetch_result"]
