"""ListScopes and WhoAmI: which scopes a caller may see, with their counts, and what it may do.

The counts are taken from the controller's committed view (what is persisted
and published), the rights from the same ``Authorizer`` every other RPC asks,
so a scope picker never shows a scope its user could not open, and a UI hides
exactly the buttons the controller would refuse.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

from shards import validation as v
from shards.errors import PermissionDenied
from shards.models import ProcessRecord, ScopeSummary
from shards.processmanager.v1 import processmanager_pb2 as pb
from shards_controller.auth import Action, Authorizer, Principal

#: The actions WhoAmI reports, in the order a UI shows them (admin implies all of them).
SCOPE_ACTIONS = (Action.LIST, Action.LAUNCH, Action.STOP, Action.DISMISS, Action.DEFINE, Action.PURGE)


def summarize(scope_id: str, records: Iterable[ProcessRecord]) -> ScopeSummary:
    counts = Counter(record.state for record in records)
    by_state = tuple(sorted(counts.items()))
    active = sum(n for state, n in by_state if state.is_active)
    return ScopeSummary(scope_id, sum(counts.values()), by_state, active)


def summaries(committed: Mapping[str, Mapping[str, ProcessRecord]]) -> list[ScopeSummary]:
    """Every scope that has records, by scope id."""
    return [
        summarize(scope_id, records.values()) for scope_id, records in sorted(committed.items()) if records
    ]


async def visible_scopes(
    authorizer: Authorizer, principal: Principal, scopes: Iterable[ScopeSummary]
) -> list[ScopeSummary]:
    """The scopes the principal may list; a worker credential may not list scopes (as ListWorkers)."""
    if principal.is_worker:
        raise PermissionDenied(f"{principal.name} holds a worker credential, which may not list scopes")
    return [s for s in scopes if await authorizer.allowed(principal, s.scope_id, Action.LIST)]


async def who_am_i(authorizer: Authorizer, principal: Principal, scope_id: str) -> pb.WhoAmIResponse:
    v.check_optional_id(scope_id, "scope_id")
    actions: list[str] = []
    if scope_id and not principal.is_worker:
        actions = [a.value for a in SCOPE_ACTIONS if await authorizer.allowed(principal, scope_id, a)]
    return pb.WhoAmIResponse(
        principal=principal.name,
        auth_enabled=authorizer.enabled,
        kind=principal.kind.value,
        actions=actions,
    )


__all__ = ["SCOPE_ACTIONS", "summaries", "summarize", "visible_scopes", "who_am_i"]
