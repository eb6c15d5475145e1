"""The generation thread: answers asked for while another is being generated join its batch, a cancelled one leaves
it without disturbing the others, and stop strings are cut wherever the tokens split them."""

import random

import pytest

from mlx_ft import chat_template
from mlx_ft.inference import generation
from mlx_ft.inference.engine import Engine, ModelRef
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir)))


def _prompt(engine: Engine, text: str) -> list[int]:
    return engine.prompt([{"role": "user", "content": text}], 64)


def test_an_answer_asked_for_mid_generation_joins_the_batch(engine):
    long_prompt, short_prompt = _prompt(engine, "金鱼要多久换一次水？"), _prompt(engine, "水草怎么养？")
    long_alone, _, long_tokens = engine.answer(long_prompt, Sampling(max_tokens=64))
    short_alone = engine.answer(short_prompt, Sampling(max_tokens=4))[0]
    long_job = engine.submit(long_prompt, Sampling(max_tokens=64, top_logprobs=0))  # a piece per token
    pieces = long_job.pieces()
    first = [next(pieces)]  # the long answer is being generated
    short_job = engine.submit(short_prompt, Sampling(max_tokens=4))
    short = list(short_job.pieces())
    long_left = long_job.events.qsize()
    rest = list(pieces)
    assert short[-1].finish_reason == "length" and "".join(c.text for c in short) == short_alone
    # Queued in line, the long answer would be complete (its pieces and the end marker waiting) before the short
    # one began.
    assert long_left < long_tokens - 1, "the short answer ended while the long one was still being generated"
    assert "".join(c.text for c in first + rest) == long_alone, "joining changed nothing in the first answer"


def test_cancelling_one_answer_leaves_the_others_alone(engine):
    prompts = [_prompt(engine, f"第{i}个问题") for i in range(3)]
    alone = [engine.answer(p, Sampling(max_tokens=32))[0] for p in prompts]
    jobs = engine.submit_many([(p, Sampling(max_tokens=32)) for p in prompts])
    middle = jobs[1].pieces()
    next(middle)
    middle.close()  # a client that went away
    texts = ["".join(c.text for c in job.pieces()) for job in (jobs[0], jobs[2])]
    assert texts == [alone[0], alone[2]]
    assert jobs[1].cancelled.is_set()


def test_a_seeded_answer_does_not_depend_on_what_else_is_sampled(engine):
    prompt = _prompt(engine, "金鱼")
    seeded = Sampling(temp=1.0, seed=3, max_tokens=8)
    alone = [engine.answer(prompt, seeded)[0] for _ in range(2)]
    assert alone[0] == alone[1]
    jobs = engine.submit_many([(prompt, seeded), (prompt, Sampling(temp=1.0, max_tokens=8))])
    assert "".join(c.text for c in jobs[0].pieces()) == alone[0]
    list(jobs[1].pieces())


def test_a_failing_model_fails_its_answer_and_the_thread_goes_on(engine, tmp_path):
    (tmp_path / "config.yaml").write_text("model: /nowhere/at/all\n")
    (tmp_path / "adapter_config.json").write_text("{}")
    with pytest.raises(Exception):  # noqa: B017 - whatever loading a missing base raises, it reaches the caller
        engine.answer([1, 2, 3], Sampling(max_tokens=2), ModelRef("x", tmp_path))
    assert engine.answer(_prompt(engine, "金鱼"), Sampling(max_tokens=2))[1] == "length"


@pytest.mark.parametrize("seed", range(5))
def test_stop_strings_are_cut_wherever_the_tokens_split_them(engine, seed):
    tokenizer = engine.tokenizer
    text = "金鱼要换水，水草要修剪。Change the water weekly; trim plants."
    ids = chat_template.hf_tokenizer(tokenizer).encode(text, add_special_tokens=False)
    rng = random.Random(seed)
    for stop in ("水草", "weekly; t", "。C", "plants."):
        out = generation.AnswerText(tokenizer, [rng.choice(["zzz", "金鱼要换水，水草要修剪。X"]), stop])
        shown = []
        for t in ids:
            piece, _ = out.add(t, generation.TokenLogprob(t, -1.0))
            shown.append(piece)
            if out.stopped:
                break
        else:
            shown.append(out.finish()[0])
        assert "".join(shown) == text[: text.find(stop)], stop
        assert out.stopped
    plain = generation.AnswerText(tokenizer, ["never there"])
    shown = [plain.add(t)[0] for t in ids] + [plain.finish()[0]]
    assert "".join(shown) == text and not plain.stopped
