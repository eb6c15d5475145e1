"""The conversation the model is trained on is exactly what inference feeds it, and only answers are learned."""

from pathlib import Path

import pytest
from mlx_lm.utils import load_tokenizer

from mlx_ft import chat_template as ct

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
