"""Tool calls out of a model's answer, per template family, on answers the real chat templates write.

Each answer is what the template renders for an assistant turn with `tool_calls` (Qwen3's official template, Meta's
Llama 3.1 template, Mistral 7B v0.3's), framed the way the model generates it: after the generation prompt, before the
end-of-turn token. Parsing it must give back the calls the turn was rendered from, whole or streamed in pieces."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from mlx_lm.tokenizer_utils import load as load_tokenizer
from transformers import AutoTokenizer

from mlx_ft.chat_template import answer_frame
from mlx_ft.inference.tool_calls import (
    ContentEvent,
    Llama3JsonParser,
    ToolCallEvent,
    ToolCallParser,
    parse_llama3_calls,
    parser_for,
)
from tests.conftest import WEATHER_TOOL

HERE = Path(__file__).resolve().parent
LLAMA31_TEMPLATE = (HERE / "llama3.1_chat_template.jinja").read_text(encoding="utf-8")
MISTRAL_TEMPLATE = (HERE / "mistral_v0.3_chat_template.jinja").read_text(encoding="utf-8")

TOOLS = [
    WEATHER_TOOL,
    {
        "type": "function",
        "function": {
            "name": "get_time",
            "description": "The time in a time zone",
            "parameters": {"type": "object", "properties": {"tz": {"type": "string"}}},
        },
    },
]
QUESTION = {"role": "user", "content": "Weather and time in Paris?"}
WEATHER = {"name": "get_weather", "arguments": {"city": "Paris", "unit": "°C", "days": [1, 2], "quote": 'say "hi"'}}
TIME = {"name": "get_time", "arguments": {"tz": "Europe/Paris"}}


@pytest.fixture(scope="module")
def qwen3(qwen3_dir: Path) -> Any:
    return load_tokenizer(qwen3_dir)


@pytest.fixture(scope="module")
def llama31(qwen2_dir: Path) -> Any:
    """Meta's Llama 3.1 template on a fixture vocabulary: the family lives in the template, not in the vocabulary."""
    return load_tokenizer(qwen2_dir, tokenizer_config_extra={"chat_template": LLAMA31_TEMPLATE})


@pytest.fixture(scope="module")
def mistral(qwen2_dir: Path) -> Any:
    return load_tokenizer(qwen2_dir, tokenizer_config_extra={"chat_template": MISTRAL_TEMPLATE})


def assistant_turn(calls: list[dict[str, Any]], content: str = "", ids: bool = False) -> dict[str, Any]:
    tool_calls = [{"type": "function", "function": dict(c)} for c in calls]
    if ids:  # Mistral's template requires 9-character ids
        for i, tc in enumerate(tool_calls):
            tc["id"] = f"call{i:05d}"
    return {"role": "assistant", "content": content, "tool_calls": tool_calls}


def generated_answer(tokenizer: Any, turn: dict[str, Any]) -> str:
    """The text a model writes for `turn`: the template's rendering after the generation prompt, without the
    template's preamble (Qwen3's empty think block, which the prompt does not contain) and end-of-turn token."""
    prompt = tokenizer.apply_chat_template([QUESTION], tools=TOOLS, tokenize=False, add_generation_prompt=True)
    full = tokenizer.apply_chat_template([QUESTION, turn], tools=TOOLS, tokenize=False)
    assert full.startswith(prompt)
    frame = answer_frame(tokenizer)
    answer = full[len(prompt) :].removeprefix(frame.preamble)
    assert answer.endswith(frame.end)
    return answer[: len(answer) - len(frame.end)]


def as_calls(calls: list[dict[str, Any]]) -> list[tuple[str, Any]]:
    """Name and arguments as JSON values, the part of a call that must survive (ids are fresh)."""
    return [(c["function"]["name"], json.loads(c["function"]["arguments"])) for c in calls]


def streamed(parser: ToolCallParser, text: str, seed: int = 0) -> tuple[str, list[dict[str, Any]]]:
    """`text` fed in random pieces of 1..7 characters, as a detokenizer hands it out."""
    rng = random.Random(seed)
    stream = parser.stream(TOOLS)
    events = []
    at = 0
    while at < len(text):
        n = rng.randint(1, 7)
        events += stream.feed(text[at : at + n])
        at += n
    events += stream.finish()
    content = "".join(e.text for e in events if isinstance(e, ContentEvent))
    return content, [e.call for e in events if isinstance(e, ToolCallEvent)]


def check_both_ways(parser: ToolCallParser, text: str) -> tuple[str, list[dict[str, Any]]]:
    """split's answer, after checking that streaming in pieces (several cuttings) gives the same."""
    content, calls = parser.split(text, TOOLS)
    for seed in range(5):
        s_content, s_calls = streamed(parser, text, seed)
        assert (s_content, as_calls(s_calls)) == (content, as_calls(calls)), seed
    return content, calls


