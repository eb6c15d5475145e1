"""The server probed as an attacker on the same machine (or a careless client) would, through a real `mlx_ft serve`:
values that are not numbers or that pass for flags never reach a job, no answer carries NaN, every response forbids
framing, a token guards every route off loopback, and nothing changes on disk or in the jobs list after a refusal.
The browser's side of the token cookie and of the framing header is in test_security_browser.py."""

from __future__ import annotations

import http.client
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file

from mlx_ft import data
from mlx_ft.server import guard
from tests.conftest import REPO
from tests.serving import free_port, serving

pytestmark = pytest.mark.slow

TOKEN = "s3cret-token-for-tests"


def _strict(text: str) -> object:
    """JSON as a browser's JSON.parse reads it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> None:
        raise ValueError(f"{name} in a JSON answer")

    return json.loads(text, parse_constant=refuse)


def request(port: int, method: str, path: str, body: bytes | str | None = None, **headers: str):
    """(status, headers, text) of one raw request: the body is sent as given (1e999 and NaN included)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        payload = body.encode() if isinstance(body, str) else body
        hdrs = {"Content-Type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
        conn.request(method, path, body=payload, headers=hdrs)
        resp = conn.getresponse()
        return resp.status, resp.headers, resp.read().decode("utf-8", errors="replace")  # headers: any case
    finally:
        conn.close()


def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


@pytest.fixture(scope="module")
def studio(qwen2_dir, tmp_path_factory):
    """A loopback `serve` of the tiny model with a data set `fish` and a finished run `trained` whose metrics went
    NaN (a run that diverged before training stopped on it)."""
    root = tmp_path_factory.mktemp("security")
    src = root / "facts.json"
    src.write_text(json.dumps([{"question": f"q{i}?", "answer": f"a{i}"} for i in range(12)]))
    data.prepare([src], root / "data" / "fish", valid=0.2, test=0.2)
    run = root / "runs" / "diverged"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(f"model: {qwen2_dir}\ndata: {root / 'data' / 'fish'}\niters: 4\n")
    (run / "metrics.jsonl").write_text(
        '{"step": 1, "loss": 2.5, "learning_rate": 1000.0}\n{"step": 2, "loss": NaN, "val_loss": Infinity}\n'
    )
    save_file({"x": np.array([np.nan], dtype=np.float32)}, str(run / "adapters.safetensors"))
    scratch = root / "data" / ".upload-killed"  # what a SIGKILL during an upload leaves
    (scratch / "raw").mkdir(parents=True)
    (scratch / "raw" / "x.json").write_text("[]")
    args = ["--runs", str(root / "runs"), "--data-dir", str(root / "data"), "--exports-dir", str(root / "exports")]
    with serving([qwen2_dir], root / "chat.db", *args) as port:
        yield {"port": port, "root": root, "scratch": scratch}


def _jobs(port: int) -> list:
    status, _, text = request(port, "GET", "/api/studio/jobs")
    assert status == 200, text
    return _strict(text)["jobs"]


def _refused_form(studio, values_json: str, *words: str) -> None:
    """A train job with these form values (raw JSON text) is a 400 naming the problem; nothing starts or is
    written."""
    port, root = studio["port"], studio["root"]
    before_runs, before_jobs = _files(root / "runs"), _jobs(port)
    status, _, text = request(port, "POST", "/api/studio/jobs", '{"kind": "train", "values": ' + values_json + "}")
    assert status == 400, (status, text)
    message = _strict(text)["error"]
    assert "\n" not in message and all(w in message for w in words), message
    assert _jobs(port) == before_jobs and _files(root / "runs") == before_runs


@pytest.mark.parametrize(
    "values, words",
    [
        ('{"learning_rate": 1e999}', ["invalid JSON", "out of range"]),
        ('{"learning_rate": Infinity}', ["invalid JSON", "Infinity"]),
        ('{"learning_rate": NaN}', ["invalid JSON", "NaN"]),
        ('{"beta": -Infinity, "train_mode": "dpo"}', ["invalid JSON"]),
        ('{"epochs": 1e308}', ["'epochs' must be a finite number above 0 and at most 10000"]),
        ('{"lora_parameters": {"rank": 1000000000000}}', ["'lora_parameters.rank' must be an integer from 1 to 2048"]),
        ('{"lora_parameters": {"dropout": 5.0}}', ["'lora_parameters.dropout' must be a finite number from 0 to 0.9"]),
        ('{"batch_size": 0}', ["'batch_size' must be an integer from 1 to 1024"]),
        ('{"max_seq_length": 1e12}', ["'max_seq_length'"]),
        ('{"iters": ' + "9" * 5000 + "}", ["invalid JSON", "digits"]),
    ],
)
def test_non_finite_and_absurd_form_values_never_start_a_job(studio, values, words):
    _refused_form(studio, values, *words)


@pytest.mark.parametrize(
    "values, words",
    [
        ('{"model": "-h/x"}', ["config key 'model'", "'-h/x'"]),
        ('{"model": "--config=/x"}', ["config key 'model'"]),
        ('{"model": "../../etc"}', ["config key 'model'"]),
        ('{"train_mode": "dpo", "reference_adapter_file": "--help"}', ["'reference_adapter_file'"]),
        ('{"train_mode": "dpo", "reference_adapter_file": "/etc/passwd"}', ["'reference_adapter_file'", "outside"]),
        ('{"train_mode": "dpo", "reference_adapter_file": "../../x/adapters.safetensors"}', ["outside"]),
        ('{"name": "-rf"}', ["run name"]),
        ('{"data": "--help"}', ["config key 'data'"]),
    ],
)
def test_values_that_look_like_flags_or_outside_paths_are_refused(studio, values, words):
    _refused_form(studio, values, *words)


def test_the_train_command_joins_every_value_to_its_flag(studio):
    status, _, text = request(studio["port"], "POST", "/api/studio/form", '{"values": {"iters": 3, "seed": 2}}')
    assert status == 200, text
    argv = _strict(text)["argv"]
    assert "--iters=3" in argv and "--seed=2" in argv
    assert all(a.startswith("--") for a in argv), argv  # no value stands alone, where it could be read as a flag


@pytest.mark.parametrize(
    "path, body, status, word",
    [
        ("/api/chat", "[" * 100_000 + "]" * 100_000, 400, "nested too deeply"),
        ("/api/chat", '{"message": "hi", "max_tokens": ' + "1" * 5000 + "}", 400, "digits"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a"}], "temperature": NaN}', 400, "NaN"),
        ("/v1/chat/completions", '{"messages": [{"role": "user", "content": "a"}], "top_p": 1e999}', 400, "range"),
        ("/api/studio/compare", '{"message": "a", "models": ["base"], "max_tokens": 2.5}', 400, "integer"),
        ("/api/studio/jobs", '{"kind": "eval", "run": "diverged", "limit": 1e400}', 400, "invalid JSON"),
        ("/api/studio/jobs", '{"kind": "eval", "run": "-x"}', 400, "field 'run'"),
        ("/api/studio/jobs", '{"kind": "eval", "run": "diverged", "split": "--help"}', 400, "field 'split'"),
    ],
)
def test_bodies_that_used_to_be_500s_are_4xx_json(studio, path, body, status, word):
    got, _, text = request(studio["port"], "POST", path, body)
    assert got == status, (got, text[:300])
    error = _strict(text)["error"]
    message = error["message"] if isinstance(error, dict) else error
    assert word in message, message


def test_one_integer_rule_everywhere(studio):
    """256.0 is 256 wherever an integer is asked (JSON clients send it), 256.5 nowhere."""
    port = studio["port"]
    chat = '{"messages": [{"role": "user", "content": "a"}], "max_tokens": %s}'
    assert request(port, "POST", "/v1/chat/completions", chat % "2.0")[0] == 200
    assert request(port, "POST", "/v1/chat/completions", chat % "2.5")[0] == 400
    assert request(port, "POST", "/api/conversations", '{"max_tokens": 2.0}')[0] == 201
    status, _, text = request(port, "POST", "/api/conversations", '{"max_tokens": 2.5}')
    assert status == 400 and "field 'max_tokens' must be an integer from 1" in text
    status, _, text = request(
        port, "POST", "/api/studio/compare", '{"message": "a", "models": ["base"], "max_tokens": 2.0}'
    )
    assert status == 200, text


def test_a_diverged_run_leaves_every_answer_strict_json(studio):
    port = studio["port"]
    for path in ("/api/runs", "/api/runs/diverged/metrics", "/api/studio/models", "/api/studio/jobs"):
        status, _, text = request(port, "GET", path)
        if status == 404:
            continue  # a route this server does not have
        assert status == 200, (path, text[:300])
        _strict(text)  # raises on NaN / Infinity
    runs = _strict(request(port, "GET", "/api/runs")[2])
    assert "NaN" not in json.dumps(runs)


def test_scratch_folders_of_a_killed_upload_are_removed_at_start(studio):
    assert not studio["scratch"].exists()


def test_an_upload_cannot_read_a_file_outside_through_dataset_info(studio, tmp_path):
    """A dataset_info.json naming /etc/hostname (or ../..) is refused with one line, the same whether the file
    exists or not, and nothing is stored."""
    port, root = studio["port"], studio["root"]
    before = _files(root / "data")
    answers = []
    for target in ("/etc/hostname", "/etc/no-such-file-here", "../../../../etc/hostname"):
        info = json.dumps({"notes": {"file_name": target, "columns": {"prompt": "text"}}})
        boundary = "b0undary"
        body = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="files"; filename="dataset_info.json"\r\n'
            f"Content-Type: application/json\r\n\r\n{info}\r\n--{boundary}--\r\n"
        )
        status, _, text = request(
            port, "POST", "/api/studio/datasets", body, Content_Type=f"multipart/form-data; boundary={boundary}"
        )
        assert status == 400, text
        message = _strict(text)["error"]
        assert "outside" in message and "notes" in message, message
        answers.append(message.replace(target, "TARGET"))
    assert answers[0] == answers[1], "the refusal must not tell whether the outside file exists"
    assert _files(root / "data") == before


def test_every_response_forbids_framing_and_sniffing(studio):
    port = studio["port"]
    for path in ("/", "/chat", "/studio", "/runs", "/api/info", "/static/chat.js", "/no-such-page", "/v1/models"):
        _, headers, _ = request(port, "GET", path)
        csp = headers.get("Content-Security-Policy", "")
        assert "frame-ancestors 'none'" in csp and "script-src 'self'" in csp, (path, headers)
        assert "unsafe-inline" not in csp
        assert headers.get("X-Frame-Options") == "DENY", path
        assert headers.get("X-Content-Type-Options") == "nosniff", path
        assert headers.get("Referrer-Policy") == "same-origin", path


def test_pages_have_no_inline_script():
    """script-src 'self' blocks inline script: the pages keep theirs in static/ (a JSON data block is not script)."""
    for page in (REPO / "templates").glob("*.html"):
        text = page.read_text(encoding="utf-8")
        for chunk in text.split("<script")[1:]:
            tag = chunk.split(">", 1)[0]
            assert "src=" in tag or 'type="application/json"' in tag, (page.name, tag)
        assert " on" not in " ".join(t.split(">", 1)[0] for t in text.split("<")[1:]).replace(" one", ""), page


# ------------------------------------------------------------------------------------------------ the token


def _start(qwen2_dir: Path, tmp: Path, *args: str, env: dict | None = None) -> tuple[subprocess.Popen, int, Path]:
    port = free_port()
    log = tmp / f"serve-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlx_ft",
                "serve",
                str(qwen2_dir),
                "--port",
                str(port),
                "--db",
                str(tmp / "c.db"),
                "--runs",
                str(tmp / "runs"),
                *args,
            ],
            cwd=REPO,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
        )
    deadline = time.time() + 300
    while time.time() < deadline:
        assert proc.poll() is None, log.read_text()
        try:
            request(port, "GET", "/static/style.css")  # any answer (401 included) means it listens
            return proc, port, log
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise AssertionError(log.read_text())


