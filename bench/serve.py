"""Speed of `serve` through `POST /v1/chat/completions` with `stream: true`, in three tables (--tables), each measured
in one process on one loaded model: the server (waitress built as `serve` builds it) runs in a thread of this process
on an Engine of that model, and each client thread reads its own SSE stream over real HTTP on 127.0.0.1. Every answer
is greedy (temperature 0); a stream's tokens are its usage chunk's (stream_options include_usage), its time to first
token runs from its request being sent to its first non-empty piece.

streams (issue 20): 1, 2, 4, 8 simultaneous chats against bare `mlx_lm.stream_generate` for one. Stream i asks
question i (every stream a different question), the same max_tokens for all. The streams of a level are started
together behind a barrier. Per level: aggregate tokens/s (every stream's generated tokens over the wall time from the
first request sent to the last stream's end), the median and the worst time to first token, and the aggregate over
one stream's. The single-stream row of bare mlx_lm is measured the same way on question 0; so is its decode speed
(tokens over the time from the first to the last piece, what a reader sees), compared with the server's. The server
has no prompt cache, as bare mlx_lm has none: every round asks the same questions again, which a cache would answer
from the last round's entries (what the cache does for a conversation is the turns table).
Correctness is checked while measuring: before the timed runs each question is asked alone, of bare mlx_lm and of
the server (the texts must be equal), and every stream at every level must give exactly that question's text.
Runs are interleaved (bare, 1, 2, 4, 8, bare, 1, …; --repeats rounds, median per row) after one untimed warm-up.
Goals: 8 streams >= 3x the aggregate tokens/s of one; one stream >= 95% of bare mlx_lm's decode speed.

turns (issue 31): time to first token across one conversation's turns, with the prompt cache and without. Two
Engines on the loaded model, `PromptCache()` (serve's default bounds) and `PromptCache(max_bytes=0)` (off), each
behind its own server. The conversation has --turns turns (16): a user message of ~100 tokens (distinct questions on
aquariums, cooking and travel) and an answer of at most --turn-tokens (50), the client sending the whole history each
turn with every answer as it was generated, as OpenAI clients do. Per turn 1, 2, 4, 8, 16: the prompt's tokens, how
many of them the cache gave (usage.prompt_tokens_details.cached_tokens), and the time to first token on both sides,
then turn 16's over turn 1's on each. The conversation runs --repeats times on each side, alternating (with, without,
with, …; median per turn) after one untimed request to each; the cache is emptied before each run with it (a fresh
`PromptCache()` put on the idle scheduler), so every run starts cold at turn 1. Check: every run on both sides gives
the same answer at every turn as the first run with the cache (greedy); at the first that differs it says where and
stops. Goal: turn 16's time to first token within 1.3x of turn 1's with the cache.

constrained (issue 31): the cost of structured outputs. 8 streams started together, each asking for a JSON
description of a different thing, with 0, 1 (stream 0) and all 8 of them sending `response_format` json_schema (the
same question without it otherwise): SCHEMA below, strings with maxLength, an integer, a boolean, an enum, no
other keys. max_tokens fixed (--max-tokens, 96 here). On the Engine without a prompt cache, so that every run
prefills its prompts alike. Per level: aggregate tokens/s as in streams and its ratio to 0/8's; pieces/s while all 8
streams decode (from the last stream's first piece to the first stream's last: answers of different lengths leave
the aggregate with a tail of fewer streams, this does not) and its ratio; how many constrained answers ended by
"length". Rounds 0/8, 1/8, 8/8 interleaved (--repeats, median per row) after an untimed 0/8 and 8/8 that give each
stream's reference text. Checks: every constrained answer that ended by "stop" parses with json.loads and has
exactly the schema's keys; every stream gives its reference text at every level (greedy: an unconstrained answer
batched beside constrained ones is unchanged). Goal: 8/8 constrained >= 90% of the unconstrained aggregate tokens/s.

Usage: python bench/serve.py [--model smollm2-135m-instruct] [--tables all|streams,turns,constrained]
       [--levels 1,2,4,8] [--max-tokens N] [--turns 16] [--turn-tokens 50] [--repeats 3]
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx_ft  # noqa: F401  (first: it binds MLX to OpenBLAS on Linux, which only works before mlx.core loads)

# isort: split
from mlx_ft import chat_template
from mlx_ft.inference.engine import Engine
from mlx_ft.inference.prompt_cache import PromptCache
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

# One conversation's user messages, ~100 tokens each (SmolLM2's tokenizer), each a new question with its details.
TURNS = [
    "I set up a 60-litre planted tank three weeks ago with a sponge filter, a heater set to 25 degrees and about ten "
    "stems of java fern and anubias tied to driftwood. Yesterday the water turned cloudy and slightly white, and my "
    "test kit shows ammonia at 0.5 ppm, nitrite at 0.25 ppm and nitrate near zero. I have six neon tetras in it "
    "already. Should I do a water change now, and how much, or leave the bacteria alone to catch up?",
    "Tonight I want to cook a chicken curry for four people. I have two kilos of bone-in thighs, onions, garlic, "
    "fresh ginger, a tin of coconut milk, tomatoes, and a spice drawer with cumin, coriander, turmeric, garam masala "
    "and dried chillies, but no curry paste. My pan is a wide cast-iron skillet and I have about ninety minutes. In "
    "what order should I add the spices, and how long should the thighs simmer so they are tender?",
    "My partner and I are planning ten days in Japan in late March, flying into Tokyo and out of Osaka. We like food "
    "markets, quiet temples and long walks, but we are not interested in nightlife or theme parks. We have a budget "
    "of about 150 euros a day each, not counting flights. Is the Japan Rail Pass still worth it for this route, and "
    "how would you split the nights between Tokyo, Kyoto, Osaka and maybe one smaller town?",
    "Back to the fish: one of my neon tetras has a pale patch near its dorsal fin and swims alone near the heater, "
    "while the other five school normally and eat well. The patch does not look fuzzy like cotton, more like the "
    "colour faded from the inside. I do weekly 20 percent water changes with dechlorinated tap water at the same "
    "temperature. Could this be neon tetra disease, and should I move it to a separate tank right away?",
    "For dessert I would like to bake a lemon tart, but my oven runs hot by about fifteen degrees and my last "
    "shortcrust shrank badly down the sides of the tin. I use plain flour, cold butter, one egg yolk and a little "
    "icing sugar, and I rest the dough for thirty minutes in the fridge. What am I doing wrong with the pastry, and "
    "how do I know when the lemon filling is set without overbaking it into a rubbery texture?",
    "In Kyoto we want to see Fushimi Inari, Kiyomizu-dera and the Arashiyama bamboo grove, but I have read that "
    "they are extremely crowded by nine in the morning. We are early risers and happy to start at six. Could you "
    "suggest an order for visiting them over two days, including which bus or train lines to take between them, "
    "and a couple of quieter temples nearby that are worth the detour?",
    "I am thinking about adding a small group of corydoras catfish to the same 60-litre tank. The substrate is a "
    "mix of coarse gravel and some sharp black sand that came with the tank, and the pH sits around 7.4 with fairly "
    "hard water from the tap. Which corydoras species would suit these conditions, how many should I get so they "
    "feel safe, and do I need to replace the substrate before they arrive?",
    "I bought a whole salmon of about three kilos from the market for a family lunch on Sunday, and I have never "
    "prepared one before. I have a sharp filleting knife, a large baking tray and an oven but no grill outside. "
    "Should I bake it whole with herbs and lemon inside, or fillet it first? Please explain how to tell when it is "
    "cooked through at the thickest part, and roughly how long it needs per kilo.",
    "After Japan we may add four days in Seoul before flying home, arriving from Osaka by plane in the afternoon. "
    "We are interested in palaces, traditional neighbourhoods like Bukchon, good street food and one day trip "
    "outside the city, perhaps to the border area or to a mountain. What is the easiest way to get from Incheon "
    "airport to a hotel near Insadong, and which transport card should we buy when we arrive?",
    "The java fern in my tank has brown and black patches on several older leaves, and tiny new plantlets are "
    "growing on the edges of those leaves. I run the LED light for ten hours a day and I do not add fertiliser or "
    "carbon dioxide. The anubias next to it look healthy but grow very slowly. Is the java fern dying or just "
    "reproducing, and should I cut the damaged leaves off or leave them until the plantlets detach?",
    "My sourdough starter is two weeks old and doubles in about eight hours at room temperature, roughly 19 "
    "degrees in my kitchen in winter. My first loaf came out dense, with a few large holes under the top crust and "
    "a gummy crumb at the bottom. I used 500 grams of bread flour, 350 grams of water, 100 grams of starter and 10 "
    "grams of salt. Is my starter not strong enough yet, or is the problem my proofing time?",
    "We are also thinking about a week in Portugal next autumn, starting in Lisbon and heading north to Porto "
    "without renting a car. We enjoy tiled old towns, seafood and wine, and we would like at least one night "
    "somewhere small on the coast or in the Douro valley. Which trains and buses connect these places comfortably, "
    "and which towns between Lisbon and Porto are worth a night rather than a quick stop?",
    "A friend is moving house and offered me her 120-litre tank with two adult fancy goldfish, a big canister "
    "filter and a lid. My flat has a sturdy wooden sideboard that could hold it, but I worry about the total weight "
    "once it is filled with water, gravel and rock. Goldfish also produce much more waste than my tetras. What would "
    "the full tank weigh, is the sideboard likely to be safe, and can the goldfish go straight in after the move?",
    "For a vegetarian friend coming on Saturday I want to make a mushroom risotto that is rich without any meat "
    "stock. I have arborio rice, a mix of chestnut and dried porcini mushrooms, shallots, white wine, parmesan and "
    "butter. How should I make a flavourful stock from the porcini soaking liquid, how often do I really need to "
    "stir, and at what point should the fresh mushrooms go in so that they stay firm?",
    "For Portugal we are wondering whether to fly into Lisbon on a Friday evening or a Saturday morning, since the "
    "Friday flight is cheaper but lands close to midnight. Our first booking would be a small guesthouse in the "
    "Alfama district, which the host says is up a steep hill. Is it safe and practical to get there by taxi or "
    "metro that late, and is there anything we should avoid carrying through the narrow streets at night?",
    "Before I go away for ten days in March, I need a plan for the tanks. A neighbour can come in twice during "
    "that time but has never kept fish. I was thinking of an automatic feeder for the tetras and corydoras, and "
    "setting the lights on a timer. Is it better to underfeed or to skip feeding for that long, and what simple "
    "instructions should I leave my neighbour in case a fish dies or the filter stops working?",
]
GOAL_TURNS = 1.3  # with the cache: the last turn's time to first token over the first turn's

# What the constrained table's streams describe, one each; every stream asks the same kind of question of its thing.
THINGS = [
    "a goldfish",
    "a neon tetra",
    "a loaf of sourdough bread",
    "a cast-iron skillet",
    "the Fushimi Inari shrine in Kyoto",
    "a java fern",
    "a touring bicycle",
    "a lemon tart",
]
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "summary": {"type": "string", "maxLength": 100},
        "category": {"type": "string", "enum": ["animal", "plant", "food", "place", "object"]},
        "size_cm": {"type": "integer", "minimum": 0},
        "beginner_friendly": {"type": "boolean"},
    },
    "required": ["name", "summary", "category", "size_cm", "beginner_friendly"],
    "additionalProperties": False,
}
JSON_FORMAT = {"type": "json_schema", "json_schema": {"name": "description", "schema": SCHEMA}}
GOAL_CONSTRAINED = 0.90  # 8 constrained streams' aggregate tokens/s over 8 unconstrained ones'


def json_question(thing: str) -> str:
    return (
        f"Give a JSON description of {thing} with the fields name, summary (one sentence), category (animal, plant, "
        "food, place or object), size_cm (its typical size in centimetres, an integer) and beginner_friendly (true or "
        "false: is it easy for a beginner to keep, make or visit)."
    )


@dataclass
class Stream:
    """One answer as a reader saw it; times are time.perf_counter() readings."""

    text: str
    sent: float  # the request was sent (bare: stream_generate was called)
    first: float  # the first non-empty piece arrived
    last: float  # the last non-empty piece arrived
    end: float  # the stream ended
    tokens: int  # tokens generated
    prompt_tokens: int = 0  # served: the usage chunk's
    cached_tokens: int = 0  # served: of the prompt's tokens, those read from the prompt cache
    finish: str | None = None  # served: the finish_reason
    times: list[float] = field(default_factory=list)  # served: when each non-empty piece arrived

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


def chat(port: int, model: str, messages: list[dict[str, str]], max_tokens: int, response_format: Any = None) -> Stream:
    """One streamed answer to `messages` (the whole conversation, as an OpenAI client sends it each turn)."""
    body: dict[str, Any] = {
        "model": model,
        "stream": True,
        "stream_options": {"include_usage": True},
        "temperature": 0,
        "max_tokens": max_tokens,
        "messages": messages,
    }
    if response_format is not None:
        body["response_format"] = response_format
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=600)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/chat/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200, f"{resp.status}: {resp.read()[:300]!r}"
    pieces: list[str] = []
    times: list[float] = []
    tokens = prompt_tokens = cached = 0
    finish = None
    for line in resp:
        if not line.startswith(b"data: {"):
            continue
        event = json.loads(line[6:])
        if usage := event.get("usage"):
            tokens, prompt_tokens = usage["completion_tokens"], usage["prompt_tokens"]
            cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens", 0)
        choice = event["choices"][0] if event["choices"] else {}
        finish = choice.get("finish_reason") or finish
        delta = choice.get("delta", {}).get("content")
        if delta:
            times.append(time.perf_counter())
            pieces.append(delta)
    end = time.perf_counter()
    conn.close()
    first, last = (times[0], times[-1]) if times else (0.0, 0.0)
    return Stream("".join(pieces), t0, first, last, end, tokens, prompt_tokens, cached, finish, times)


def served(port: int, model: str, question: str, max_tokens: int, response_format: Any = None) -> Stream:
    return chat(port, model, [{"role": "user", "content": question}], max_tokens, response_format)


def together(
    port: int, model: str, questions: list[str], max_tokens: int, formats: list[Any] | None = None
) -> list[Stream]:
    """Each question asked by its own thread (with its response_format, if `formats`), all sent at once (behind a
    barrier)."""
    out: list[Stream | BaseException | None] = [None] * len(questions)
    barrier = threading.Barrier(len(questions))

    def ask(i: int) -> None:
        barrier.wait()
        try:
            out[i] = served(port, model, questions[i], max_tokens, formats[i] if formats else None)
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


def all_decoding(streams: list[Stream]) -> float:
    """Pieces per second while every stream decodes: from the last stream's first piece to the first stream's last
    (NaN when that window is under 0.1 s)."""
    start, stop = max(s.first for s in streams), min(s.last for s in streams)
    if stop - start < 0.1:
        return float("nan")
    return sum(1 for s in streams for t in s.times if start < t <= stop) / (stop - start)


def load_average() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


class Server:
    """An Engine on the loaded model with `cache`, behind the server `serve` runs (waitress, with serve's settings)
    on a free port of 127.0.0.1, in a thread of this process, without serve's access log."""

    def __init__(self, source: str, loaded: loader.Loaded, cache: PromptCache, folder: Path) -> None:
        folder.mkdir()
        self.engine = Engine(loaded, cache)
        config = ServeConfig(source, folder / "chat.db", folder, data_dir=folder / "data")
        self.server = make_wsgi_server(create_app(config, self.engine), "127.0.0.1", 0, config)
        threading.Thread(target=self.server.run, daemon=True).start()
        self.port = self.server.effective_port
        conn = http.client.HTTPConnection("127.0.0.1", self.port)
        conn.request("GET", "/v1/models")
        self.model = json.loads(conn.getresponse().read())["data"][0]["id"]  # the served model's name
        conn.close()

    def close(self) -> None:
        self.server.task_dispatcher.shutdown()  # its loop thread, a daemon, idles until the process ends


def streams_table(args: argparse.Namespace, loaded: loader.Loaded, server: Server) -> None:
    levels = sorted({1, *(int(x) for x in args.levels.split(","))})  # one stream: the reference for the others
    questions = QUESTIONS[: levels[-1]]
    max_tokens = args.max_tokens or 128
    port, model = server.port, server.model

    # Untimed: warm-up, and each question's answer when asked alone (bare and served must agree).
    alone = []
    for i, q in enumerate(questions):
        text = bare(loaded, q, max_tokens).text
        solo = served(port, model, q, max_tokens).text
        assert solo == text, f"greedy: the server must stream bare mlx_lm's text (question {i})"
        alone.append(text)

    runs: dict[int, list[list[Stream]]] = {n: [] for n in levels}
    bares: list[Stream] = []
    mismatches = []
    for _ in range(args.repeats):
        b = bare(loaded, questions[0], max_tokens)
        assert b.text == alone[0], "greedy: bare mlx_lm must give the same text every time"
        bares.append(b)
        for n in levels:
            streams = together(port, model, questions[:n], max_tokens)
            runs[n].append(streams)
            mismatches += [(n, i) for i, s in enumerate(streams) if s.text != alone[i]]

    one = statistics.median(aggregate(r) for r in runs[1])
    print(
        f"\nstreams: {loaded.label}: {len(questions)} different questions (stream i asks question i), greedy, "
        f"max_tokens {max_tokens}, {args.repeats} rounds (median); BLAS: {blas.describe(blas.use_fast_blas())}; "
        f"both sides in this one process, {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at the end; "
        "no prompt cache"
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


class Diverged(Exception):
    """A turn's answer differs from the reference run's answer to that turn."""

    def __init__(self, turn: int, stream: Stream, expected: str) -> None:
        super().__init__(turn)
        self.turn, self.stream, self.expected = turn, stream, expected


def conversation(server: Server, turns: int, max_tokens: int, expected: list[str] | None = None) -> list[Stream]:
    """One conversation of `turns` turns, the whole history (each answer as it was generated) sent each turn; raises
    Diverged at the first answer that differs from `expected`'s."""
    messages: list[dict[str, str]] = []
    out = []
    for k, question in enumerate(TURNS[:turns]):
        messages.append({"role": "user", "content": question})
        s = chat(server.port, server.model, messages, max_tokens)
        if expected is not None and s.text != expected[k]:
            raise Diverged(k + 1, s, expected[k])
        out.append(s)
        messages.append({"role": "assistant", "content": s.text})
    return out


def turns_table(args: argparse.Namespace, loaded: loader.Loaded, cached: Server, uncached: Server) -> None:
    sides = {"with the cache": cached, "without": uncached}
    for server in sides.values():  # untimed: each server's first request
        chat(server.port, server.model, [{"role": "user", "content": "Hello!"}], 8)
    runs: dict[str, list[list[Stream]]] = {side: [] for side in sides}
    reference: list[str] | None = None
    for r in range(args.repeats):
        for side, server in sides.items():
            if server is cached:
                server.engine.scheduler.cache = PromptCache()  # empty: every run starts cold (the scheduler is idle)
            try:
                conv = conversation(server, args.turns, args.turn_tokens, reference)
            except Diverged as d:
                print(
                    f"\nturns: STOPPED: run {r + 1} {side}, turn {d.turn} ({d.stream.prompt_tokens} prompt tokens, "
                    f"{d.stream.cached_tokens} from the cache) answered differently from the first run with the "
                    f"cache:\n  this run: {d.stream.text!r}\n  first run with the cache: {d.expected!r}"
                )
                raise SystemExit("turns: the answers with and without the prompt cache differ (greedy)") from None
            reference = reference or [s.text for s in conv]
            runs[side].append(conv)

    lengths = [len(loaded.tokenizer.encode(q, add_special_tokens=False)) for q in TURNS[: args.turns]]
    shown = sorted({t for t in (1, 2, 4, 8, 16) if t <= args.turns} | {args.turns})
    ttft = {side: [statistics.median(run[k].ttft for run in runs[side]) for k in range(args.turns)] for side in sides}
    first = runs["with the cache"][0]
    print(
        f"\nturns: {loaded.label}: one conversation of {args.turns} turns, a user message of "
        f"{statistics.mean(lengths):.0f} tokens ({min(lengths)}-{max(lengths)}) and an answer of at most "
        f"{args.turn_tokens} each turn, greedy, the whole history sent each turn; {args.repeats} runs a side, "
        f"alternating (median per turn), the cache emptied before each run with it; load average "
        f"{os.getloadavg()[0]:.2f} at the end"
    )
    print(
        f"{'turn':>5}{'prompt':>8}{'cached':>8}{'new':>6}{'answer':>8}"
        f"{'TTFT cache':>12}{'TTFT none':>11}{'none/cache':>12}"
    )
    for t in shown:
        s = first[t - 1]
        with_cache, without = ttft["with the cache"][t - 1], ttft["without"][t - 1]
        print(
            f"{t:5}{s.prompt_tokens:8}{s.cached_tokens:8}{s.prompt_tokens - s.cached_tokens:6}{s.tokens:8}"
            f"{with_cache:12.3f}{without:11.3f}{without / with_cache:12.2f}"
        )
    last = args.turns
    grow = {side: ttft[side][last - 1] / ttft[side][0] for side in sides}
    print(
        f"TTFT turn {last} / turn 1: with the cache {grow['with the cache']:.2f}x, without {grow['without']:.2f}x "
        f"(goal with the cache <= {GOAL_TURNS}x: {'met' if grow['with the cache'] <= GOAL_TURNS else 'NOT met'})"
    )
    # The same history every run: the same prompts on both sides, and the same cache hits on the cache's side.
    moving = []
    for side in sides:
        for r, run in enumerate(runs[side]):
            for k, s in enumerate(run):
                hits = s.cached_tokens == first[k].cached_tokens or sides[side] is uncached
                if s.prompt_tokens != first[k].prompt_tokens or not hits:
                    moving.append((side, r + 1, k + 1))
    leaked = [(r + 1, k + 1) for r, run in enumerate(runs["without"]) for k, s in enumerate(run) if s.cached_tokens]
    assert not leaked, f"cached_tokens must be 0 with PromptCache(max_bytes=0): (run, turn) {leaked}"
    if moving:
        print(f"note: prompt or cached tokens differ from the first run's at (side, run, turn) {moving}")
    print(
        "both sides gave the same answer at every turn in every run; without the cache no prompt token was read from "
        "one"
    )


def constrained_table(args: argparse.Namespace, loaded: loader.Loaded, server: Server) -> None:
    questions = [json_question(t) for t in THINGS]
    max_tokens = args.max_tokens or 96
    levels = (0, 1, len(questions))
    port, model = server.port, server.model

    def ask(held: int) -> list[Stream]:
        """Every question at once, the first `held` of them held to SCHEMA."""
        formats = [JSON_FORMAT if i < held else None for i in range(len(questions))]
        return together(port, model, questions, max_tokens, formats)

    # Untimed: warm-up (the tokenizer's grammar side is built once), and each stream's text free and held.
    free_round, held_round = ask(0), ask(len(questions))
    free, held = [s.text for s in free_round], [s.text for s in held_round]
    runs: dict[int, list[list[Stream]]] = {k: [] for k in levels}
    mismatches = []
    for _ in range(args.repeats):
        for k in levels:
            streams = ask(k)
            runs[k].append(streams)
            mismatches += [(k, i) for i, s in enumerate(streams) if s.text != (held if i < k else free)[i]]

    keys = set(SCHEMA["properties"])
    bad = []
    for k in levels:
        for streams in runs[k]:
            for i, s in enumerate(streams[:k]):
                if s.finish != "stop":
                    continue
                try:
                    value = json.loads(s.text)
                except json.JSONDecodeError as e:
                    bad.append((k, i, f"not JSON: {e}"))
                    continue
                if not isinstance(value, dict) or set(value) != keys:
                    bad.append((k, i, f"keys {sorted(value) if isinstance(value, dict) else type(value).__name__}"))

    zero = statistics.median(aggregate(r) for r in runs[0])
    zero_all = statistics.median(all_decoding(r) for r in runs[0])
    print(
        f"\nconstrained: {loaded.label}: {len(questions)} streams together, each a different thing to describe in "
        f"JSON, the first k of them sending response_format json_schema ({len(keys)} fields), greedy, max_tokens "
        f"{max_tokens}, no prompt cache; {args.repeats} rounds (median); load average {os.getloadavg()[0]:.2f} at "
        "the end"
    )
    print(
        f"{'constrained':>12}{'tokens':>8}{'agg tok/s':>11}{'x 0/8':>7}{'all-on pc/s':>13}{'x 0/8':>7}"
        f"{'TTFT med':>10}{'length':>8}"
    )
    for k in levels:
        agg = statistics.median(aggregate(r) for r in runs[k])
        on = statistics.median(all_decoding(r) for r in runs[k])
        ttft = statistics.median(s.ttft for r in runs[k] for s in r)
        cut = sum(1 for r in runs[k] for s in r[:k] if s.finish == "length")
        print(
            f"{f'{k}/{len(questions)}':>12}{sum(s.tokens for s in runs[k][0]):8}{agg:11.1f}{agg / zero:7.2f}"
            f"{on:13.1f}{on / zero_all:7.2f}{ttft:10.3f}{f'{cut}/{k * args.repeats}':>8}"
        )
    ratio = statistics.median(aggregate(r) for r in runs[len(questions)]) / zero
    print(
        f"{len(questions)}/{len(questions)} constrained / 0/{len(questions)}, aggregate tokens/s: {ratio:.1%} "
        f"(goal >= {GOAL_CONSTRAINED:.0%}: {'met' if ratio >= GOAL_CONSTRAINED else 'NOT met'})"
    )
    for name, round_ in (("constrained", held_round), ("unconstrained", free_round)):
        print(
            f"untimed round, {name}: {sum(1 for s in round_ if _parses(s.text))}/{len(round_)} parse as JSON; "
            f"tokens {[s.tokens for s in round_]}; finish {[s.finish for s in round_]}"
        )
    stopped = sum(1 for k in levels for r in runs[k] for s in r[:k] if s.finish == "stop")
    assert not bad, f"constrained answers ended by 'stop' that do not hold to the schema (held, stream, why): {bad}"
    print(
        f"every constrained answer that ended by 'stop' ({stopped}) parses with json.loads and has exactly the "
        "schema's keys"
    )
    assert not mismatches, (
        f"greedy: these (held, stream) differ from the stream's text in the untimed round: {mismatches}"
    )
    print("every stream at every level gave its untimed round's text (unconstrained ones beside constrained too)")


def _parses(text: str) -> bool:
    try:
        json.loads(text)
    except json.JSONDecodeError:
        return False
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2-135m-instruct", help="a run folder or any model source")
    ap.add_argument(
        "--tables", default="all", help="the tables to measure, comma-separated: streams, turns, constrained, or all"
    )
    ap.add_argument(
        "--levels",
        default="1,2,4,8",
        help="streams: simultaneous streams to measure, comma-separated, 1 to 8 (1 is always measured: the reference)",
    )
    ap.add_argument(
        "--max-tokens",
        type=int,
        default=None,
        help="tokens each answer may have, the same for all (default: 128 in streams, 96 in constrained)",
    )
    ap.add_argument("--turns", type=int, default=16, help=f"turns: the conversation's turns, 1 to {len(TURNS)}")
    ap.add_argument("--turn-tokens", type=int, default=50, help="turns: tokens each answer may have")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds; each row is the median over them")
    args = ap.parse_args()
    tables = {"streams", "turns", "constrained"} if args.tables == "all" else set(args.tables.split(","))
    if not tables or tables - {"streams", "turns", "constrained"}:
        ap.error("--tables: all, or some of streams, turns, constrained (comma-separated)")
    levels = {int(x) for x in args.levels.split(",")}
    if min(levels) < 1 or max(levels) > len(QUESTIONS):
        ap.error(f"--levels: 1 to {len(QUESTIONS)} streams (one question each)")
    if not 1 <= args.turns <= len(TURNS):
        ap.error(f"--turns: 1 to {len(TURNS)} (one user message each)")

    load_before = load_average()
    loaded = loader.load(args.model)
    threads = ", ".join(f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS") if k in os.environ)
    print(
        f"{loaded.label}; BLAS: {blas.describe(blas.use_fast_blas())}; {os.cpu_count()} CPUs, "
        f"{threads or 'no thread-count variable set'}; load average (1, 5, 15 min) {load_before} at the start"
    )
    with tempfile.TemporaryDirectory() as tmp:
        servers: dict[str, Server] = {}

        def server(name: str, cache: PromptCache) -> Server:
            if name not in servers:
                servers[name] = Server(args.model, loaded, cache, Path(tmp) / name)
            return servers[name]

        try:
            if "streams" in tables:
                streams_table(args, loaded, server("no-cache", PromptCache(max_bytes=0)))
            if "turns" in tables:
                turns_table(args, loaded, server("cache", PromptCache()), server("no-cache", PromptCache(max_bytes=0)))
            if "constrained" in tables:
                constrained_table(args, loaded, server("no-cache", PromptCache(max_bytes=0)))
        finally:
            for s in servers.values():
                s.close()
    print(f"\nload average (1, 5, 15 min) {load_average()} at the end")


if __name__ == "__main__":
    main()
