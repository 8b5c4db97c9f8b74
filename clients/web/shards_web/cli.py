"""``shards web``: serve the web GUI until SIGINT/SIGTERM."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys

from shards_web.config import ConfigError, from_env


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--controller",
        metavar="HOST:PORT[,HOST:PORT...]",
        help="controller address(es); the leader is found among them "
        "(default: $SHARDS_WEB_CONTROLLER, $SHARDS_CONTROLLER, 127.0.0.1:50051)",
    )
    parser.add_argument(
        "--listen", metavar="HOST:PORT", help="where to serve the GUI (default 127.0.0.1:8080; port 0: any)"
    )
    parser.add_argument("--tls-cert", metavar="PEM", help="serve HTTPS with this certificate (and --tls-key)")
    parser.add_argument("--tls-key", metavar="PEM", help="the certificate's private key")
    parser.add_argument(
        "--metrics-listen",
        metavar="HOST:PORT",
        help="serve Prometheus /metrics there (PORT alone: on 127.0.0.1; default $SHARDS_WEB_METRICS_LISTEN, "
        "else off)",
    )
    parser.add_argument(
        "--allow-insecure",
        action="store_true",
        default=None,
        help="serve plain HTTP off loopback (behind a proxy that does TLS); said loudly at start-up",
    )


def run(args: argparse.Namespace) -> int:
    from shards import _logging

    _logging.setup(
        logging.DEBUG if getattr(args, "verbose", False) else logging.INFO,
        getattr(args, "log_format", "text"),
    )
    try:
        config = from_env(
            controller=args.controller,
            listen=args.listen,
            tls_cert=args.tls_cert,
            tls_key=args.tls_key,
            allow_insecure=args.allow_insecure,
            metrics_listen=args.metrics_listen,
        )
        config.check()
    except ConfigError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2

    from shards._aio import loop_factory
    from shards_web.server import serve

    async def main() -> int:
        task = asyncio.ensure_future(serve(config))
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signum, task.cancel)
        try:
            await task
        except asyncio.CancelledError:
            return 0
        except OSError as error:
            print(
                f"error: cannot serve the GUI on {config.listen}: {error.strerror or error}", file=sys.stderr
            )
            return 2
        return 0

    with asyncio.Runner(loop_factory=loop_factory()) as runner, contextlib.suppress(KeyboardInterrupt):
        return runner.run(main())
    return 130