@pytest.fixture(scope="module")
def open_server(qwen2_dir, tmp_path_factory):
    """`serve --host 0.0.0.0`: reachable from other machines, so it generates a token and prints it."""
    tmp = tmp_path_factory.mktemp("open")
    proc, port, log = _start(qwen2_dir, tmp, "--host", "0.0.0.0", env={guard.TOKEN_ENV: ""})
    try:
        yield {"port": port, "log": log, "proc": proc}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.wait(60)


def _printed_token(log: Path) -> str:
    for _ in range(100):
        text = log.read_text(encoding="utf-8", errors="replace")
        if "?token=" in text:
            return text.split("?token=", 1)[1].split()[0]
        time.sleep(0.2)
    raise AssertionError(text)


def test_off_loopback_every_route_asks_for_the_printed_token(open_server):
    port = open_server["port"]
    token = _printed_token(open_server["log"])
    assert len(token) >= 24
    # Another machine that claims to be 127.0.0.1 passes the Host check, not the token check.
    for method, path in [
        ("GET", "/"),
        ("GET", "/api/conversations"),
        ("GET", "/v1/models"),
        ("GET", "/static/chat.js"),
        ("POST", "/api/studio/jobs"),
        ("GET", "/api/runs"),
    ]:
        status, headers, text = request(port, method, path, "{}" if method == "POST" else None, Host="127.0.0.1")
        assert status == 401, (path, status, text[:200])
        assert "token" in text and headers.get("WWW-Authenticate", "").startswith("Bearer"), path
        assert headers.get("X-Frame-Options") == "DENY"
    wrong = request(port, "GET", "/api/conversations", Authorization="Bearer " + token[:-1] + "x")
    assert wrong[0] == 401
    assert request(port, "GET", "/api/conversations", Authorization=f"Bearer {token}")[0] == 200
    assert request(port, "GET", f"/api/conversations?token={token}")[0] == 200


