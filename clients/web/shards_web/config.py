"""The GUI server's settings: command line over ``SHARDS_WEB_*`` over the defaults.

``SHARDS_WEB_CONTROLLER`` (else ``SHARDS_CONTROLLER``), ``SHARDS_WEB_LISTEN``,
``SHARDS_WEB_TLS_CERT`` / ``SHARDS_WEB_TLS_KEY`` (HTTPS), ``SHARDS_WEB_ALLOW_INSECURE``,
``SHARDS_WEB_TOKEN`` or ``SHARDS_WEB_TOKEN_FILE`` (the GUI server's own token,
for its shared upstream watches; see ``feed``), and the client's TLS settings
towards the controller (``SHARDS_TLS_CA`` ...).
"""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from shards._grpc.credentials import TlsConfig
from shards.settings import DEFAULT_CONTROLLER

DEFAULT_LISTEN = "127.0.0.1:8080"
_TRUE = ("1", "true", "yes", "on")


class ConfigError(ValueError):
    """A setting that cannot work; the message says which and why (one line)."""


def split_addresses(value: str) -> tuple[str, ...]:
    addresses = tuple(a.strip() for a in value.split(",") if a.strip())
    if not addresses:
        raise ConfigError("--controller needs at least one HOST:PORT")
    return addresses


def parse_listen(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ConfigError(f"--listen must be HOST:PORT (port 0..65535), got {value!r}")
    return host, int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class WebConfig:
    controller: tuple[str, ...] = (DEFAULT_CONTROLLER,)
    listen: str = DEFAULT_LISTEN
    tls_cert: str = ""
    tls_key: str = ""
    allow_insecure: bool = False
    #: The GUI server's own token: its upstream watches use it (one per scope), and
    #: each browser is checked with its own token before it is served a scope.
    token: str = field(default="", repr=False)
    controller_tls: TlsConfig | None = None
    #: Idle upstream watches are closed this long after their last browser left.
    idle_watch_s: float = 30.0
    #: Prometheus ``/metrics`` on a port of its own (``PORT`` alone: on 127.0.0.1); empty: off.
    metrics_listen: str = ""

    @property
    def tls(self) -> bool:
        return bool(self.tls_cert)

    def check(self) -> None:
        host, _ = parse_listen(self.listen)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("HTTPS needs both --tls-cert and --tls-key")
        for path in (self.tls_cert, self.tls_key):
            if path and not Path(path).is_file():
                raise ConfigError(f"no such file: {path}")
        if not is_loopback(host) and not self.tls and not self.allow_insecure:
            raise ConfigError(
                f"refusing to serve the GUI on {self.listen} without HTTPS: tokens and the page would "
                "cross the network in clear. Give --tls-cert and --tls-key, or --allow-insecure "
                "(behind a proxy that does TLS)"
            )

    @property
    def insecure_warning(self) -> str:
        """The loud line printed at start-up when the GUI listens off loopback without TLS."""
        host, _ = parse_listen(self.listen)
        if is_loopback(host) or self.tls:
            return ""
        return (
            f"WARNING !!! THE WEB GUI SERVES PLAIN HTTP ON {self.listen}: tokens, cookies and every "
            "process are readable and forgeable by anyone on the network path (--allow-insecure)"
        )


def from_env(environ: Mapping[str, str] | None = None, **overrides: object) -> WebConfig:
    """Settings from ``SHARDS_WEB_*`` (and the client's TLS variables); ``overrides`` (not None) win."""
    env = os.environ if environ is None else environ
    token = env.get("SHARDS_WEB_TOKEN", "")
    token_file = env.get("SHARDS_WEB_TOKEN_FILE", "")
    if not token and token_file:
        try:
            token = Path(token_file).expanduser().read_text(encoding="utf-8").strip()
        except OSError as error:
            raise ConfigError(f"SHARDS_WEB_TOKEN_FILE: {error}") from None
    controller = env.get("SHARDS_WEB_CONTROLLER") or env.get("SHARDS_CONTROLLER") or DEFAULT_CONTROLLER
    config = WebConfig(
        controller=split_addresses(controller),
        listen=env.get("SHARDS_WEB_LISTEN") or DEFAULT_LISTEN,
        tls_cert=env.get("SHARDS_WEB_TLS_CERT", ""),
        tls_key=env.get("SHARDS_WEB_TLS_KEY", ""),
        allow_insecure=env.get("SHARDS_WEB_ALLOW_INSECURE", "").lower() in _TRUE,
        token=token,
        controller_tls=TlsConfig.from_env(env),
        metrics_listen=env.get("SHARDS_WEB_METRICS_LISTEN", ""),
    )
    given = {key: value for key, value in overrides.items() if value is not None}
    if isinstance(given.get("controller"), str):
        given["controller"] = split_addresses(str(given["controller"]))
    return replace(config, **given)  # type: ignore[arg-type]