def test_families_are_read_from_the_templates(qwen3, llama31, mistral, qwen2_dir):
    assert parser_for(qwen3).family == "json_tools"
    assert parser_for(llama31).family == "llama3_json"
    assert parser_for(mistral).family == "mistral"
    # A bare Hugging Face tokenizer (no mlx_lm wrapper) is read from its template the same way.
    bare = AutoTokenizer.from_pretrained(qwen2_dir, chat_template=LLAMA31_TEMPLATE)
    assert parser_for(bare).family == "llama3_json"


def test_a_template_without_tools_has_no_parser(qwen2_dir):
    """Qwen2-Instruct's plain ChatML template writes no tool calls, so nothing may be parsed as one."""
    assert parser_for(load_tokenizer(qwen2_dir)) is None
    assert parser_for(AutoTokenizer.from_pretrained(qwen2_dir)) is None


@pytest.mark.parametrize(
    "calls, content",
    [([WEATHER], ""), ([WEATHER], "Let me look that up."), ([WEATHER, TIME], ""), ([WEATHER, TIME], "Two lookups.")],
    ids=["one-call", "content-then-call", "two-parallel-calls", "content-then-two-calls"],
)
def test_qwen3_calls_come_back_as_rendered(qwen3, calls, content):
    text = generated_answer(qwen3, assistant_turn(calls, content))
    assert text.count("<tool_call>") == len(calls)
    got_content, got = check_both_ways(parser_for(qwen3), text)
    assert got_content == content
    assert as_calls(got) == [(c["name"], c["arguments"]) for c in calls]


def test_qwen3_arguments_given_as_json_text_render_and_parse_alike(qwen3):
    """OpenAI clients send `arguments` as JSON text; the Qwen3 template writes it as it is."""
    turn = assistant_turn([{"name": "get_time", "arguments": json.dumps(TIME["arguments"])}])
    _, got = check_both_ways(parser_for(qwen3), generated_answer(qwen3, turn))
    assert as_calls(got) == [("get_time", TIME["arguments"])]


def test_qwen3_calls_fed_by_mlx_lm_streaming_detokenizer(qwen3):
    """The pieces a server really feeds: mlx_lm's detokenizer segments, token by token (`<tool_call>` is one token)."""
    text = generated_answer(qwen3, assistant_turn([WEATHER, TIME], "Two lookups."))
    detokenizer = qwen3.detokenizer
    detokenizer.reset()
    stream = parser_for(qwen3).stream(TOOLS)
    events = []
    for token in qwen3.encode(text, add_special_tokens=False):
        detokenizer.add_token(token)
        events += stream.feed(detokenizer.last_segment)
    detokenizer.finalize()
    events += stream.feed(detokenizer.last_segment) + stream.finish()
    assert "".join(e.text for e in events if isinstance(e, ContentEvent)) == "Two lookups."
    assert as_calls([e.call for e in events if isinstance(e, ToolCallEvent)]) == [
        ("get_weather", WEATHER["arguments"]),
        ("get_time", TIME["arguments"]),
    ]


def test_calls_have_openai_shape_and_fresh_ids(qwen3):
    text = generated_answer(qwen3, assistant_turn([WEATHER, TIME]))
    _, calls = parser_for(qwen3).split(text)
    for call in calls:
        assert set(call) == {"id", "type", "function"} and call["type"] == "function"
        assert call["id"].startswith("call_") and int(call["id"][5:], 16) >= 0
        assert isinstance(call["function"]["arguments"], str)
    assert len({c["id"] for c in calls}) == 2


def test_llama31_call_comes_back_as_rendered(llama31):
    text = generated_answer(llama31, assistant_turn([WEATHER]))
    assert text.startswith('{"name": "get_weather", "parameters": ')  # the template's own format
    content, calls = check_both_ways(parser_for(llama31), text)
    assert content == ""
    assert as_calls(calls) == [("get_weather", WEATHER["arguments"])]


def llama_call(call: dict[str, Any]) -> str:
    return json.dumps({"name": call["name"], "parameters": call["arguments"]}, ensure_ascii=False)


@pytest.mark.parametrize(
    "text",
    [
        "<|python_tag|>" + llama_call(WEATHER),
        "\n\n" + llama_call(WEATHER) + "; " + llama_call(TIME),
        llama_call(WEATHER) + "\n" + llama_call(TIME) + "\n",
        "<|python_tag|>" + llama_call(WEATHER) + ";" + llama_call(TIME) + ";",
    ],
    ids=["python-tag", "semicolons", "one-per-line", "python-tag-semicolons"],
)
def test_llama3_shapes_meta_documents(text):
    """What Llama 3.x writes besides the template's single call: a `<|python_tag|>` lead-in (when it was prompted
    in ipython mode) and several calls separated by `;` or newlines."""
    content, calls = check_both_ways(Llama3JsonParser(), text)
    assert content == ""
    assert [name for name, _ in as_calls(calls)] == ["get_weather", "get_time"][: len(calls)]
    assert as_calls(calls)[0] == ("get_weather", WEATHER["arguments"])


