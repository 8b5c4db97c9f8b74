"""Who may do what: actions, grants (scope patterns x actions), principals, and the caller of a call.

Pure data: nothing here reads a file, a token or the network. ``policy`` makes
principals from the policy file; ``authentication`` sets the current caller;
``authorization`` decides.
"""

from __future__ import annotations

import contextvars
import fnmatch
from dataclasses import dataclass
from enum import StrEnum

_WILDCARDS = frozenset("*?[")


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


@dataclass(frozen=True, slots=True)
class Caller:
    """The principal of the current call, and the key its limits are counted under."""

    principal: Principal
    limit_key: str


CURRENT_CALLER: contextvars.ContextVar[Caller | None] = contextvars.ContextVar("shards_caller", default=None)


def limit_key(principal: Principal, peer: str) -> str:
    # With auth off everybody is "anonymous": count per connection instead, so
    # one busy client does not starve the others.
    return f"anonymous@{peer}" if principal.is_anonymous else f"{principal.kind}:{principal.name}"
