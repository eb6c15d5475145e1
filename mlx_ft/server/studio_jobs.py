"""The studio's jobs API: train, eval and export jobs, run one at a time in their own process (`job_runner.py`).

    POST /api/studio/jobs                   {"kind": "train", "values": {…}}             → 201 {"job": JOB}
                                            {"kind": "eval", "run": NAME[, "split", "limit"]}
                                            {"kind": "export", "run": NAME, "format": "gguf"|"adapter"|"hf"[, "type"]}
    GET  /api/studio/jobs                   → {"jobs": [JOB, …]} (newest first)
    GET  /api/studio/jobs/<id>              → {"job": JOB}
    GET  /api/studio/jobs/<id>/events       → server-sent events `data: {"job": JOB}` at each change, until it ends
    POST /api/studio/jobs/<id>/stop|resume|cancel                                        → {"job": JOB}
    GET  /api/studio/jobs/<id>/files/<name> → a file the job produced (only the names in its result)

A train job runs exactly the command the new-run form shows (`run_form.resolve`); eval runs `eval RUN
--compare-base --out RUN/eval-job-<id>` (the job's own folder); export writes under the server's exports folder.
Unknown job: 404; an action the job's state does not allow (resume of a finished job, cancel of a running one,
stop of a queued one): 409.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, send_file

from mlx_ft import checks
from mlx_ft.errors import UserError
from mlx_ft.models import loader
from mlx_ft.models.adapters import ADAPTERS
from mlx_ft.server import run_form
from mlx_ft.server.http import ApiError, event_stream, field, json_body, sse
from mlx_ft.server.job_runner import command_line
from mlx_ft.server.jobs import KINDS, Job
from mlx_ft.server.state import ServeConfig, current
from mlx_ft.server.studio_data import local_models

bp = Blueprint("studio_jobs", __name__, url_prefix="/api/studio/jobs")

MAX_EVAL_LIMIT = 1_000_000
EXPORT_FORMATS = ("gguf", "adapter", "hf")  # adapter: a LoRA adapter GGUF + a base GGUF (`--adapter-only`)
DEFAULT_GGUF_TYPE = "q4_k_m"  # export gguf's own default
DEFAULT_ADAPTER_TYPE = "f16"  # export gguf --adapter-only's own default for the adapter (its base: q4_k_m)


def _check_keys(body: dict[str, Any], allowed: tuple[str, ...]) -> None:
    unknown = sorted(set(body) - {"kind", *allowed})
    if unknown:
        raise ApiError(400, f"unknown field(s) for a {body['kind']} job: {', '.join(unknown)}")


def _trained_run(body: dict[str, Any], cfg: ServeConfig) -> tuple[str, Path]:
    """The run a job names: a folder of the runs folder with an adapter (no path from the request goes further)."""
    if body.get("run") is None:
        raise ApiError(400, "field 'run' is required: the name of a run folder")
    name = field(body, "run", checks.name)
    run = Path(cfg.runs_dir) / name
    if not (run / "config.yaml").is_file():
        raise ApiError(404, f"no run {name!r} in {cfg.runs_dir}")
    if not (run / ADAPTERS).is_file():
        raise ApiError(409, f"run {name!r} has no adapter yet: let its training finish (or stop it) first")
    return name, run


def _eval_argv(body: dict[str, Any], run: Path) -> list[str]:
    argv = ["eval", str(run), "--compare-base"]
    split = field(body, "split", checks.name, None)
    if split is not None:
        argv.append(f"--split={split}")
    limit = field(body, "limit", checks.integer, None, lo=1, hi=MAX_EVAL_LIMIT)
    if limit is not None:
        argv.append(f"--limit={limit}")
    return argv


def _export(body: dict[str, Any], name: str, run: Path, cfg: ServeConfig) -> tuple[list[str], Path]:
    fmt = body.get("format")
    if fmt not in EXPORT_FORMATS:
        raise ApiError(400, f"field 'format' must be one of {', '.join(EXPORT_FORMATS)}")
    if fmt == "hf":
        if "type" in body:
            raise ApiError(400, "field 'type' is for GGUF exports; a fused HF folder keeps the base's weights")
        out = Path(cfg.exports_dir) / f"{name}-hf"
        return ["export", "hf", str(run), "--out", str(out)], out
    if fmt == "adapter":
        return _adapter_export(body, name, run, cfg)
    from mlx_ft.export.tensor_types import FILE_TYPES

    file_type = body.get("type", DEFAULT_GGUF_TYPE)
    if file_type not in FILE_TYPES:
        raise ApiError(400, f"field 'type' must be one of {', '.join(FILE_TYPES)}")
    out = Path(cfg.exports_dir) / f"{name}-{file_type}"
    return ["export", "gguf", str(run), "--type", file_type, "--out", str(out / f"{name}-{file_type}.gguf")], out


def _adapter_export(body: dict[str, Any], name: str, run: Path, cfg: ServeConfig) -> tuple[list[str], Path]:
    """`export gguf RUN --adapter-only`: refused here, not as a failed job, for runs with no LoRA form."""
    from mlx_ft.export.gguf_adapter import ADAPTER_TYPES

    file_type = body.get("type", DEFAULT_ADAPTER_TYPE)
    if file_type not in ADAPTER_TYPES:
        raise ApiError(400, f"field 'type' of an adapter must be one of {', '.join(ADAPTER_TYPES)}")
    trained = loader.run_config(str(run))
    if trained is not None and trained.fine_tune_type != "lora":
        what = "DoRA's magnitude vector" if trained.fine_tune_type == "dora" else "a full fine-tune"
        raise ApiError(400, f"run {name!r}: {what} has no llama.cpp LoRA form; export it as format 'gguf' instead")
    out = Path(cfg.exports_dir) / f"{name}-lora-{file_type}"
    argv = ["export", "gguf", str(run), "--adapter-only", "--type", file_type]
    return [*argv, "--out", str(out / f"{name}-lora-{file_type}.gguf")], out


def _train(body: dict[str, Any], cfg: ServeConfig) -> tuple[str, Path, list[str], str]:
    values = body.get("values")
    if not isinstance(values, dict):
        raise ApiError(400, "field 'values' is required: the new-run form's values (an object)")
    try:
        spec = run_form.resolve(values, cfg, local_models())
    except UserError as e:
        raise ApiError(400, str(e)) from None
    return spec.name, Path(spec.run_dir), ["train", *spec.argv], spec.command


@bp.post("")
def start() -> tuple[Response, int]:
    state = current()
    cfg = state.config
    body = json_body()
    kind = body.get("kind")
    if kind not in KINDS:
        raise ApiError(400, f"field 'kind' must be one of {', '.join(KINDS)}")
    if kind == "train":
        _check_keys(body, ("values",))
        name, run, argv, command = _train(body, cfg)
        job = state.jobs.submit("train", name, run, argv, command)
    elif kind == "eval":
        _check_keys(body, ("run", "split", "limit"))
        name, run = _trained_run(body, cfg)
        # Its own folder (RUN/eval stays the terminal's `eval`): two evals of a run never show each other's files.
        job_id = Job.new_id()
        out = run / f"eval-job-{job_id}"
        argv = [*_eval_argv(body, run), "--out", str(out)]
        job = state.jobs.submit("eval", name, run, argv, command_line(argv), out_dir=out, job_id=job_id)
    else:
        _check_keys(body, ("run", "format", "type"))
        name, run = _trained_run(body, cfg)
        argv, out = _export(body, name, run, cfg)
        job = state.jobs.submit("export", name, run, argv, command_line(argv), out_dir=out)
    return jsonify(job=state.jobs.view(job)), 201


@bp.get("")
def list_jobs() -> Response:
    jobs = current().jobs
    return jsonify(jobs=[jobs.view(j) for j in jobs.jobs()])


@bp.get("/<job_id>")
def show(job_id: str) -> Response:
    jobs = current().jobs
    return jsonify(job=jobs.view(jobs.job(job_id)))


@bp.get("/<job_id>/events")
def events(job_id: str) -> Response:
    jobs = current().jobs
    jobs.job(job_id)  # 404 before the stream starts

    def stream() -> Iterator[str]:
        for view in jobs.events(job_id):
            yield sse({"job": view}) if view is not None else ": still running\n\n"  # a comment: EventSource skips it

    return event_stream(stream())


@bp.post("/<job_id>/<action>")
def act(job_id: str, action: str) -> Response:
    jobs = current().jobs
    actions = {"stop": jobs.stop, "resume": jobs.resume, "cancel": jobs.cancel}
    if action not in actions:
        raise ApiError(404, f"no job action {action!r} (stop, resume, cancel)")
    return jsonify(job=jobs.view(actions[action](job_id)))


@bp.get("/<job_id>/files/<path:name>")
def download(job_id: str, name: str) -> Response:
    return send_file(current().jobs.file(job_id, name), as_attachment=True, download_name=Path(name).name)
