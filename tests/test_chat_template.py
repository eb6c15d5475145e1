"""The conversation the model is trained on is exactly what inference feeds it, and only answers are learned."""

from pathlib import Path

import pytest
from mlx_lm.utils import load_tokenizer

from mlx_ft import chat_template as ct
from tests.conftest import WEATHER_TOOL

CHAT = [
    {"role": "system", "content": "你是观赏鱼专家。"},
    {"role": "user", "content": "我的金鱼尾巴烂了，怎么办？"},
    {"role": "assistant", "content": "先把病鱼隔离，换三分之一的水。"},
    {"role": "user", "content": "多久换一次水？"},
    {"role": "assistant", "content": "每周一次，每次 1/4 到 1/3。"},
]


@pytest.fixture(params=["smollm2_dir", "qwen2_dir"])
def tokenizer(request):
    return load_tokenizer(Path(request.getfixturevalue(request.param)))


def _learned(tok, ids, mask) -> str:
    return tok.decode([i for i, m in zip(ids, mask) if m])


def test_every_assistant_turn_and_only_those_are_learned(tokenizer):
    ids, mask = ct.training_tokens(tokenizer, CHAT)
    assert len(ids) == len(mask) and set(mask) == {0, 1}
    eot = "<|im_end|>\n"
    assert _learned(tokenizer, ids, mask) == CHAT[2]["content"] + eot + CHAT[4]["content"] + eot
    prompt_text = tokenizer.decode([i for i, m in zip(ids, mask) if not m])
    for m in CHAT[:2] + CHAT[3:4]:
        assert m["content"] in prompt_text


def test_training_tokens_continue_the_inference_prompt(tokenizer):
    """The ids inference sends for the last user turn are a prefix of the ids training saw for that conversation."""
    ids, mask = ct.training_tokens(tokenizer, CHAT)
    prompt = ct.prompt_ids(tokenizer, CHAT[:-1])
    assert ids[: len(prompt)] == prompt
    assert mask[len(prompt) - 1] == 0 and mask[len(prompt)] == 1
    assert ct.encode(tokenizer, CHAT) == ids


def test_mask_prompt_off_learns_everything(tokenizer):
    ids, mask = ct.training_tokens(tokenizer, CHAT, mask_prompt=False)
    assert mask == [1] * len(ids)


def test_qwen3_learns_its_final_answer_and_no_prompt(qwen3_dir):
    tok = load_tokenizer(Path(qwen3_dir))
    ids, mask = ct.training_tokens(tok, CHAT)
    learned = _learned(tok, ids, mask)
    assert CHAT[4]["content"] in learned
    assert all(m["content"] not in learned for m in CHAT[:2] + CHAT[3:4])


def test_conversation_without_answer_is_refused(tokenizer):
    with pytest.raises(ValueError, match="no assistant turn"):
        ct.training_tokens(tokenizer, CHAT[:2])


ENGLISH = [
    {"role": "user", "content": "How often should I feed goldfish?"},
    {"role": "assistant", "content": "Once or twice a day, only what they eat in three minutes."},
]


@pytest.mark.parametrize("model", ["smollm2_dir", "qwen2_dir", "qwen3_dir"])
@pytest.mark.parametrize("chat", [CHAT, CHAT[1:3], ENGLISH], ids=["multi-turn", "chinese", "english"])
def test_inference_sends_exactly_the_tokens_training_saw(request, model, chat):
    """Training's ids for a conversation = inference's prompt ids + the answer's ids + the end-of-turn token that
    generation stops at (for Qwen3, its empty think block is part of the prompt on both sides)."""
    from mlx_ft.models import loader

    loaded = loader.load(str(request.getfixturevalue(model)))
    tok = loaded.tokenizer
    ids, mask = ct.training_tokens(tok, chat)
    prompt = ct.prompt_ids(tok, chat[:-1])
    assert ids[: len(prompt)] == prompt
    assert mask[len(prompt) - 1] == 0 and mask[len(prompt)] == 1, "learning starts where inference generates"
    eot = ct.end_of_turn_id(tok)
    assert eot is not None and eot in tok.eos_token_ids, "generation stops where training's answer ends"
    answer = ids[len(prompt) :]
    assert tok.decode(answer[: answer.index(eot)]) == chat[-1]["content"]
    assert all(mask[len(prompt) : len(prompt) + answer.index(eot) + 1])


TOOLS = [WEATHER_TOOL]
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "巴黎"}'}}
TOOL_CHAT = [
    {"role": "system", "content": "Answer briefly."},
    {"role": "user", "content": "巴黎天气怎么样？"},
    {"role": "assistant", "content": "", "tool_calls": [CALL]},
    {"role": "tool", "tool_call_id": "call_1", "content": '{"temp_c": 18, "sky": "sunny"}'},
    {"role": "assistant", "content": "18°C, sunny."},
]


