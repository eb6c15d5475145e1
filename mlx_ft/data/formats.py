"""Raw example formats → `Example`: a chat conversation in OpenAI roles, or raw text for continued pre-training.

Pure conversion and validation, no files: each converter takes one parsed record (a dict) and returns the messages
or the text, or raises ValueError with what is wrong (the caller adds `file:line`). The converters for alpaca and
ShareGPT are parameterised by column and tag names, so LLaMA-Factory's `dataset_info.json` mappings reuse them.

Tool use is kept as structure, in OpenAI's shape, whatever the source spelled it: the tools offered sit beside the
messages (`Conversation.tools`), an assistant's calls in its `tool_calls` (arguments as a JSON string), their results
in `tool` messages. The chat template writes them in the model's own format only when a conversation is tokenized.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from mlx_ft.chat_template import ROLES, Message, Tool

if TYPE_CHECKING:
    from mlx_ft.data.recipes import Recipe


@dataclass(frozen=True)
class Pair:
    """A preference pair: `messages` is the conversation ending with the chosen answer, `rejected` the assistant
    message that should lose to it as that last turn."""

    messages: list[Message]
    rejected: Message
    tools: list[Tool] | None = None


@dataclass(frozen=True)
class Conversation:
    """A conversation and the tools offered in it (None when there are none)."""

    messages: list[Message]
    tools: list[Tool] | None = None


Content = list[Message] | Conversation | str | Pair  # a conversation (with or without tools), raw text, or a pair
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
    tools: list[Tool] | None = None  # the tools offered to the assistant, in OpenAI's shape

    def row(self) -> dict[str, Any]:
        """The example's line in a prepared split (tools at the row's level, as in OpenAI's fine-tuning files)."""
        body: dict[str, Any] = {"text": self.text} if self.text is not None else {"messages": self.messages}
        if self.tools:
            body["tools"] = self.tools
        if self.rejected is not None:
            body["rejected"] = self.rejected
        return {**body, **self.meta}

    def uses_tools(self) -> bool:
        """Whether the chat template must render tools for this example: tools offered, calls or their results."""
        messages = [*self.messages, *([self.rejected] if self.rejected else [])]
        return bool(self.tools) or any(m.get("tool_calls") or m["role"] == "tool" for m in messages)


@dataclass(frozen=True)
class Options:
    system: str | None = None  # system prompt added to every conversation that has none
    instruction: str | None = None  # text put before each input (io format)
    recipe: Recipe | None = None  # wraps each input (io format) in its task's template
    # Top-level scalar fields to carry into the prepared splits; None: every one (reading a prepared split back).
    keep: tuple[str, ...] | None = ("task",)


# ---------------------------------------------------------------------------------------------------------- fields


def last_user_text(messages: Sequence[Message]) -> str:
    """The text of a conversation's last user message ("" when it has none): what a reward reads as the prompt."""
    users = [m for m in messages if m.get("role") == "user"]
    return str(users[-1].get("content") or "") if users else ""


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


# ------------------------------------------------------------------------------------------------------------- json

# How deep a tool's schema or a call's arguments may nest. Real schemas stay within a dozen levels; the cap keeps every
# later walk over the value (hashing, json.dumps, the chat template, the server's answers) far from Python's
# recursion limit, whose depth left depends on where it runs.
MAX_DEPTH = 100


class JSONLimit(ValueError):
    """JSON past one of Python's limits (nesting, a number's digits): a data problem, said in words, not the
    RecursionError or the "use sys.set_int_max_str_digits()" ValueError that json.loads raises."""


