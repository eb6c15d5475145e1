"""The studio's models: the base, every run and every checkpoint of a run in the runs folder, as ids a conversation
or a compare can name (`base`, `run:NAME`, `run:NAME@best`, `run:NAME@step-N`), and compare itself.

An id is only ever looked up in the list made from the runs folder, never joined onto a path, so no request can
name a folder outside it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify

from mlx_ft import checks
from mlx_ft import config as config_mod
from mlx_ft.errors import UserError
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader
from mlx_ft.server.engine import BASE, ModelRef
from mlx_ft.server.history import DEFAULT_SETTINGS, MAX_TOKENS_LIMIT
from mlx_ft.server.http import ApiError, field, json_body, text_field
from mlx_ft.server.state import current

bp = Blueprint("studio_models", __name__, url_prefix="/api/studio")
SERVED = "served"  # the id of the model `serve` started with when it is a run outside the runs folder
MAX_COMPARED = 4
COMPARE_KEYS = ("message", "models", "max_tokens", "temperature")


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


def _checkpoints(run: Path) -> list[tuple[str, Path]]:
    """(name, folder) of every adapter a run has saved: best/ and checkpoints/step-N/, oldest step first."""
    found = [("best", run / "best")] if (run / "best" / loader.ADAPTERS).is_file() else []
    steps = [p for p in (run / "checkpoints").glob("*") if (p / loader.ADAPTERS).is_file()]
    steps.sort(key=lambda p: (len(p.name), p.name))  # step-9 before step-10
    return found + [(p.name, p) for p in steps]


def _run_entries(run: Path) -> list[Entry]:
    try:
        cfg = config_mod.load(run / "config.yaml")
    except UserError:
        return []  # a half-written or foreign folder: not a model to offer
    what = f"{cfg.fine_tune_type}{f', {cfg.quantize}-bit' if cfg.quantize else ''} on {cfg.model}"
    out = []
    if (run / loader.ADAPTERS).is_file():
        out.append(Entry(f"run:{run.name}", f"{run.name} ({what})", "run", cfg.model, run.name, None, run))
    for name, folder in _checkpoints(run):
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
        for run in sorted(p for p in root.iterdir() if p.is_dir()):
            if loader.find_run(run) == (run, run / loader.ADAPTERS):
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
    return jsonify(models=[e.to_dict() for e in entries], loaded=loaded_id(entries))


@bp.post("/compare")
def compare() -> Response:
    """One message to several models, answered one after the other (one device), each with its switch time."""
    body = json_body()
    unknown = sorted(set(body) - set(COMPARE_KEYS))
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; known: {', '.join(COMPARE_KEYS)}")
    message = text_field(body, "message")
    ids = body.get("models")
    if not isinstance(ids, list) or not 1 <= len(ids) <= MAX_COMPARED:
        raise ApiError(400, f"field 'models' must be a list of 1 to {MAX_COMPARED} model ids")
    entries = [entry(i) for i in ids]
    max_tokens = field(body, "max_tokens", checks.integer, DEFAULT_SETTINGS["max_tokens"], lo=1, hi=MAX_TOKENS_LIMIT)
    temperature = field(body, "temperature", checks.number, DEFAULT_SETTINGS["temperature"], lo=0.0, hi=2.0)
    sampling = Sampling(temp=temperature, top_p=1.0, max_tokens=max_tokens)
    engine = current().engine
    answers = []
    for e in entries:
        messages = [{"role": "user", "content": message}]
        if (system := engine.system(e.ref)) is not None:
            messages.insert(0, {"role": "system", "content": system})
        start = time.perf_counter()
        try:
            prompt = engine.prompt(messages, max_tokens, e.ref)
        except (ValueError, UserError) as err:  # too long; a base that cannot load
            raise ApiError(400, f"{e.id}: {err}") from None
        timing: list[float] = []
        text, _, n = engine.answer(prompt, sampling, e.ref, timing)
        answers.append(
            {
                "model": e.id,
                "text": text,
                "tokens": n,
                "switch_ms": round(timing[0], 3),
                "seconds": round(time.perf_counter() - start, 3),
            }
        )
    return jsonify(answers=answers)
