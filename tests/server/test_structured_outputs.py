"""Structured outputs through a real `serve` of SmolLM2 (the built-in model, real weights), driven by the official
`openai` client: `client.chat.completions.parse` with pydantic models returns valid, schema-matching JSON on 20 varied
prompts where the same prompts unconstrained do not all give JSON; `json_object` mode, streaming and `/v1/completions`
too; a constrained answer leaves the unconstrained ones beside it in the batch unchanged; bad schemas are 400s."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Literal

import openai
import pytest
from pydantic import BaseModel, Field

from mlx_ft.inference import constrain
from mlx_ft.inference.engine import Engine
from mlx_ft.inference.prompt_cache import PromptCache
from mlx_ft.inference.sampling import Sampling
from mlx_ft.inference.scheduler import Job
from mlx_ft.models import loader
from tests.serving import openai_client, serving

MODEL = "base"  # the served model (SmolLM2, no adapter) under its short id


class Fish(BaseModel):
    name: str = Field(max_length=30)
    size_cm: int
    freshwater: bool


class Ticket(BaseModel):
    category: Literal["billing", "shipping", "returns", "technical"]
    urgent: bool
    summary: str = Field(max_length=60)


class Miner(BaseModel):
    brand: str = Field(max_length=20)
    model: str = Field(max_length=20)
    hashrate_th: float
    price_usd: float


class Tags(BaseModel):
    tags: list[str] = Field(max_length=3)


PROMPTS: list[tuple[type[BaseModel], str]] = [
    (Fish, "Tell me about the goldfish."),
    (Fish, "Describe a neon tetra."),
    (Fish, "What is a clownfish like?"),
    (Fish, "Give me the facts on the betta fish."),
    (Fish, "Describe the guppy as data."),
    (Ticket, "My package never arrived and I need it tomorrow!"),
    (Ticket, "I was charged twice for my order."),
    (Ticket, "The app crashes when I open settings."),
    (Ticket, "How do I send back a jacket that does not fit?"),
    (Ticket, "Please fix my invoice, the VAT number is wrong."),
    (Miner, "m50s 26w 124t gtd 1020u $1020.0"),
    (Miner, "Antminer S19 Pro 110TH for sale, 899 dollars"),
    (Miner, "whatsminer m30s++ 112t $650"),
    (Miner, "S21 200T brand new $3500"),
    (Miner, "Avalon 1246 90TH used, asking $400"),
    (Tags, "Tag this post: how to cycle a new aquarium tank before adding fish"),
    (Tags, "Tag this post: best budget graphics cards in 2026"),
    (Tags, "Tag this post: a recipe for sourdough bread"),
    (Tags, "Tag this post: learning Rust as a Python developer"),
    (Tags, "Tag this post: winter care for koi ponds"),
]


@pytest.fixture(scope="module")
def client(smollm2_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("structured") / "chat.db"
    with serving([smollm2_dir], db) as port:
        yield openai_client(port)


def _messages(schema: type[BaseModel], text: str) -> list[dict[str, str]]:
    fields = ", ".join(schema.model_fields)
    return [{"role": "user", "content": f"Answer in JSON with the fields {fields}. {text}"}]


def test_parse_returns_schema_matching_json_where_unconstrained_answers_do_not(client):
    def constrained(item: tuple[type[BaseModel], str]):
        schema, text = item
        return client.chat.completions.parse(
            model=MODEL, messages=_messages(schema, text), response_format=schema, temperature=0, max_tokens=160
        )

    def free(item: tuple[type[BaseModel], str]) -> str:
        schema, text = item
        answer = client.chat.completions.create(  # enough for JSON, or for the fence and prose it writes instead
            model=MODEL, messages=_messages(schema, text), temperature=0, max_tokens=64
        )
        return answer.choices[0].message.content

    with ThreadPoolExecutor(len(PROMPTS)) as pool:  # asked together: generated in one batch
        parsed = list(pool.map(constrained, PROMPTS))
        unconstrained = list(pool.map(free, PROMPTS))
    for (schema, _), reply in zip(PROMPTS, parsed):
        message = reply.choices[0].message
        assert reply.choices[0].finish_reason == "stop"
        assert isinstance(message.parsed, schema), message.content
        assert schema.model_validate_json(message.content) == message.parsed
    invalid = 0
    for (schema, _), text in zip(PROMPTS, unconstrained):
        try:
            schema.model_validate_json(text)
        except ValueError:
            invalid += 1
    assert invalid > 0, "unconstrained, the model sometimes misses: else this test proves nothing"


def test_json_object_mode_streamed_and_plain(client):
    question = [{"role": "user", "content": "Describe a goldfish in JSON."}]
    plain = client.chat.completions.create(
        model=MODEL, messages=question, temperature=0, max_tokens=120, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(plain.choices[0].message.content), dict)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=question,
        temperature=0,
        max_tokens=120,
        response_format={"type": "json_object"},
        stream=True,
    )
    streamed = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert streamed == plain.choices[0].message.content
    free = client.chat.completions.create(model=MODEL, messages=question, temperature=0, max_tokens=80)
    assert free.choices[0].message.content != streamed  # the model's own habit is a ```json fence and prose


def test_completions_take_a_json_schema_too(client):
    schema = {
        "type": "object",
        "properties": {"answer": {"type": "integer"}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reply = client.completions.create(
        model=MODEL,
        prompt="Question: what is 2 + 3? Reply as JSON.\n",
        max_tokens=40,
        temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "sum", "schema": schema}}},
    )
    value = json.loads(reply.choices[0].text)
    assert set(value) == {"answer"} and isinstance(value["answer"], int)


def test_a_constrained_answer_leaves_the_others_in_its_batch_alone(smollm2_dir):
    """Two batches of four prompts, submitted together (one prompt batch, the same shapes): all free, then two of them
    held to a schema. The free answers are the same token for token; the held ones parse."""
    engine = Engine(loader.load(str(smollm2_dir)), PromptCache(max_bytes=0))
    prompts = [engine.prompt(_messages(Tags, text), 80) for _, text in PROMPTS[15:19]]
    free = Sampling(max_tokens=80)
    held = Sampling(max_tokens=80, constraint=constrain.json_schema(Tags.model_json_schema()))

    def batch(samplings: list[Sampling]) -> list[Job]:
        jobs = engine.submit_many(list(zip(prompts, samplings)))
        for job in jobs:
            list(job.pieces())
        return jobs

    plain = batch([free] * 4)
    mixed = batch([free, held, free, held])
    assert [mixed[0].tokens, mixed[2].tokens] == [plain[0].tokens, plain[2].tokens]
    for job in (mixed[1], mixed[3]):
        Tags.model_validate_json(engine.tokenizer.decode(job.tokens))
    assert mixed[1].tokens != plain[1].tokens


@pytest.mark.parametrize(
    "fmt, words",
    [
        ({"type": "xml"}, "'type' must be"),
        ({"type": "json_schema"}, "'json_schema' must be an object"),
        ({"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}}, "json_schema.name"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": [1]}}, "must be an object"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {}, "extra": 1}}, "unknown field(s)"),
        ({"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}}, "cannot be used"),
        (
            {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "string", "pattern": "(a"}}},
            "cannot be used",
        ),
        ({"type": "json_schema", "json_schema": {"name": "x", "strict": "yes", "schema": {}}}, "strict"),
    ],
)
def test_bad_response_formats_are_400s_naming_the_problem(client, fmt, words):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "hi"}], max_tokens=4, response_format=fmt
        )
    assert "response_format" in str(e.value) and words in str(e.value), str(e.value)
