"""No answer ever shows U+FFFD for a character cut between tokens: the streaming detokenizer holds an unfinished
character's bytes back and drops them when the answer ends (max_tokens) or the next bytes do not continue them.

The fixture's tokenizer is the real Qwen byte-level BPE, where 龘 is two tokens (its first two bytes, then the last).
Its random model is made to write those tokens, and 鱼 (one token), by a logit bias and a frequency penalty: real
generation that cuts a character in half, through every route that answers (the scheduler, the chat page, the
seed API, the OpenAI API, compare)."""

from __future__ import annotations

import functools
import json

import pytest
from mlx_lm.tokenizer_utils import _byte_decoder

from mlx_ft import chat_template
from mlx_ft.inference import generation
from mlx_ft.inference.engine import Engine
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.chat import routes as api
from mlx_ft.server.state import ServeConfig
from mlx_ft.server.studio import models as studio_models

REPLACEMENT = "\ufffd"
QUESTION = "你好"
MAX_TOKENS = 12


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir)))


def _ids(engine: Engine, text: str) -> list[int]:
    return chat_template.hf_tokenizer(engine.tokenizer).encode(text, add_special_tokens=False)


def _bytes(engine: Engine, ids: list[int]) -> bytes:
    """What the tokens say, byte for byte (HF's decode would show an unfinished character as U+FFFD)."""
    pieces = chat_template.hf_tokenizer(engine.tokenizer).convert_ids_to_tokens(ids)
    return bytes(_byte_decoder()[c] for piece in pieces for c in piece)


def _shown(tokenizer, ids: list[int]) -> list[str]:
    """The pieces a stream shows for `ids`, the last one when the answer ends there."""
    detokenizer = generation.Detokenizer(tokenizer)
    pieces = []
    for t in ids:
        detokenizer.add_token(t)
        pieces.append(detokenizer.last_segment)
    detokenizer.finalize()
    return [*pieces, detokenizer.last_segment]


def test_an_answer_cut_anywhere_shows_whole_characters_only(engine):
    text = "金鱼龘𠀀🐟 fish, é!"
    ids = _ids(engine, text)
    assert len(ids) > len(text) - 4, "the rare characters must be split over several tokens for this to mean much"
    for cut in range(len(ids) + 1):
        pieces = _shown(engine.tokenizer, ids[:cut])
        assert not any(REPLACEMENT in p for p in pieces), (cut, pieces)
        assert "".join(pieces) == _bytes(engine, ids[:cut]).decode("utf-8", errors="ignore"), cut
    assert "".join(_shown(engine.tokenizer, ids)) == text


def test_the_detokenizer_is_mlx_lms_wherever_no_character_is_cut(engine):
    for text in ("金鱼要换水，水草要修剪。Change the water weekly.", " a leading space", "  two", "a\n\n\tb 🐟"):
        ids = _ids(engine, text)
        theirs = engine.tokenizer.detokenizer
        for t in ids:
            theirs.add_token(t)
        theirs.finalize()
        assert "".join(_shown(engine.tokenizer, ids)) == theirs.text, text


def test_a_replacement_character_the_model_wrote_still_comes_through(engine):
    ids = _ids(engine, "a\ufffdb")
    assert "".join(_shown(engine.tokenizer, ids)) == "a\ufffdb"
    # The first bytes of 龘, then a token that does not continue them: those bytes are dropped, not shown as U+FFFD.
    lead, _ = _ids(engine, "龘")
    assert "".join(_shown(engine.tokenizer, [lead, *_ids(engine, "鱼")])) == "鱼"


def _forced(engine: Engine, max_tokens: int = MAX_TOKENS) -> Sampling:
    """Greedy, but biased to 龘's two tokens and 鱼, with a penalty that makes them take turns unevenly."""
    lead, tail = _ids(engine, "龘")
    (fish,) = _ids(engine, "鱼")
    bias = ((lead, 100.0), (tail, 99.0), (fish, 98.0))
    return Sampling(temp=0.0, max_tokens=max_tokens, logit_bias=bias, frequency_penalty=2.0, top_logprobs=0)


@pytest.fixture(scope="module")
def cut(engine) -> tuple[int, str]:
    """The longest answer of at most MAX_TOKENS tokens that ends in the middle of a character, and what it says."""
    prompt = engine.prompt([{"role": "user", "content": QUESTION}], MAX_TOKENS)
    ids = [t.id for c in engine.submit(prompt, _forced(engine)).pieces() for t in c.tokens]
    cuts = [n for n in range(1, len(ids) + 1) if REPLACEMENT in _bytes(engine, ids[:n]).decode(errors="replace")[-1:]]
    assert cuts, f"the forced answer {ids} never ends mid-character: pick other biases"
    n = cuts[-1]
    whole = _bytes(engine, ids[:n]).decode("utf-8", errors="ignore")
    assert "龘" in whole and "鱼" in whole, f"{ids[:n]} must hold whole characters too, for this to mean much"
    return n, whole


