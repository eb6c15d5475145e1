"""`serve` runs on waitress, a production WSGI server, not Werkzeug's development one: through a real `mlx_ft serve`
process, answers still stream event by event, a chunked request body meets the same size limit as any other, no
Server header names the software or its version, and SIGTERM ends it with exit status 0."""

import http.client
import json
import re
import signal
import socket
import time

import pytest

from tests.serving import free_port, serving, start_server

pytestmark = pytest.mark.slow  # each test talks to a real serve process


@pytest.fixture(scope="module")
def port(qwen2_dir, tmp_path_factory):
    with serving([qwen2_dir], tmp_path_factory.mktemp("wsgi") / "chat.db") as port:
        yield port


def _model(port: int) -> str:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request("GET", "/v1/models")
        return json.loads(conn.getresponse().read())["data"][0]["id"]
    finally:
        conn.close()


def _chunked_post(port: int, path: str, body: bytes) -> tuple[int, dict[str, str], bytes]:
    """POST `body` with Transfer-Encoding: chunked and no Content-Length, in 64 KiB chunks."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        chunks = (body[i : i + 65536] for i in range(0, len(body), 65536))
        conn.request("POST", path, body=chunks, headers={"Content-Type": "application/json"}, encode_chunked=True)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def test_a_streamed_answer_reaches_the_client_event_by_event_as_it_is_generated(port):
    body = json.dumps(
        {
            "model": _model(port),
            "messages": [{"role": "user", "content": "Tell me a long story"}],
            "stream": True,
            "max_tokens": 100,
            "temperature": 1.0,
            "seed": 0,
        }
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    arrivals: list[tuple[float, bytes]] = []  # each recv() off the raw socket, as the client's kernel handed it over
    with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
        s.sendall(head + body)
        raw = b""
        while not raw.endswith(b"0\r\n\r\n"):  # the chunked body's last chunk
            data = s.recv(65536)
            if not data:
                break
            raw += data
            arrivals.append((time.perf_counter(), data))
    assert raw.startswith(b"HTTP/1.1 200 ") and b"Transfer-Encoding: chunked" in raw.split(b"\r\n\r\n", 1)[0], raw[:500]
    events = raw.count(b"data: {")
    with_events = [(t, d) for t, d in arrivals if b"data: " in d]
    assert events >= 20 and b"data: [DONE]" in raw, raw[-500:]
    # Written to the socket one event at a time as each token comes, not gathered until the answer is done: the
    # first event arrives on its own, long before the last, and the events come in many separate reads.
    first, last = with_events[0][0], arrivals[-1][0]
    assert with_events[0][1].count(b"data: {") < events / 2, "the first read already held most of the answer"
    assert len(with_events) >= 10, f"{events} events came in only {len(with_events)} reads"
    assert last - first > 0.05, "every event came at once"


def test_a_chunked_body_over_the_json_limit_is_a_413_json_error_not_invalid_json(port):
    model = _model(port)
    small = json.dumps({"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}).encode()
    status, _, raw = _chunked_post(port, "/v1/chat/completions", small)
    assert status == 200 and json.loads(raw)["choices"], "a chunked body reaches the app whole"

    big = json.dumps({"model": model, "messages": [{"role": "user", "content": "x" * (3 << 19)}]}).encode()  # 1.5 MiB
    for path in ("/v1/chat/completions", "/api/chat"):
        status, headers, raw = _chunked_post(port, path, big)
        assert status == 413 and headers["Content-Type"] == "application/json", (path, status, raw[:300])
        error = json.loads(raw)["error"]
        message = error["message"] if path.startswith("/v1/") else error
        assert "too large" in message and "invalid JSON" not in message, (path, raw[:300])


def test_a_body_declared_larger_than_any_route_takes_is_refused_before_it_is_read(port):
    with socket.create_connection(("127.0.0.1", port), timeout=60) as s:
        s.sendall(
            f"POST /api/chat HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {1 << 30}\r\n\r\n".encode()
        )
        raw = b""
        while data := s.recv(65536):
            raw += data
    assert raw.startswith(b"HTTP/1.1 413 "), raw[:300]
    assert not re.search(rb"waitress|werkzeug", raw, re.I), raw


def test_no_server_header_names_the_server_or_its_version(port):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        for path in ("/api/info", "/", "/no-such-page"):
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            server = resp.getheader("Server") or ""
            assert not re.search(r"werkzeug|waitress|python|\d", server, re.I), (path, server)
    finally:
        conn.close()


def test_sigterm_while_an_answer_streams_ends_serve_with_exit_status_0(qwen2_dir, tmp_path):
    port = free_port()
    proc = start_server(qwen2_dir, port, tmp_path / "chat.db")
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        body = {
            "model": _model(port),
            "messages": [{"role": "user", "content": "hi"}],
            "stream": True,
            "max_tokens": 4000,
            "temperature": 1.0,
        }
        conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
        assert conn.getresponse().readline().startswith(b"data: "), "the first piece arrives on its own"
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # waitress gives running requests 5 s, then serve leaves
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    output = proc.output()
    assert proc.returncode == 0, output[-4000:]
    assert "Traceback" not in output and "terminate called" not in output, output[-4000:]
    assert "mlx_ft: serving " in output and f"at http://127.0.0.1:{port}" in output
