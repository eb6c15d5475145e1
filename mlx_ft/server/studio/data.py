"""The studio's data API: data sets (upload, shipped, recipes; inspected before anything is stored), their preview
with the learned spans marked, and the new-run form.

Only the upload route reads a body larger than the chat routes' limit (`serve --max-upload-mb`)."""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, request
from jinja2 import TemplateError

from mlx_ft import checks, data
from mlx_ft import config as config_mod
from mlx_ft.data import stats as data_stats
from mlx_ft.errors import UserError
from mlx_ft.server.http import ApiError, json_body
from mlx_ft.server.state import current
from mlx_ft.server.studio import models as studio_models
from mlx_ft.services import datasets, run_form

bp = Blueprint("studio_data", __name__, url_prefix="/api/studio")
# `truncate` and `skip_long` fit a set's long examples to max_seq_length: what an upload's `fixes` offer.
FIT_FIELDS = ("truncate", "skip_long")
UPLOAD_FIELDS = ("files", "name", "format", "model", "max_seq_length", "dry_run", "group_field", *FIT_FIELDS)
JSON_FIELDS = ("shipped", "recipe", "name", "model", "max_seq_length", "dry_run", "group_field", *FIT_FIELDS)
MAX_PREVIEW = 20
MAX_SEQ = int(config_mod.FIELDS["max_seq_length"].metadata["bounds"].hi)  # what a run can use: the config's bound


@bp.before_request
def _upload_limit() -> None:
    if request.endpoint == "studio_data.add_dataset":
        request.max_content_length = current().config.max_upload_bytes


def _refused(e: datasets.Refused) -> ApiError:
    return ApiError(e.status, str(e))


def _tokenizer(model_id: Any) -> tuple[Any, str]:
    """The tokenizer of the model id (default: the served model) and a label for it."""
    engine = current().engine
    if model_id in (None, ""):
        return engine.tokenizer, engine.loaded.base
    entry = studio_models.entry(model_id)
    try:
        return engine.tokenizer_for(entry.ref), entry.base
    except (ValueError, UserError) as e:
        raise ApiError(400, f"model {model_id}: {e}") from None


def _int(value: Any, key: str, default: int, lo: int, hi: int) -> int:
    """A form field or query parameter (text) or a JSON number."""
    return default if value in (None, "") else checks.integer(value, f"field {key!r}", lo, hi, text=True)


def _flag(value: Any, key: str) -> bool:
    return False if value in (None, "") else checks.boolean(value, f"field {key!r}", text=True)


def _defaults() -> config_mod.TrainConfig:
    return config_mod.load(config_mod.default_path())


@bp.get("/datasets")
def list_datasets() -> Response:
    return jsonify(datasets=[d.to_dict() for d in datasets.catalogue(current().config.data_dir)])


@bp.post("/datasets")
def add_dataset() -> tuple[Response, int]:
    """Multipart upload of files, or JSON `{"shipped": NAME}` / `{"recipe": NAME}`; 400 with every problem. Long
    examples are no problem: the set is stored with notes, and `fixes` to send again (`datasets.Taken`)."""
    data_dir = current().config.data_dir
    if request.mimetype == "multipart/form-data":
        fields: dict[str, Any] = request.form.to_dict()
        unknown = sorted((set(fields) | set(request.files)) - set(UPLOAD_FIELDS))
        files = [(f.filename or "", f.stream) for f in request.files.getlist("files")]
    else:
        fields = json_body()
        unknown = sorted(set(fields) - set(JSON_FIELDS))
        files = []
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}")
    defaults = _defaults()
    tokenizer, label = _tokenizer(fields.get("model"))
    max_seq_length = _int(fields.get("max_seq_length"), "max_seq_length", defaults.max_seq_length, 1, MAX_SEQ)
    dry_run = _flag(fields.get("dry_run"), "dry_run")
    truncate = _truncate(fields.get("truncate"))
    skip_long = _flag(fields.get("skip_long"), "skip_long")
    for key in ("name", "format", "group_field", "shipped", "recipe"):
        if fields.get(key) is not None and not isinstance(fields[key], str):
            raise ApiError(400, f"field {key!r} must be a string")
    try:
        if fields.get("shipped") is not None:
            found = datasets.find(data_dir, datasets.check_name(fields["shipped"], "shipped set"))
            if found.source != "shipped" or found.path is None:
                raise ApiError(400, f"{found.name!r} is not a shipped set")
            if truncate != "none" or skip_long:
                raise ApiError(400, "a shipped set is used as it is: truncate and skip_long apply to uploads")
            taken = datasets.inspect(found.path, found.name, tokenizer, label, max_seq_length)
        else:
            recipe = fields.get("recipe")
            if recipe is not None and datasets.check_name(recipe, "recipe") not in datasets.recipe_names():
                raise ApiError(400, f"no shipped recipe {recipe!r}; known: {', '.join(datasets.recipe_names())}")
            if recipe is None and not files:
                raise ApiError(400, 'upload files (multipart field \'files\'), or send {"shipped"} or {"recipe"}')
            taken = datasets.take(
                data_dir,
                fields.get("name") or None,
                files,
                tokenizer,
                label,
                max_seq_length,
                fmt=fields.get("format") or None,
                dry_run=dry_run,
                recipe=recipe,
                group_field=fields.get("group_field") or None,
                truncate=truncate,
                skip_long=skip_long,
            )
    except datasets.Refused as e:
        if e.problems:
            return jsonify(error=e.problems[0], problems=e.problems), e.status
        raise _refused(e) from None
    return jsonify(dataset=taken.to_dict()), 200


