"""The web server: every route and error through Flask's test client, then a real server process with 16 concurrent
streaming chats and a restart. The model is the tiny random Qwen2 fixture (its answers are noise, but greedy noise:
the same conversation always gets the same answer, which is what lets the tests see any crossing of streams)."""

import json
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from mlx_ft import cli
from mlx_ft.errors import UserError
from mlx_ft.inference.engine import Engine
from mlx_ft.models import loader
from mlx_ft.server.app import check_port, create_app
from mlx_ft.server.state import ServeConfig
from tests.conftest import REPO
from tests.serving import call, free_port, start_server


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir)))


@pytest.fixture
def client(engine, tmp_path):
    runs = tmp_path / "runs"
    (runs / "20260101-000000").mkdir(parents=True)
    (runs / "20260101-000000" / "config.yaml").write_text("model: tiny\nfine_tune_type: lora\niters: 10\n")
    (runs / "20260101-000000" / "metrics.jsonl").write_text(
        "".join(
            json.dumps(r) + "\n"
            for r in [
                {"step": 0, "val_loss": 3.0},
                {"step": 5, "loss": 2.5},
                {"step": 10, "loss": 2.0},
                {"step": 10, "val_loss": 2.2},
            ]
        )
    )
    app = create_app(ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", runs, max_body_bytes=4096), engine)
    return app.test_client()


def _events(resp) -> list:
    text = resp.get_data(as_text=True)
    return [
        json.loads(x[len("data: ") :]) if x != "data: [DONE]" else "[DONE]"
        for x in text.split("\n\n")
        if x.startswith("data: ")
    ]


def _new(client, **settings) -> dict:
    resp = client.post("/api/conversations", json={"max_tokens": 6, "temperature": 0.0, **settings})
    assert resp.status_code == 201
    return resp.get_json()


def test_conversations_crud(client):
    conv = _new(client, system="你是观赏鱼专家。")
    assert conv["title"] == "New chat" and conv["system"] == "你是观赏鱼专家。" and conv["max_tokens"] == 6
    other = _new(client)
    listed = [c["id"] for c in client.get("/api/conversations").get_json()["conversations"]]
    assert listed == [other["id"], conv["id"]], "newest first"
    patched = client.patch(f"/api/conversations/{conv['id']}", json={"title": "鱼", "system": None, "top_p": 0.9})
    assert patched.status_code == 200 and patched.get_json()["title"] == "鱼" and patched.get_json()["system"] is None
    bad = client.patch(f"/api/conversations/{conv['id']}", json={"temperature": 9})
    assert bad.status_code == 400 and "temperature" in bad.get_json()["error"]
    assert client.patch(f"/api/conversations/{conv['id']}", json={"colour": 1}).status_code == 400
    assert client.delete(f"/api/conversations/{other['id']}").get_json() == {"deleted": True}
    for method in (client.get, client.delete, client.patch):
        resp = method(f"/api/conversations/{other['id']}", json={})
        assert resp.status_code == 404 and "no conversation" in resp.get_json()["error"]


def test_streamed_message_is_saved_and_titles_the_chat(client):
    conv = _new(client)
    resp = client.post(f"/api/conversations/{conv['id']}/messages", json={"content": "金鱼每天喂几次？"})
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    events = _events(resp)
    done = events[-1]
    assert done["done"] and done["finish_reason"] in ("stop", "length")
    assert "".join(e["delta"] for e in events[:-1]) == done["message"]["content"]
    assert done["conversation"]["title"] == "金鱼每天喂几次？"
    figures = done["figures"]  # what the chat page shows under the answer
    assert all(type(figures[k]) is int for k in ("tokens", "prompt_tokens", "cached_tokens")), figures
    assert 0 <= figures["cached_tokens"] <= figures["prompt_tokens"] and figures["prompt_tokens"] > 0, figures
    assert 0 <= figures["ttft_s"] <= figures["seconds"], figures
    saved = client.get(f"/api/conversations/{conv['id']}").get_json()["messages"]
    assert [(m["role"], m["content"]) for m in saved] == [
        ("user", "金鱼每天喂几次？"),
        ("assistant", done["message"]["content"]),
    ]
    assert client.post(f"/api/conversations/{conv['id']}/clear").get_json() == {"cleared": True}
    assert client.get(f"/api/conversations/{conv['id']}").get_json()["messages"] == []


def test_seed_api_keeps_history_server_side(client):
    first = client.post("/api/chat", json={"message": "你好"}).get_json()
    assert set(first) == {"status", "response", "conversation_id"} and first["status"] == "success"
    assert first["conversation_id"] == "api" and isinstance(first["response"], str)
    client.post("/api/chat", json={"message": "再说一遍"})
    assert len(client.get("/api/conversations/api").get_json()["messages"]) == 4
    conv = _new(client)
    named = client.post("/api/chat", json={"message": "你好", "conversation_id": conv["id"]}).get_json()
    assert named["conversation_id"] == conv["id"]
    cleared = client.post("/api/clear").get_json()
    assert cleared == {"status": "success", "cleared": True, "conversation_id": "api"}, "seed clients check status"
    assert client.get("/api/conversations/api").get_json()["messages"] == []
    assert len(client.get(f"/api/conversations/{conv['id']}").get_json()["messages"]) == 2, "others are kept"
    assert client.post("/api/clear", json={"conversation_id": conv["id"]}).get_json() == {
        "status": "success",
        "cleared": True,
        "conversation_id": conv["id"],
    }
    assert client.get(f"/api/conversations/{conv['id']}").get_json()["messages"] == []
    assert client.post("/api/clear", json={"conversation_id": "nope"}).status_code == 404


def test_openai_chat_completions_plain_and_streamed(client):
    listed = client.get("/v1/models").get_json()["data"][0]
    assert listed["object"] == "model"
    body = {
        "model": listed["id"],
        "messages": [{"role": "system", "content": "简短回答"}, {"role": "user", "content": "你好"}],
        "temperature": 0,
        "max_tokens": 6,
    }
    plain = client.post("/v1/chat/completions", json=body).get_json()
    choice = plain["choices"][0]
    assert plain["object"] == "chat.completion" and choice["message"]["role"] == "assistant"
    assert plain["usage"]["completion_tokens"] <= 6 and plain["usage"]["prompt_tokens"] > 0
    events = _events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    assert events[-1] == "[DONE]" and events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-2]["choices"][0]["finish_reason"] == choice["finish_reason"]
    streamed = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert streamed == choice["message"]["content"], "greedy: streaming changes nothing but the delivery"


