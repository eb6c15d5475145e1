"""Other web sites must not drive the local server: a foreign `Origin` (a page's cross-site POST, `text/plain` so no
preflight) or a foreign `Host` (DNS rebinding) is a 403 JSON on every route, while clients that send no Origin and
the server's own pages keep working. Then the same over the wire through a real `mlx_ft serve`, and that process's
startup: no Werkzeug "development server" banner, and Ctrl-C ends it cleanly."""

import http.client
import json
import signal

import pytest

from mlx_ft.inference.engine import Engine
from mlx_ft.models import loader
from mlx_ft.server import guard
from mlx_ft.server.app import create_app
from mlx_ft.server.state import ServeConfig
from mlx_ft.services.history import History
from tests.serving import call, free_port, start_server

EVIL = "https://evil.example"
TASK_ROUTE = "/model_generate/get-model-name"  # the miners recipe's GET route


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir)))


@pytest.fixture
def make_client(engine, tmp_path):
    def make(**config):
        return create_app(
            ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", tmp_path / "runs", tasks=["miners"], **config),
            engine,
        ).test_client()

    return make


@pytest.fixture
def client(make_client):
    return make_client()


def _refused(resp, *words: str) -> bool:
    body = resp.get_json(silent=True)
    if not (isinstance(body, dict) and list(body) == ["error"]):
        return False
    error = body["error"]  # OpenAI's shape on /v1, which its clients read the message from
    message = error.get("message") if isinstance(error, dict) and resp.request.path.startswith("/v1/") else error
    return (
        resp.status_code == 403
        and isinstance(message, str)
        and "\n" not in message
        and all(w in message for w in words)
    )


def _api_messages(client) -> list:
    return client.get("/api/conversations/api").get_json()["messages"]


def test_a_foreign_sites_text_plain_posts_are_refused_and_change_nothing(client):
    client.post("/api/chat", json={"message": "你好"})  # no Origin: an API client
    assert len(_api_messages(client)) == 2
    before = client.get("/api/conversations").get_json()
    for path, body in [
        ("/api/clear", ""),
        ("/api/conversations", '{"title": "pwned"}'),
        ("/api/chat", '{"message": "hi"}'),
    ]:
        resp = client.post(path, data=body, content_type="text/plain", headers={"Origin": EVIL})
        assert _refused(resp, "cross-origin", EVIL), (path, resp.status_code, resp.data)
    assert len(_api_messages(client)) == 2, "history untouched"
    assert client.get("/api/conversations").get_json() == before


@pytest.mark.parametrize(
    "origin",
    [
        "null",
        "http://localhost:5001",
        "http://127.0.0.1",
        "https://localhost",
        "http://localhost.evil.example",
        "file://",
        "garbage",
    ],
)
def test_an_origin_that_is_not_the_servers_own_is_refused(client, origin):
    resp = client.post("/api/clear", headers={"Origin": origin})  # the test client's Host is `localhost`
    assert _refused(resp, "cross-origin"), origin


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "/runs",
        "/static/chat.js",
        "/api/info",
        "/api/conversations",
        "/v1/models",
        "/api/tasks",
        f"{TASK_ROUTE}?simple_name=x",
        "/api/nothing",
    ],
)
def test_every_route_refuses_a_foreign_origin(client, path):
    assert _refused(client.get(path, headers={"Origin": EVIL}), "cross-origin")


def test_same_origin_and_no_origin_are_allowed(client):
    assert client.post("/api/clear").get_json()["status"] == "success"
    for host, origin in [
        ("localhost", "http://localhost"),
        ("localhost:5001", "http://localhost:5001"),
        ("127.0.0.1:5001", "http://127.0.0.1:5001"),
        ("[::1]:5001", "http://[::1]:5001"),
        ("LocalHost:5001", "http://localhost:5001"),
        ("localhost:80", "http://localhost"),
    ]:
        resp = client.post("/api/clear", headers={"Host": host, "Origin": origin})
        assert resp.status_code == 200 and resp.get_json()["status"] == "success", (host, origin, resp.data)
    created = client.post(
        "/api/conversations",
        json={"title": "ok"},
        headers={"Host": "127.0.0.1:5001", "Origin": "http://127.0.0.1:5001"},
    )
    assert created.status_code == 201


