"""The policy file: tokens (by their SHA-256) to principals, parsed whole, and reloaded when it changes.

A file that does not parse is refused whole with the place and the reason; a
reload that fails keeps the policy in force.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import time
import tomllib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from shards_controller.auth.principals import Action, Grant, Kind, Principal

log = logging.getLogger(__name__)

MAX_NAME_LENGTH = 128
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:@/+=-]{0,127}")


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
