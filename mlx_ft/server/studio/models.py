"""The studio's models: the base, every run and every checkpoint of a run in the runs folder, as ids a conversation
or a compare can name (`base`, `run:NAME`, `run:NAME@best`, `run:NAME@step-N`), and compare itself.

An id is only ever looked up in the list made from the runs folder, never joined onto a path, so no request can
name a folder outside it.

`GET /api/studio/models` gives each entry its base model's `generation_defaults`: the sampling settings the model's
authors ship in its generation_config.json (`temperature`, `top_p`, `top_k`, `repetition_penalty`, Hugging Face's
names; `{}` when none), the hint a degenerate greedy answer needs.

`POST /api/studio/compare` asks one `message` of 1 to 4 `models` (ids; one may come twice). Sampling: `max_tokens`,
`temperature`, `top_p`, `top_k`, `repetition_penalty` (the OpenAI route's bounds), and `use_model_defaults`: true
answers each model with its own generation_defaults where it has them (they win over the request's values). The
answers are submitted to the scheduler together, in the request's order; a batch runs on one model (one adapter
worn at a time), so different models answer one after another and neighbouring answers of one model together.
Every answer reports the `settings` it used: `{temperature, top_p, top_k, repetition_penalty, max_tokens}`.

Without `stream`, the reply is `{"answers": [...]}` in the request's order, each `{model, text, finish_reason,
tokens, prompt_tokens, cached_tokens, seconds, ttft_s, switch_ms, settings}`, or `{model, error, settings}` when
that model failed while answering. A prompt that cannot be built (too long, a base whose tokenizer cannot load) is a
400.

With `"stream": true`, server-sent events, one JSON object per `data:` line; `index` is the model's place in
`models` (ids may repeat):

    {"index": 0, "model": ID, "delta": "text"}                       a piece of that model's answer
    {"index": 0, "model": ID, "done": true, "finish_reason": "length"|"stop", "tokens": N, "prompt_tokens": P,
     "cached_tokens": C, "seconds": S, "ttft_s": T, "switch_ms": M, "settings": {...}}   that answer is complete
    {"index": 1, "model": ID, "error": "...", "settings": {...}}     that model failed; the others go on
    {"done": true}                                                   every model has answered (the last event)

Times count from when the scheduler took the answer up (its model switch included), not from the request, so a
model that waited for another's batch is not charged for the wait: `seconds` to the last token, `ttft_s` to the
first, `switch_ms` the switch alone. `cached_tokens` of the `prompt_tokens` were read from the prompt cache (an
earlier answer of the same model that shares the prompt's start), not computed.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify

from mlx_ft import chat_template, checks
from mlx_ft.errors import UserError
from mlx_ft.inference import decode
from mlx_ft.inference.engine import BASE, Engine, ModelRef
from mlx_ft.inference.sampling import Sampling
from mlx_ft.inference.scheduler import Job, merged
from mlx_ft.models import loader
from mlx_ft.models.run_folder import Run
from mlx_ft.server.http import ApiError, event_stream, field, json_body, sse, text_field
from mlx_ft.server.state import current
from mlx_ft.services.history import DEFAULT_SETTINGS, MAX_TOKENS_LIMIT

bp = Blueprint("studio_models", __name__, url_prefix="/api/studio")
SERVED = "served"  # the id of the model `serve` started with when it is a run outside the runs folder
MAX_COMPARED = 4
SAMPLING_KEYS = ("temperature", "top_p", "top_k", "repetition_penalty")  # Hugging Face's names, as the defaults have
COMPARE_KEYS = ("message", "models", "max_tokens", *SAMPLING_KEYS, "use_model_defaults", "stream")
# Each sampling setting's check and bounds: the OpenAI route's (openai_request.sampling); top_k's upper bound is the
# vocabulary's size.
BOUNDS: dict[str, tuple[Any, dict[str, Any]]] = {
    "temperature": (checks.number, {"lo": 0.0, "hi": 2.0}),
    "top_p": (checks.number, {"lo": 0.0, "hi": 1.0}),
    "top_k": (checks.integer, {"lo": 0}),
    "repetition_penalty": (checks.number, {"lo": 0.0, "hi": 10.0, "lo_open": True}),  # 1: off
}
# What a compare samples with where the request names nothing: the chat page's settings, no top-k, no penalty.
DEFAULTS = {**{k: DEFAULT_SETTINGS[k] for k in ("temperature", "top_p")}, "top_k": 0, "repetition_penalty": 1.0}


@dataclass(frozen=True)
class Entry:
    id: str
    label: str
    kind: str  # base | run | checkpoint
    base: str  # the base model's source
    run: str | None = None
    checkpoint: str | None = None
    adapter_dir: Path | None = None

    @property
    def ref(self) -> ModelRef:
        return ModelRef(self.id, self.adapter_dir)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in ("id", "label", "kind", "run", "checkpoint", "base")}


def _run_entries(run: Run) -> list[Entry]:
    """The run's final adapter, best/ and every checkpoint's (oldest step first), as entries."""
    try:
        cfg = run.config()
    except UserError:
        return []  # a half-written or foreign folder: not a model to offer
    what = f"{cfg.fine_tune_type}{f', {cfg.quantize}-bit' if cfg.quantize else ''} on {cfg.model}"
    out = []
    if run.has_adapter():
        out.append(Entry(f"run:{run.name}", f"{run.name} ({what})", "run", cfg.model, run.name, None, run.path))
    for name, folder in run.adapters():
        label = f"{run.name} @ {name} ({what})"
        out.append(Entry(f"run:{run.name}@{name}", label, "checkpoint", cfg.model, run.name, name, folder))
    return out


def catalogue() -> list[Entry]:
    """Every model the server can answer with, the base first."""
    state = current()
    engine = state.engine
    entries = [Entry(BASE.id, f"{engine.loaded.base} (base)", "base", engine.loaded.base)]
    root = Path(state.config.runs_dir)
    if root.is_dir():
        for run in (Run(p) for p in sorted(root.iterdir()) if p.is_dir()):
            if run.is_loadable():
                entries += _run_entries(run)
    served = engine.served.adapter_dir
    if served is not None and not any(_same(e.adapter_dir, served) for e in entries):
        entries.append(Entry(SERVED, engine.loaded.label, "run", engine.loaded.base, None, None, served))
    for name, ref in state.served_models.items():  # the other runs `serve` was given, outside the runs folder
        if ref is not None and ref.adapter_dir and not any(_same(e.adapter_dir, ref.adapter_dir) for e in entries):
            cfg = loader.run_config(str(ref.adapter_dir))
            base = cfg.model if cfg else engine.loaded.base
            entries.append(Entry(name, f"{name} (served)", "run", base, None, None, ref.adapter_dir))
    return entries


def _same(a: Path | None, b: Path) -> bool:
    return a is not None and a.resolve() == b.resolve()


def entry(model_id: Any) -> Entry:
    """The entry of `model_id`, or a 400 naming the ids there are."""
    if not isinstance(model_id, str):
        raise ApiError(400, "field 'model' must be a model id string (see GET /api/studio/models)")
    entries = catalogue()
    for e in entries:
        if e.id == model_id:
            return e
    known = ", ".join(e.id for e in entries[:10]) + (" …" if len(entries) > 10 else "")
    raise ApiError(400, f"unknown model {model_id!r}; known: {known}")


def ref_of(model_id: str | None) -> ModelRef | None:
    """The engine's reference for a conversation's model (None: the served model)."""
    return None if model_id is None else entry(model_id).ref


def loaded_id(entries: list[Entry]) -> str:
    """The id of the model the served base wears now."""
    current_dir = current().engine.loaded_id()
    if current_dir is None:
        return BASE.id
    return next((e.id for e in entries if _same(e.adapter_dir, Path(current_dir))), SERVED)


@bp.get("/models")
def list_models() -> Response:
    entries = catalogue()
    engine = current().engine
    models = [{**e.to_dict(), "generation_defaults": engine.generation_defaults(e.ref)} for e in entries]
    return jsonify(models=models, loaded=loaded_id(entries))


@dataclass
class _Ask:
    """One model's part of a compare: its place in the request, the settings it answers with, and its prompt, or
    why it has none."""

    index: int
    entry: Entry
    settings: dict[str, Any]
    prompt: list[int] | None = None
    error: str | None = None

    @property
    def sampling(self) -> Sampling:
        s = self.settings
        return Sampling(
            temp=s["temperature"],
            top_p=s["top_p"],
            top_k=s["top_k"],
            repetition_penalty=s["repetition_penalty"],
            max_tokens=s["max_tokens"],
        )

    def head(self) -> dict[str, Any]:
        return {"index": self.index, "model": self.entry.id}


def _vocab(tokenizer: Any) -> int:
    return len(chat_template.hf_tokenizer(tokenizer))


def _bounds(key: str, vocab: int | None) -> dict[str, Any]:
    return {**BOUNDS[key][1], "hi": vocab} if key == "top_k" else BOUNDS[key][1]


def _asked(body: dict[str, Any], vocab: int | None) -> dict[str, Any]:
    """The settings the request asks for, its defaults where it names none; a refused field is a 400."""
    out = {key: field(body, key, BOUNDS[key][0], DEFAULTS[key], **_bounds(key, vocab)) for key in SAMPLING_KEYS}
    out["max_tokens"] = field(
        body, "max_tokens", checks.integer, DEFAULT_SETTINGS["max_tokens"], lo=1, hi=MAX_TOKENS_LIMIT
    )
    return out


def _model_settings(defaults: dict[str, Any], vocab: int) -> dict[str, Any]:
    """The model's own defaults that pass the request's checks (a config file can hold anything)."""
    out = {}
    for key in SAMPLING_KEYS:
        try:
            if key in defaults:
                out[key] = BOUNDS[key][0](defaults[key], key, **_bounds(key, vocab))
        except checks.FieldError:
            continue
    return out


def _tokenizers(entries: list[Entry]) -> list[Any]:
    """Each model's tokenizer, or the error that says why it has none (a base that cannot load)."""
    out: list[Any] = []
    for e in entries:
        try:
            out.append(current().engine.tokenizer_for(e.ref))
        except (ValueError, UserError) as err:
            out.append(err)
    return out


