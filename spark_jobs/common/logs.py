"""Logging with the run id on every line, so interleaved step logs stay attributable."""

from __future__ import annotations

import logging
import sys

_FORMAT = "%(asctime)s %(levelname)s [run=%(run_id)s step=%(step)s] %(name)s: %(message)s"


class _RunContext(logging.Filter):
    def __init__(self, run_id: str, step: str) -> None:
        super().__init__()
        self.run_id = run_id
        self.step = step

    def filter(self, record: logging.LogRecord) -> bool:
        record.run_id = self.run_id
        record.step = self.step
        return True


def configure_logging(run_id: str, step: str, level: str = "INFO") -> None:
    """Send the `spark_jobs` loggers to stderr, tagged with run id and step."""
    logger = logging.getLogger("spark_jobs")
    for handler in list(logger.handlers):
        if getattr(handler, "_llm_decoder", False):
            logger.removeHandler(handler)
    handler = logging.StreamHandler(sys.stderr)
    handler._llm_decoder = True  # type: ignore[attr-defined]
    handler.setFormatter(logging.Formatter(_FORMAT))
    handler.addFilter(_RunContext(run_id, step))
    logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    # py4j is chatty at INFO.
    logging.getLogger("py4j").setLevel(logging.WARNING)
