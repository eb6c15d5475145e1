"""Streaming speed of `serve` with 1, 2, 4, 8 simultaneous chats, through `POST /v1/chat/completions` with
`stream: true`, against bare `mlx_lm.stream_generate` for one, on the same loaded model, in one process (the server,
waitress built as `serve` builds it, runs in a thread of this process, on the same Engine; each client thread reads
its own SSE stream over real HTTP on 127.0.0.1).

Stream i asks question i (every stream a different question), greedy (temperature 0), the same max_tokens for all.
The streams of a level are started together behind a barrier. Per level: aggregate tokens/s (every stream's
generated tokens, from the usage chunk, over the wall time from the first request sent to the last stream's end),
the median and the worst time to first token (from a stream's request to its first non-empty piece), and the
aggregate over one stream's. The single-stream row of bare mlx_lm is measured the same way on question 0; so is its
decode speed (tokens over the time from the first to the last piece, what a reader sees), compared with the
server's.

Correctness is checked while measuring: before the timed runs each question is asked alone, of bare mlx_lm and of
the server (the texts must be equal), and every stream at every level must give exactly that question's text.

Runs are interleaved (bare, 1, 2, 4, 8, bare, 1, …; --repeats rounds, median per row) after one untimed warm-up.
Goals (issue 20): 8 streams >= 3x the aggregate tokens/s of one; one stream >= 95% of bare mlx_lm's decode speed.

Usage: python bench/serve.py [--model smollm2-135m-instruct] [--levels 1,2,4,8] [--max-tokens 128] [--repeats 3]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import mlx_ft  # noqa: F401  (first: it binds MLX to OpenBLAS on Linux, which only works before mlx.core loads)

# isort: split
from mlx_ft import chat_template
from mlx_ft.inference.engine import Engine
from mlx_ft.models import loader
from mlx_ft.server.app import create_app, make_wsgi_server
from mlx_ft.server.state import ServeConfig
from mlx_ft.system import blas

from mlx_lm.generate import stream_generate

QUESTIONS = [
    "我的金鱼最近不爱吃东西，总是浮在水面，应该怎么办？请详细说明。",
    "How do I set up a new freshwater aquarium for goldfish? Explain every step in detail.",
    "Explain how a bicycle gear system works and how to choose the right gear on a hill.",
    "What should I pack for a week-long hiking trip in the mountains? Give a detailed list with reasons.",
    "Describe, step by step, how to bake a loaf of sourdough bread at home.",
    "Why is the sky blue during the day and red at sunset? Explain it in detail for a student.",
    "Give me a detailed plan to learn to play the guitar in three months.",
    "How does a refrigerator keep food cold? Describe each part of the cycle.",
]
GOAL_SCALE = 3.0  # 8 streams' aggregate tokens/s over one stream's
GOAL_SINGLE = 0.95  # one served stream's decode tokens/s over bare mlx_lm's


@dataclass
class Stream:
    """One answer as a reader saw it; times are time.perf_counter() readings."""

    text: str
    sent: float  # the request was sent (bare: stream_generate was called)
    first: float  # the first non-empty piece arrived
    last: float  # the last non-empty piece arrived
    end: float  # the stream ended
    tokens: int  # tokens generated

    @property
    def ttft(self) -> float:
        return self.first - self.sent

    @property
    def decode_tps(self) -> float:
        return (self.tokens - 1) / (self.last - self.first) if self.last > self.first else 0.0


def bare(loaded: loader.Loaded, question: str, max_tokens: int) -> Stream:
    prompt = chat_template.prompt_ids(loaded.tokenizer, [{"role": "user", "content": question}])
    t0 = time.perf_counter()
    first = last = 0.0
    pieces, n = [], 0
    for r in stream_generate(loaded.model, loaded.tokenizer, prompt, max_tokens=max_tokens):
        now = time.perf_counter()
        if r.text:
            first = first or now
            last = now
            pieces.append(r.text)
        n = r.generation_tokens
    return Stream("".join(pieces), t0, first, last, time.perf_counter(), n)


def served(port: int, model: str, question: str, max_tokens: int) -> Stream:
    body = json.dumps(
        {
            "model": model,
            "stream": True,
            "stream_options": {"include_usage": True},
            "temperature": 0,
            "max_tokens": max_tokens,
            "messages": [{"role": "user", "content": question}],
        }
    )
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, f"{resp.status}: {resp.read()[:300]!r}"
    first = last = 0.0
    pieces, tokens = [], 0
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        if event.get("usage"):
            tokens = event["usage"]["completion_tokens"]
        delta = event["choices"][0]["delta"].get("content") if event["choices"] else None
        if delta:
            now = time.perf_counter()
            first = first or now
            last = now
            pieces.append(delta)
    end = time.perf_counter()
    conn.close()
    return Stream("".join(pieces), t0, first, last, end, tokens)


def together(port: int, model: str, questions: list[str], max_tokens: int) -> list[Stream]:
    """Each question asked by its own thread, all sent at once (behind a barrier)."""
    out: list[Stream | BaseException | None] = [None] * len(questions)
    barrier = threading.Barrier(len(questions))

    def ask(i: int) -> None:
        barrier.wait()
        try:
            out[i] = served(port, model, questions[i], max_tokens)
        except BaseException as e:  # noqa: BLE001 - re-raised in the caller's thread
            out[i] = e

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(questions))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in out:
        if isinstance(r, BaseException):
            raise r
    return out  # type: ignore[return-value]


def aggregate(streams: list[Stream]) -> float:
    return sum(s.tokens for s in streams) / (max(s.end for s in streams) - min(s.sent for s in streams))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a run folder or any model source")
    ap.add_argument(
        "--levels",
        default="1,2,4,8",
        help="simultaneous streams to measure, comma-separated, 1 to 8 (1 is always measured: the reference)",
    )
    ap.add_argument("--max-tokens", type=int, default=128, help="tokens each answer may have (the same for all)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; each row is the median over them")
    args = ap.parse_args()
    levels = sorted({1, *(int(x) for x in args.levels.split(","))})  # one stream: the reference for the others
    if levels[0] < 1 or levels[-1] > len(QUESTIONS):
        ap.error(f"--levels: 1 to {len(QUESTIONS)} streams (one question each)")
    questions = QUESTIONS[: levels[-1]]

    loaded = loader.load(args.model)
    engine = Engine(loaded)
    with tempfile.TemporaryDirectory() as tmp:
        config = ServeConfig(args.model, Path(tmp) / "chat.db", Path(tmp))
        # The server `serve` runs (waitress, with serve's settings), without serve's access log.
        server = make_wsgi_server(create_app(config, engine), "127.0.0.1", 0, config)
        threading.Thread(target=server.run, daemon=True).start()
        port = server.effective_port
        conn = http.client.HTTPConnection("127.0.0.1", port)
        conn.request("GET", "/v1/models")
        model = json.loads(conn.getresponse().read())["data"][0]["id"]  # the served model's name
        conn.close()

        # Untimed: warm-up, and each question's answer when asked alone (bare and served must agree).
        alone = []
        for i, q in enumerate(questions):
            text = bare(loaded, q, args.max_tokens).text
            solo = served(port, model, q, args.max_tokens).text
            assert solo == text, f"greedy: the server must stream bare mlx_lm's text (question {i})"
            alone.append(text)

        runs: dict[int, list[list[Stream]]] = {n: [] for n in levels}
        bares: list[Stream] = []
        mismatches = []
        for _ in range(args.repeats):
            b = bare(loaded, questions[0], args.max_tokens)
            assert b.text == alone[0], "greedy: bare mlx_lm must give the same text every time"
            bares.append(b)
            for n in levels:
                streams = together(port, model, questions[:n], args.max_tokens)
                runs[n].append(streams)
                mismatches += [(n, i) for i, s in enumerate(streams) if s.text != alone[i]]
        server.task_dispatcher.shutdown()  # its loop thread, a daemon, idles until the process ends

    one = statistics.median(aggregate(r) for r in runs[1])
    print(
        f"{loaded.label}: {len(questions)} different questions (stream i asks question i), greedy, "
        f"max_tokens {args.max_tokens}, {args.repeats} rounds (median); BLAS: {blas.describe(blas.use_fast_blas())}; "
        f"both sides in this one process, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end"
    )
    print(f"{'':18}{'streams':>8}{'tokens':>8}{'agg tok/s':>11}{'TTFT med':>10}{'TTFT max':>10}{'x one':>7}")
    bare_agg = statistics.median(aggregate([b]) for b in bares)
    bare_ttft = [b.ttft for b in bares]
    print(
        f"{'bare mlx_lm':18}{1:8}{bares[0].tokens:8}{bare_agg:11.1f}{statistics.median(bare_ttft):10.3f}"
        f"{max(bare_ttft):10.3f}{bare_agg / one:7.2f}"
    )
    for n in levels:
        agg = statistics.median(aggregate(r) for r in runs[n])
        ttft = [s.ttft for r in runs[n] for s in r]
        tokens = sum(s.tokens for s in runs[n][0])
        print(
            f"{'serve /v1 stream':18}{n:8}{tokens:8}{agg:11.1f}{statistics.median(ttft):10.3f}{max(ttft):10.3f}"
            f"{agg / one:7.2f}"
        )
    bare_decode = statistics.median(b.decode_tps for b in bares)
    served_decode = statistics.median(r[0].decode_tps for r in runs[1])
    single = served_decode / bare_decode
    print(
        f"one stream, decode tokens/s (first to last piece): bare {bare_decode:.1f}, served {served_decode:.1f}: "
        f"served / bare {single:.1%} (goal >= {GOAL_SINGLE:.0%}: {'met' if single >= GOAL_SINGLE else 'NOT met'})"
    )
    if 8 in runs:
        scale = statistics.median(aggregate(r) for r in runs[8]) / one
        print(
            f"8 streams / 1, aggregate tokens/s: {scale:.2f}x "
            f"(goal >= {GOAL_SCALE:.0f}x: {'met' if scale >= GOAL_SCALE else 'NOT met'})"
        )
    assert not mismatches, f"greedy: these (streams, question) differ from the question asked alone: {mismatches}"
    print("every stream at every level gave its question's text as when asked alone")


if __name__ == "__main__":
    main()
