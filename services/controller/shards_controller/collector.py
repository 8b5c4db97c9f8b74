"""The garbage collector's settings for a controller's process (``tune``, at start-up).

A launch allocates a few hundred container objects in the controller (its
record and run, their documents, protobuf messages, futures) and frees nearly
all of them by reference counting: they hold no cycles. CPython's default
young threshold (700 net allocations) ran a young collection every few
launches, on the one loop every launch waits on. With it at 50,000,
``python -m bench.commit_path`` (FerretDB/PostgreSQL, ninth session, 4
repetitions of 2,000, twice each) went from a median of about 610 to about
665 launches/s, and about 670 with the collector off; a worker's own settings
made no difference there, so they are left alone. What is cyclic (asyncio's,
gRPC's) is still collected, a little later.

``gc.freeze`` moves what start-up made (modules, classes, functions: about
60,000 objects, never garbage) out of the full collections' way.
"""

from __future__ import annotations

import gc

THRESHOLDS = (50_000, 20, 10)


def tune() -> None:
    gc.set_threshold(*THRESHOLDS)
    gc.freeze()