def json_value(text: str) -> Any:
    """json.loads for data users give: a syntax error stays json.JSONDecodeError (the caller says where), Python's
    own limits become JSONLimit."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        raise
    except RecursionError:
        raise JSONLimit("JSON nested too deeply to read") from None
    except ValueError:  # the only other one json.loads raises: an integer past the digits Python converts
        raise JSONLimit(f"a number longer than {sys.get_int_max_str_digits()} digits") from None


def check_depth(value: Any, where: str) -> None:
    """Raise ValueError when `value` nests deeper than MAX_DEPTH; walked level by level, so it cannot recurse."""
    level = [value] if isinstance(value, (dict, list)) else []
    for _ in range(MAX_DEPTH):
        if not level:
            return
        level = [c for v in level for c in (v.values() if isinstance(v, dict) else v) if isinstance(c, (dict, list))]
    if level:  # containers below MAX_DEPTH containers
        raise JSONLimit(f"{where} nests deeper than {MAX_DEPTH} levels")


def _json_field(text: str, where: str) -> Any:
    """A JSON string inside a record, parsed; ValueError names `where`."""
    try:
        return json_value(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{where} is not valid JSON: {e.msg} (column {e.colno})") from None
    except JSONLimit as e:
        raise ValueError(f"{where}: {e}") from None


# ------------------------------------------------------------------------------------------------------------ tools


def tools_field(rec: Mapping[str, Any], key: str | None) -> list[Tool] | None:
    """The tools a record offers, in OpenAI's shape: a list (or, as LLaMA-Factory stores it, a JSON string of a
    list) of function schemas, bare ({"name", "description", "parameters"}) or wrapped ({"type": "function",
    "function": {...}}). Absent, null, "" and [] all mean none."""
    value = rec.get(key) if key is not None else None
    if isinstance(value, str):
        if not value.strip():
            return None
        value = _json_field(value, f"field {key!r}")
    if value is None or value == []:
        return None
    if not isinstance(value, list):
        raise ValueError(f"field {key!r} must be a list of function schemas")
    tools = [_tool(t, f"{key}[{i}]") for i, t in enumerate(value)]
    for i, tool in enumerate(tools):  # as stored (wrapped), so a prepared line passes the same check when read back
        check_depth(tool, f"{key}[{i}]")
    return tools


def _tool(value: Any, where: str) -> Tool:
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a function schema object")
    if "function" in value or "type" in value:
        if value.get("type", "function") != "function" or not isinstance(value.get("function"), dict):
            raise ValueError(f'{where} must be {{"type": "function", "function": {{"name", …}}}}')
        fn, where = value["function"], f"{where}.function"
    else:
        fn = value
    if not isinstance(fn.get("name"), str) or not fn["name"].strip():
        raise ValueError(f"{where} needs a 'name'")
    for key, kind in (("description", str), ("parameters", dict)):
        if fn.get(key) is not None and not isinstance(fn[key], kind):
            raise ValueError(f"{where}.{key} must be {'a string' if kind is str else 'an object'}")
    return {**value, "type": "function"} if fn is value.get("function") else {"type": "function", "function": fn}


def tool_calls_field(value: Any, where: str) -> list[dict[str, Any]]:
    """A non-empty list of calls, OpenAI's ({"id", "type": "function", "function": {"name", "arguments"}}) or
    LLaMA-Factory's ({"name", "arguments"}), as OpenAI's with `arguments` a JSON string of an object."""
    if isinstance(value, dict):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f'{where} must be a call {{"name", "arguments"}} or a non-empty list of them')
    return [_tool_call(c, f"{where}[{i}]" if len(value) > 1 else where) for i, c in enumerate(value)]


def _tool_call(value: Any, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f'{where} must be a call {{"name", "arguments"}}')
    call: dict[str, Any] = {}
    if "function" in value:
        if value.get("type", "function") != "function" or not isinstance(value["function"], dict):
            raise ValueError(f'{where} must be {{"type": "function", "function": {{"name", "arguments"}}}}')
        if value.get("id") is not None:
            if not isinstance(value["id"], str):
                raise ValueError(f"{where}.id must be a string")
            call["id"] = value["id"]
        fn, where = value["function"], f"{where}.function"
    else:
        fn = value
    name, arguments = fn.get("name"), fn.get("arguments", {})
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where} needs a 'name'")
    if isinstance(arguments, str):
        parsed = _json_field(arguments, f"{where}.arguments") if arguments.strip() else {}
        arguments = arguments if arguments.strip() else "{}"
    else:
        parsed = arguments
    # Checked in both spellings: json.dumps below walks them, and so does the chat template, which parses them back.
    check_depth(parsed, f"{where}.arguments")
    if not isinstance(parsed, dict):
        raise ValueError(f"{where}.arguments must be a JSON object")
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return {**call, "type": "function", "function": {"name": name, "arguments": arguments}}


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
    """A list of message objects: OpenAI's `messages` ({"role", "content"}, an assistant's `tool_calls`, a tool
    result's `tool_call_id`) or ShareGPT's `conversations` ({"from", "value"}, where a `call_tag` message's value is a
    JSON call or list of calls), the role names mapped to ours by `roles`. A system message is kept only first (the
    conversation check says so otherwise); a record-level system field is used when there is none. The `tools`
    column holds the tools offered."""

    column: str
    role_tag: str
    content_tag: str
    roles: Mapping[str, str]
    system: str | None = None  # column with a system prompt for the whole conversation
    tools: str | None = None  # column with the tools offered
    call_tag: str | None = None  # role tag of messages whose value is a JSON call (ShareGPT's function_call)

    def __call__(self, rec: dict[str, Any], opts: Options) -> Conversation:
        return Conversation(self.messages(rec, opts), tools_field(rec, self.tools))

    def messages(self, rec: dict[str, Any], opts: Options) -> list[Message]:
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
                out.append(self._message(m, tag, role))
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        return with_system(with_system(out, _optional_text(rec, self.system)), opts.system)

    def _message(self, m: dict[str, Any], tag: str, role: str) -> Message:
        if tag == self.call_tag:
            calls = _json_field(text_field(m, self.content_tag), f"{self.content_tag!r} of a {tag}")
            return {"role": "assistant", "content": "", "tool_calls": tool_calls_field(calls, self.content_tag)}
        if role == "assistant" and m.get("tool_calls"):  # OpenAI's calls; the text beside them may be empty
            content = m.get(self.content_tag)
            if content is not None and not isinstance(content, str):
                raise ValueError(f"field {self.content_tag!r} must be a string, not {type(content).__name__}")
            return {
                "role": role,
                "content": content or "",
                "tool_calls": tool_calls_field(m["tool_calls"], "tool_calls"),
            }
        message = {"role": role, "content": text_field(m, self.content_tag)}
        if role == "tool" and m.get("tool_call_id") is not None:
            if not isinstance(m["tool_call_id"], str):
                raise ValueError("field 'tool_call_id' must be a string")
            message["tool_call_id"] = m["tool_call_id"]
        return message


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
        self,
        column: str = "conversations",
        system: str | None = "system",
        extra_roles: Mapping[str, str] | None = None,
        tools: str | None = None,
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
        return Chat(column, self.role_tag, self.content_tag, roles, system, tools, self.function_tag)


@dataclass(frozen=True)
class Alpaca:
    """Instruction data: the prompt is `instruction` + "\\n" + `input` (when the input is not empty), the answer is
    `output`; `history` holds earlier [prompt, answer] pairs. Column names as in LLaMA-Factory's `columns`."""

    prompt: str = "instruction"
    query: str | None = "input"
    response: str = "output"
    system: str | None = "system"
    history: str | None = "history"
    tools: str | None = None  # column with the tools offered (LLaMA-Factory's `tools`)

    def __call__(self, rec: dict[str, Any], opts: Options) -> Content:
        answer = {"role": "assistant", "content": text_field(rec, self.response)}
        return Conversation([*self.prompt_messages(rec, opts), answer], tools_field(rec, self.tools))

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