@pytest.mark.parametrize(
    "host",
    [
        "evil.example",
        "evil.example:5001",
        "EVIL.example:5001",
        "127.0.0.1.evil.example",
        "localhost.evil.example:5001",
        "[::2]:5001",
        "0.0.0.0:5001",
    ],
)
@pytest.mark.parametrize("path", ["/", "/static/style.css", "/api/info", "/v1/models", f"{TASK_ROUTE}?simple_name=x"])
def test_a_foreign_host_is_refused_on_pages_apis_and_v1(client, host, path):
    resp = client.get(path, headers={"Host": host})
    assert _refused(resp, "Host", "--allow-host"), (host, path, resp.data)


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions"])
def test_the_openai_routes_refuse_foreign_origins_and_hosts(client, path):
    body = {"messages": [{"role": "user", "content": "hi"}], "prompt": "hi", "max_tokens": 1}
    assert _refused(client.post(path, json=body, headers={"Origin": EVIL}), "cross-origin")
    assert _refused(client.post(path, json=body, headers={"Host": "evil.example:5001"}), "Host", "--allow-host")


def test_a_foreign_host_post_changes_nothing(client):
    client.post("/api/chat", json={"message": "你好"})
    resp = client.post("/api/clear", headers={"Host": "evil.example:5001"})
    assert _refused(resp, "'evil.example:5001'", "--allow-host evil.example")
    assert len(_api_messages(client)) == 2


@pytest.mark.parametrize(
    "host", ["localhost", "LOCALHOST:5001", "127.0.0.1:5001", "127.0.0.1", "[::1]:5001", "[::1]", "localhost.:5001"]
)
def test_the_servers_own_names_are_allowed(client, host):
    for path in ("/", "/api/info", "/v1/models", "/static/chat.js"):
        assert client.get(path, headers={"Host": host}).status_code == 200, (host, path)


def test_allow_host_names_and_the_listen_address(make_client):
    lan = make_client(host="192.168.1.20", allowed_hosts=["MyBox.lan", "fe80::1"])
    for host in ("mybox.lan:5001", "MYBOX.LAN", "192.168.1.20:5001", "[fe80::1]:5001", "localhost:5001"):
        assert lan.get("/api/info", headers={"Host": host}).status_code == 200, host
    assert _refused(lan.get("/api/info", headers={"Host": "evil.example"}), "Host")
    # The page on the LAN name calls its own API with its own origin; another site still may not.
    ok = lan.post("/api/clear", headers={"Host": "mybox.lan:5001", "Origin": "http://mybox.lan:5001"})
    assert ok.status_code == 200
    assert _refused(
        lan.post("/api/clear", headers={"Host": "mybox.lan:5001", "Origin": "http://localhost:5001"}), "cross-origin"
    )
    wildcard = make_client(host="0.0.0.0")
    assert _refused(wildcard.get("/api/info", headers={"Host": "0.0.0.0:5001"}), "Host"), "a wildcard is no name"
    assert wildcard.get("/api/info", headers={"Host": "127.0.0.1:5001"}).status_code == 200


def test_allow_host_star_accepts_any_host_but_still_refuses_foreign_origins(make_client):
    anyhost = make_client(allowed_hosts=["*"])
    for host in ("evil.example", "evil.example:5001", "10.0.0.7:5001"):
        assert anyhost.get("/api/info", headers={"Host": host}).status_code == 200, host
    assert (
        anyhost.post(
            "/api/clear", headers={"Host": "evil.example:5001", "Origin": "http://evil.example:5001"}
        ).status_code
        == 200
    )
    assert _refused(anyhost.post("/api/clear", headers={"Host": "evil.example:5001", "Origin": EVIL}), "cross-origin")


