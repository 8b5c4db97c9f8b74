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
    # Leader lease: renewed every ttl/3; a standby tries every ttl/4. A killed
    # leader's lease runs out 2/3 ttl to ttl after the kill, so a standby leads
    # within ttl + ttl/4 (+ loading the state): under 2 s with 1.5 s.
    lease_ttl_s: float = 1.5
    progress_flush_interval_s: float = 0.5
    dispatch_timeout_s: float = 5.0
    change_log_size: int = 20_000
    watcher_max_pending_states: int = 10_000
    # The store's journal (what a watch resumes from after a restart or a
    # take-over) keeps the changes of this many newest revisions, pruned every interval; a
    # watch resuming from before them starts over with RESET and a snapshot.
    journal_keep: int = 200_000
    journal_prune_interval_s: float = 60.0
    # Schedules (cron on a definition): how often the leader looks for fire
    # times due, and how late a fire missed while no controller led may still run.
    schedule_tick_s: float = 0.1
    schedule_catch_up_s: float = 60.0
    # Whole run logs (run_logs.py): each run keeps at most this many lines and
    # bytes; past either, its oldest lines go, a chunk of 256 at a time, and
    # the run's log says how many were dropped. Lines received are stored
    # every log_flush_interval_s (and before a run's end is acknowledged).
    log_max_lines: int = 100_000
    log_max_bytes: int = 16 * 1024 * 1024
    log_flush_interval_s: float = 0.25
    # Run retention (retention.py): ended runs, their logs with them, are
    # deleted once created more than run_retention_days ago, and beyond the
    # newest run_keep_per_process runs of each process; 0: kept forever. The
    # leader prunes every run_prune_interval_s. A record's last run is kept.
    run_retention_days: float = 0.0
    run_keep_per_process: int = 0
    run_prune_interval_s: float = 60.0

    # Security (SECURITY.md). A policy file (TOML or JSON) maps tokens to
    # principals and their scopes and actions; empty: auth is off and every
    # caller may do everything.
    auth_policy: str = ""
    # "module:function" called as authorize(principal, scope_id, action) -> bool
    # for what the policy does not grant.
    authorize_hook: str = ""
    # "module:function" called as authenticate(token) -> Principal | name | None
    # for tokens the policy does not know; alone (no policy file) it turns auth
    # on, and a name it returns may do everything unless authorize_hook decides.
    authenticate_hook: str = ""
    # TLS on the controller's port (PEM files). With tls_client_ca, every
    # client and worker must show a certificate signed by it (mutual TLS).
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # Calls to workers: TLS when worker_tls_ca (the CA their certificates are
    # checked against) is set; worker_tls_cert/key: the controller's client
    # certificate for workers that require mutual TLS; worker_secret: sent as
    # ``authorization: Bearer`` to workers that require it.
    worker_tls_ca: str = ""
    worker_tls_cert: str = ""
    worker_tls_key: str = ""
    worker_secret: str = field(default="", repr=False)
    # Without auth and TLS the controller listens on loopback addresses only,
    # unless this says otherwise (e.g. behind a service mesh that does both).
    allow_insecure_non_loopback: bool = False
    # Per principal (per connection with auth off); 0: no limit.
    max_in_flight_per_principal: int = 1_000
    max_watchers_per_principal: int = 100
    # Prometheus ``/metrics`` on HOST:PORT (``:PORT`` or ``PORT``: on 127.0.0.1); empty: off.
    metrics_listen: str = ""

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
                try:
                    values[item.name] = _env_value(raw, getattr(config, item.name))
                except ValueError:
                    raise ValueError(f"SHARDS_{item.name.upper()}={raw!r} is not a valid number") from None
        values.update({key: value for key, value in overrides.items() if value is not None})
        return replace(config, **values)