def test_tool_conversation_is_the_templates_own_rendering(qwen3_dir):
    """Training's ids of a tool conversation = the template's own rendering, given what HF templates expect: the
    call's arguments as an object."""
    tok = load_tokenizer(Path(qwen3_dir))
    native = [
        *TOOL_CHAT[:2],
        {**TOOL_CHAT[2], "tool_calls": [{**CALL, "function": {**CALL["function"]}}]},
        *TOOL_CHAT[3:],
    ]
    native[2]["tool_calls"][0]["function"]["arguments"] = {"city": "巴黎"}
    own = ct.hf_tokenizer(tok).apply_chat_template(native, tools=TOOLS, tokenize=True)["input_ids"]
    ids, _ = ct.training_tokens(tok, TOOL_CHAT, tools=TOOLS)
    assert ids == list(own) == ct.encode(tok, TOOL_CHAT, tools=TOOLS)
    assert "get_weather" in ct.render(tok, TOOL_CHAT[:2], tools=TOOLS), "the tools are in the prompt"
    assert TOOL_CHAT[2]["tool_calls"][0]["function"]["arguments"] == '{"city": "巴黎"}', "the caller's data is intact"
    # Inference after the tool result reads exactly what training put before the final answer.
    prompt = ct.prompt_ids(tok, TOOL_CHAT[:-1], tools=TOOLS)
    assert ids[: len(prompt)] == prompt


def test_the_call_and_the_answer_are_learned_and_the_tool_result_is_not(qwen3_dir):
    """Qwen3 writes no empty think block in a call that a tool result follows, but inference always asks for an
    answer after one: the call is learned in a sequence of its own, after exactly the prompt inference gives."""
    tok = load_tokenizer(Path(qwen3_dir))
    (ids, mask), (call_ids, call_mask) = ct.training_sequences(tok, TOOL_CHAT, tools=TOOLS)
    assert (ids, mask) == ct.training_tokens(tok, TOOL_CHAT, tools=TOOLS)
    assert _learned(tok, ids, mask) == "18°C, sunny.<|im_end|>\n"
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "巴黎"}}\n</tool_call><|im_end|>\n'
    assert _learned(tok, call_ids, call_mask) == call
    prompt = ct.prompt_ids(tok, TOOL_CHAT[:2], tools=TOOLS)
    assert call_ids[: len(prompt)] == prompt and not any(call_mask[: len(prompt)])
    unlearned = tok.decode([i for i, m in zip(ids, mask) if not m])
    for text in ("Answer briefly.", "巴黎天气怎么样？", '{"temp_c": 18, "sky": "sunny"}', "The weather in a city"):
        assert text in unlearned
    # The call's tokens carry the loss (the system prompt's instructions mention <tool_call> too: those do not).
    marks = [i for i, t in enumerate(call_ids) if t == tok.convert_tokens_to_ids("<tool_call>")]
    assert [call_mask[i] for i in marks] == [0] * (len(marks) - 1) + [1]
    response = ids.index(tok.convert_tokens_to_ids("<tool_response>"))
    assert not any(mask[response : ids.index(tok.convert_tokens_to_ids("</tool_response>")) + 1])
    assert ct.training_sequences(tok, TOOL_CHAT, mask_prompt=False, tools=TOOLS) == [(ids, [1] * len(ids))], (
        "unmasked, the whole conversation already holds every token"
    )


def test_parallel_calls_are_learned_together(qwen3_dir):
    tok = load_tokenizer(Path(qwen3_dir))
    second = {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Rome"}'}}
    chat = [
        TOOL_CHAT[1],
        {"role": "assistant", "content": "", "tool_calls": [CALL, second]},
        {"role": "tool", "tool_call_id": "call_1", "content": "18"},
        {"role": "tool", "tool_call_id": "call_2", "content": "25"},
        {"role": "assistant", "content": "18 and 25."},
    ]
    (ids, mask), (call_ids, call_mask) = ct.training_sequences(tok, chat, tools=TOOLS)
    learned = _learned(tok, call_ids, call_mask)
    assert learned.count("<tool_call>") == 2 and '"Rome"' in learned
    assert _learned(tok, ids, mask) == "18 and 25.<|im_end|>\n"


def test_which_templates_render_tools(qwen2_dir, qwen3_dir):
    assert ct.supports_tools(load_tokenizer(Path(qwen3_dir)))
    assert not ct.supports_tools(load_tokenizer(Path(qwen2_dir))), "plain ChatML drops tools and calls"


def test_for_template_gives_templates_arguments_as_objects():
    bad = {"type": "function", "function": {"name": "f", "arguments": "not json"}}
    out = ct.for_template([{"role": "assistant", "content": "", "tool_calls": [CALL, bad]}, TOOL_CHAT[1]])
    assert out[0]["tool_calls"][0]["function"]["arguments"] == {"city": "巴黎"}
    assert out[0]["tool_calls"][1] == bad and out[1] is TOOL_CHAT[1]


def test_a_bare_hugging_face_tokenizer_renders_as_its_wrapper_does(qwen3_dir):
    from transformers import AutoTokenizer

    bare, wrapped = AutoTokenizer.from_pretrained(str(qwen3_dir)), load_tokenizer(Path(qwen3_dir))
    assert ct.hf_tokenizer(bare) is bare and ct.has_template(bare)
    assert ct.prompt_ids(bare, TOOL_CHAT[:2], tools=TOOLS) == ct.prompt_ids(wrapped, TOOL_CHAT[:2], tools=TOOLS)


def test_a_template_that_refuses_a_conversation_is_a_value_error(qwen3_dir):
    tok = load_tokenizer(Path(qwen3_dir))
    hf = ct.hf_tokenizer(tok)
    saved = hf.chat_template
    hf.chat_template = "{{ raise_exception('This model only supports single tool-calls at once!') }}"
    try:
        with pytest.raises(ValueError, match="refuses this conversation: This model only supports single"):
            ct.render(tok, TOOL_CHAT)
    finally:
        hf.chat_template = saved
