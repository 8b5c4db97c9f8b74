"""The Celery side: a Celery app on Redis (broker and result backend), its worker, and its figures.

    python -m bench.celery_side --broker redis://127.0.0.1:PORT/0 --concurrency N --sink HOST:PORT

runs a Celery worker (prefork pool, N processes) whose one task, ``bench.start``,
sends the harness the time its body started, as the Shards processes do.
``measure_latency`` and ``measure_throughput`` are the harness's side.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from celery import Celery

from bench import probe

TASK_NAME = "bench.start"
_SINK: tuple[str, int] = ("127.0.0.1", 9)


def _start(tag: str) -> None:
    probe.send(_SINK, tag, time.time_ns())


def make_app(broker_url: str) -> Celery:
    """Celery with Redis as broker and result backend; every setting not listed is Celery's default."""
    app = Celery("bench", broker=broker_url, backend=broker_url)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
    )
    app.task(name=TASK_NAME)(_start)
    return app


def settings(app: Celery, concurrency: int) -> dict[str, Any]:
    """What the report shows next to Celery's figures."""
    conf = app.conf
    return {
        "celery": __import__("celery").__version__,
        "broker": "redis (redis-server, --save '' --appendonly no, loopback)",
        "result_backend": "redis (same server)",
        "pool": "prefork",
        "concurrency": concurrency,
        "worker_prefetch_multiplier": conf.worker_prefetch_multiplier,
        "task_acks_late": conf.task_acks_late,
        "task_ignore_result": conf.task_ignore_result,
        "serializer": conf.task_serializer,
        "worker flags": "--without-gossip --without-mingle --without-heartbeat",
    }


def worker_main(argv: list[str] | None = None) -> None:
    global _SINK
    parser = argparse.ArgumentParser(prog="python -m bench.celery_side")
    parser.add_argument("--broker", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--sink", required=True)
    args = parser.parse_args(argv)
    _SINK = probe.parse_address(args.sink)
    app = make_app(args.broker)
    app.worker_main(
        [
            "worker",
            "--pool=prefork",
            f"--concurrency={args.concurrency}",
            "--loglevel=WARNING",
            "--without-gossip",
            "--without-mingle",
            "--without-heartbeat",
            "--hostname=bench@%h",
        ]
    )


# ---------------------------------------------------------------- the harness's side


async def wait_ready(app: Celery, sink: probe.Sink, timeout_s: float = 60.0) -> None:
    """Until a task sent now starts (the worker is up and consuming)."""
    deadline = time.monotonic() + timeout_s
    n = 0
    while True:
        n += 1
        tag = f"celery-ready-{n}"
        future = sink.expect(tag)
        app.send_task(TASK_NAME, args=(tag,))
        try:
            await asyncio.wait_for(future, 1.0)
            return
        except TimeoutError:
            sink.forget(tag)
            if time.monotonic() > deadline:
                raise RuntimeError("the Celery worker did not start a task within 60 s") from None


async def measure_latency(app: Celery, sink: probe.Sink, count: int, tag: str) -> list[float]:
    """Dispatch -> task body starts, one at a time (each task's result stored before the next
    is sent); milliseconds."""
    latencies = []
    for n in range(count):
        name = f"celery-lat-{tag}-{n}"
        future = sink.expect(name)
        sent = time.time_ns()
        result = app.send_task(TASK_NAME, args=(name,))
        fields = await asyncio.wait_for(future, 10.0)
        latencies.append((int(fields[0]) - sent) / 1e6)
        # One at a time, as the shards side: the next task once this one's result is stored.
        await asyncio.to_thread(result.get, timeout=10.0)
    return latencies


async def measure_throughput(
    app: Celery, sink: probe.Sink, count: int, tag: str, *, ignore_result: bool = False
) -> dict[str, float]:
    """``count`` tasks sent back to back; tasks started per second.

    Sent from a thread, so that the harness's loop keeps reading the sink.
    """
    names = [f"celery-tput-{tag}-{n}" for n in range(count)]
    futures = [sink.expect(name) for name in names]

    def publish() -> tuple[int, int]:
        first = time.time_ns()
        for name in names:
            app.send_task(TASK_NAME, args=(name,), ignore_result=ignore_result)
        return first, time.time_ns()

    first, sent_all = await asyncio.to_thread(publish)
    starts = await asyncio.wait_for(asyncio.gather(*futures), timeout=120.0)
    last_start = max(int(fields[0]) for fields in starts)
    return {
        "count": count,
        "started_per_s": count / ((last_start - first) / 1e9),
        "accepted_per_s": count / ((sent_all - first) / 1e9),
        "seconds": (last_start - first) / 1e9,
    }


if __name__ == "__main__":
    worker_main()
