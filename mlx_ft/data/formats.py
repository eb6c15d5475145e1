"""Raw example formats → `Example`: a chat conversation in OpenAI roles, or raw text for continued pre-training.

Pure conversion and validation, no files: each converter takes one parsed record (a dict) and returns the messages
or the text, or raises ValueError with what is wrong (the caller adds `file:line`). The converters for alpaca and
ShareGPT are parameterised by column and tag names, so LLaMA-Factory's `dataset_info.json` mappings reuse them.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlx_ft.chat_template import ROLES, Message

if TYPE_CHECKING:
    from mlx_ft.data.recipes import Recipe


@dataclass(frozen=True)
class Pair:
    """A preference pair: `messages` is the conversation ending with the chosen answer, `rejected` the assistant
    message that should lose to it as that last turn."""

    messages: list[Message]
    rejected: Message


Content = list[Message] | str | Pair  # a conversation, raw text, or a preference pair
Convert = Callable[[dict[str, Any], "Options"], Content]

# Which role may follow which, after the optional leading system message. Tool results answer an assistant's call,
# several in a row when it made parallel calls, and the assistant speaks next.
NEXT_ROLES = {"user": ("assistant",), "assistant": ("user", "tool"), "tool": ("assistant", "tool")}


@dataclass(frozen=True)
class Example:
    where: str  # file:line, for error messages
    messages: list[Message]
    text: str | None = None  # raw text for continued pre-training; then `messages` is empty
    # Scalar fields carried along for evaluation (`task`, for a per-task breakdown); never shown to the model.
    meta: dict[str, Any] = field(default_factory=dict)
    # A preference pair: the assistant message that should lose to the conversation's last (chosen) turn.
    rejected: Message | None = None

    def row(self) -> dict[str, Any]:
        """The example's line in a prepared split."""
        body: dict[str, Any] = {"text": self.text} if self.text is not None else {"messages": self.messages}
        if self.rejected is not None:
            body["rejected"] = self.rejected
        return {**body, **self.meta}


@dataclass(frozen=True)
class Options:
    system: str | None = None  # system prompt added to every conversation that has none
    instruction: str | None = None  # text put before each input (io format)
    recipe: Recipe | None = None  # wraps each input (io format) in its task's template
    # Top-level scalar fields to carry into the prepared splits; None: every one (reading a prepared split back).
    keep: tuple[str, ...] | None = ("task",)


# ---------------------------------------------------------------------------------------------------------- fields


def text_field(rec: Mapping[str, Any], key: str) -> str:
    """A required, non-blank string field."""
    v = rec.get(key)
    if v is None:
        raise ValueError(f"missing field {key!r}")
    if not isinstance(v, str):
        raise ValueError(f"field {key!r} must be a string, not {type(v).__name__}")
    if not v.strip():
        raise ValueError(f"field {key!r} is empty")
    return v


def _optional_text(rec: Mapping[str, Any], key: str | None) -> str | None:
    """An optional string field; absent, null and blank all mean 'not given' (CSV cells cannot be absent)."""
    if key is None or rec.get(key) is None:
        return None
    v = rec[key]
    if not isinstance(v, str):
        raise ValueError(f"field {key!r} must be a string, not {type(v).__name__}")
    return v if v.strip() else None


def _list_field(rec: Mapping[str, Any], key: str) -> list[Any]:
    v = rec.get(key)
    if not isinstance(v, list) or not v:
        raise ValueError(f"field {key!r} must be a non-empty list")
    return v


def with_system(messages: list[Message], system: str | None) -> list[Message]:
    """`messages` with `system` put first, unless it is empty or the conversation already starts with one."""
    if system and (not messages or messages[0]["role"] != "system"):
        return [{"role": "system", "content": system}, *messages]
    return messages


# --------------------------------------------------------------------------------------------------------- formats


def _from_qa(rec: dict[str, Any], opts: Options) -> Content:
    return with_system(
        [
            {"role": "user", "content": text_field(rec, "question")},
            {"role": "assistant", "content": text_field(rec, "answer")},
        ],
        opts.system,
    )


def _from_io(rec: dict[str, Any], opts: Options) -> Content:
    prompt = text_field(rec, "input")
    if opts.recipe is not None:
        prompt = opts.recipe.task(_optional_text(rec, "task")).render(prompt)
    elif opts.instruction:
        prompt = f"{opts.instruction}{prompt}"
    return with_system(
        [{"role": "user", "content": prompt}, {"role": "assistant", "content": text_field(rec, "output")}], opts.system
    )


