"""Who may do what: principals, the policy file, the authorize hook and per-principal limits.

Every call to ProcessController or WorkerRegistry carries ``authorization:
Bearer <token>``. The policy file maps each token (by its SHA-256, so the file
holds no secret) to a principal: a *client* with grants (scope patterns x
actions) or a *worker* with the worker ids it may act as and the scope
patterns it may serve. A client token can never act as a worker, nor a worker
token as a client (except to launch and wait for children of its own runs).

``AuthInterceptor`` authenticates each call before the servicer runs
(UNAUTHENTICATED), counts it against the caller's in-flight limit
(RESOURCE_EXHAUSTED) and leaves the caller in a context variable; the
servicers then authorize the action on the scope (PERMISSION_DENIED) with
``Authorizer.require``. With no policy, auth is off: every call is the
``anonymous`` principal, which may do everything (loopback only, unless the
operator says otherwise; see server.py).

Policy file (TOML, or the same shape in JSON)::

    [clients.alice]
    token_sha256 = "9f86d08..."          # or a list, to rotate tokens
    grants = [
      { scopes = ["tenant-a", "tenant-a-*"], actions = ["list", "launch", "stop", "dismiss"] },
      { scopes = ["*"], actions = ["list"] },
    ]

    [workers.worker-1]
    token_sha256 = "..."
    worker_ids = ["worker-1"]           # default: the name
    scopes = ["tenant-*"]               # scope patterns it may serve; default: ["*"]

Run ``python -m shards_controller.auth new-token`` for a token and its hash.
"""

from __future__ import annotations

import contextlib
import contextvars
import fnmatch
import functools
import hashlib
import importlib
import inspect
import json
import logging
import re
import secrets
import sys
import time
import tomllib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import grpc

from shards._grpc.credentials import bearer_token
from shards._grpc.server import guarded_handler
from shards.errors import PermissionDenied, ResourceExhausted, ShardsError, Unauthenticated

log = logging.getLogger(__name__)

#: Methods under this prefix need a credential; health and reflection stay open.
PROTECTED_PREFIX = "/shards.processmanager.v1."
MAX_NAME_LENGTH = 128
_WILDCARDS = frozenset("*?[")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}")


class Action(StrEnum):
    """What a client may do in a scope. ``admin`` implies every other action."""

    LIST = "list"  # ListProcesses, GetProcess, WatchProcesses, ListRuns, GetRun, ListWorkers
    LAUNCH = "launch"
    STOP = "stop"
    DISMISS = "dismiss"
    DEFINE = "define"  # DefineProcesses, and a launch that carries a definition
    PURGE = "purge"
    ADMIN = "admin"


class Kind(StrEnum):
    CLIENT = "client"
    WORKER = "worker"
    ANONYMOUS = "anonymous"


def has_wildcards(pattern: str) -> bool:
    return any(c in _WILDCARDS for c in pattern)


def pattern_covers(allowed: str, pattern: str) -> bool:
    """True only if every scope id ``pattern`` matches is matched by ``allowed``.

    Conservative: it may answer False for a pattern that is in fact covered
    (say ``t[a]`` by ``t?``), never True for one that is not.
    """
    if allowed == "*" or pattern == allowed:
        return True
    if not has_wildcards(pattern):
        return fnmatch.fnmatchcase(pattern, allowed)
    prefix = allowed[:-1]
    return allowed.endswith("*") and not has_wildcards(prefix) and pattern.startswith(prefix)


