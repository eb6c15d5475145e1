"""The studio's jobs API: train, eval and export jobs, run one at a time in their own process (`job_runner.py`).

    POST /api/studio/jobs                   {"kind": "train", "values": {…}}             → 201 {"job": JOB}
                                            {"kind": "eval", "run": NAME[, "split", "limit", "max_tokens"]}
                                            {"kind": "export", "run": NAME, "format": "gguf"|"adapter"|"hf"[, "type"]}
    GET  /api/studio/jobs                   → {"jobs": [JOB, …]} (newest first)
    GET  /api/studio/jobs/<id>              → {"job": JOB}
    GET  /api/studio/jobs/<id>/events       → server-sent events `data: {"job": JOB}` at each change, until it ends
    POST /api/studio/jobs/<id>/stop|resume|cancel                                        → {"job": JOB}
    GET  /api/studio/jobs/<id>/files/<name> → a file the job produced (only the names in its result)
    POST /api/studio/jobs/estimate          {"kind": "eval", "run": NAME[, "split", "limit", "max_tokens"]}
                                            → {"examples", "budget_tokens", "passes", "seconds", "basis"}
    GET  /api/studio/runs/<name>/evals      → {"run": NAME, "evals": [EVAL, …]}: the run's finished eval jobs'
                                              results, newest first (see `run_evals`)

A train job runs exactly the command the new-run form shows (`run_form.resolve`); eval runs `eval RUN
--compare-base --out RUN/eval-job-<id>` (the job's own folder); export writes under the server's exports folder.
Unknown job: 404; an action the job's state does not allow (resume of a finished job, cancel of a running one,
stop of a queued one): 409.

An estimate is what the eval would generate at most (each example's budget: 2 x its reference's tokens + 16, under
the cap) for its two passes (base and tuned), over the generation speed last measured on this server: the newest
finished eval's, else the newest finished training's taken TRAIN_TO_GENERATION times slower, else
DEFAULT_GENERATION_TPS; `basis` says which, in words.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Blueprint, Response, jsonify, send_file

from mlx_ft import checks
from mlx_ft.errors import UserError
from mlx_ft.inference import evaluate
from mlx_ft.inference.engine import ModelRef
from mlx_ft.models import loader
from mlx_ft.models.run_folder import Run
from mlx_ft.resources import local_or_shipped
from mlx_ft.server.http import ApiError, event_stream, field, finite, json_body, sse
from mlx_ft.server.state import ServeConfig, current
from mlx_ft.server.studio.data import local_models
from mlx_ft.services import run_form
from mlx_ft.services.job_runner import command_line
from mlx_ft.services.job_store import KINDS, Job

bp = Blueprint("studio_jobs", __name__, url_prefix="/api/studio")

MAX_EVAL_LIMIT = 1_000_000
MAX_EVAL_TOKENS = 32768  # the cap an eval job may set on each answer's budget
EVAL_PASSES = 2  # a studio eval scores the base, then the tuned model
# SmolLM2-135M on a shared 2-core CPU generated 5-16 tok/s (one long answer alone: 5; nine in a batch: 16).
DEFAULT_GENERATION_TPS = 5.0
# The same model there trains at 84 tok/s (design.md) while generating 5-16: a training token costs about a tenth.
TRAIN_TO_GENERATION = 10.0
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
    run = Run(Path(cfg.runs_dir) / name)
    if not run.is_run():
        raise ApiError(404, f"no run {name!r} in {cfg.runs_dir}")
    if not run.has_adapter():
        raise ApiError(409, f"run {name!r} has no adapter yet: let its training finish (or stop it) first")
    return name, run.path


def _eval_argv(body: dict[str, Any], run: Path) -> list[str]:
    argv = ["eval", str(run), "--compare-base"]
    split = field(body, "split", checks.name, None)
    if split is not None:
        argv.append(f"--split={split}")
    limit = field(body, "limit", checks.integer, None, lo=1, hi=MAX_EVAL_LIMIT)
    if limit is not None:
        argv.append(f"--limit={limit}")
    max_tokens = field(body, "max_tokens", checks.integer, None, lo=1, hi=MAX_EVAL_TOKENS)
    if max_tokens is not None:
        argv.append(f"--max-tokens={max_tokens}")
    return argv


EVAL_FIELDS = ("run", "split", "limit", "max_tokens")


def _check_split(name: str, run: Path, split: str) -> None:
    """A split the run's data lacks is refused now, in the page's words, rather than as a failed job whose error
    names eval's flags (a folder that is no whole run is left to eval's own error)."""
    trained = loader.run_config(str(run))
    if trained is None:
        return
    data_dir = local_or_shipped(trained.data)
    if not (data_dir / f"{split}.jsonl").is_file():
        raise ApiError(400, f"run {name!r}: its data ({data_dir}) has no {split} split to evaluate on")


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
        spec = run_form.resolve(values, cfg, local_models(), current().engine.tokenizer)
    except UserError as e:
        raise ApiError(400, str(e)) from None
    return spec.name, Path(spec.run_dir), ["train", *spec.argv], spec.command


@bp.post("/jobs")
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
        _check_keys(body, EVAL_FIELDS)
        name, run = _trained_run(body, cfg)
        eval_argv = _eval_argv(body, run)
        _check_split(name, run, field(body, "split", checks.name, "test"))
        # Its own folder (RUN/eval stays the terminal's `eval`): two evals of a run never show each other's files.
        job_id = Job.new_id()
        out = run / f"eval-job-{job_id}"
        argv = [*eval_argv, "--out", str(out)]
        job = state.jobs.submit("eval", name, run, argv, command_line(argv), out_dir=out, job_id=job_id)
    else:
        _check_keys(body, ("run", "format", "type"))
        name, run = _trained_run(body, cfg)
        argv, out = _export(body, name, run, cfg)
        job = state.jobs.submit("export", name, run, argv, command_line(argv), out_dir=out)
    return jsonify(job=state.jobs.view(job)), 201


@bp.get("/jobs")
def list_jobs() -> Response:
    jobs = current().jobs
    return jsonify(jobs=[jobs.view(j) for j in jobs.jobs()])


@bp.get("/jobs/<job_id>")
def show(job_id: str) -> Response:
    jobs = current().jobs
    return jsonify(job=jobs.view(jobs.job(job_id)))


@bp.get("/jobs/<job_id>/events")
def events(job_id: str) -> Response:
    jobs = current().jobs
    jobs.job(job_id)  # 404 before the stream starts

    def stream() -> Iterator[str]:
        for view in jobs.events(job_id):
            yield sse({"job": view}) if view is not None else ": still running\n\n"  # a comment: EventSource skips it

    return event_stream(stream())


@bp.post("/jobs/<job_id>/<action>")
def act(job_id: str, action: str) -> Response:
    jobs = current().jobs
    actions = {"stop": jobs.stop, "resume": jobs.resume, "cancel": jobs.cancel}
    if action not in actions:
        raise ApiError(404, f"no job action {action!r} (stop, resume, cancel)")
    return jsonify(job=jobs.view(actions[action](job_id)))


@bp.get("/jobs/<job_id>/files/<path:name>")
def download(job_id: str, name: str) -> Response:
    return send_file(current().jobs.file(job_id, name), as_attachment=True, download_name=Path(name).name)


# ------------------------------------------------------------------------------------------------ eval: cost, results


@bp.post("/jobs/estimate")
def estimate() -> Response:
    """What an eval job would cost, before it starts."""
    state = current()
    body = json_body()
    if body.get("kind") != "eval":
        raise ApiError(400, "field 'kind' must be eval: only an eval's cost is estimated")
    _check_keys(body, EVAL_FIELDS)
    name, run = _trained_run(body, state.config)
    split = field(body, "split", checks.name, "test")
    limit = field(body, "limit", checks.integer, None, lo=1, hi=MAX_EVAL_LIMIT)
    max_tokens = field(body, "max_tokens", checks.integer, None, lo=1, hi=MAX_EVAL_TOKENS)
    try:
        plan = evaluate.plan_for_run(run, split, limit, max_tokens, _run_tokenizer(name, run))
    except UserError as e:
        raise ApiError(400, f"run {name!r}: {e}") from None
    seconds, basis = _generation_seconds(EVAL_PASSES * plan.budget_tokens)
    return jsonify(
        examples=len(plan.examples),
        budget_tokens=plan.budget_tokens,
        passes=EVAL_PASSES,
        seconds=round(seconds, 1),
        basis=basis,
    )


def _run_tokenizer(name: str, run: Path) -> Any:
    """The run's tokenizer from the server's models when it has it (no disk read), else None (read from disk)."""
    try:
        return current().engine.tokenizer_for(ModelRef(name, run))
    except (ValueError, UserError):
        return None


def _generation_seconds(tokens: int) -> tuple[float, str]:
    """How long generating `tokens` takes at the speed last measured here, and what that speed is, in words."""
    measured = current().jobs.speed()
    upper = "; an upper bound, since most answers end before their budget (the loss passes are not counted)"
    if measured is not None and measured[0].kind == "eval":
        job, rate = measured
        return tokens / rate, f"eval job {job.id} generated {rate:.1f} tok/s on this server{upper}"
    if measured is not None:
        job, rate = measured
        return tokens / (rate / TRAIN_TO_GENERATION), (
            f"no eval has finished on this server yet: train job {job.id} trained {rate:,.0f} tok/s, and generating "
            f"is taken as {TRAIN_TO_GENERATION:g} times slower per token{upper}"
        )
    return tokens / DEFAULT_GENERATION_TPS, (
        f"nothing has been measured on this server yet: {DEFAULT_GENERATION_TPS:g} tok/s assumed, a slow CPU's "
        f"speed{upper}"
    )


@bp.get("/runs/<name>/evals")
def run_evals(name: str) -> Response:
    """The run's finished eval jobs' results (each RUN/eval-job-<id>/metrics.json), newest first, each:

    {"job": ID, "time": (when written, epoch seconds), "split": "test", "limit": N | null, "columns": ["base", "tuned"],
     "generation_budget": str | null, "budget_tokens": int | null, "generated_tokens": {COLUMN: int},
     "metrics": [{"key": "exact_match", "label": "Exact match", "kind": "percent", "values": {COLUMN: number | null},
                  "shown": {COLUMN: "100.0%"}}, …],
     "by_field": "task" | null, "groups": {VALUE: [same as metrics]}}

    Labels, kinds and the shown text come from `evaluate.METRICS`, the terminal table's one list."""
    name = checks.name(name, "run name")
    run = Path(current().config.runs_dir) / name
    if not Run(run).is_run():
        raise ApiError(404, f"no run {name!r} in {current().config.runs_dir}")
    found = []
    for folder in run.glob("eval-job-*"):
        path = folder / "metrics.json"
        try:
            metrics = json.loads(path.read_text(encoding="utf-8"))
            found.append((path.stat().st_mtime, folder.name.removeprefix("eval-job-"), metrics))
        except (OSError, ValueError):
            continue  # an eval still running (its folder appears whole, at its end) or a file that is not ours
    found.sort(key=lambda f: (f[0], f[1]), reverse=True)  # newest first
    evals = [_eval_entry(job_id, when, m) for when, job_id, m in found if isinstance(m, dict)]
    return jsonify(run=name, evals=finite(evals))


def _eval_entry(job_id: str, when: float, m: dict[str, Any]) -> dict[str, Any]:
    columns = m.get("metrics") or {}
    groups = m.get("groups") or {}
    values = sorted({v for g in groups.values() for v in g})
    return {
        "job": job_id,
        "time": when,
        "split": m.get("split"),
        "limit": m.get("limit"),
        "columns": list(columns),
        "generation_budget": m.get("generation_budget"),
        "budget_tokens": m.get("budget_tokens"),
        "generated_tokens": m.get("generated_tokens") or {},
        "metrics": evaluate.labelled(columns),
        "by_field": m.get("by_field"),
        "groups": {v: evaluate.labelled({c: g.get(v, {}) for c, g in groups.items()}) for v in values},
    }