@pytest.mark.parametrize(
    "path, body, status, words",
    [
        ("/api/chat", "{not json", 400, "invalid JSON"),
        ("/api/chat", "[1, 2]", 400, "JSON object"),
        ("/api/chat", {}, 400, "'message'"),
        ("/api/chat", {"message": "hi", "conversation_id": "missing"}, 404, "no conversation"),
        ("/api/chat", {"message": "x" * 5000}, 413, "too large"),
        ("/api/conversations/missing/messages", {"content": "hi"}, 404, "no conversation"),
        ("/v1/chat/completions", {"messages": []}, 400, "'messages'"),
        ("/v1/chat/completions", {"messages": [{"role": "robot", "content": "x"}]}, 400, "role"),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]},
            400,
            "last message",
        ),
        (
            "/v1/chat/completions",
            {"messages": [{"role": "user", "content": "a"}], "temperature": 5},
            400,
            "temperature",
        ),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "max_tokens": 0}, 400, "max_tokens"),
        ("/v1/completions", {"prompt": []}, 400, "'prompt'"),
        ("/v1/completions", {"prompt": "a", "echo": "yes"}, 400, "'echo'"),
        ("/v1/completions", {"prompt": [[10**9]]}, 400, "vocabulary"),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "a"}], "model": "nope"}, 404, "not served"),
    ],
)
def test_bad_requests_get_a_json_error_and_the_server_keeps_serving(client, path, body, status, words):
    kwargs = {"data": body, "content_type": "application/json"} if isinstance(body, str) else {"json": body}
    resp = client.post(path, **kwargs)
    error = resp.get_json()["error"]
    message = error["message"] if path.startswith("/v1/") else error  # OpenAI's error shape on its routes
    assert resp.status_code == status and words in message
    assert client.get("/v1/models").status_code == 200


def test_a_message_over_the_context_window_is_refused(client, engine, monkeypatch):
    monkeypatch.setattr(engine, "context", 64)
    conv = _new(client)
    resp = client.post(f"/api/conversations/{conv['id']}/messages", json={"content": "鱼" * 80})
    assert resp.status_code == 400 and "context window of 64" in resp.get_json()["error"]
    resp = client.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": "鱼" * 80}]})
    assert resp.status_code == 400


def test_wrong_method_and_unknown_api_path_are_json(client):
    assert client.get("/api/chat").status_code == 405 and "error" in client.get("/api/chat").get_json()
    assert client.get("/api/nothing").get_json()["error"]


def test_runs_api(client):
    runs = client.get("/api/runs").get_json()["runs"]
    assert [r["name"] for r in runs] == ["20260101-000000"]
    assert runs[0]["loss"] == 2.0 and runs[0]["best_val_loss"] == 2.2 and runs[0]["step"] == 10
    assert runs[0]["running"] is False and runs[0]["fine_tune_type"] == "lora"
    rows = client.get("/api/runs/20260101-000000/metrics").get_json()["rows"]
    assert [r["step"] for r in rows] == [0, 5, 10, 10]
    assert client.get("/api/runs/nope/metrics").status_code == 404
    assert client.get("/api/runs/..%2f..%2fetc/metrics").status_code == 404