@dataclass(frozen=True, slots=True)
class Grant:
    """Some actions on the scopes matching some patterns (``fnmatch``, case-sensitive)."""

    scopes: tuple[str, ...]
    actions: frozenset[Action]

    def _permits(self, action: Action) -> bool:
        return action in self.actions or Action.ADMIN in self.actions

    def allows(self, scope_id: str, action: Action) -> bool:
        return self._permits(action) and any(fnmatch.fnmatchcase(scope_id, p) for p in self.scopes)

    def covers(self, pattern: str, action: Action) -> bool:
        return self._permits(action) and any(pattern_covers(p, pattern) for p in self.scopes)


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller. It never holds its token."""

    name: str
    kind: Kind = Kind.CLIENT
    grants: tuple[Grant, ...] = ()
    worker_ids: tuple[str, ...] = ()  # worker: the worker ids it may act as (patterns)
    serves: tuple[str, ...] = ()  # worker: the scope patterns it may register

    @property
    def is_worker(self) -> bool:
        return self.kind is Kind.WORKER

    @property
    def is_anonymous(self) -> bool:
        return self.kind is Kind.ANONYMOUS

    def may(self, scope_id: str, action: Action) -> bool:
        """What the policy grants (the hook is asked by ``Authorizer``)."""
        if self.is_anonymous:
            return True
        return self.kind is Kind.CLIENT and any(g.allows(scope_id, action) for g in self.grants)

    def may_cover(self, pattern: str, action: Action) -> bool:
        if self.is_anonymous:
            return True
        return self.kind is Kind.CLIENT and any(g.covers(pattern, action) for g in self.grants)

    def may_act_as(self, worker_id: str) -> bool:
        if self.is_anonymous:
            return True
        return self.is_worker and any(fnmatch.fnmatchcase(worker_id, p) for p in self.worker_ids)

    def may_serve(self, pattern: str) -> bool:
        if self.is_anonymous:
            return True
        return self.is_worker and any(pattern_covers(allowed, pattern) for allowed in self.serves)


ANONYMOUS = Principal("anonymous", Kind.ANONYMOUS)


# ---------------------------------------------------------------- the policy file


class PolicyError(ValueError):
    """The policy file is malformed."""


def hash_token(token: str) -> str:
    """The SHA-256 (hex) of a token, as the policy file holds it."""
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _strings(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, str):
        return (value,)
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise PolicyError(f"{where} must be a string or a list of strings")


def _check_name(name: str, where: str) -> str:
    if _NAME.fullmatch(name) is None:
        raise PolicyError(
            f"{where}: a principal name is 1-{MAX_NAME_LENGTH} letters, digits and _ . : @ / + = - "
            "(starting with a letter or digit)"
        )
    return name


def _hashes(entry: Mapping[str, Any], where: str) -> tuple[str, ...]:
    hashes = [h.lower() for h in _strings(entry.get("token_sha256", []), f"{where}.token_sha256")]
    for h in hashes:
        if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
            raise PolicyError(f"{where}.token_sha256: {h[:8]}... is not a SHA-256 in hex")
    hashes += [hash_token(t) for t in _strings(entry.get("token", []), f"{where}.token")]
    if not hashes:
        raise PolicyError(f"{where} has no token_sha256 (or token)")
    return tuple(hashes)


def _grant(raw: Any, where: str) -> Grant:
    if not isinstance(raw, Mapping):
        raise PolicyError(f"{where} must be a table with scopes and actions")
    unknown = set(raw) - {"scopes", "actions"}
    if unknown:
        raise PolicyError(f"{where}: unknown keys {sorted(unknown)}")
    scopes = _strings(raw.get("scopes", []), f"{where}.scopes")
    names = _strings(raw.get("actions", []), f"{where}.actions")
    if not scopes or not names:
        raise PolicyError(f"{where} needs at least one scope and one action")
    if "*" in names:
        actions = frozenset(Action)
    else:
        try:
            actions = frozenset(Action(name) for name in names)
        except ValueError:
            known = ", ".join(a.value for a in Action)
            raise PolicyError(
                f"{where}.actions: {list(names)} has an unknown action (known: {known}, *)"
            ) from None
    return Grant(scopes, actions)


class Policy:
    """Tokens (by hash) -> principals."""

    def __init__(self, principals: Mapping[str, Principal]) -> None:
        self._by_hash = dict(principals)

    @property
    def principals(self) -> list[Principal]:
        return sorted(set(self._by_hash.values()), key=lambda p: (p.kind, p.name))

    def authenticate(self, token: str) -> Principal | None:
        # Looking up the hash is safe against timing: an attacker learns
        # nothing about a stored hash from how fast a wrong one is refused.
        return self._by_hash.get(hash_token(token))

    @classmethod
    def load(cls, path: str | Path) -> Policy:
        path = Path(path)
        text = path.read_text(encoding="utf-8")
        try:
            data = json.loads(text) if path.suffix.lower() == ".json" else tomllib.loads(text)
        except (ValueError, tomllib.TOMLDecodeError) as error:
            raise PolicyError(f"{path}: {error}") from None
        try:
            return cls.from_mapping(data)
        except PolicyError as error:
            raise PolicyError(f"{path}: {error}") from None

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> Policy:
        unknown = set(data) - {"clients", "workers"}
        if unknown:
            raise PolicyError(f"unknown sections {sorted(unknown)} (known: clients, workers)")
        by_hash: dict[str, Principal] = {}
        names: set[str] = set()

        def add(principal: Principal, hashes: Iterable[str], where: str) -> None:
            if principal.name in names:
                raise PolicyError(f"{where}: the name {principal.name!r} is used twice")
            names.add(principal.name)
            for h in hashes:
                if h in by_hash:
                    raise PolicyError(f"{where}: a token is also the token of {by_hash[h].name!r}")
                by_hash[h] = principal

        for section, allowed_keys in (
            ("clients", {"token", "token_sha256", "grants"}),
            ("workers", {"token", "token_sha256", "worker_ids", "scopes"}),
        ):
            entries = data.get(section, {})
            if not isinstance(entries, Mapping):
                raise PolicyError(f"[{section}] must be a table of principals")
            for name, entry in entries.items():
                where = f"{section}.{name}"
                _check_name(name, where)
                if not isinstance(entry, Mapping):
                    raise PolicyError(f"{where} must be a table")
                unknown = set(entry) - allowed_keys
                if unknown:
                    raise PolicyError(
                        f"{where}: unknown keys {sorted(unknown)} (known: {sorted(allowed_keys)})"
                    )
                hashes = _hashes(entry, where)
                if section == "clients":
                    raw_grants = entry.get("grants", [])
                    if not isinstance(raw_grants, list):
                        raise PolicyError(f"{where}.grants must be a list of tables")
                    grants = tuple(_grant(g, f"{where}.grants[{i}]") for i, g in enumerate(raw_grants))
                    add(Principal(name, Kind.CLIENT, grants=grants), hashes, where)
                else:
                    worker_ids = _strings(entry.get("worker_ids", [name]), f"{where}.worker_ids")
                    serves = _strings(entry.get("scopes", ["*"]), f"{where}.scopes")
                    add(Principal(name, Kind.WORKER, worker_ids=worker_ids, serves=serves), hashes, where)
        return cls(by_hash)


class PolicyFile:
    """A policy file, reloaded when it changes (checked at most every ``interval_s``).

    A reload that fails keeps the policy in force and logs why: a typo while
    editing never opens the door.
    """

    def __init__(self, path: str | Path, interval_s: float = 2.0) -> None:
        self.path = Path(path)
        self.interval_s = interval_s
        self._stamp = self._stat()
        self._policy = Policy.load(self.path)
        self._checked_at = time.monotonic()

    def _stat(self) -> tuple[int, int]:
        stat = self.path.stat()
        return stat.st_mtime_ns, stat.st_size

    def current(self) -> Policy:
        now = time.monotonic()
        if now - self._checked_at >= self.interval_s:
            self._checked_at = now
            try:
                stamp = self._stat()
                if stamp != self._stamp:
                    self._policy = Policy.load(self.path)
                    self._stamp = stamp
                    log.info("reloaded the auth policy from %s", self.path)
            except (OSError, PolicyError) as error:
                log.error("could not reload the auth policy (the previous one stays in force): %s", error)
        return self._policy


# ---------------------------------------------------------------- the hook

AuthorizeHook = Callable[[Principal, str, Action], bool | Awaitable[bool]]


def load_hook(spec: str) -> AuthorizeHook:
    """The function named by ``"package.module:function"``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"authorize_hook must read 'module:function', got {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"authorize_hook {spec!r} is not callable")
    hook: AuthorizeHook = target
    return hook