def _asks(body: dict[str, Any], message: str, entries: list[Entry]) -> list[_Ask]:
    """Each model's settings and prompt, or the error that keeps it from answering (too long a prompt, a base that
    cannot load): the streamed form reports that in the model's column, the other as a 400."""
    engine = current().engine
    tokenizers = _tokenizers(entries)
    # top_k's bound: the smallest vocabulary compared (none when no tokenizer loads: those models report why).
    vocab = min((_vocab(t) for t in tokenizers if not isinstance(t, Exception)), default=None)
    asked = _asked(body, vocab)
    own = field(body, "use_model_defaults", checks.boolean, False)
    asks = []
    for i, (e, tokenizer) in enumerate(zip(entries, tokenizers, strict=True)):
        ask = _Ask(i, e, dict(asked))
        try:
            if isinstance(tokenizer, Exception):
                raise tokenizer
            if own:
                ask.settings.update(_model_settings(engine.generation_defaults(e.ref), _vocab(tokenizer)))
            ask.prompt = engine.prompt(_messages(message, e), asked["max_tokens"], e.ref)
        except (ValueError, UserError) as err:
            ask.error = str(err)
        asks.append(ask)
    return asks


def _messages(message: str, e: Entry) -> list[dict[str, str]]:
    """The one-message conversation, under the system prompt the model was trained with, if one."""
    system = current().engine.system(e.ref)
    head = [{"role": "system", "content": system}] if system is not None else []
    return [*head, {"role": "user", "content": message}]


