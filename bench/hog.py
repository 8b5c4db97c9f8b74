"""A CPU hog: ``python -m bench.hog SECONDS CPU_SECONDS`` burns ``CPU_SECONDS`` of one core, spread
evenly over ``SECONDS`` (busy 10 ms slices, idle between), then exits.

The whole-log bench runs it beside the burst's CPU twin: the same CPU the burst's shipping and
storing took, spent by a process that has nothing to do with the product, is the machine's floor
for what that much work costs other runs.
"""

from __future__ import annotations

import sys
import time

SLICE_S = 0.01


def burn(seconds: float, cpu_seconds: float) -> None:
    duty = min(1.0, max(0.0, cpu_seconds / seconds)) if seconds > 0 else 0.0
    end = time.monotonic() + seconds
    while (now := time.monotonic()) < end:
        busy_until = now + SLICE_S * duty
        while time.monotonic() < busy_until:
            pass
        time.sleep(SLICE_S * (1 - duty))


if __name__ == "__main__":
    burn(float(sys.argv[1]), float(sys.argv[2]))
