"""Deciding: is this principal allowed this action in this scope (the policy's grants, else the hook)?

``Authorizer`` is what the servicers ask (``require``, ``allowed``,
``may_see_worker``); it also turns a call's token into its principal
(``authenticate``), which the interceptor does before the servicer runs.
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
from shards_controller.auth.principals import ANONYMOUS, CURRENT_CALLER, Action, Caller, Principal

log = logging.getLogger(__name__)

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