@dataclass(frozen=True)
class Chat:
    """A list of message objects: OpenAI's `messages` ({"role", "content"}) or ShareGPT's `conversations`
    ({"from", "value"}), the role names mapped to ours by `roles`. A system message is kept only first (the
    conversation check says so otherwise); a record-level system field is used when there is none."""

    column: str
    role_tag: str
    content_tag: str
    roles: Mapping[str, str]
    system: str | None = None  # column with a system prompt for the whole conversation

    def __call__(self, rec: dict[str, Any], opts: Options) -> Content:
        out = []
        for i, m in enumerate(_list_field(rec, self.column)):
            where = f"{self.column}[{i}]"
            if not isinstance(m, dict):
                raise ValueError(f"{where} must be an object with {self.role_tag!r} and {self.content_tag!r}")
            tag = m.get(self.role_tag)
            role = self.roles.get(tag) if isinstance(tag, str) else None
            if role is None:
                raise ValueError(f"{where}: unknown role {tag!r} (expected one of {', '.join(self.roles)})")
            try:
                out.append({"role": role, "content": text_field(m, self.content_tag)})
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        return with_system(with_system(out, _optional_text(rec, self.system)), opts.system)


@dataclass(frozen=True)
class ShareGPTTags:
    """LLaMA-Factory's `tags` of a ShareGPT dataset, with its defaults."""

    role_tag: str = "from"
    content_tag: str = "value"
    user_tag: str = "human"
    assistant_tag: str = "gpt"
    observation_tag: str = "observation"
    function_tag: str = "function_call"
    system_tag: str = "system"

    def chat(
        self, column: str = "conversations", system: str | None = "system", extra_roles: Mapping[str, str] | None = None
    ) -> Chat:
        # A function call is something the assistant says; an observation is the tool's answer.
        roles = {
            self.user_tag: "user",
            self.assistant_tag: "assistant",
            self.system_tag: "system",
            self.function_tag: "assistant",
            self.observation_tag: "tool",
            **(extra_roles or {}),
        }
        return Chat(column, self.role_tag, self.content_tag, roles, system)


@dataclass(frozen=True)
class Alpaca:
    """Instruction data: the prompt is `instruction` + "\\n" + `input` (when the input is not empty), the answer is
    `output`; `history` holds earlier [prompt, answer] pairs. Column names as in LLaMA-Factory's `columns`."""

    prompt: str = "instruction"
    query: str | None = "input"
    response: str = "output"
    system: str | None = "system"
    history: str | None = "history"

    def __call__(self, rec: dict[str, Any], opts: Options) -> Content:
        return [*self.prompt_messages(rec, opts), {"role": "assistant", "content": text_field(rec, self.response)}]

    def prompt_messages(self, rec: dict[str, Any], opts: Options) -> list[Message]:
        """The conversation up to the answer: system, history, and the prompt as the last user message."""
        prompt = text_field(rec, self.prompt)
        if query := _optional_text(rec, self.query):
            prompt = f"{prompt}\n{query}"
        messages: list[Message] = []
        for i, pair in enumerate(self._history(rec)):
            if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(s, str) and s.strip() for s in pair)):
                raise ValueError(f"{self.history}[{i}] must be a [prompt, answer] pair of non-empty strings")
            messages += [{"role": "user", "content": pair[0]}, {"role": "assistant", "content": pair[1]}]
        messages.append({"role": "user", "content": prompt})
        return with_system(messages, _optional_text(rec, self.system) or opts.system)

    def _history(self, rec: dict[str, Any]) -> list[Any]:
        if self.history is None or rec.get(self.history) in (None, "", []):
            return []
        if not isinstance(rec[self.history], list):
            raise ValueError(f"field {self.history!r} must be a list of [prompt, answer] pairs")
        return rec[self.history]


@dataclass(frozen=True)
class Text:
    """Raw text for continued pre-training: every token is learned, no chat template."""

    column: str = "text"

    def __call__(self, rec: dict[str, Any], opts: Options) -> Content:
        return text_field(rec, self.column)


PromptOf = Callable[[dict[str, Any], Options], list[Message]]

OPENAI_CHAT = Chat("messages", "role", "content", {r: r for r in ROLES})
SHAREGPT_CHAT = ShareGPTTags().chat(extra_roles={"function": "tool"})  # files in the wild call tool results "function"


def _preference_prompt(rec: dict[str, Any], opts: Options) -> list[Message]:
    """The conversation a preference pair answers: `messages` (OpenAI), `conversations` (ShareGPT), `prompt` (a
    text, or a list of OpenAI messages) or alpaca's `instruction` + `input`."""
    if "messages" in rec:
        return typing.cast(list[Message], OPENAI_CHAT(rec, opts))
    if "conversations" in rec:
        return typing.cast(list[Message], SHAREGPT_CHAT(rec, opts))
    if isinstance(rec.get("prompt"), list):
        return typing.cast(list[Message], dataclasses.replace(OPENAI_CHAT, column="prompt")(rec, opts))
    if "prompt" in rec:
        return with_system([{"role": "user", "content": text_field(rec, "prompt")}], opts.system)
    if "instruction" in rec:
        return Alpaca().prompt_messages(rec, opts)
    raise ValueError(
        "a preference pair needs its prompt: a 'prompt', 'messages', 'conversations' or 'instruction' field"
    )


