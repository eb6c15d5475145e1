"""The HTML pages: the chat (`/chat`), the studio (`/studio`), the runs dashboard (`/runs`), whichever of the first two
`serve` opens on at `/`, and `/api/info`, what the pages show of the served model."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, render_template

from mlx_ft.inference.engine import Engine
from mlx_ft.server.state import current
from mlx_ft.services.history import DEFAULT_SETTINGS

bp = Blueprint("pages", __name__)


def adapter_name(engine: Engine) -> str | None:
    loaded = engine.loaded
    return str(loaded.adapter_file.parent) if loaded.adapter_file is not None else None


@bp.app_context_processor
def _home() -> dict[str, str]:
    return {"home": current().config.home}  # the nav bar marks the page at / as the one it is


@bp.get("/chat")
def chat_page() -> str:
    engine = current().engine
    return render_template(
        "chat.html",
        model_label=engine.loaded.label,
        adapter=adapter_name(engine),
        default_settings=DEFAULT_SETTINGS,
    )


@bp.get("/")
def home_page() -> str:
    # `serve` with no RUN is there to train one: it opens on the studio; `serve RUN` on the chat with that run.
    return studio_page() if current().config.home == "studio" else chat_page()


@bp.get("/runs")
def runs_page() -> str:
    engine = current().engine
    return render_template("runs.html", model_label=engine.loaded.label, adapter=adapter_name(engine))


@bp.get("/studio")
def studio_page() -> str:
    engine = current().engine
    return render_template("studio.html", model_label=engine.loaded.label, adapter=adapter_name(engine))


@bp.get("/api/info")
def info() -> Response:
    engine = current().engine
    return jsonify(
        model=engine.loaded.label,
        adapter=adapter_name(engine),
        defaults=DEFAULT_SETTINGS,
        context=engine.context,
        generation_defaults=engine.generation_defaults(None),  # its generation_config.json: a hint for the page
    )