# ---------------------------------------------------------------- the caller of the current call


@dataclass(frozen=True, slots=True)
class Caller:
    """The principal of the current call, and the key its limits are counted under."""

    principal: Principal
    limit_key: str


_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("shards_caller", default=None)


def limit_key(principal: Principal, peer: str) -> str:
    # With auth off everybody is "anonymous": count per connection instead, so
    # one busy client does not starve the others.
    return f"anonymous@{peer}" if principal.is_anonymous else f"{principal.kind}:{principal.name}"


class Authorizer:
    """Authentication by the policy, authorization by the policy or else the hook.

    An action is allowed when the policy grants it, or else when the hook
    returns True (a hook that raises denies). Workers are never granted client
    actions; anonymous (auth off) is granted everything.
    """

    def __init__(self, policy: Policy | PolicyFile | None = None, hook: AuthorizeHook | None = None) -> None:
        if policy is None and hook is not None:
            raise ValueError("an authorize hook needs a policy file: the policy authenticates the tokens")
        self._policy = policy
        self._hook = hook

    @classmethod
    def from_settings(cls, policy_path: str, hook_spec: str) -> Authorizer:
        policy = PolicyFile(policy_path) if policy_path else None
        return cls(policy, load_hook(hook_spec) if hook_spec else None)

    @property
    def enabled(self) -> bool:
        return self._policy is not None

    @property
    def policy(self) -> Policy | None:
        policy = self._policy
        return policy.current() if isinstance(policy, PolicyFile) else policy

    def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        policy = self.policy
        if policy is None:
            return ANONYMOUS
        token = bearer_token(metadata)
        if not token:
            raise Unauthenticated("no credential: send the metadata 'authorization: Bearer <token>'")
        principal = policy.authenticate(token)
        if principal is None:
            raise Unauthenticated("the token is not known (mistyped, or revoked)")
        return principal

    def caller(self) -> Caller:
        """The caller of the current call (set by AuthInterceptor)."""
        caller = _CALLER.get()
        if caller is None:
            if self.enabled:  # fail closed: a servicer reached without the interceptor
                raise Unauthenticated("the call was not authenticated")
            return Caller(ANONYMOUS, "anonymous")
        return caller

    async def _ask_hook(self, principal: Principal, scope: str, action: Action) -> bool:
        if self._hook is None:
            return False
        try:
            answer = self._hook(principal, scope, action)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception:
            log.exception(
                "the authorize hook failed for %s (%s in %r): denied", principal.name, action, scope
            )
            return False
        return answer is True

    async def allowed(self, principal: Principal, scope_id: str, action: Action) -> bool:
        if principal.is_anonymous or principal.may(scope_id, action):
            return True
        if principal.is_worker:
            return False
        return await self._ask_hook(principal, scope_id, action)

    async def require(self, principal: Principal, scope_id: str, action: Action) -> None:
        if not await self.allowed(principal, scope_id, action):
            raise PermissionDenied(f"{principal.name} may not {action.value} in scope {scope_id!r}")

    async def may_see_worker(self, principal: Principal, patterns: Iterable[str]) -> bool:
        """True when the principal may list every scope the worker serves.

        For a wildcard pattern the hook is asked with the pattern itself as
        the scope id (not a valid scope id, so a hook that compares ids says no).
        """
        if principal.is_anonymous:
            return True
        if principal.is_worker:
            return False
        for pattern in patterns:
            if principal.may_cover(pattern, Action.LIST):
                continue
            if not await self._ask_hook(principal, pattern, Action.LIST):
                return False
        return True


