"""Tool calling end to end: a tool conversation prepared from OpenAI's format, a run trained on it (the tiny Qwen3,
whose official template writes tools), served, and the official `openai` client getting the model's call back as
`tool_calls` (plain and streamed), then the answer after the tool's result."""

import json

import openai
import pytest

from mlx_ft import config, data
from mlx_ft.training.run import train
from tests.conftest import WEATHER_TOOL
from tests.serving import openai_client, serving

TOOLS = [WEATHER_TOOL]
QUESTION = {"role": "user", "content": "杭州天气怎么样？"}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "杭州"}'}}
RESULT = {"role": "tool", "tool_call_id": "call_1", "content": "晴，22度"}
ANSWER = "杭州今天晴，22度。"


@pytest.fixture(scope="module")
def port(qwen3_dir, tmp_path_factory):
    """A run that learned one tool conversation by heart (a full fine-tune: the tiny random model needs it), served
    next to the tiny Qwen2, whose plain ChatML template cannot write tools."""
    tmp = tmp_path_factory.mktemp("tools")
    row = {"messages": [QUESTION, {"role": "assistant", "content": "", "tool_calls": [CALL]}, RESULT]}
    row["messages"].append({"role": "assistant", "content": ANSWER})
    (tmp / "tools.jsonl").write_text(json.dumps({**row, "tools": TOOLS}, ensure_ascii=False) + "\n")
    data.prepare([tmp / "tools.jsonl"], tmp / "data", valid=0, test=0)
    cfg = dict(model=str(qwen3_dir), data=str(tmp / "data"), adapter_path=str(tmp / "runs" / "weather"))
    cfg.update(fine_tune_type="full", num_layers=-1, batch_size=1, iters=160, learning_rate=1e-3)
    cfg.update(steps_per_report=40, steps_per_eval=1000, max_seq_length=512)
    run = train(config.build(cfg))
    with serving([run], tmp / "chat.db", "--runs", str(tmp / "runs")) as port:
        yield port


@pytest.fixture
def client(port):
    return openai_client(port)


def _ask(client, messages, **kw):
    return client.chat.completions.create(
        model="weather", messages=messages, tools=TOOLS, temperature=0, max_tokens=64, **kw
    )


def test_the_models_call_comes_back_as_tool_calls(client):
    choice = _ask(client, [QUESTION]).choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.function.name == "get_weather" and call.id.startswith("call_")
    assert json.loads(call.function.arguments) == {"city": "杭州"}


def test_streamed_calls_arrive_as_delta_tool_calls(client):
    chunks = list(_ask(client, [QUESTION], stream=True))
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    assert [d.index for d in deltas] == [0] and deltas[0].function.name == "get_weather"
    assert json.loads(deltas[0].function.arguments) == {"city": "杭州"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    assert not "".join(c.choices[0].delta.content or "" for c in chunks).strip(), "the call is not content"


def test_the_answer_after_the_tools_result(client):
    call = _ask(client, [QUESTION]).choices[0].message
    history = [QUESTION, call.model_dump(exclude_none=True), RESULT]
    answer = _ask(client, history).choices[0]
    assert answer.message.content == ANSWER and answer.finish_reason == "stop" and not answer.message.tool_calls


def test_tool_choice_none_answers_without_tools(client):
    plain = _ask(client, [QUESTION], tool_choice="none").choices[0]
    assert not plain.message.tool_calls and plain.finish_reason in ("stop", "length")


def test_a_tool_result_without_its_call_is_refused(client):
    with pytest.raises(openai.BadRequestError, match="messages"):
        _ask(client, [QUESTION, RESULT])
