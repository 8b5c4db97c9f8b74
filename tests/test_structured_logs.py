"""--log-format json: one JSON object per line, with the run where one applies, and never a secret."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest

from shards import Client, ProcessState, Unauthenticated
from shards._logging import JsonFormatter, Redact, redact, register_secret, run_context
from tests.support.processes import Service
from tests.support.waiting import assert_eventually

S = ProcessState
# Long and distinctive, so that any of them in a log line is found by a plain search.
ADMIN = "admin-7c1e0f4b9d2a48e6b5f3a1c9e7d2b4f6"
WORKER = "worker-3b8d6e1f0a9c47b2e5d4f7a6c1b0e9d8"
WRONG = "wrong-9e2f4a6c8b1d3f5e7a9c0b2d4f6e8a1c"
SECRET = "between-5d7f9b1e3a6c8e0f2b4d6a8c0e2f4b6d"
POLICY = f"""
[clients.admin]
token = "{ADMIN}"
grants = [{{ scopes = ["*"], actions = ["*"] }}]

[workers.w1]
token = "{WORKER}"
"""


def json_lines(text: str) -> list[dict[str, object]]:
    lines = []
    for line in text.splitlines():
        if not line.strip():
            continue
        record = json.loads(line)  # every line is one JSON object
        assert isinstance(record, dict), line
        assert {"ts", "level", "logger", "message"} <= record.keys(), line
        lines.append(record)
    return lines


@pytest.mark.e2e
def test_services_log_one_json_object_per_line_with_the_run_and_never_a_secret(tmp_path: Path) -> None:
    policy = tmp_path / "policy.toml"
    policy.write_text(POLICY)
    controller = Service(
        [
            "controller",
            "--listen",
            "127.0.0.1:0",
            "--store",
            str(tmp_path / "s.db"),
            "--log-format",
            "json",
            "-v",
        ],
        tmp_path / "controller.log",
        env={"SHARDS_AUTH_POLICY": str(policy), "SHARDS_WORKER_SECRET": SECRET},
    )
    worker: Service | None = None
    try:
        ready = controller.wait_for(re.compile(r"controller ready: listening on (\S+?)[ \"]"))
        address = ready.group(1)
        worker = Service(
            [
                "worker",
                "tests.support.logging_apps:LOGGING_APP",
                "--controller",
                address,
                "--worker-id",
                "w1",
                "--log-format",
                "json",
                "-v",
            ],
            tmp_path / "worker.log",
            env={"SHARDS_WORKER_TOKEN": WORKER, "SHARDS_WORKER_SECRET": SECRET},
        )
        with Client(address, token=ADMIN) as client:
            assert_eventually(lambda: any(w.worker_id == "w1" for w in client.list_workers()), timeout_s=30)
            talked = client.launch_process("farm", "talkative")
            assert client.wait_run(talked.run_id).state is S.DONE
            broke = client.launch_process("farm", "broken")
            assert client.wait_run(broke.run_id).state is S.FAILED
        with Client(address, token=WRONG) as intruder, pytest.raises(Unauthenticated):
            intruder.list_processes("farm")
        with Client(address, token=f"{WORKER}") as misused, pytest.raises(Exception):  # noqa: B017
            misused.list_processes("farm")  # a worker credential on a client call: refused
    finally:
        if worker is not None:
            worker.stop()
        controller.stop()
    worker_output, controller_output = worker.output() if worker else "", controller.output()
    for output in (worker_output, controller_output):
        for secret in (ADMIN, WORKER, WRONG, SECRET):
            assert secret not in output
    worker_lines, controller_lines = json_lines(worker_output), json_lines(controller_output)
    assert any(line["level"] == "debug" for line in controller_lines)  # -v: debug lines were written too
    farmer = [line for line in worker_lines if line["logger"] == "tests.farmer"]
    assert farmer and farmer[0]["message"] == "counting the sheep of farm"
    assert (farmer[0]["run_id"], farmer[0]["scope_id"], farmer[0]["process_id"]) == (
        talked.run_id,
        "farm",
        "talkative",
    )
    refused = [line for line in controller_lines if "refused" in str(line["message"])]
    assert refused, "the bad token's refusal is logged (without the token)"


def test_a_bearer_token_or_a_registered_secret_in_a_message_is_redacted() -> None:
    register_secret("a-registered-secret-0123")
    assert (
        redact("sent Authorization: Bearer abc.def-123 to x") == "sent Authorization: Bearer [redacted] to x"
    )
    assert redact("the secret is a-registered-secret-0123!") == "the secret is [redacted]!"
    assert redact("short words stay") == "short words stay"

    record = logging.LogRecord(
        "t", logging.ERROR, __file__, 1, "token %s", ("a-registered-secret-0123",), None
    )
    assert Redact().filter(record)
    with run_context(run_id="r-1", scope_id="farm", process_id="count"):
        line = json.loads(JsonFormatter().format(record))
    assert line["message"] == "token [redacted]"
    assert (line["run_id"], line["scope_id"], line["process_id"]) == ("r-1", "farm", "count")
    outside = json.loads(JsonFormatter().format(record))
    assert "run_id" not in outside