def test_a_generated_answer_cut_mid_character_by_max_tokens_streams_no_replacement(engine, cut):
    n, whole = cut
    prompt = engine.prompt([{"role": "user", "content": QUESTION}], n)
    chunks = list(engine.submit(prompt, _forced(engine, n)).pieces())
    assert chunks[-1].finish_reason == "length" and chunks[-1].generation_tokens == n
    assert not any(REPLACEMENT in c.text for c in chunks), [c.text for c in chunks]
    assert "".join(c.text for c in chunks) == whole


@pytest.fixture
def client(engine, tmp_path, monkeypatch, cut):
    """The app, where the chat page, the seed API and compare sample as `_forced` does (they take no logit bias)."""
    forced = _forced(engine, cut[0])
    keep = {"logit_bias": forced.logit_bias, "frequency_penalty": forced.frequency_penalty}
    monkeypatch.setattr(api, "Sampling", functools.partial(Sampling, **keep))
    monkeypatch.setattr(studio_models, "Sampling", functools.partial(Sampling, **keep))
    app = create_app(ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", tmp_path / "runs"), engine)
    return app.test_client()


def _events(resp) -> list:
    text = resp.get_data(as_text=True)
    return [json.loads(x[6:]) for x in text.split("\n\n") if x.startswith("data: ") and x != "data: [DONE]"]


def test_every_route_shows_the_cut_answer_without_a_replacement(client, engine, cut):
    n, whole = cut
    settings = {"max_tokens": n, "temperature": 0.0}
    conv = client.post("/api/conversations", json=settings).get_json()
    events = _events(client.post(f"/api/conversations/{conv['id']}/messages", json={"content": QUESTION}))
    deltas = [e["delta"] for e in events if "delta" in e]
    assert "".join(deltas) == whole and events[-1]["message"]["content"] == whole

    seed = client.post("/api/conversations", json=settings).get_json()
    resp = client.post("/api/chat", json={"message": QUESTION, "conversation_id": seed["id"]})
    assert resp.get_json()["response"] == whole

    body = {"model": "base", "messages": [{"role": "user", "content": QUESTION}], **settings}
    body["logit_bias"] = {str(t): b for t, b in _forced(engine).logit_bias}
    body["frequency_penalty"] = _forced(engine).frequency_penalty
    plain = client.post("/v1/chat/completions", json=body).get_json()
    assert plain["choices"][0]["message"]["content"] == whole
    chunks = _events(client.post("/v1/chat/completions", json={**body, "stream": True}))
    openai_deltas = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")]
    assert "".join(openai_deltas) == whole

    compare = {"message": QUESTION, "models": ["base"], **settings}
    assert client.post("/api/studio/compare", json=compare).get_json()["answers"][0]["text"] == whole
    streamed = _events(client.post("/api/studio/compare", json={**compare, "stream": True}))
    compare_deltas = [e["delta"] for e in streamed if "delta" in e]
    assert "".join(compare_deltas) == whole
    for piece in deltas + openai_deltas + compare_deltas:
        assert REPLACEMENT not in piece


def test_batch_and_terminal_generation_show_whole_characters_too(engine, cut):
    """eval and `infer --file` (their token ids through text_of) and `infer`/`chat` in the terminal (stream_ids) end
    an answer cut mid-character as the server does: the cut character dropped, never U+FFFD. (generate_many takes
    no logit bias, so the forced ids come from the server's generation.)"""
    n, whole = cut
    prompt = engine.prompt([{"role": "user", "content": QUESTION}], n)
    model, tokenizer = engine.loaded.model, engine.tokenizer
    ids = [t.id for c in engine.submit(prompt, _forced(engine, n)).pieces() for t in c.tokens]
    assert len(ids) == n and generation.text_of(tokenizer, ids) == whole
    assert REPLACEMENT in tokenizer.decode(ids), "plain decoding shows the cut character: the case this is about"
    chunks = list(generation.stream_ids(model, tokenizer, prompt, _forced(engine, n)))
    assert chunks[-1].finish_reason == "length" and not any(REPLACEMENT in c.text for c in chunks)
    assert "".join(c.text for c in chunks) == whole
