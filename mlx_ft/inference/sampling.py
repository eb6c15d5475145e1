"""How an answer is sampled, and the defaults every way of asking shares (the CLI, the chat page, the OpenAI API,
task endpoints). Light on purpose: the CLI reads these defaults while it builds its parser, before MLX loads."""

from __future__ import annotations

from dataclasses import dataclass

MAX_TOKENS = 512  # the longest answer, unless asked otherwise
CHAT_TEMPERATURE = 0.7  # a conversation (the chat REPL, the page): some variety
OPENAI_TEMPERATURE = 1.0  # what the OpenAI API assumes when a request names none


@dataclass(frozen=True)
class Constraint:
    """What an answer must match (structured outputs): `kind` ("json_object", "json_schema", "regex" or "choice",
    for messages) and its grammar in the grammar library's form (`constrain.py` makes and applies these)."""

    kind: str
    grammar: str


@dataclass(frozen=True)
class Sampling:
    temp: float = 0.0  # 0: greedy, the same answer every time
    top_p: float = 1.0
    max_tokens: int = MAX_TOKENS
    seed: int | None = None  # its own random stream: the same answer whatever else is generated beside it
    top_k: int = 0  # 0: off
    min_p: float = 0.0  # 0: off
    # Penalties on tokens already in the answer: OpenAI's additive presence/frequency ones, mlx_lm's multiplicative
    # repetition one (1: off).
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    stop: tuple[str, ...] = ()  # the answer ends before the first of these texts; none of it is returned
    top_logprobs: int | None = None  # None: no log-probabilities; k: the chosen token's and the k likeliest
    constraint: Constraint | None = None  # tokens that cannot continue a match are never sampled