def test_info_and_pages(client):
    info = client.get("/api/info").get_json()
    assert info["adapter"] is None and info["defaults"]["max_tokens"] == 512
    for page in ("/", "/chat", "/runs", "/studio"):
        resp = client.get(page)
        assert resp.status_code == 200 and b"http://" not in resp.data.replace(b"http://127.0.0.1", b""), (
            "no external assets"
        )
    assert client.get("/").data == client.get("/chat").data, "serve RUN opens on the chat with the run"
    assert b'<a href="/chat" aria-current="page">Chat</a>' in client.get("/").data


def test_serve_without_a_run_opens_on_the_studio(engine, tmp_path):
    """`serve` alone is there to train a model: / is the studio (the chat is at /chat); `serve RUN` keeps the chat."""
    args = cli.build_parser().parse_args(["serve"])
    assert args.run == []
    app = create_app(
        ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", tmp_path / "runs", home="studio"), engine
    )
    client = app.test_client()
    assert client.get("/").data == client.get("/studio").data
    assert b'<a href="/studio" aria-current="page">Studio</a>' in client.get("/").data
    assert b'id="new-chat"' in client.get("/chat").data and b'id="new-chat"' not in client.get("/").data


def test_port_in_use_is_one_line_and_exit_2(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(UserError, match=f"port {port} .* in use"):
            check_port("127.0.0.1", port)
        proc = subprocess.run(
            [
                sys.executable,
                "-m",
                "mlx_ft",
                "serve",
                "smollm2-135m-instruct",
                "--port",
                str(port),
                "--db",
                str(tmp_path / "db"),
            ],
            capture_output=True,
            text=True,
            cwd=REPO,
            timeout=120,
        )
    assert proc.returncode == 2 and proc.stderr.strip().splitlines()[-1].startswith("mlx_ft: error: port")
    assert "Traceback" not in proc.stderr


# ----------------------------------------------------------------------------------------- a real server process


def test_real_server_16_concurrent_streaming_chats_survive_a_restart(qwen2_dir, tmp_path):
    """16 clients x 10 turns at once. Clients 2k and 2k+1 send the same questions, so at temperature 0 their answers
    must be equal turn by turn: a token that leaked into another conversation's stream would break a pair."""
    port, db = free_port(), tmp_path / "chat.db"
    proc = start_server(qwen2_dir, port, db)
    results: dict[int, tuple[str, list[str]]] = {}
    errors: list[BaseException] = []

    def client(k: int) -> None:
        try:
            cid = call(port, "POST", "/api/conversations", {"max_tokens": 4, "temperature": 0.0})["id"]
            answers = []
            for turn in range(10):
                raw = call(
                    port, "POST", f"/api/conversations/{cid}/messages", {"content": f"第{k // 2}组的第{turn}个问题"}
                )
                events = [json.loads(x[6:]) for x in raw.split("\n\n") if x.startswith("data: ")]
                assert events[-1].get("done"), events[-1]
                assert "".join(e["delta"] for e in events[:-1]) == events[-1]["message"]["content"]
                answers.append(events[-1]["message"]["content"])
            results[k] = (cid, answers)
        except BaseException as e:  # noqa: BLE001 -- reported by the main thread
            errors.append(e)

    try:
        threads = [threading.Thread(target=client, args=(k,)) for k in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors, errors[0]
        for k in range(0, 16, 2):
            assert results[k][1] == results[k + 1][1], "same questions, same greedy answers, in every pair"
    finally:
        proc.terminate()
        proc.wait(timeout=30)

    proc = start_server(qwen2_dir, port, db)
    try:
        for k, (cid, answers) in results.items():
            messages = call(port, "GET", f"/api/conversations/{cid}")["messages"]
            assert [m["content"] for m in messages[1::2]] == answers
            assert [m["content"] for m in messages[0::2]] == [f"第{k // 2}组的第{t}个问题" for t in range(10)]
        assert len(call(port, "GET", "/api/conversations")["conversations"]) == 16
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_a_test_server_that_logs_every_request_never_blocks_on_its_output(qwen2_dir, tmp_path):
    """serve logs a line per request (~65 bytes): 1500 of them are more than a 64 KiB pipe holds, which used to block
    a test server whose output nobody read until it ended. Its output goes to a file, which the test can read."""
    port = free_port()
    proc = start_server(qwen2_dir, port, tmp_path / "chat.db")
    try:
        for _ in range(1500):
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=30) as resp:
                assert resp.status == 200
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.output().count('"GET /api/info HTTP/1.1" 200') >= 1500
    assert proc.log_path.parent == tmp_path


def test_new_conversations_get_the_runs_training_system_prompt(client, engine, monkeypatch):
    monkeypatch.setattr(engine.loaded, "system", "你是观赏鱼专家。")
    assert _new(client)["system"] == "你是观赏鱼专家。"
    assert _new(client, system=None)["system"] is None, "an explicit null means none"
    client.post("/api/chat", json={"message": "你好"})
    assert client.get("/api/conversations/api").get_json()["system"] == "你是观赏鱼专家。"
