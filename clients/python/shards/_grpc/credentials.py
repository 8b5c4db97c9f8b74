"""TLS and bearer tokens for every connection: clients, workers and the controller.

- ``TlsConfig``: the client side of TLS (the CA to trust, and a client
  certificate for mutual TLS); ``ServerTls``: the server side (certificate,
  key, and with ``client_ca`` mutual TLS: a client without a certificate
  signed by that CA cannot even connect).
- ``bearer_interceptors``: client interceptors that send ``authorization:
  Bearer <token>`` with every call (on TLS and plaintext channels alike, so loopback
  set-ups and tests need no certificates).
- ``CallerGuard``: a server interceptor that lets only one caller in (a
  worker uses it so that only the controller can call it): by a shared secret
  in the same ``authorization`` header, and/or by the name on the caller's
  client certificate.

Secrets never appear in a ``repr`` and are compared in constant time.
"""

from __future__ import annotations

import contextlib
import hmac
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from shards._grpc.server import guarded_handler
from shards.errors import PermissionDenied, Unauthenticated

AUTHORIZATION_KEY = "authorization"
BEARER = "bearer"
#: A worker's own key: the controller sends it with every call to that worker.
WORKER_KEY_METADATA = "shards-worker-key"

PemSource = str | Path | bytes


def read_pem(source: PemSource) -> bytes:
    """PEM bytes from bytes (as they are), or from a file path."""
    if isinstance(source, bytes):
        return source
    return Path(source).expanduser().read_bytes()


