"""The OpenAI API as its clients see it: a real `serve` process with two models (the tiny base and a LoRA run on
it), driven by the official `openai` client. Every parameter is honoured (checked against what it must change) or
refused with a 400 that names it; concurrent streams are generated together and stay separate."""

import json
import threading
from collections import Counter

import openai
import pytest

from mlx_ft import config, data
from mlx_ft.inference.engine import Engine
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from mlx_ft.training.run import train
from tests.serving import openai_client, serving

QUESTION = [{"role": "user", "content": "金鱼要多久换一次水？"}]
GREEDY = {"temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def runs(qwen2_dir, tmp_path_factory):
    """A: LoRA on the tiny base; Q: QLoRA, whose base is the tiny model quantized (a second base)."""
    tmp = tmp_path_factory.mktemp("openai")
    src = tmp / "facts.json"
    src.write_text(json.dumps([{"question": f"q{i}?", "answer": "鱼要换水。" * 3} for i in range(8)]))
    data.prepare([src], tmp / "data", valid=0.25, test=0.0)
    cfg = dict(model=str(qwen2_dir), data=str(tmp / "data"), batch_size=2, iters=4, steps_per_report=2)
    cfg.update(steps_per_eval=4, max_seq_length=64, learning_rate=5e-2, num_layers=2)
    cfg["lora_parameters"] = {"rank": 4, "scale": 20.0, "dropout": 0.0}
    train(config.build({**cfg, "adapter_path": str(tmp / "runs" / "A")}))
    train(config.build({**cfg, "adapter_path": str(tmp / "runs" / "Q"), "quantize": 4}))
    return tmp / "runs"


@pytest.fixture(scope="module")
def run_a(runs):
    return runs / "A"


@pytest.fixture(scope="module")
def server(qwen2_dir, runs, tmp_path_factory):
    db = tmp_path_factory.mktemp("openai_server") / "chat.db"
    with serving([qwen2_dir, runs / "A", runs / "Q"], db, "--runs", str(runs)) as port:
        yield port


@pytest.fixture
def client(server):
    return openai_client(server)


def _chat(client, model, **kw):
    return client.chat.completions.create(model=model, messages=kw.pop("messages", QUESTION), **{**GREEDY, **kw})


def _streamed(client, model, **kw):
    chunks = list(_chat(client, model, stream=True, **kw))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    reasons = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    return text, reasons, chunks


def _alone(source) -> str:
    engine = Engine(loader.load(str(source)))
    return engine.answer(engine.prompt(QUESTION, 24), Sampling(max_tokens=24))[0]


def test_models_lists_every_served_model_and_model_selects_it(client, qwen2_dir, run_a, runs):
    ids = [m.id for m in client.models.list().data]
    assert ids[:3] == [str(qwen2_dir), "A", "Q"], "the models serve was started with, by name, default first"
    assert {"base", "run:A"} <= set(ids), "and the studio's catalogue"
    base, tuned = _chat(client, str(qwen2_dir)), _chat(client, "A")
    assert base.model == str(qwen2_dir) and tuned.model == "A"
    assert _chat(client, "run:A").choices[0].message.content == tuned.choices[0].message.content
    assert _chat(client, "base").choices[0].message.content == base.choices[0].message.content
    assert tuned.choices[0].message.content == _alone(run_a), "the run answers as it does served alone"
    assert tuned.choices[0].message.content != base.choices[0].message.content
    quantized = _chat(client, "Q").choices[0].message.content
    assert quantized == _alone(runs / "Q"), "a run on another (quantized) base answers from its own base"
    assert _chat(client, "A").choices[0].message.content == tuned.choices[0].message.content, "and back"
    with pytest.raises(openai.NotFoundError, match="not served here"):
        _chat(client, "gpt-4o")


def test_stop_cuts_the_answer_before_the_stop_text_plain_and_streamed(client, qwen2_dir):
    full = _chat(client, "A").choices[0].message.content
    assert len(full) > 6
    stop = full[3:5]
    at = full.find(stop)
    stopped = _chat(client, "A", stop=stop).choices[0]
    assert stopped.message.content == full[:at] and stopped.finish_reason == "stop"
    listed = _chat(client, "A", stop=["\u2063never", stop]).choices[0]
    assert listed.message.content == full[:at]
    text, reasons, _ = _streamed(client, "A", stop=[stop])
    assert text == full[:at] and reasons == ["stop"], "a stop text split over streamed pieces is never shown"


def test_n_choices_with_a_seed_are_reproducible_and_differ(client):
    kw = {"temperature": 1.0, "n": 3, "seed": 7, "max_tokens": 12}
    first = _chat(client, "A", **kw)
    again = _chat(client, "A", **kw)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices], "a seed gives the same answers"
    assert len(set(texts)) > 1, "each choice samples on its own"
    assert first.usage.completion_tokens > 12, "usage counts every choice's tokens"
    other = _chat(client, "A", **{**kw, "seed": 8})
    assert [c.message.content for c in other.choices] != texts
    streamed = list(_chat(client, "A", stream=True, **kw))
    pieces = {i: [] for i in range(3)}
    for c in streamed:
        pieces[c.choices[0].index].append(c.choices[0].delta.content or "")
    assert ["".join(pieces[i]) for i in range(3)] == texts, "streamed choices are the same answers, kept apart"