PromptOf = Callable[[dict[str, Any], Options], list[Message] | Conversation]

OPENAI_CHAT = Chat("messages", "role", "content", {r: r for r in ROLES}, tools="tools")
# Files in the wild call tool results "function".
SHAREGPT_CHAT = ShareGPTTags().chat(extra_roles={"function": "tool"}, tools="tools")


def _preference_prompt(rec: dict[str, Any], opts: Options) -> list[Message] | Conversation:
    """The conversation a preference pair answers: `messages` (OpenAI), `conversations` (ShareGPT), `prompt` (a
    text, or a list of OpenAI messages) or alpaca's `instruction` + `input`."""
    if "messages" in rec:
        return typing.cast(Conversation, OPENAI_CHAT(rec, opts))
    if "conversations" in rec:
        return typing.cast(Conversation, SHAREGPT_CHAT(rec, opts))
    if isinstance(rec.get("prompt"), list):
        return typing.cast(Conversation, dataclasses.replace(OPENAI_CHAT, column="prompt")(rec, opts))
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
        prompt, tools = self.prompt_of(rec, opts), None
        if isinstance(prompt, Conversation):
            prompt, tools = prompt.messages, prompt.tools
        if self.chosen in rec:
            chosen = self._answer(rec, self.chosen)
        elif prompt and prompt[-1]["role"] == "assistant":
            chosen, prompt = prompt[-1], prompt[:-1]
        else:
            raise ValueError(f"missing field {self.chosen!r}")
        rejected = self._answer(rec, self.rejected)
        if _answer_key(rejected) == _answer_key(chosen):
            raise ValueError(f"{self.chosen!r} and {self.rejected!r} are the same answer: nothing to prefer")
        return Pair([*prompt, chosen], rejected, tools)

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
            (message,) = dataclasses.replace(chat, column=key, system=None).messages({key: [value]}, Options())
        except ValueError as e:
            raise ValueError(f"field {key!r}: {str(e).removeprefix(f'{key}[0]: ')}") from None
        if message["role"] != "assistant":
            raise ValueError(f"field {key!r} must be an assistant message, not a {message['role']} one")
        return message