def test_host_parsing():
    assert guard.split_host("LOCALHOST:5001") == ("localhost", 5001)
    assert guard.split_host("[::1]:5001") == ("::1", 5001)
    assert guard.split_host("[::1]") == ("::1", None)
    assert guard.split_host("::1") == ("::1", None)
    assert guard.split_host("example.com.") == ("example.com", None)
    assert guard.host_names("::", ["A.example"]) == {"127.0.0.1", "localhost", "::1", "a.example"}
    assert "10.1.2.3" in guard.host_names("10.1.2.3")


# ----------------------------------------------------------------------------------------- a real server process


def _raw(port: int, method: str, path: str, headers: dict, body: str | None = None) -> tuple[int, dict, str]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        conn.request(method, path, body=body, headers=headers)  # a Host in `headers` replaces http.client's own
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read().decode()
    finally:
        conn.close()


def test_real_server_refuses_foreign_host_and_origin_over_the_wire(qwen2_dir, tmp_path):
    port = free_port()
    proc = start_server(qwen2_dir, port, tmp_path / "chat.db", "--allow-host", "mybox.lan")
    try:
        for path in ("/", "/api/info", "/v1/models"):
            status, _, body = _raw(port, "GET", path, {"Host": f"evil.example:{port}"})
            error = json.loads(body)["error"]  # OpenAI's shape on /v1
            message = error["message"] if path.startswith("/v1/") else error
            assert status == 403 and "--allow-host evil.example" in message, (path, body)
        assert _raw(port, "GET", "/api/info", {"Host": f"mybox.lan:{port}"})[0] == 200
        assert _raw(port, "GET", "/api/info", {"Host": f"LOCALHOST:{port}"})[0] == 200
        call(port, "POST", "/api/chat", {"message": "你好"})
        status, _, body = _raw(port, "POST", "/api/clear", {"Origin": EVIL, "Content-Type": "text/plain"}, "x")
        assert status == 403 and "cross-origin" in json.loads(body)["error"]
        assert len(call(port, "GET", "/api/conversations/api")["messages"]) == 2
        status, _, body = _raw(
            port, "POST", "/api/clear", {"Origin": f"http://127.0.0.1:{port}", "Content-Type": "text/plain"}
        )
        assert status == 200 and json.loads(body)["status"] == "success"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_real_server_prints_no_development_server_banner_streams_and_ends_cleanly_on_ctrl_c(qwen2_dir, tmp_path):
    port, db = free_port(), tmp_path / "chat.db"
    proc = start_server(qwen2_dir, port, db)
    try:
        cid = call(port, "POST", "/api/conversations", {"max_tokens": 8, "temperature": 0.0})["id"]
        status, headers, body = _raw(
            port,
            "POST",
            f"/api/conversations/{cid}/messages",
            {"Content-Type": "application/json"},
            json.dumps({"content": "你好"}),
        )
        assert status == 200 and headers.get("Transfer-Encoding") == "chunked", "streamed, not buffered"
        assert "Content-Length" not in headers and body.count("data: ") >= 2
        # Ctrl-C while another answer is streaming (it used to abort: MLX's per-thread cache at interpreter exit).
        long = call(port, "POST", "/api/conversations", {"max_tokens": 4000, "temperature": 1.0})["id"]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        conn.request(
            "POST",
            f"/api/conversations/{long}/messages",
            body=json.dumps({"content": "hi"}),
            headers={"Content-Type": "application/json"},
        )
        stream = conn.getresponse()
        assert stream.readline().startswith(b"data: "), "the first piece arrives on its own"
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=30)
        stderr = proc.output()
        conn.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=30)
    assert proc.returncode == 0, stderr
    assert "development server" not in stderr.lower(), stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr, stderr
    assert "mlx_ft: serving " in stderr and f"at http://127.0.0.1:{port}" in stderr
    with History(db) as history:
        assert [m.role for m in history.messages(cid)] == ["user", "assistant"], "what was answered is kept"