def _answers(engine: Engine, asks: list[_Ask]) -> Iterator[tuple[_Ask, dict[str, Any]]]:
    """The compare's events, each with its model's ask: the errors of models that cannot answer, then every
    model's pieces as they come and its done (or error) event. `engine` is taken in the request: a streamed
    response runs after it."""
    for ask in asks:
        if ask.error is not None:
            yield ask, {**ask.head(), "error": ask.error, "settings": ask.settings}
    ready = [(a, a.prompt) for a in asks if a.prompt is not None]
    if not ready:
        return
    jobs = engine.submit_each([(prompt, a.sampling, a.entry.ref) for a, prompt in ready])
    last: dict[int, decode.Chunk] = {}
    for i, item in merged(jobs):
        ask = ready[i][0]
        if isinstance(item, BaseException):
            yield ask, {**ask.head(), "error": str(item) or type(item).__name__, "settings": ask.settings}
        elif item is None:
            yield ask, {**ask.head(), **_done(jobs[i], last.get(i)), "settings": ask.settings}
        else:
            last[i] = item
            if item.text:
                yield ask, {**ask.head(), "delta": item.text}


def _done(job: Job, last: decode.Chunk | None) -> dict[str, Any]:
    """An answer's end: why, its tokens, its prompt's (and those read from the prompt cache), and its times."""
    return {
        "done": True,
        "finish_reason": last.finish_reason if last else None,
        "tokens": last.generation_tokens if last else 0,
        **job.figures(),
    }


@bp.post("/compare")
def compare() -> Response:
    """One message to several models; the answers streamed as they come (`stream`), or all at once (the module
    docstring gives both shapes)."""
    body = json_body()
    unknown = sorted(set(body) - set(COMPARE_KEYS))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(COMPARE_KEYS)}")
    message = text_field(body, "message")
    ids = body.get("models")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_COMPARED:
        raise ApiError(400, f"field 'models' must be a list of 1 to {MAX_COMPARED} model ids")
    entries = [entry(i) for i in ids]
    streamed = field(body, "stream", checks.boolean, False)
    asks = _asks(body, message, entries)
    engine = current().engine
    if streamed:
        return event_stream(_events(engine, asks))
    failed = next((a for a in asks if a.error is not None), None)
    if failed is not None:
        raise ApiError(400, f"{failed.entry.id}: {failed.error}")
    return jsonify(answers=_collected(engine, asks))


def _events(engine: Engine, asks: list[_Ask]) -> Iterator[str]:
    for _, event in _answers(engine, asks):
        yield sse(event)
    yield sse({"done": True})


def _collected(engine: Engine, asks: list[_Ask]) -> list[dict[str, Any]]:
    """Each model's whole answer, in the request's order: `{model, text, ...its done event}` or its error."""
    texts: list[list[str]] = [[] for _ in asks]
    ends: list[dict[str, Any]] = [{} for _ in asks]
    for ask, event in _answers(engine, asks):
        if "delta" in event:
            texts[ask.index].append(event["delta"])
        else:
            ends[ask.index] = {k: v for k, v in event.items() if k not in ("index", "done")}
    return [
        end if "error" in end else {"model": ask.entry.id, "text": "".join(text), **end}
        for ask, end, text in zip(asks, ends, texts, strict=True)
    ]