# ---------------------------------------------------------------- limits


class Limits:
    """Per-principal limits: requests in flight and open watches (0: no limit)."""

    def __init__(self, max_in_flight: int = 0, max_watchers: int = 0) -> None:
        self.max_in_flight = max_in_flight
        self.max_watchers = max_watchers
        self._in_flight: dict[str, int] = {}
        self._watchers: dict[str, int] = {}

    @staticmethod
    @contextlib.contextmanager
    def _slot(counts: dict[str, int], key: str, limit: int, what: str) -> Iterator[None]:
        held = counts.get(key, 0)
        if limit and held >= limit:
            who = key.split(":", 1)[-1]
            raise ResourceExhausted(f"{who} has {held} {what} open, the limit is {limit}; retry later")
        counts[key] = held + 1
        try:
            yield
        finally:
            left = counts[key] - 1
            if left:
                counts[key] = left
            else:
                del counts[key]

    def in_flight(self, key: str) -> contextlib.AbstractContextManager[None]:
        return self._slot(self._in_flight, key, self.max_in_flight, "requests")

    def watcher(self, key: str) -> contextlib.AbstractContextManager[None]:
        return self._slot(self._watchers, key, self.max_watchers, "watches")

    def counts(self, key: str) -> tuple[int, int]:
        return self._in_flight.get(key, 0), self._watchers.get(key, 0)