def _truncate(value: Any) -> str:
    return "none" if value in (None, "") else checks.choice(value, "field 'truncate'", data_stats.TRUNCATE)


@bp.get("/datasets/<name>/preview")
def preview(name: str) -> Response:
    unknown = sorted(set(request.args) - {"n", "model", "split", "mask_prompt", "max_seq_length"})
    if unknown:
        raise ApiError(400, f"unknown parameter(s) {', '.join(unknown)}")
    defaults = _defaults()
    try:
        found = datasets.find(current().config.data_dir, datasets.check_name(name, "data set"))
    except datasets.Refused as e:
        raise _refused(e) from None
    if found.path is None:
        raise ApiError(400, f"recipe {name!r} is not prepared yet: prepare it first (Prepare, in the data sets list)")
    n = _int(request.args.get("n"), "n", 3, 1, MAX_PREVIEW)
    max_seq_length = _int(request.args.get("max_seq_length"), "max_seq_length", defaults.max_seq_length, 1, MAX_SEQ)
    mask_prompt = request.args.get("mask_prompt") in (None, "") or _flag(request.args.get("mask_prompt"), "mask_prompt")
    tokenizer, _ = _tokenizer(request.args.get("model"))
    try:
        examples = datasets.preview(
            found.path, request.args.get("split", "train"), n, tokenizer, mask_prompt, max_seq_length
        )
    except datasets.Refused as e:
        if e.problems:
            return jsonify(error=e.problems[0], problems=e.problems), e.status  # type: ignore[return-value]
        raise _refused(e) from None
    return jsonify(examples=examples)


@bp.get("/form")
def form() -> Response:
    from mlx_ft.export.gguf_adapter import ADAPTER_TYPES  # here, not at import: they load gguf (~0.1 s)
    from mlx_ft.export.tensor_types import FILE_TYPES

    return jsonify(
        defaults=run_form.defaults(),
        methods=list(run_form.METHODS),
        presets=run_form.presets(),
        models=run_form.models(
            current().engine.loaded.base, _run_bases(), run_form.folder_models(current().config.models_dir)
        ),
        datasets=[d.name for d in datasets.catalogue(current().config.data_dir) if d.path is not None],
        formats=list(data.FORMATS),  # the upload's `format` menu: what `prepare --format` takes
        gguf_types=list(FILE_TYPES),  # the export's type menu: what `export gguf --type` takes
        adapter_types=list(ADAPTER_TYPES),  # its menu for a LoRA adapter GGUF (`--adapter-only --type`)
        schema=run_form.schema(),  # every key: type, choices, bounds, help, group, when it applies
        runs=run_form.adapter_runs(current().config.runs_dir),  # what start_from and a DPO reference may name
    )


def _run_bases() -> set[str]:
    """The served base and the bases of the runs in the runs folder."""
    return {e.base for e in studio_models.catalogue()}


def local_models() -> set[str]:
    """Local model sources the form may name: the served base, the runs' bases, the models folder's models."""
    return _run_bases() | set(run_form.folder_models(current().config.models_dir))


@bp.post("/form")
def resolve_form() -> Response:
    body = json_body()
    if set(body) != {"values"}:
        raise ApiError(400, 'send {"values": {...form values...}}')
    try:
        spec = run_form.resolve(body["values"], current().config, local_models(), current().engine.tokenizer)
    except UserError as e:
        raise ApiError(400, str(e)) from None
    return jsonify(
        name=spec.name,
        run_dir=str(spec.run_dir),
        config=spec.config,
        yaml=spec.yaml,
        command=spec.command,
        argv=spec.argv,
        estimate=run_form.estimate(spec.config, current().jobs.jobs(), (current().engine.loaded.base, _train_lengths)),
    )


_LENGTHS: dict[tuple[str, int, str], list[int]] = {}  # (train.jsonl, its mtime, tokenizer) -> token lengths
_LENGTHS_KEPT = 16
_LENGTHS_LOCK = threading.Lock()


def _train_lengths(folder: Path) -> list[int]:
    """The token lengths of a data set's train split under the served model's tokenizer (for the estimate of a set
    that `prepare` recorded none for, an upload), counted once per version of the file."""
    engine = current().engine
    train = folder / "train.jsonl"
    key = (str(train), train.stat().st_mtime_ns, engine.loaded.base)
    with _LENGTHS_LOCK:
        lengths = _LENGTHS.get(key)
    if lengths is None:
        try:
            lengths = [data_stats.token_length(engine.tokenizer, ex) for ex in data.load_split(folder, "train")]
        except (ValueError, TemplateError) as e:  # a conversation the template refuses: no count, said so
            raise UserError(f"{folder.name}: its token lengths cannot be counted: {e}") from None
        with _LENGTHS_LOCK:
            while len(_LENGTHS) >= _LENGTHS_KEPT:
                _LENGTHS.pop(next(iter(_LENGTHS)))
            _LENGTHS[key] = lengths
    return lengths
