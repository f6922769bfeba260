"""The fault tests' own instruments must not report what did not happen.

A worker killed with SIGKILL can die between a request's headers and the end of its body (httpx
writes them separately).  The receiver must not count that as a delivery: the sender never saw
an answer and sends the event again, and the fault test would then see one event "arrive" twice
with different contents (a truncated one and the whole one).
"""

from __future__ import annotations

import socket
import time

import httpx

from tests.faults.harness import HttpReceiver


def _wait_for_records(receiver: HttpReceiver, n: int) -> list[dict]:
    deadline = time.monotonic() + 5
    while len(receiver.at("/")) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return receiver.at("/")


def test_a_request_cut_mid_body_is_recorded_without_a_status():
    receiver = HttpReceiver().start()
    try:
        with socket.create_connection(("127.0.0.1", receiver.port)) as sock:
            sock.sendall(b"POST /sub/all HTTP/1.1\r\nHost: test\r\nContent-Length: 100\r\n"
                         b"X-Contracts-Event-Id: c1:3\r\n\r\n{\"specversion\":")
        [cut] = _wait_for_records(receiver, 1)
        assert cut["id"] == "c1:3" and cut["status"] is None and cut["body"] == b'{"specversion":'

        # The whole request that follows is the delivery.
        r = httpx.post(f"{receiver.url}/sub/all", content=b'{"specversion":"1.0"}',
                       headers={"X-Contracts-Event-Id": "c1:3"})
        assert r.status_code == 200
        records = _wait_for_records(receiver, 2)
        assert [(x["status"], x["body"]) for x in records] == [(None, b'{"specversion":'),
                                                              (200, b'{"specversion":"1.0"}')]
    finally:
        receiver.stop()