# ---------------------------------------------------------------- the interceptor


class AuthInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Authenticates every call under PROTECTED_PREFIX and counts it against its caller's limit.

    Streams (watches, worker event streams) are long-lived: they do not count
    as requests in flight; watches have their own limit, taken by the servicer.
    """

    def __init__(self, authorizer: Authorizer, limits: Limits, prefix: str = PROTECTED_PREFIX) -> None:
        self._authorizer = authorizer
        self._limits = limits
        self._prefix = prefix

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not method.startswith(self._prefix):
            return handler
        counted = not (handler.request_streaming or handler.response_streaming)
        guard = functools.partial(self._guard, method=method, counted=counted)
        return guarded_handler(handler, guard, method.rsplit("/", 1)[-1])

    @contextlib.asynccontextmanager
    async def _guard(
        self, context: grpc.aio.ServicerContext[Any, Any], *, method: str, counted: bool
    ) -> AsyncIterator[None]:
        try:
            principal = self._authorizer.authenticate(context.invocation_metadata())
        except ShardsError as error:
            # Never the token itself: only that a call was refused, and why.
            log.info("refused %s from %s: %s", method, context.peer(), error.message)
            raise
        caller = Caller(principal, limit_key(principal, context.peer()))
        token = _CALLER.set(caller)
        try:
            if counted:
                with self._limits.in_flight(caller.limit_key):
                    yield
            else:
                yield
        finally:
            with contextlib.suppress(ValueError):  # closed from another context (generator finalizer)
                _CALLER.reset(token)


# ---------------------------------------------------------------- tokens for operators


def _main(argv: list[str]) -> int:
    """``new-token``: a fresh token and its hash; ``hash-token``: the hash of a token read from stdin."""
    command = argv[0] if argv else ""
    if command == "new-token":
        token = secrets.token_urlsafe(32)
        print(f"token:        {token}")
        print(f"token_sha256: {hash_token(token)}")
        return 0
    if command == "hash-token":
        token = sys.stdin.readline().strip()
        if not token:
            print("give the token on stdin", file=sys.stderr)
            return 2
        print(hash_token(token))
        return 0
    if command == "check" and len(argv) == 2:
        policy = Policy.load(argv[1])
        for principal in policy.principals:
            print(f"{principal.kind.value:7} {principal.name}")
        return 0
    print(
        "usage: python -m shards_controller.auth new-token | hash-token < token | check POLICY",
        file=sys.stderr,
    )
    return 2


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))


__all__ = [
    "ANONYMOUS",
    "Action",
    "AuthInterceptor",
    "Authorizer",
    "Caller",
    "Grant",
    "Kind",
    "Limits",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "Principal",
    "hash_token",
    "load_hook",
]