def test_logprobs_and_top_logprobs(client):
    answer = _chat(client, "A", logprobs=True, top_logprobs=3).choices[0]
    entries = answer.logprobs.content
    assert entries and all(len(e.top_logprobs) == 3 for e in entries)
    for e in entries:
        tops = [t.logprob for t in e.top_logprobs]
        assert tops == sorted(tops, reverse=True) and e.logprob <= 0
        assert e.logprob == pytest.approx(tops[0], abs=1e-4), "greedy: the chosen token is the likeliest"
        assert e.top_logprobs[0].token == e.token
    assert bytes(b for e in entries for b in e.bytes).decode() == answer.message.content
    plain = _chat(client, "A").choices[0]
    assert plain.logprobs is None and plain.message.content == answer.message.content
    _, _, chunks = _streamed(client, "A", logprobs=True, top_logprobs=2)
    streamed = [e for c in chunks if c.choices and c.choices[0].logprobs for e in c.choices[0].logprobs.content]
    assert [e.token for e in streamed] == [e.token for e in entries]


def test_stream_options_include_usage_sends_a_usage_chunk(client):
    text, _, chunks = _streamed(client, "A", stream_options={"include_usage": True})
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert chunks[-1].usage.total_tokens == chunks[-1].usage.prompt_tokens + chunks[-1].usage.completion_tokens
    assert all(c.usage is None for c in chunks[:-1])
    _, _, without = _streamed(client, "A")
    assert all(c.usage is None for c in without)


def test_penalties_and_logit_bias_change_the_answer(client):
    model = client.models.list().data[0].id
    plain = _chat(client, model, max_tokens=32).choices[0].message.content
    repeats = max(Counter(plain).values())
    penalised = _chat(client, model, max_tokens=32, frequency_penalty=2.0).choices[0].message.content
    assert penalised != plain and max(Counter(penalised).values()) <= repeats
    assert _chat(client, model, max_tokens=32, presence_penalty=2.0).choices[0].message.content != plain
    forced = _chat(client, model, max_tokens=4, logit_bias={"100": 100}, logprobs=True).choices[0]
    assert [e.bytes for e in forced.logprobs.content] == [forced.logprobs.content[0].bytes] * 4
    repeated = _chat(client, model, max_tokens=32, extra_body={"repetition_penalty": 10.0})
    assert repeated.choices[0].message.content != plain, "mlx_lm's repetition penalty, an extension"


@pytest.mark.parametrize(
    "kw, words",
    [
        ({"response_format": {"type": "json"}}, "response_format"),
        (
            {"response_format": {"type": "json_object"}, "tools": [{"type": "function", "function": {"name": "f"}}]},
            "tools",
        ),
        ({"tool_choice": "required", "tools": [{"type": "function", "function": {"name": "f"}}]}, "tool_choice"),
        ({"n": 9}, "'n'"),
        ({"stop": ["a", "b", "c", "d", "e"]}, "'stop'"),
        ({"stop": "x" * 257}, "'stop'"),
        ({"n": 8, "extra_body": {"stream": "yes"}}, "'stream'"),
        ({"extra_body": {"repetition_penalty": 0}}, "repetition_penalty"),
        (
            {
                "messages": [
                    {"role": "user", "content": "a"},
                    {
                        "role": "assistant",
                        "tool_calls": [{"type": "function", "function": {"name": "f", "arguments": "{x"}}],
                    },
                    {"role": "tool", "content": "b"},
                ]
            },
            "arguments is not valid JSON",
        ),
        ({"top_logprobs": 2}, "logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream"),
        ({"logit_bias": {"99999999": 1}}, "vocabulary"),
        ({"extra_body": {"functions": [{"name": "f"}]}}, "tools"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "image_url"),
        ({"tools": [{"type": "function", "function": {"name": "f"}}]}, "cannot render tools"),
    ],
)
def test_what_cannot_be_honoured_is_a_400_naming_it(client, kw, words):
    with pytest.raises(openai.BadRequestError) as e:
        _chat(client, "A", **kw)
    assert words in e.value.body["message"]


def test_top_p_0_keeps_the_likeliest_token_alone(client):
    assert (
        _chat(client, "A", temperature=1.0, top_p=0).choices[0].message.content
        == _chat(client, "A").choices[0].message.content
    )


