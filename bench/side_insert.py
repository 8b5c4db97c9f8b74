"""``python -m bench.side_insert mongodb://127.0.0.1:PORT/ [--count 300] [--bytes 7000]``: an idle
client's insert, for comparison with the controller's own.

Inserts, one every 10 ms, a document shaped as a commit-log entry (``_id``, ``term``, ``writer``
and a binary body of ``bytes``, the size of a busy group commit's) into a scratch collection, with
the store's write concern, and prints the p50 and p90. Run it against a bench's FerretDB while
the bench loads it (``commit_path --launches 20000``, whose FerretDB's port ``ps`` shows): what it
measures is the server's share of a commit under that load, since this client is idle and alone
in its process (bench/README.md, eleventh session).
"""

from __future__ import annotations

import argparse
import os
import time

from pymongo import MongoClient


def inserts(uri: str, count: int, size: int) -> list[float]:
    client: MongoClient[dict[str, object]] = MongoClient(uri, w="majority", journal=True)
    try:
        collection = client["shards_side_insert"]["log"]
        body, first = os.urandom(size), time.time_ns()
        took = []
        for n in range(count):
            began = time.perf_counter()
            collection.insert_one({"_id": first + n, "term": 1, "writer": "side", "zbody": body})
            took.append(time.perf_counter() - began)
            time.sleep(0.01)
        client.drop_database("shards_side_insert")
        return sorted(took)
    finally:
        client.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.side_insert")
    parser.add_argument("uri")
    parser.add_argument("--count", type=int, default=300)
    parser.add_argument("--bytes", type=int, default=7000)
    args = parser.parse_args(argv)
    took = inserts(args.uri, args.count, args.bytes)
    p50, p90 = took[len(took) // 2], took[int(len(took) * 0.9)]
    print(f"{len(took)} inserts of {args.bytes:,} bytes: p50 {p50 * 1e3:.2f} ms, p90 {p90 * 1e3:.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