@dataclass(frozen=True)
class Preference:
    """A preference pair: a prompt (`prompt_of`), and two answers to it, `chosen` and `rejected`, each a text or one
    assistant message (a message object, or a list holding one). Message objects are read with `chat`'s tags, or,
    without it, in OpenAI's (role/content) or ShareGPT's (from/value) spelling. A line of a prepared split carries
    the chosen answer as the conversation's last turn instead of a `chosen` field."""

    prompt_of: PromptOf = _preference_prompt
    chosen: str = "chosen"
    rejected: str = "rejected"
    chat: Chat | None = None

    def __call__(self, rec: dict[str, Any], opts: Options) -> Content:
        prompt = self.prompt_of(rec, opts)
        if self.chosen in rec:
            chosen = self._answer(rec, self.chosen)
        elif prompt and prompt[-1]["role"] == "assistant":
            chosen, prompt = prompt[-1], prompt[:-1]
        else:
            raise ValueError(f"missing field {self.chosen!r}")
        rejected = self._answer(rec, self.rejected)
        if rejected["content"].strip() == chosen["content"].strip():
            raise ValueError(f"{self.chosen!r} and {self.rejected!r} are the same answer: nothing to prefer")
        return Pair([*prompt, chosen], rejected)

    def _answer(self, rec: dict[str, Any], key: str) -> Message:
        value = rec.get(key)
        if isinstance(value, list) and len(value) == 1:
            value = value[0]
        if value is None or isinstance(value, str):
            return {"role": "assistant", "content": text_field(rec, key)}
        if not isinstance(value, dict):
            raise ValueError(f"field {key!r} must be an answer: a string, or one assistant message")
        chat = self.chat or (SHAREGPT_CHAT if "from" in value else OPENAI_CHAT)
        try:
            (message,) = dataclasses.replace(chat, column=key, system=None)({key: [value]}, Options())
        except ValueError as e:
            raise ValueError(f"field {key!r}: {str(e).removeprefix(f'{key}[0]: ')}") from None
        if message["role"] != "assistant":
            raise ValueError(f"field {key!r} must be an assistant message, not a {message['role']} one")
        return message


@dataclass(frozen=True)
class Format:
    keys: tuple[str, ...]  # fields whose presence identifies the format
    convert: Convert
    detect: tuple[str, ...] | None = None  # fields that identify it, when fewer than `keys` (default: `keys`)


# Detection tries these in order: alpaca before io, since an alpaca record has `input` and `output` too. The README's
# format table shows an example record of each.
FORMATS: dict[str, Format] = {
    # First: a pair's prompt is spelled like a messages, sharegpt or alpaca record. A prepared split's pair line has
    # no `chosen` (it is the conversation's last turn), so `rejected` alone identifies a pair.
    "preference": Format(("chosen", "rejected"), Preference(), detect=("rejected",)),
    "messages": Format(("messages",), OPENAI_CHAT),
    "sharegpt": Format(("conversations",), SHAREGPT_CHAT),
    "alpaca": Format(("instruction", "output"), Alpaca()),
    "qa": Format(("question", "answer"), _from_qa),
    "io": Format(("input", "output"), _from_io),
    "text": Format(("text",), Text()),
}


def format_needs() -> str:
    """What each format's records must hold, for a record that fits none: "qa needs question + answer; …"."""
    return "; ".join(f"{name} needs {' + '.join(fmt.keys)}" for name, fmt in FORMATS.items())


def detect_format(rec: Any) -> str | None:
    if isinstance(rec, dict):
        for name, fmt in FORMATS.items():
            if all(k in rec for k in fmt.detect or fmt.keys):
                return name
    return None


def check_conversation(messages: list[Message]) -> None:
    """Optional system message first, then user, alternating with assistant (tool results after an assistant's
    call), ending with the assistant: what chat templates and prompt masking expect."""
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise ValueError("a system message may only come first")
    turns = roles[1:] if roles and roles[0] == "system" else roles
    if not turns or turns[-1] != "assistant":
        raise ValueError("the conversation must end with an assistant message")
    for a, b in zip(turns, turns[1:]):
        if b not in NEXT_ROLES[a]:
            raise ValueError(f"two {a} messages in a row" if a == b else f"a {b} message cannot follow a {a} message")
    if turns[0] != "user":
        raise ValueError("the conversation must start with a user message (after an optional system message)")


CONTENT_KEYS = ("messages", "text", "rejected")  # what a prepared line holds besides its metadata


def meta_fields(rec: Mapping[str, Any], keep: Iterable[str]) -> dict[str, Any]:
    """The record's fields named in `keep` that hold a scalar (a label to group results by, not content)."""
    return {k: rec[k] for k in keep if k not in CONTENT_KEYS and isinstance(rec.get(k), (str, int, float, bool))}


def to_example(where: str, content: Content, meta: dict[str, Any] | None = None) -> Example:
    """Wrap converted content, checking a conversation's shape (raises ValueError)."""
    if isinstance(content, str):
        return Example(where, [], content, meta or {})
    if isinstance(content, Pair):
        check_conversation(content.messages)
        return Example(where, content.messages, meta=meta or {}, rejected=content.rejected)
    check_conversation(content)
    return Example(where, content, meta=meta or {})