@dataclass(frozen=True, slots=True)
class TlsConfig:
    """How a client (or a worker, or the controller calling workers) checks the server.

    ``ca``: the CA certificate(s) to trust (PEM, as bytes or a file path);
    empty: the system's roots. ``cert`` and ``key``: a client certificate for
    mutual TLS. ``server_name``: the name to expect on the server certificate
    when it differs from the host dialled (an address by IP, a test CA, ...).
    """

    ca: PemSource = b""
    cert: PemSource = b""
    key: PemSource = field(default=b"", repr=False)
    server_name: str = ""

    def __post_init__(self) -> None:
        if bool(self.cert) != bool(self.key):
            raise ValueError("a client certificate needs both cert and key")

    def channel_credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(
            root_certificates=read_pem(self.ca) if self.ca else None,
            private_key=read_pem(self.key) if self.key else None,
            certificate_chain=read_pem(self.cert) if self.cert else None,
        )

    def channel_options(self) -> list[tuple[str, Any]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []

    @classmethod
    def from_env(cls, environ: Mapping[str, str], prefix: str = "SHARDS_TLS_") -> TlsConfig | None:
        """``<prefix>CA``, ``CERT``, ``KEY``, ``SERVER_NAME`` (file paths); None when none is set.

        ``<prefix>CA=system`` trusts the system's roots.
        """
        values = {
            name: environ.get(prefix + name.upper(), "") for name in ("ca", "cert", "key", "server_name")
        }
        if not any(values.values()):
            return None
        if values["ca"] == "system":
            values["ca"] = ""
        return cls(values["ca"], values["cert"], values["key"], values["server_name"])


@dataclass(frozen=True, slots=True)
class ServerTls:
    """A server's certificate and key; with ``client_ca``, mutual TLS is required."""

    cert: PemSource
    key: PemSource = field(repr=False)
    client_ca: PemSource = b""

    @property
    def mutual(self) -> bool:
        return bool(self.client_ca)

    def server_credentials(self) -> grpc.ServerCredentials:
        return grpc.ssl_server_credentials(
            [(read_pem(self.key), read_pem(self.cert))],
            root_certificates=read_pem(self.client_ca) if self.client_ca else None,
            require_client_auth=self.mutual,
        )


def make_channel(
    target: str,
    *,
    tls: TlsConfig | None = None,
    token: str = "",
    options: Iterable[tuple[str, Any]] = (),
    headers: Iterable[tuple[str, str]] = (),
) -> grpc.aio.Channel:
    """An aio channel to ``target``: TLS when ``tls`` is given, plaintext otherwise; with a token
    and any other ``headers`` on every call."""
    interceptors: list[Any] = bearer_interceptors(token) if token else []
    for key, value in headers:
        interceptors += header_interceptors(key, value)
    all_options = list(options)
    if tls is None:
        return grpc.aio.insecure_channel(target, options=all_options, interceptors=interceptors or None)
    all_options += tls.channel_options()
    return grpc.aio.secure_channel(
        target, tls.channel_credentials(), options=all_options, interceptors=interceptors or None
    )


# ---------------------------------------------------------------- tokens, client side


def check_token(token: str) -> str:
    """``token`` if it can travel in a header: non-empty, printable, no spaces."""
    if not token or any(c.isspace() for c in token) or not token.isprintable():
        raise ValueError("a token is a non-empty string without spaces or control characters")
    return token


class _Bearer:
    """Adds a header (``authorization: Bearer <token>``, say) to the metadata of a call."""

    def __init__(self, header: tuple[str, str]) -> None:
        self._header = header

    def __repr__(self) -> str:
        return f"{type(self).__name__}(<secret>)"

    def _details(self, details: Any) -> Any:
        metadata = grpc.aio.Metadata(
            *((key, value) for key, value in (details.metadata or ()) if key != self._header[0]),
            self._header,
        )
        return details._replace(metadata=metadata)


# grpc.aio files an interceptor under the first call kind it implements only:
# one class per kind.
class _BearerUnaryUnary(_Bearer, grpc.aio.UnaryUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_unary(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerUnaryStream(_Bearer, grpc.aio.UnaryStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_unary_stream(self, continuation: Any, client_call_details: Any, request: Any) -> Any:
        return await continuation(self._details(client_call_details), request)


class _BearerStreamUnary(_Bearer, grpc.aio.StreamUnaryClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_unary(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


class _BearerStreamStream(_Bearer, grpc.aio.StreamStreamClientInterceptor):  # type: ignore[type-arg]
    async def intercept_stream_stream(
        self, continuation: Any, client_call_details: Any, request_iterator: Any
    ) -> Any:
        return await continuation(self._details(client_call_details), request_iterator)


def bearer_interceptors(token: str) -> list[Any]:
    """Client interceptors that send ``authorization: Bearer <token>`` with every call."""
    return header_interceptors(AUTHORIZATION_KEY, f"Bearer {check_token(token)}")


def header_interceptors(key: str, value: str) -> list[Any]:
    """Client interceptors that send the header ``key: value`` with every call."""
    kinds = (_BearerUnaryUnary, _BearerUnaryStream, _BearerStreamUnary, _BearerStreamStream)
    return [cls((key, value)) for cls in kinds]


# ---------------------------------------------------------------- tokens, server side


def bearer_token(metadata: Iterable[tuple[str, str | bytes]] | None) -> str:
    """The token of the ``authorization: Bearer <token>`` header; "" when absent.

    Unauthenticated when the header is there but malformed, or given twice.
    """
    values = [value for key, value in (metadata or ()) if key == AUTHORIZATION_KEY]
    if not values:
        return ""
    if len(values) > 1:
        raise Unauthenticated("send one authorization header, not several")
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != BEARER or not token:
        raise Unauthenticated("the authorization header must read 'Bearer <token>'")
    return token


def same_secret(given: str, expected: str) -> bool:
    """Constant-time comparison of two secrets."""
    return hmac.compare_digest(given.encode("utf-8"), expected.encode("utf-8"))


def peer_names(context: grpc.aio.ServicerContext[Any, Any]) -> set[str]:
    """The names on the caller's verified client certificate (common name and DNS/URI SANs)."""
    names: set[str] = set()
    auth = context.auth_context() or {}
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, ()):
            names.add(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value))
    return names


class CallerGuard(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Lets only the expected caller call the methods under ``prefix``.

    ``secret``: the caller must send ``authorization: Bearer <secret>``.
    ``allowed_peers``: the caller's client certificate (mutual TLS) must carry
    one of these names (common name or SAN). ``key``: the caller must send it as
    ``shards-worker-key`` (a worker's own, handed to its controller at
    registration). Each one given must hold. With none, everyone may call.
    Health and reflection stay open to everyone.
    """

    def __init__(
        self, prefix: str, *, secret: str = "", allowed_peers: Iterable[str] = (), key: str = ""
    ) -> None:
        self._prefix = prefix
        self._secret = secret
        self._allowed_peers = frozenset(allowed_peers)
        self._key = key

    def __repr__(self) -> str:
        return f"CallerGuard({self._prefix!r}, secret={'<set>' if self._secret else '<none>'})"

    @property
    def active(self) -> bool:
        return bool(self._secret or self._allowed_peers or self._key)

    @contextlib.asynccontextmanager
    async def _check(self, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[None]:
        if self._secret:
            token = bearer_token(context.invocation_metadata())
            if not token:
                raise Unauthenticated("this server only takes calls from its controller: no credential sent")
            if not same_secret(token, self._secret):
                raise Unauthenticated("this server only takes calls from its controller: wrong credential")
        if self._allowed_peers and not peer_names(context) & self._allowed_peers:
            raise PermissionDenied("this server only takes calls from its controller's certificate")
        if self._key:
            keys = [v for k, v in context.invocation_metadata() or () if k == WORKER_KEY_METADATA]
            given = keys[0] if len(keys) == 1 and isinstance(keys[0], str) else ""
            if not same_secret(given, self._key):
                raise Unauthenticated("this server only takes calls from the controller it registered with")
        yield

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Any],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if handler is None or not self.active or not handler_call_details.method.startswith(self._prefix):
            return handler
        return guarded_handler(handler, self._check, handler_call_details.method)
