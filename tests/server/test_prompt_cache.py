"""The prompt cache: a conversation's next turn starts from the KV state its last answer left, and answers exactly as
it would have without the cache (greedy, token for token), alone, batched, across adapter swaps; an entry is never
continued by other weights, and the cache keeps within its byte bound, dropping the least recently kept first."""

from __future__ import annotations

import json
from pathlib import Path

import mlx.core as mx
import pytest

from mlx_ft import config, data
from mlx_ft.inference.engine import Engine, ModelRef
from mlx_ft.inference.prompt_cache import PromptCache
from mlx_ft.inference.sampling import Sampling
from mlx_ft.inference.scheduler import Job
from mlx_ft.models import loader
from mlx_ft.training.run import train

GREEDY = Sampling(max_tokens=16)
SYSTEM = "You answer aquarium questions briefly. " * 6
QUESTIONS = [
    "How often should I change the water in a goldfish tank?",
    "And how much of it each time?",
    "What temperature do they like?",
    "Can they live with guppies?",
    "What should I feed them?",
]


def _ask(engine: Engine, messages: list[dict[str, str]], ref: ModelRef | None = None) -> Job:
    job = engine.submit(engine.prompt(messages, GREEDY.max_tokens, ref), GREEDY, ref)
    list(job.pieces())
    return job


def _conversation(engine: Engine, questions: list[str], system: str | None = None) -> list[Job]:
    """Each question asked in turn, the history (with each answer as generated) sent again every time."""
    messages = [{"role": "system", "content": system}] if system else []
    jobs = []
    for q in questions:
        messages.append({"role": "user", "content": q})
        job = _ask(engine, messages)
        messages.append({"role": "assistant", "content": engine.tokenizer.decode(job.tokens)})
        jobs.append(job)
    return jobs


@pytest.fixture(scope="module")
def engine(smollm2_dir) -> Engine:
    return Engine(loader.load(str(smollm2_dir)), PromptCache(max_bytes=1 << 30))


def _uncached(engine: Engine, asks):
    """What `asks` gives with the cache switched off (the scheduler's thread reads the attribute at each prompt)."""
    cache, engine.scheduler.cache = engine.scheduler.cache, None
    try:
        return asks()
    finally:
        engine.scheduler.cache = cache


def test_a_five_turn_conversation_answers_the_same_with_the_cache(engine):
    without = _uncached(engine, lambda: _conversation(engine, QUESTIONS))
    assert all(j.cached_tokens == 0 for j in without)
    cached = _conversation(engine, QUESTIONS)
    assert [j.tokens for j in cached] == [j.tokens for j in without]
    for before, job in zip(cached, cached[1:]):
        # the turn before it, prompt and answer, is read from the cache (all but the answer's last token or two,
        # where the template's end of turn differs from the generated one)
        assert job.cached_tokens >= len(before.prompt) + len(before.tokens) - 2, (job.cached_tokens, len(before.prompt))
        assert job.cached_tokens < len(job.prompt)


def test_conversations_sharing_a_system_prompt_share_its_cache(engine):
    first, other = "Hello! What fish suits a small tank?", "Is tap water safe?"
    without = _uncached(engine, lambda: [_conversation(engine, [q], SYSTEM)[0] for q in (first, other)])
    a = _conversation(engine, [first], SYSTEM)[0]
    b = _conversation(engine, [other], SYSTEM)[0]
    assert [a.tokens, b.tokens] == [j.tokens for j in without]
    system_tokens = len(engine.prompt([{"role": "system", "content": SYSTEM}], 1))
    assert b.cached_tokens >= system_tokens - 2, (b.cached_tokens, system_tokens)


def test_batched_second_turns_answer_the_same_with_the_cache(engine):
    starts = [f"My fish number {i} looks pale. Why?" for i in range(4)]

    def second_turns() -> list[Job]:
        histories = []
        for q in starts:
            first = _conversation(engine, [q], SYSTEM)[0]
            histories.append(
                [
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": q},
                    {"role": "assistant", "content": engine.tokenizer.decode(first.tokens)},
                    {"role": "user", "content": "What should I do first?"},
                ]
            )
        jobs = engine.submit_many([(engine.prompt(h, GREEDY.max_tokens), GREEDY) for h in histories])
        for job in jobs:
            list(job.pieces())
        return jobs

    without = _uncached(engine, second_turns)
    cached = second_turns()
    assert [j.tokens for j in cached] == [j.tokens for j in without]
    assert all(j.cached_tokens > len(engine.prompt([{"role": "system", "content": SYSTEM}], 1)) for j in cached)