def test_unknown_extra_fields_are_ignored(client):
    kw = {"extra_body": {"some_client_extra": {"x": 1}}, "user": "u1", "metadata": {"k": "v"}}
    assert _chat(client, "A", **kw).choices[0].message.content == _chat(client, "A").choices[0].message.content


def test_completions_plain_streamed_echo_several_prompts_and_logprobs(client, qwen2_dir):
    model = str(qwen2_dir)
    one = client.completions.create(model=model, prompt="金鱼", temperature=0)
    assert one.object == "text_completion" and one.usage.completion_tokens <= 16, "OpenAI's default max_tokens"
    text = one.choices[0].text
    chunks = client.completions.create(model=model, prompt="金鱼", temperature=0, stream=True)
    streamed = "".join(c.choices[0].text for c in chunks)
    assert streamed == text
    echo = client.completions.create(model=model, prompt="金鱼", temperature=0, echo=True)
    assert echo.choices[0].text == "金鱼" + text
    two = client.completions.create(model=model, prompt=["金鱼", "水草"], temperature=0, max_tokens=8)
    assert [c.index for c in two.choices] == [0, 1] and two.choices[0].text == text[: len(two.choices[0].text)]
    lp = client.completions.create(model=model, prompt="金鱼", temperature=0, logprobs=2).choices[0].logprobs
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert all(len(t) == 2 for t in lp.top_logprobs)
    assert lp.text_offset[0] == 0
    stopped = client.completions.create(model=model, prompt="金鱼", temperature=0, stop=text[2:4]).choices[0]
    assert stopped.text == text[: text.find(text[2:4])] and stopped.finish_reason == "stop"
    usage = list(
        client.completions.create(
            model=model, prompt="金鱼", temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    assert usage[-1].choices == [] and usage[-1].usage.completion_tokens == one.usage.completion_tokens
    with pytest.raises(openai.BadRequestError, match="suffix"):
        client.completions.create(model=model, prompt="a", suffix="b")
    with pytest.raises(openai.BadRequestError, match="at most 64 answers"):
        client.completions.create(model=model, prompt=["a"] * 9, n=8, max_tokens=1)
    with pytest.raises(openai.BadRequestError, match="context window"):
        client.completions.create(model=model, prompt="a", max_tokens=1 << 20)


def test_concurrent_streams_are_generated_together_and_stay_separate(client):
    questions = [[{"role": "user", "content": f"第{i}个问题：金鱼吃什么？"}] for i in range(4)]
    alone = [_chat(client, "A", messages=q).choices[0].message.content for q in questions]
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        got[i] = _streamed(client, "A", messages=questions[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(4)] == alone, "temperature 0: the same answers as one at a time"


def test_closing_one_stream_leaves_the_others_alone(client):
    long = {"max_tokens": 48}
    expected = _chat(client, "A", **long).choices[0].message.content
    result = {}

    def full() -> None:
        result["text"] = _streamed(client, "A", **long)[0]

    t = threading.Thread(target=full)
    t.start()
    stream = _chat(client, "A", stream=True, **long)
    next(iter(stream))
    stream.close()  # the client goes away mid-answer
    t.join()
    assert result["text"] == expected


def test_concurrent_requests_for_different_models_each_get_their_models_answer(client, qwen2_dir):
    """Answers for one model are batched; one for another model waits for the batch to drain, then the engine
    switches: asked all at once, every model still answers as it does alone."""
    models = [str(qwen2_dir), "A", "Q", "A", str(qwen2_dir), "Q"]
    alone = {m: _chat(client, m).choices[0].message.content for m in set(models)}
    got: dict[int, str] = {}

    def ask(i: int) -> None:
        got[i] = _streamed(client, models[i])[0]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(models))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [got[i] for i in range(len(models))] == [alone[m] for m in models]


def test_usage_reports_the_prompt_tokens_read_from_the_cache(client):
    """The second turn of a conversation starts from the first turn's KV state: OpenAI's `cached_tokens`."""
    first = _chat(client, "A", messages=[{"role": "user", "content": "第一个问题：鱼缸多大？"}])
    history = [
        {"role": "user", "content": "第一个问题：鱼缸多大？"},
        {"role": "assistant", "content": first.choices[0].message.content},
        {"role": "user", "content": "第二个问题呢？"},
    ]
    second = _chat(client, "A", messages=history)
    details = second.usage.prompt_tokens_details
    assert first.usage.prompt_tokens < details.cached_tokens < second.usage.prompt_tokens
    _, _, chunks = _streamed(client, "A", messages=history, stream_options={"include_usage": True})
    streamed = chunks[-1].usage.prompt_tokens_details.cached_tokens
    assert streamed == second.usage.prompt_tokens - 1, "the same prompt again: all but its last token"
    for model in ("Q", "base"):  # other weights never continue run A's entries
        other = _chat(client, model, messages=history).usage
        assert other.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
