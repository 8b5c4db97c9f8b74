"""Deciding: is this principal allowed this action in this scope (the policy's grants, else the hook)?

``Authorizer`` is what the servicers ask (``require``, ``allowed``,
``may_see_worker``); it also turns a call's token into its principal
(``authenticate``), which the interceptor does before the servicer runs: by
the policy file, else by the application's ``authenticate(token)`` hook.

Hooks (``"package.module:function"``, plain or ``async def``):

- ``authenticate(token) -> Principal | str | None``: the caller a token is,
  or None for a token it does not know (UNAUTHENTICATED). A ``str`` is a
  client of that name: with an authorize hook, the hook decides what it may
  do; without one it may do everything (as the original's controller allows
  every call when it has no auth callback). A ``Principal`` is taken as it is
  (its grants, or a worker's ids and scopes). A hook that raises refuses the call.
- ``authorize(principal, scope_id, action) -> bool``: for what the grants do not allow.
"""

from __future__ import annotations

import importlib
import inspect
import logging
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from shards._grpc.credentials import bearer_token
from shards.errors import PermissionDenied, Unauthenticated
from shards_controller.auth.policy import Policy, PolicyFile
from shards_controller.auth.principals import (
    ANONYMOUS,
    CURRENT_CALLER,
    Action,
    Caller,
    Grant,
    Kind,
    Principal,
)

log = logging.getLogger(__name__)

AuthorizeHook = Callable[[Principal, str, Action], bool | Awaitable[bool]]
Authenticated = Principal | str | None
AuthenticateHook = Callable[[str], Authenticated | Awaitable[Authenticated]]
#: What a client named by an authenticate hook may do when there is no authorize hook: everything.
_EVERYTHING = (Grant(("*",), frozenset({Action.ADMIN})),)


def load_hook(spec: str, what: str = "authorize_hook") -> Any:
    """The function named by ``"package.module:function"``."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ValueError(f"{what} must read 'module:function', got {spec!r}")
    target: Any = importlib.import_module(module_name)
    for part in attribute.split("."):
        target = getattr(target, part)
    if not callable(target):
        raise ValueError(f"{what} {spec!r} is not callable")
    return target


class Authorizer:
    """Authentication by the policy, authorization by the policy or else the hook.

    An action is allowed when the policy grants it, or else when the hook
    returns True (a hook that raises denies). Workers are never granted client
    actions; anonymous (auth off) is granted everything.
    """

    def __init__(
        self,
        policy: Policy | PolicyFile | None = None,
        hook: AuthorizeHook | None = None,
        authenticate_hook: AuthenticateHook | None = None,
    ) -> None:
        if policy is None and authenticate_hook is None and hook is not None:
            raise ValueError(
                "an authorize hook needs a policy file or an authenticate hook: one of them says who "
                "a token is"
            )
        self._policy = policy
        self._hook = hook
        self._authenticate_hook = authenticate_hook

    @classmethod
    def from_settings(cls, policy_path: str, hook_spec: str, authenticate_spec: str = "") -> Authorizer:
        policy = PolicyFile(policy_path) if policy_path else None
        hook: AuthorizeHook | None = load_hook(hook_spec) if hook_spec else None
        authenticate: AuthenticateHook | None = (
            load_hook(authenticate_spec, "authenticate_hook") if authenticate_spec else None
        )
        return cls(policy, hook, authenticate)

    @property
    def enabled(self) -> bool:
        return self._policy is not None or self._authenticate_hook is not None

    @property
    def policy(self) -> Policy | None:
        policy = self._policy
        return policy.current() if isinstance(policy, PolicyFile) else policy

    async def authenticate(self, metadata: Iterable[tuple[str, str | bytes]] | None) -> Principal:
        """The caller a call's token is: by the policy file, else by the authenticate hook."""
        if not self.enabled:
            return ANONYMOUS
        token = bearer_token(metadata)
        if not token:
            raise Unauthenticated("no credential: send the metadata 'authorization: Bearer <token>'")
        policy = self.policy
        principal = policy.authenticate(token) if policy is not None else None
        if principal is None and self._authenticate_hook is not None:
            principal = await self._ask_authenticate_hook(token)
        if principal is None:
            raise Unauthenticated("the token is not known (mistyped, or revoked)")
        return principal

    async def _ask_authenticate_hook(self, token: str) -> Principal | None:
        assert self._authenticate_hook is not None
        try:
            answer = self._authenticate_hook(token)
            if inspect.isawaitable(answer):
                answer = await answer
        except Exception:
            log.exception("the authenticate hook failed: the call is refused")  # never the token
            raise Unauthenticated("the token could not be checked (the authenticate hook failed)") from None
        if answer is None or isinstance(answer, Principal):
            if answer is not None and answer.is_anonymous:
                raise Unauthenticated("the authenticate hook may not make a caller anonymous")
            return answer
        if isinstance(answer, str) and answer:
            return Principal(answer, Kind.CLIENT, () if self._hook is not None else _EVERYTHING)
        log.error("the authenticate hook returned %s, not a Principal, a name or None", type(answer).__name__)
        raise Unauthenticated("the token could not be checked (the authenticate hook answered nonsense)")

    def caller(self) -> Caller:
        """The caller of the current call (set by AuthInterceptor)."""
        caller = CURRENT_CALLER.get()
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
