"""The gateway's own logging: one configuration for every logger, uvicorn's included."""

from __future__ import annotations

import logging
import sys


def configure_logging(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    # sqlalchemy and aiosqlite are chatty at debug level; their noise hides ours.
    logging.getLogger("aiosqlite").setLevel(logging.WARNING)
