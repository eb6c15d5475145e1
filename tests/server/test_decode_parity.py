"""One decode core: a `Sampling` answers the same through eval's generation (a batch of prompts answered in the
command's own thread), the terminal's stream and a real `serve` process's `/v1/chat/completions`, greedy or sampled
with a seed, penalties and stop strings included, whatever other answers are generated beside it."""

import dataclasses

import pytest

from mlx_ft.inference import generation
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from tests.serving import openai_client, serving

QUESTION = [{"role": "user", "content": "金鱼要多久换一次水？"}]
OTHERS = [[{"role": "user", "content": q}] for q in ("斗鱼要加热棒吗？", "孔雀鱼怎么繁殖？", "hello")]
CASES = {
    "greedy": ({"temperature": 0}, Sampling(temp=0.0)),
    "seeded": ({"temperature": 0.9, "seed": 7}, Sampling(temp=0.9, seed=7)),
    "other seed": ({"temperature": 0.9, "seed": 8}, Sampling(temp=0.9, seed=8)),
    "top-p and penalties": (
        {"temperature": 1.0, "top_p": 0.9, "seed": 3, "presence_penalty": 1.5, "frequency_penalty": 0.5},
        Sampling(temp=1.0, top_p=0.9, seed=3, presence_penalty=1.5, frequency_penalty=0.5),
    ),
    "greedy with penalties": (
        {"temperature": 0, "repetition_penalty": 3.0, "frequency_penalty": 2.0},
        Sampling(temp=0.0, repetition_penalty=3.0, frequency_penalty=2.0),
    ),
}
MAX_TOKENS = 16


@pytest.fixture(scope="module")
def served(qwen2_dir, tmp_path_factory):
    """What a real server answers for each case: (text, completion tokens, finish reason)."""
    db = tmp_path_factory.mktemp("parity") / "chat.db"
    out = {}
    with serving([qwen2_dir], db) as port:
        client = openai_client(port)
        for name, (body, _) in CASES.items():
            r = client.chat.completions.create(
                model=str(qwen2_dir), messages=QUESTION, max_tokens=MAX_TOKENS, extra_body=body
            )
            choice = r.choices[0]
            out[name] = (choice.message.content, r.usage.completion_tokens, choice.finish_reason)
    return out


@pytest.fixture(scope="module")
def loaded(qwen2_dir):
    return loader.load(str(qwen2_dir))


@pytest.mark.parametrize("case", list(CASES))
def test_eval_and_the_terminal_answer_as_the_server_does(served, loaded, case):
    sampling = CASES[case][1]
    prompts = generation.prompts_for(loaded.tokenizer, [*OTHERS[:2], QUESTION, *OTHERS[2:]])
    # eval's generation: the question among other prompts, each with its own budget, answered together
    batch = generation.answers(loaded.model, loaded.tokenizer, prompts, sampling, [MAX_TOKENS, 5, MAX_TOKENS, 9])
    mine = batch[2]
    assert (mine.text, len(mine.tokens), mine.finish_reason) == served[case]
    alone = dataclasses.replace(sampling, max_tokens=MAX_TOKENS)
    streamed = list(generation.stream(loaded.model, loaded.tokenizer, QUESTION, alone))  # infer, chat
    assert "".join(c.text for c in streamed) == mine.text and streamed[-1].finish_reason == mine.finish_reason


def test_the_cases_differ_so_the_comparison_means_something(served):
    texts = {name: text for name, (text, _, _) in served.items()}
    assert len(set(texts.values())) == len(texts), texts


def test_a_stop_string_cuts_eval_answers_as_it_cuts_the_servers(served, loaded):
    full = served["greedy"][0]
    stop = full[3:5]
    (cut,) = generation.answers(
        loaded.model,
        loaded.tokenizer,
        generation.prompts_for(loaded.tokenizer, [QUESTION]),
        Sampling(temp=0.0, max_tokens=MAX_TOKENS, stop=(stop,)),
    )
    assert cut.text == full[: full.find(stop)] and cut.finish_reason == "stop"