def test_the_cache_keeps_within_its_bytes_dropping_the_least_recent(engine):
    small = Engine(engine.loaded, PromptCache(max_bytes=1))
    _conversation(small, QUESTIONS[:2])
    assert len(small.scheduler.cache) == 0, "an entry larger than the bound is not kept"
    off = Engine(engine.loaded, PromptCache(max_bytes=0))  # serve --prompt-cache-bytes 0
    assert [j.cached_tokens for j in _conversation(off, QUESTIONS[:2])] == [0, 0]

    measure = Engine(engine.loaded, PromptCache(max_bytes=1 << 30))
    _conversation(measure, ["Tell me about lamps, please."])
    entry = measure.scheduler.cache.nbytes
    assert entry > 0 and len(measure.scheduler.cache) == 1
    bounded = Engine(engine.loaded, PromptCache(max_bytes=int(entry * 2.5)))
    a = ["Tell me about snails, please.", "And shrimp?"]
    b = ["Tell me about plants, please.", "And moss?"]
    c = ["Tell me about filters, please.", "And heaters?"]
    for conv in (a, b, c):
        _conversation(bounded, conv[:1])
    cache = bounded.scheduler.cache
    assert 0 < cache.nbytes <= cache.max_bytes and len(cache) == 2
    # c is there whole; a, the least recently kept, went: only the head its prompt shares with the others is found
    again_c, again_a = _conversation(bounded, c[:1])[0], _conversation(bounded, a[:1])[0]
    assert again_c.cached_tokens == len(again_c.prompt) - 1
    assert again_a.cached_tokens < len(again_a.prompt) - 3


@pytest.fixture(scope="module")
def qwen_run(qwen2_dir, tmp_path_factory) -> tuple[Engine, Path]:
    tmp = tmp_path_factory.mktemp("prompt_cache")
    src = tmp / "facts.json"
    src.write_text(
        json.dumps([{"question": f"q{i}?", "answer": "鱼要换水。" * 3} for i in range(8)], ensure_ascii=False)
    )
    data.prepare([src], tmp / "data", valid=0.25, test=0.0)
    run = tmp / "runs" / "A"
    train(
        config.build(
            {
                "model": str(qwen2_dir),
                "data": str(tmp / "data"),
                "adapter_path": str(run),
                "batch_size": 2,
                "iters": 4,
                "max_seq_length": 64,
                "learning_rate": 5e-2,
                "lora_parameters": {"rank": 4, "scale": 20.0, "dropout": 0.0},
                "num_layers": 2,
            }
        )
    )
    return Engine(loader.load(str(qwen2_dir), adapter=False), PromptCache(max_bytes=1 << 28)), run


def test_an_entry_is_never_continued_by_another_adapter(qwen_run):
    engine, run = qwen_run
    ref = ModelRef("run:A", run)
    messages = [{"role": "user", "content": "q3?"}]
    truth = _uncached(engine, lambda: [_ask(engine, messages).tokens, _ask(engine, messages, ref).tokens])
    assert truth[0] != truth[1], "the adapter changes the answer (else this test shows nothing)"

    base = _ask(engine, messages)
    assert base.tokens == truth[0]
    tuned = _ask(engine, messages, ref)  # the same prompt, after a swap: the base's entry is not its own
    assert tuned.cached_tokens == 0 and tuned.tokens == truth[1]
    again = _ask(engine, messages, ref)
    assert again.cached_tokens > 0 and again.tokens == truth[1]
    assert _ask(engine, messages).tokens == truth[0]  # and back: each its own entries

    # the run retrained in place (new weights in the same file): its old entries are not continued
    weights = mx.load(str(run / loader.ADAPTERS))
    mx.save_safetensors(str(run / loader.ADAPTERS), {k: v * 1.5 for k, v in weights.items()})
    retrained = _uncached(engine, lambda: _ask(engine, messages, ref).tokens)
    fresh = _ask(engine, messages, ref)
    assert fresh.cached_tokens == 0 and fresh.tokens == retrained
