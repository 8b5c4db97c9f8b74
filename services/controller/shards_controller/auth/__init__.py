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

Where a change goes:

- ``principals``: actions, grants, principals, the caller of the current call;
- ``policy``: the policy file (parse, validate, reload);
- ``authorization``: ``Authorizer`` (token to principal; grants, else the hook);
- ``authentication``: ``AuthInterceptor`` (every protected call gets its caller, or is refused);
- ``limits``: requests in flight and watches per principal;
- ``__main__``: tokens and policy checks for operators.
"""

from __future__ import annotations

from shards_controller.auth.authentication import PROTECTED_PREFIX, AuthInterceptor
from shards_controller.auth.authorization import AuthenticateHook, AuthorizeHook, Authorizer, load_hook
from shards_controller.auth.limits import Limits
from shards_controller.auth.policy import Policy, PolicyError, PolicyFile, hash_token
from shards_controller.auth.principals import (
    ANONYMOUS,
    Action,
    Caller,
    Grant,
    Kind,
    Principal,
    has_wildcards,
    limit_key,
    pattern_covers,
)

__all__ = [
    "ANONYMOUS",
    "PROTECTED_PREFIX",
    "Action",
    "AuthInterceptor",
    "AuthenticateHook",
    "AuthorizeHook",
    "Authorizer",
    "Caller",
    "Grant",
    "Kind",
    "Limits",
    "Policy",
    "PolicyError",
    "PolicyFile",
    "Principal",
    "has_wildcards",
    "hash_token",
    "limit_key",
    "load_hook",
    "pattern_covers",
]
