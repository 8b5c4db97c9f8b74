"""``shards``: run the services and drive the controller from a shell.

Services (log to stderr, stop cleanly on SIGINT/SIGTERM)::

    shards controller --listen 127.0.0.1:50051 --store var/shards.db
    shards worker examples.sheep:app --controller 127.0.0.1:50051

Client commands (``--controller``, else $SHARDS_CONTROLLER, else 127.0.0.1:50051)::

    shards define demo
    shards launch demo count-sheep --follow
    shards ps demo --watch

A failed request prints ``error: <message>`` on stderr and exits 1.

One module per group of commands, each adding its own subcommands:
``services`` (controller, worker), ``processes`` (ps, define, purge, dismiss),
``runs`` (launch, stop, runs), ``workers``. They share ``connection`` (the one
way to reach the controller), ``running`` (signals, loop, exit codes) and the
renderer, ``shards.cli_render``; ``parser`` puts them together.
"""

from __future__ import annotations

from shards.cli.parser import build_parser, main
from shards.cli.running import CliError

__all__ = ["CliError", "build_parser", "main"]
