"""Tokens for operators: ``python -m shards_controller.auth new-token | hash-token | check POLICY``."""

from __future__ import annotations

import secrets
import sys

from shards_controller.auth.policy import Policy, hash_token


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


if __name__ == "__main__":
    raise SystemExit(_main(sys.argv[1:]))
