"""Streaming speed of `serve`: tokens/s and time to first token through `POST /v1/chat/completions` with
`stream: true`, against bare `mlx_lm.stream_generate` on the same loaded model and the same prompt ids, in one
process (the server runs in a thread of this process, on the same Engine; the client reads the SSE stream over real
HTTP on 127.0.0.1). Greedy, so both sides generate the same tokens; the script checks the texts are equal.

Runs alternate (bare, server, bare, server, …; --repeats pairs) after one untimed warm-up of each. Time to first
token is from sending the request (bare: calling stream_generate) to the first non-empty piece; tokens/s is generated
tokens over the time from the first to the last piece (decode speed, what a reader sees). Goal: server >= 95% of
bare tokens/s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import logging
import statistics
import tempfile
import threading
import time
from pathlib import Path

from mlx_lm.generate import stream_generate
from werkzeug.serving import make_server

import mlx_ft  # noqa: F401  (binds MLX to OpenBLAS on Linux before mlx.core loads)
from mlx_ft import chat_template
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.engine import Engine
from mlx_ft.server.state import ServeConfig

QUESTION = "我的金鱼最近不爱吃东西，总是浮在水面，应该怎么办？请详细说明。"


def bare(loaded: loader.Loaded, prompt: list[int], max_tokens: int) -> tuple[str, float, float, int]:
    t0 = time.perf_counter()
    first = last = None
    pieces, n = [], 0
    for r in stream_generate(loaded.model, loaded.tokenizer, prompt, max_tokens=max_tokens):
        now = time.perf_counter()
        if r.text:
            first = first or now
            last = now
            pieces.append(r.text)
        n = r.generation_tokens
    return "".join(pieces), first - t0, last - first, n


def served(port: int, max_tokens: int) -> tuple[str, float, float]:
    body = json.dumps(
        {
            "model": "m",
            "stream": True,
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": QUESTION}],
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = last = None
    pieces = []
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        delta = json.loads(line[6:])["choices"][0]["delta"].get("content")
        if delta:
            now = time.perf_counter()
            first = first or now
            last = now
            pieces.append(delta)
    conn.close()
    return "".join(pieces), first - t0, last - first


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a run folder or any model source")
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # no access-log line per request in the figures
    loaded = loader.load(args.model)
    engine = Engine(loaded)
    prompt = chat_template.prompt_ids(loaded.tokenizer, [{"role": "user", "content": QUESTION}])
    with tempfile.TemporaryDirectory() as tmp:
        app = create_app(ServeConfig(args.model, Path(tmp) / "chat.db", Path(tmp)), engine)
        server = make_server("127.0.0.1", 0, app, threaded=True)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        port = server.server_port
        bare(loaded, prompt, args.max_tokens)
        served(port, args.max_tokens)
        rows: dict[str, list[tuple[float, float]]] = {"bare mlx_lm": [], "serve /v1 stream": []}
        tokens = 0
        for _ in range(args.repeats):
            text_b, ttft_b, span_b, tokens = bare(loaded, prompt, args.max_tokens)
            rows["bare mlx_lm"].append((ttft_b, (tokens - 1) / span_b))
            text_s, ttft_s, span_s = served(port, args.max_tokens)
            rows["serve /v1 stream"].append((ttft_s, (tokens - 1) / span_s))
            assert text_s == text_b, "greedy: the server must stream the same text"
        server.shutdown()
    print(f"{loaded.label}: prompt {len(prompt)} tokens, {tokens} generated, {args.repeats} runs each (median)")
    print(f"{'':18}{'TTFT s':>8}{'tokens/s':>10}")
    med = {k: (statistics.median(t for t, _ in v), statistics.median(s for _, s in v)) for k, v in rows.items()}
    for name, (ttft, tps) in med.items():
        print(f"{name:18}{ttft:8.3f}{tps:10.1f}")
    print(f"serve / bare tokens/s: {med['serve /v1 stream'][1] / med['bare mlx_lm'][1]:.1%}")


if __name__ == "__main__":
    main()