def _answer_key(message: Message) -> str:
    """What makes two answers the same: their text and their calls."""
    return json.dumps([message["content"].strip(), message.get("tool_calls")], sort_keys=True)


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
    tool calls, and only there), ending with the assistant: what chat templates and prompt masking expect."""
    roles = [m["role"] for m in messages]
    if "system" in roles[1:]:
        raise ValueError("a system message may only come first")
    turns = messages[1:] if roles and roles[0] == "system" else messages
    if not turns or turns[-1]["role"] != "assistant":
        raise ValueError("the conversation must end with an assistant message")
    for m, n in zip(turns, turns[1:]):
        a, b = m["role"], n["role"]
        if b not in NEXT_ROLES[a]:
            raise ValueError(f"two {a} messages in a row" if a == b else f"a {b} message cannot follow a {a} message")
        if a == "assistant" and (b == "tool") != bool(m.get("tool_calls")):
            raise ValueError(
                "a tool message must follow an assistant message with tool_calls"
                if b == "tool"
                else "an assistant message with tool_calls must be followed by their tool results"
            )
    if turns[0]["role"] != "user":
        raise ValueError("the conversation must start with a user message (after an optional system message)")


CONTENT_KEYS = ("messages", "text", "rejected", "tools")  # what a prepared line holds besides its metadata


def meta_fields(rec: Mapping[str, Any], keep: Iterable[str]) -> dict[str, Any]:
    """The record's fields named in `keep` that hold a scalar (a label to group results by, not content)."""
    return {k: rec[k] for k in keep if k not in CONTENT_KEYS and isinstance(rec.get(k), (str, int, float, bool))}


def to_example(where: str, content: Content, meta: dict[str, Any] | None = None) -> Example:
    """Wrap converted content, checking a conversation's shape (raises ValueError)."""
    if isinstance(content, str):
        return Example(where, [], content, meta or {})
    if isinstance(content, Pair):
        check_conversation(content.messages)
        return Example(where, content.messages, meta=meta or {}, rejected=content.rejected, tools=content.tools)
    if isinstance(content, Conversation):
        check_conversation(content.messages)
        return Example(where, content.messages, meta=meta or {}, tools=content.tools)
    check_conversation(content)
    return Example(where, content, meta=meta or {})
