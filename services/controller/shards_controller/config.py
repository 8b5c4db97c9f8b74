"""Controller settings: one frozen object, read from the environment on demand."""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass, field, fields, replace
from typing import Any


def _env_value(raw: str, example: Any) -> Any:
    if isinstance(example, bool):
        return raw.strip().lower() in ("1", "true", "yes", "on")
    if isinstance(example, int):
        return int(raw)
    if isinstance(example, float):
        return float(raw)
    return raw


@dataclass(frozen=True, slots=True)
class ControllerConfig:
    """How a controller runs. ``from_env`` reads ``SHARDS_<FIELD>`` (upper case)."""

    listen: str = "127.0.0.1:50051"
    # What clients and workers are told to dial for the leader; defaults to ``listen``.
    advertise_address: str = ""
    # ``mongodb://...`` or a SQLite file (the embedded store).
    store: str = "var/shards.db"
    controller_id: str = field(default_factory=lambda: f"controller-{uuid.uuid4().hex[:12]}")
    # A worker silent this long is dead and its runs become ``lost``: with the
    # sweep every ``sweep_interval_s``, a run is lost at most
    # worker_timeout_s + sweep_interval_s after the worker's last heartbeat.
    worker_timeout_s: float = 3.0
    heartbeat_interval_s: float = 1.0
    sweep_interval_s: float = 0.25
    # Leader lease: renewed every ttl/3; a standby takes over at most ttl after
    # the leader's last renewal.
    lease_ttl_s: float = 2.0
    progress_flush_interval_s: float = 0.5
    dispatch_timeout_s: float = 5.0
    change_log_size: int = 20_000
    watcher_max_pending_states: int = 10_000

    @property
    def address(self) -> str:
        return self.advertise_address or self.listen

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None, **overrides: Any) -> ControllerConfig:
        env = os.environ if environ is None else environ
        config = cls()
        values: dict[str, Any] = {}
        for item in fields(cls):
            raw = env.get(f"SHARDS_{item.name.upper()}")
            if raw is not None:
                values[item.name] = _env_value(raw, getattr(config, item.name))
        values.update({key: value for key, value in overrides.items() if value is not None})
        return replace(config, **values)