def test_llama3_arguments_key_is_accepted_too():
    """Some Llama 3.x fine-tunes write OpenAI's `arguments` instead of `parameters`."""
    calls = parse_llama3_calls('{"name": "get_time", "arguments": {"tz": "UTC"}}')
    assert calls is not None and as_calls(calls) == [("get_time", {"tz": "UTC"})]


def test_llama3_plain_answer_streams_at_once():
    """No markers: an answer that does not open with `{` is content from its first visible character."""
    stream = Llama3JsonParser().stream()
    assert stream.feed("\n") == []  # only whitespace so far: could still open a call
    assert stream.feed("The ") == [ContentEvent("\nThe ")]
    assert stream.feed("weather is fine.") == [ContentEvent("weather is fine.")]
    assert stream.finish() == []


def test_llama3_python_tag_prefix_is_held_until_known():
    stream = Llama3JsonParser().stream()
    assert stream.feed("<|pyth") == []
    assert stream.feed("on_tag|>") == []
    assert stream.feed('{"name": "get_time", ') == []
    (event,) = stream.feed('"parameters": {}}') + stream.finish()
    assert isinstance(event, ToolCallEvent) and event.call["function"] == {"name": "get_time", "arguments": "{}"}


def test_mistral_calls_come_back_through_mlx_lm_parser(mistral):
    """mlx_lm parses `[TOOL_CALLS]` itself; the model's own ids come back (the template checks them later)."""
    text = generated_answer(mistral, assistant_turn([WEATHER, TIME], ids=True))
    assert text.startswith("[TOOL_CALLS] [")
    content, calls = check_both_ways(parser_for(mistral), text)
    assert content == ""
    assert as_calls(calls) == [("get_weather", WEATHER["arguments"]), ("get_time", TIME["arguments"])]
    assert [c["id"] for c in calls] == ["call00000", "call00001"]


def test_content_is_released_as_soon_as_it_cannot_be_a_marker(qwen3):
    stream = parser_for(qwen3).stream()
    assert stream.feed("Hello") == [ContentEvent("Hello")]
    assert stream.feed(" there <to") == [ContentEvent(" there")]  # "<to" may open <tool_call>; " " may precede it
    assert stream.feed("p") == [ContentEvent(" <top")]
    assert stream.feed(" hat") == [ContentEvent(" hat")]
    assert stream.finish() == []


def test_a_call_arrives_when_its_end_marker_does(qwen3):
    stream = parser_for(qwen3).stream()
    assert stream.feed('Sure.\n<tool_call>\n{"name": "get_time", "arguments": {}}\n') == [ContentEvent("Sure.")]
    (event,) = stream.feed("</tool_call>")
    assert isinstance(event, ToolCallEvent) and event.call["function"]["name"] == "get_time"
    assert stream.finish() == []


def test_text_on_both_sides_of_a_call_keeps_one_separator(qwen3):
    call = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    content, calls = check_both_ways(parser_for(qwen3), f"Checking.\n{call}\n\nAnd more text.")
    assert content == "Checking.\nAnd more text." and as_calls(calls) == [("get_time", {})]
    assert check_both_ways(parser_for(qwen3), f"{call}\nDone.")[0] == "Done."


def test_a_call_cut_off_before_its_end_marker_still_counts_if_it_parses(qwen3):
    content, calls = check_both_ways(parser_for(qwen3), '<tool_call>\n{"name": "get_time", "arguments": {}}\n')
    assert content == "" and as_calls(calls) == [("get_time", {})]


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>\nnot json at all\n</tool_call>",
        '<tool_call>\n{"arguments": {"city": "Paris"}}\n</tool_call>',  # no name
        '<tool_call>\n{"name": "get_weather", "arguments": [1, 2]}\n</tool_call>',  # arguments not an object
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Par',  # cut off mid-call
        "I will answer directly. </tool_call> stray end marker",
    ],
    ids=["not-json", "no-name", "arguments-not-object", "truncated", "stray-end"],
)
def test_malformed_calls_stay_content_verbatim(qwen3, text):
    content, calls = check_both_ways(parser_for(qwen3), text)
    assert calls == [] and content == text


def test_a_malformed_call_does_not_hide_a_good_one(qwen3):
    good = '<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    bad = "<tool_call>\noops\n</tool_call>"
    content, calls = check_both_ways(parser_for(qwen3), f"{bad}\n{good}")
    assert content == bad and as_calls(calls) == [("get_time", {})]


@pytest.mark.parametrize(
    "text",
    ['{"name": "get_time"', '{"city": "Paris"}', '{"name": "get_time", "parameters": {}} and then some words', "{}"],
    ids=["truncated", "no-name", "trailing-text", "empty-object"],
)
def test_llama3_malformed_calls_stay_content_verbatim(text):
    content, calls = check_both_ways(Llama3JsonParser(), text)
    assert calls == [] and content == text


def test_plain_answers_pass_through_unchanged(qwen3, llama31):
    text = "  Plain text, with a < and a { inside, and trailing space.\n\n"
    for parser in (parser_for(qwen3), parser_for(llama31)):
        assert check_both_ways(parser, text) == (text, [])
