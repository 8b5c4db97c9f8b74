"""Client settings: the controller's addresses, the token and TLS, from arguments or ``SHARDS_*``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from shards._grpc.credentials import TlsConfig

DEFAULT_CONTROLLER = "127.0.0.1:50051"


def settings_from_env(environ: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Client settings from the environment: ``controller``, ``token`` and ``tls``.

    ``SHARDS_CONTROLLER`` (comma-separated addresses; default 127.0.0.1:50051),
    ``SHARDS_TOKEN`` or ``SHARDS_TOKEN_FILE`` (a file holding the token), and
    ``SHARDS_TLS_CA`` (a CA file, or ``system``), ``SHARDS_TLS_CERT`` and
    ``SHARDS_TLS_KEY`` (a client certificate for mutual TLS),
    ``SHARDS_TLS_SERVER_NAME``.
    """
    env = os.environ if environ is None else environ
    token = env.get("SHARDS_TOKEN", "")
    token_file = env.get("SHARDS_TOKEN_FILE", "")
    if not token and token_file:
        token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
    return {
        "controller": env.get("SHARDS_CONTROLLER") or DEFAULT_CONTROLLER,
        "token": token,
        "tls": TlsConfig.from_env(env),
    }


def tls_config(tls: TlsConfig | bool | None) -> TlsConfig | None:
    """``True``: TLS trusting the system's roots; ``False``/``None``: plaintext."""
    if tls is True:
        return TlsConfig()
    return tls or None
