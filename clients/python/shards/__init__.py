"""Shards Process Manager: run, stop and watch named background processes.

The client side lives here (``Client``, ``AsyncClient``, the models and
errors); process code and workers are in ``shards_worker``, the controller in
``shards_controller``.
"""

from shards._grpc.credentials import TlsConfig
from shards.aio import AsyncClient
from shards.client import Client
from shards.errors import (
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    ShardsError,
    Unauthenticated,
    Unavailable,
)
from shards.models import (
    DefineResult,
    LaunchResult,
    ProcessInfo,
    ProcessRecord,
    Progress,
    RetryPolicy,
    Run,
    WatchEvent,
    WatchEventType,
    WorkerInfo,
)
from shards.run_logs import RunLogPage
from shards.states import ProcessState

__all__ = [
    "AsyncClient",
    "Client",
    "DefineResult",
    "FailedPrecondition",
    "InvalidArgument",
    "LaunchResult",
    "NotFound",
    "PermissionDenied",
    "ProcessInfo",
    "ProcessRecord",
    "ProcessState",
    "Progress",
    "ResourceExhausted",
    "RetryPolicy",
    "Run",
    "RunLogPage",
    "ShardsError",
    "TlsConfig",
    "Unauthenticated",
    "Unavailable",
    "WatchEvent",
    "WatchEventType",
    "WorkerInfo",
]