def test_the_token_link_sets_a_strict_http_only_cookie_and_leaves_the_address_bar(open_server):
    port = open_server["port"]
    token = _printed_token(open_server["log"])
    status, headers, _ = request(port, "GET", f"/chat?token={token}&x=1")
    assert status == 303 and headers["Location"].endswith("/chat?x=1"), headers
    cookie = headers["Set-Cookie"]
    assert f"mlx_ft_token_{port}={token}" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    name_value = cookie.split(";", 1)[0]
    assert request(port, "GET", "/chat", Cookie=name_value)[0] == 200
    assert request(port, "GET", "/chat", Cookie=f"mlx_ft_token_{port}=nope")[0] == 401


def test_the_openai_client_passes_with_its_api_key(open_server):
    import openai

    port = open_server["port"]
    token = _printed_token(open_server["log"])
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key="wrong-key", max_retries=0).models.list()
    client = openai.OpenAI(base_url=f"http://127.0.0.1:{port}/v1", api_key=token, max_retries=0)
    models = [m.id for m in client.models.list().data]
    answer = client.chat.completions.create(model=models[0], messages=[{"role": "user", "content": "hi"}], max_tokens=3)
    assert answer.choices[0].message.content is not None


def test_a_given_token_is_asked_on_loopback_too_and_a_short_one_is_refused(qwen2_dir, tmp_path):
    proc, port, log = _start(qwen2_dir, tmp_path, env={guard.TOKEN_ENV: TOKEN})
    try:
        assert request(port, "GET", "/api/info")[0] == 401
        assert request(port, "GET", "/api/info", Authorization=f"Bearer {TOKEN}")[0] == 200
        assert TOKEN not in log.read_text()  # a token the user chose is theirs to know; only a generated one is shown
    finally:
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == 0
    short = subprocess.run(
        [sys.executable, "-m", "mlx_ft", "serve", "--token", "abc", "--port", str(free_port())],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert short.returncode == 2 and "at least 8" in short.stderr and "Traceback" not in short.stderr


def test_loopback_stays_token_free_by_default():
    assert guard.server_token("127.0.0.1", None) is None or os.environ.get(guard.TOKEN_ENV)
    assert guard.is_loopback("127.0.0.1") and guard.is_loopback("::1") and guard.is_loopback("localhost")
    assert not guard.is_loopback("0.0.0.0") and not guard.is_loopback("192.168.1.5")
