"""The studio's new-run form: values with lora_config.yaml's key names → the config `train` will run with, its YAML,
and the `python -m mlx_ft train …` command that runs exactly it.

The defaults are the config file `train` reads (./lora_config.yaml, else the shipped one), and the values go through
`config.from_cli`, the code `train` itself uses, so a value `train` would refuse is refused here, naming the key.
The command is that defaults file plus a flag for every key that differs from it (`--iters 5`; `--set
key.sub=VALUE` for nested ones: `config.to_argv`); it is parsed back here by train's own arguments and must give the
same config, so what the page shows is what runs. The form never takes a path: `data` is a data set's name, the run
folder is `runs/<name>`.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shlex
import time
import typing
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_ft import checks
from mlx_ft import config as config_mod
from mlx_ft.errors import UserError
from mlx_ft.models import sources
from mlx_ft.models.adapters import ADAPTERS
from mlx_ft.models.run_folder import Run
from mlx_ft.resources import local_or_shipped
from mlx_ft.services import datasets
from mlx_ft.services.serve_config import ServeConfig

# method → (fine_tune_type, quantize): QLoRA is LoRA on a quantized base.
METHODS: dict[str, tuple[str, int | None]] = {
    "lora": ("lora", None),
    "dora": ("dora", None),
    "qlora4": ("lora", 4),
    "qlora8": ("lora", 8),
    "full": ("full", None),
}
FORM_ONLY = ("method", "name", "start_from")  # form values that are not config keys
# A Hugging Face repo id (owner/name), as the hub spells them: nothing else is fetched, and nothing that could pass
# for a flag (`-h/x`, `--config=/x`) or a path (`../x`) is taken for one.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
SET_BY_METHOD = ("fine_tune_type", "quantize")
SET_BY_FORM = ("adapter_path", "resume_adapter_file")  # the run folder is runs/<name>; a warm start names a path
# The lora_parameters a warm start (`start_from`) keeps from its run: its adapter has their shapes.
SHAPE_LORA_KEYS = ("rank", "keys")


@dataclass(frozen=True)
class RunSpec:
    name: str
    run_dir: Path
    config: dict[str, Any]
    yaml: str
    argv: list[str]  # `train`'s arguments: JOBS runs [python, -m, mlx_ft, train, *argv]

    @property
    def command(self) -> str:
        return shlex.join(["python", "-m", "mlx_ft", "train", *self.argv])


def method_of(cfg: config_mod.TrainConfig) -> str:
    for name, (fine_tune_type, quantize) in METHODS.items():
        if (cfg.fine_tune_type, cfg.quantize) == (fine_tune_type, quantize):
            return name
    return "qlora4" if cfg.quantize == 4 else "qlora8"  # DoRA on a quantized base: the nearest method


def _defaults_file() -> Path | None:
    return config_mod.default_path()


def _as_form(cfg: config_mod.TrainConfig, data_name: str | None) -> dict[str, Any]:
    values = {k: v for k, v in cfg.to_dict().items() if k not in (*SET_BY_METHOD, *SET_BY_FORM)}
    values["data"] = data_name
    return {"method": method_of(cfg), **values}


def defaults() -> dict[str, Any]:
    """The form's values before the user changes any: the defaults file's config."""
    cfg = config_mod.load(_defaults_file())
    return _as_form(cfg, Path(cfg.data).name)


def presets() -> list[dict[str, Any]]:
    """The defaults file, then each shipped recipe's lora_config.yaml, as form values (its data: the recipe)."""
    out = [{"name": "default", "values": defaults()}]
    for name in datasets.recipe_names():
        path = local_or_shipped(f"recipes/{name}/lora_config.yaml")
        if path.is_file():
            out.append({"name": name, "values": _as_form(config_mod.load(path), name)})
    return out


def folder_models(models_dir: Path) -> dict[str, str]:
    """The models put in the models folder (`serve --models`), as {the form's `model` value: label}: every folder
    with a config.json and every .gguf file directly in it. Each value is the folder joined with a name its listing
    gave, never with one from a request, so a form value can only pick one of these."""
    root = Path(models_dir)
    if not root.is_dir():
        return {}
    out = {}
    for p in sorted(root.iterdir()):
        if p.name.startswith("."):
            continue  # hidden: a download in progress, an editor's file
        if p.is_dir() and (p / "config.json").is_file():
            out[str(p)] = f"{p.name} (models folder)"
        elif p.is_file() and p.suffix.lower() == ".gguf":
            out[str(p)] = f"{p.name} (models folder, GGUF)"
    return out


def models(served_base: str, run_bases: set[str], folder: dict[str, str]) -> list[dict[str, str]]:
    """The models a new run can start from: the served base, the built-ins, the models folder's, the bases of
    existing runs."""
    out = {served_base: f"{served_base} (served)"}
    for name in sources.BUILTINS:
        out.setdefault(name, f"{name} (built-in)")
    for value, label in folder.items():
        out.setdefault(value, label)
    for base in sorted(run_bases):
        out.setdefault(base, base)
    return [{"id": k, "label": v} for k, v in out.items()]


def _model(value: Any, allowed_local: set[str], models_dir: Path) -> str:
    """A model the form may name: a built-in, a hub id, or a local model the server may read (its served base, one
    a run in the runs folder was trained on, one in the models folder), as offered. Any other local path is
    refused: the page reads nothing outside its folders."""
    if not isinstance(value, str) or not value.strip():
        raise UserError("config key 'model': a built-in model, a Hugging Face repo id, or a model this server offers")
    if value in sources.BUILTINS or value in allowed_local:
        return value
    if not HUB_ID.fullmatch(value) or value.lower().endswith(".gguf"):
        raise UserError(
            f"config key 'model': {value!r} is neither a built-in ({', '.join(sources.BUILTINS)}), a Hugging "
            f"Face repo id (owner/name), nor a model of the models folder {models_dir}/ (put it there, or start "
            "`serve --models DIR` on its folder)"
        )
    if Path(value).exists():  # `owner/name` that is also a folder here would be loaded from disk, not the hub
        raise UserError(
            f"config key 'model': {value!r} is a local path outside the models folder {models_dir}/; put the "
            "model there (a folder with config.json, or a .gguf file), or start `serve --models DIR` on its folder"
        )
    return value


def _reference(value: Any, runs_dir: Path) -> str:
    """DPO's reference adapter, from the form: a run's name (its adapter), or an adapters.safetensors inside the runs
    folder. Nothing else on disk can be named through the page."""
    label = "config key 'reference_adapter_file'"
    if isinstance(value, str) and checks.NAME.fullmatch(value) and Run(runs_dir / value).has_adapter():
        return str(Run(runs_dir / value).adapter_file)
    path = checks.inside(value, label, runs_dir)
    if path.name != ADAPTERS or not path.is_file():
        raise checks.FieldError(label, f"must name a run of {runs_dir}/ that has an adapter ({ADAPTERS})")
    return str(path)


def _run_name(value: Any, runs_dir: Path) -> str:
    name = time.strftime("%Y%m%d-%H%M%S") if value in (None, "") else value
    try:
        name = datasets.check_name(name, "run name")
    except datasets.Refused as e:
        raise UserError(str(e)) from None
    if (runs_dir / name).exists():
        raise UserError(f"run name {name!r}: runs/{name} exists; choose another name")
    return name


def resolve(values: dict[str, Any], cfg: ServeConfig, local_models: set[str] | None = None) -> RunSpec:
    """The run the form's `values` describe; UserError naming the first bad key. `local_models`: local model
    sources the form may name (the served base, the bases of existing runs, the models folder's)."""
    if not isinstance(values, dict):
        raise UserError("'values' must be an object of config keys")
    unknown = sorted(set(values) - set(config_mod.FIELDS) - set(FORM_ONLY))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}; known: {', '.join([*FORM_ONLY, *config_mod.FIELDS])}")
    if refused := sorted(set(values) & {*SET_BY_METHOD, *SET_BY_FORM}):
        why = "choose the method" if refused[0] in SET_BY_METHOD else "the run folder is runs/<name>"
        raise UserError(f"key {refused[0]!r} is set by the form: {why}")
    method = values.get("method", defaults()["method"])
    if method not in METHODS:
        raise UserError(f"key 'method': {method!r} is not one of {', '.join(METHODS)}")
    runs_dir = Path(cfg.runs_dir)
    name = _run_name(values.get("name"), runs_dir)
    overrides = {k: v for k, v in values.items() if k not in FORM_ONLY}
    warm = None if values.get("start_from") in (None, "") else _warm_start(values["start_from"], runs_dir)
    if warm is not None:
        method = values.get("method", method_of(warm.config))
        overrides = _warm_overrides(warm, method, overrides)
    elif "model" in overrides:
        overrides["model"] = _model(overrides["model"], local_models or set(), Path(cfg.models_dir))
    if "data" in overrides and overrides["data"] in (None, ""):
        raise UserError("config key 'data' must name a data set (the Data tab lists them)")
    if "data" in overrides:
        try:
            found = datasets.find(cfg.data_dir, datasets.check_name(overrides["data"], "data set"))
        except datasets.Refused as e:
            raise UserError(f"config key 'data': {e}") from None
        if found.path is None:
            raise UserError(f"config key 'data': recipe {found.name!r} is not prepared yet; take it on the Data tab")
        overrides["data"] = str(found.path)
    if overrides.get("reference_adapter_file") in ("", None):
        overrides.pop("reference_adapter_file", None)
    if overrides.get("reference_adapter_file") is not None:
        overrides["reference_adapter_file"] = _reference(overrides["reference_adapter_file"], runs_dir)
    elif warm is not None and overrides.get("train_mode", defaults()["train_mode"]) == "dpo":
        overrides["reference_adapter_file"] = str(warm.adapter)  # SFT, then DPO against that SFT adapter
    fine_tune_type, quantize = METHODS[method]
    overrides.update(fine_tune_type=fine_tune_type, quantize=quantize, adapter_path=str(runs_dir / name))
    if warm is None and "lora_parameters" in overrides and isinstance(overrides["lora_parameters"], dict):
        overrides["lora_parameters"] = {**config_mod.TrainConfig().lora_parameters, **overrides["lora_parameters"]}

    defaults_file = _defaults_file()
    base = config_mod.load(defaults_file).to_dict()
    wanted = config_mod.load(defaults_file, overrides)  # train's validation, key by key
    changed = {k: v for k, v in wanted.to_dict().items() if base.get(k) != v}
    argv = [*([f"--config={defaults_file}"] if defaults_file else []), *config_mod.to_argv(changed, base)]
    # What `train` will make of those arguments, parsed by train's own arguments: it must be the config shown.
    parser = argparse.ArgumentParser(exit_on_error=False)
    config_mod.add_arguments(parser)
    args = parser.parse_args(argv)
    again = config_mod.from_cli(args.config, config_mod.flags_of(args), args.set or [])
    if again.to_dict() != wanted.to_dict():
        raise AssertionError(f"the train command does not reproduce the form's config: {argv}")
    return RunSpec(name, runs_dir / name, wanted.to_dict(), config_mod.dump(wanted), argv)


# ------------------------------------------------------------------------------------------- a warm start


@dataclass(frozen=True)
class WarmStart:
    """A finished run a new one starts from: its name, its config and its adapter."""

    name: str
    config: config_mod.TrainConfig
    adapter: Path


def _warm_start(value: Any, runs_dir: Path) -> WarmStart:
    """The run `start_from` names: a run of the runs folder with an adapter (a name, never a path)."""
    label = "key 'start_from'"
    name = checks.name(value, label)
    run = Run(runs_dir / name)
    if not run.is_run() or not run.has_adapter():
        raise checks.FieldError(label, f"must name a run of {runs_dir}/ that has an adapter ({ADAPTERS})")
    try:
        saved = run.config()
    except UserError as e:
        raise checks.FieldError(label, f"names run {name!r}, whose config.yaml cannot be read: {e}") from None
    return WarmStart(name, saved, run.adapter_file)


def _warm_overrides(warm: WarmStart, method: Any, overrides: dict[str, Any]) -> dict[str, Any]:
    """The form's overrides for a run that continues `warm`'s adapter: its base, and everything that decides the
    adapter's shapes (fine_tune_type, num_layers, lora rank and keys) taken from it; a value that contradicts
    them is refused, naming the key, rather than silently replaced."""
    saved = warm.config
    run = f"run {warm.name!r}"
    if overrides.get("model") not in (None, "", saved.model):
        raise UserError(f"config key 'model' is set by start_from: {run} was trained on {saved.model}")
    if method in METHODS and METHODS[method][0] != saved.fine_tune_type:
        raise UserError(f"key 'method' is set by start_from: {run} trained a {saved.fine_tune_type} adapter")
    if overrides.get("num_layers") not in (None, saved.num_layers):
        raise UserError(f"config key 'num_layers' is set by start_from: {run} has adapters on {saved.num_layers}")
    lora = overrides.get("lora_parameters")
    if lora is not None and not isinstance(lora, dict):
        raise UserError("config key 'lora_parameters' must be a mapping (rank, scale, dropout, keys)")
    lora = dict(lora or {})
    for key in SHAPE_LORA_KEYS:
        have = saved.lora_parameters.get(key)
        if lora.get(key) not in (None, have):
            raise UserError(f"config key 'lora_parameters.{key}' is set by start_from: the adapter of {run} has {have}")
    return {
        **overrides,
        "model": saved.model,
        "num_layers": saved.num_layers,
        "lora_parameters": {**saved.lora_parameters, **{k: v for k, v in lora.items() if v is not None}},
        "resume_adapter_file": str(warm.adapter),
    }


def adapter_runs(runs_dir: Path) -> list[dict[str, Any]]:
    """The runs of the runs folder that have an adapter, newest first: what `start_from` and a DPO reference may
    name, with what the page shows and fills in for each (its base, method, objective and adapter shape)."""
    root = Path(runs_dir)
    found = []
    for run in (Run(p) for p in root.iterdir()) if root.is_dir() else ():
        if not checks.NAME.fullmatch(run.name) or not run.has_adapter() or not run.is_run():
            continue
        try:
            cfg = run.config()
        except UserError:
            continue  # a half-written or foreign folder
        entry = {
            "name": run.name,
            "model": cfg.model,
            "method": method_of(cfg),
            "fine_tune_type": cfg.fine_tune_type,
            "train_mode": cfg.train_mode,
            "num_layers": cfg.num_layers,
            "lora_parameters": cfg.lora_parameters,
        }
        found.append((run.adapter_file.stat().st_mtime, entry))
    return [e for _, e in sorted(found, key=lambda t: (t[0], t[1]["name"]), reverse=True)]


# ------------------------------------------------------------------------------------------------ the schema

GROUPS = ("basics", "adapter", "preference", "advanced")
GROUP_OF = {
    **dict.fromkeys(("start_from", "model", "data", "method", "name", "iters", "epochs", "learning_rate"), "basics"),
    **dict.fromkeys((*(f"lora_parameters.{k}" for k in config_mod.LORA_KEYS), "num_layers"), "adapter"),
    **dict.fromkeys(("train_mode", "beta", "reference_adapter_file"), "preference"),
}
ADAPTER_METHODS = [m for m, (fine_tune_type, _) in METHODS.items() if fine_tune_type != "full"]
# When a field applies (the page hides it otherwise, and does not send it): form key -> the values it needs.
WHEN = {
    **{f"lora_parameters.{k}": {"method": ADAPTER_METHODS} for k in config_mod.LORA_KEYS},
    "num_layers": {"method": ADAPTER_METHODS},
    "beta": {"train_mode": ["dpo", "orpo"]},
    "reference_adapter_file": {"train_mode": ["dpo"]},
}
# The form's own keys, and lora_parameters' entries (the schema's help names them only together).
HELP = {
    "method": "lora: a small adapter; dora: LoRA with a magnitude per output (exports as a fused GGUF only); "
    "qlora4/qlora8: LoRA on the base quantized to 4/8 bits (less memory); full: every weight of the last "
    "num_layers layers",
    "name": "the run folder, runs/<name> (default: the date and time)",
    "start_from": "continue a finished run's adapter (its base, method and adapter shape), e.g. SFT first, then "
    "DPO from it; its adapter is then DPO's reference too",
    "data": "a data set of the Data tab (its train.jsonl and valid.jsonl)",
    "optimizer": "the update rule (mlx-lm's optimizers); its extra arguments go in optimizer_config",
    "lora_parameters.rank": "size of the adapter's matrices: more capacity, more memory",
    "lora_parameters.scale": "how strongly the adapter's update is applied (llama.cpp's alpha is scale x rank)",
    "lora_parameters.dropout": "dropout on the adapter's input while training (0: none)",
    "lora_parameters.keys": "the layers adapted, e.g. self_attn.q_proj, self_attn.v_proj (empty: mlx-lm's choice)",
}
LABELS = {
    "start_from": "Start from",
    "name": "Run name",
    "iters": "Steps",
    "learning_rate": "Learning rate",
    "num_layers": "Layers with adapters",
    "train_mode": "Objective",
    "reference_adapter_file": "Reference",
    "max_seq_length": "Max sequence length",
    "lr_schedule": "LR schedule",
    "grad_accumulation_steps": "Gradient accumulation",
    "grad_checkpoint": "Gradient checkpointing",
    "mask_prompt": "Learn only the answers",
    "pack": "Pack examples",
    "early_stopping_patience": "Early stopping patience",
    "clear_cache_threshold": "Clear cache above (bytes)",
}


def _kind(key: str, hint: Any, choices: Any) -> str:
    """How the page edits a key: choice, bool, int, float, json (a mapping), list, run, model, dataset or str."""
    if choices:
        return "choice"
    if key in ("reference_adapter_file", "start_from"):
        return "run"  # a run of the runs folder with an adapter, by name
    if key in ("model", "data"):
        return {"model": "model", "data": "dataset"}[key]
    base = config_mod.base_type(hint)
    return {bool: "bool", int: "int", float: "float", dict: "json", list: "list"}.get(base, "str")


def _bounds(b: config_mod.Bounds | None) -> dict[str, Any] | None:
    return None if b is None else {"lo": b.lo, "hi": b.hi, "lo_open": b.lo_open, "also": list(b.also)}


def _field(key: str, kind: str, hint: Any, help_text: str, **extra: Any) -> dict[str, Any]:
    nullable = hint is not None and type(None) in typing.get_args(hint)
    label = LABELS.get(key) or key.rsplit(".", 1)[-1].replace("_", " ").capitalize()
    out = {"key": key, "label": label, "group": GROUP_OF.get(key, "advanced"), "type": kind, "help": help_text}
    return {**out, "nullable": nullable, "when": WHEN.get(key), "choices": None, "bounds": None, **extra}


def schema() -> list[dict[str, Any]]:
    """Every key the form takes, in the order the page shows them within each group: its type, choices, bounds
    and help from the config schema (`config.py`), its group, and when it applies."""
    form_defaults = defaults()
    out = [
        _field("start_from", "run", None, HELP["start_from"], nullable=True),
        _field("method", "choice", None, HELP["method"], choices=list(METHODS)),
        _field("name", "str", None, HELP["name"], nullable=True),
    ]
    for key, f in config_mod.FIELDS.items():
        if key in (*SET_BY_METHOD, *SET_BY_FORM):
            continue
        hint = config_mod.HINTS[key]
        if key == "lora_parameters":
            for sub, sub_type in config_mod.LORA_KEYS.items():
                b = config_mod.LORA_BOUNDS.get(sub)
                entry = _field(f"lora_parameters.{sub}", _kind(sub, sub_type, None), sub_type, HELP[key + "." + sub])
                entry.update(bounds=_bounds(b), nullable=sub not in form_defaults["lora_parameters"])
                entry["default"] = form_defaults["lora_parameters"].get(sub)
                out.append(entry)
            continue
        choices = [c for c in f.metadata.get("choices") or () if c is not None] or None
        entry = _field(key, _kind(key, hint, choices), hint, HELP.get(key, f.metadata["help"]), choices=choices)
        entry.update(bounds=_bounds(f.metadata.get("bounds")), default=form_defaults.get(key))
        out.append(entry)
    for entry in out:
        entry.setdefault("default", form_defaults.get(entry["key"]))
    order = {key: i for i, key in enumerate(GROUP_OF)}  # the basics in the order a person fills them in
    return sorted(out, key=lambda e: (GROUPS.index(e["group"]), order.get(e["key"], len(order))))


# ---------------------------------------------------------------------------------------------- the estimate

# A tokenizer to count a data set's token lengths with: (its model, data folder -> the train split's lengths).
Measure = tuple[str, Callable[[Path], list[int]]]


def _prepared_stats(data_dir: Path) -> tuple[int, float, str] | None:
    """(examples, mean tokens, tokenizer's model) of the train split, as `prepare` recorded them, if it did."""
    try:
        stats = json.loads((data_dir / "prepare.json").read_text(encoding="utf-8")).get("stats") or {}
        train = stats["splits"]["train"]
        mean = train.get("mean") if train.get("mean") is not None else train["median"]
        return int(train["examples"]), float(mean), str(stats["model"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _train_tokens(cfg: dict[str, Any], measure: Measure | None) -> tuple[int, float, str]:
    """(examples, mean tokens an example puts through the model, where that comes from) for the run's train split,
    under the run's own model where possible: the lengths `prepare` recorded under it, or counted with `measure`
    when that is its tokenizer; else those recorded under another model, else counted with another tokenizer. An
    example longer than max_seq_length counts as cut."""
    data_dir, cap = Path(cfg["data"]), cfg["max_seq_length"] + 1  # training keeps max_seq_length + 1 ids
    recorded = _prepared_stats(data_dir)
    if recorded is not None and (recorded[2] == cfg["model"] or measure is None or measure[0] != cfg["model"]):
        n, mean, model = recorded
        return n, min(mean, cap), f"token lengths recorded by prepare under {model}"
    if measure is None:
        raise UserError(f"{data_dir.name} has no recorded token lengths")
    lengths = measure[1](data_dir)
    if not lengths:
        raise UserError(f"{data_dir.name} has no training examples")
    mean = sum(min(n, cap) for n in lengths) / len(lengths)
    return len(lengths), mean, f"token lengths counted with the tokenizer of {measure[0]}"


def _measured(jobs: Iterable[Any], model: str) -> tuple[dict[str, Any] | None, str | None]:
    """The speed and peak memory of the newest finished train job on this server that trained `model`, from its
    run's metrics.jsonl (the mean tokens/s of its reports after the first, which holds the compile), and the name
    of the newest finished run of another model when there is none."""
    other = None
    for job in jobs:  # newest first
        if job.kind != "train" or job.state != "done":
            continue
        run = Run(job.run_dir)
        saved = run.raw_config()  # {} when unreadable: such a run measured nothing we can attribute
        try:
            rows = run.metrics()
        except (OSError, ValueError):
            continue
        reports = [r for r in rows if isinstance(r.get("tokens_per_s"), (int, float)) and r["tokens_per_s"] > 0]
        if not reports or not saved:
            continue
        if saved.get("model") != model:
            other = other or job.run
            continue
        steady = reports[1:] or reports
        bits = f", {saved['quantize']}-bit" if saved.get("quantize") else ""
        memory = [r["peak_memory_gb"] for r in rows if isinstance(r.get("peak_memory_gb"), (int, float))]
        return {
            "run": job.run,
            "tokens_per_s": sum(r["tokens_per_s"] for r in steady) / len(steady),
            "peak_memory_gb": max(memory) if memory else None,
            "method": f"{saved.get('fine_tune_type')}{bits}",
            "batch_size": saved.get("batch_size"),
        }, None
    return None, other


def estimate(cfg: dict[str, Any], jobs: Iterable[Any], measure: Measure | None = None) -> dict[str, Any]:
    """How many tokens the run `cfg` (a resolved config) puts through the model, and, from the speed and memory a
    finished run of the same model measured on this server, how long that takes and the peak memory it needed;
    null where nothing was measured, said in `basis`, never guessed."""
    try:
        n, mean, lengths_from = _train_tokens(cfg, measure)
    except UserError as e:
        return {"tokens": None, "steps": None, "seconds": None, "peak_memory_gb": None, "basis": str(e)}
    batch, seq = cfg["batch_size"], cfg["max_seq_length"]
    per_row = seq if cfg["pack"] else mean  # a packed row is filled to max_seq_length
    rows = math.ceil(n * mean / seq) if cfg["pack"] else n
    steps = cfg["iters"] if cfg.get("epochs") is None else max(1, math.ceil(cfg["epochs"] * (rows // batch)))
    sides = 1 if cfg["train_mode"] == "sft" else 2  # a preference pair runs both its answers through the model
    tokens = round(steps * batch * per_row * sides)
    what = f"{steps} steps × batch {batch} × ~{per_row:,.0f} tokens" + (" × 2 answers" if sides == 2 else "")
    basis = f"{what} ({n} training examples; {lengths_from})"
    measured, other = _measured(jobs, cfg["model"])
    if measured is None:
        since = f"; the last finished run, {other}, trained another model" if other else ""
        basis += f"; no measurement yet: time and memory show once a run of {cfg['model']} has finished here{since}"
        return {"tokens": tokens, "steps": steps, "seconds": None, "peak_memory_gb": None, "basis": basis}
    rate = measured["tokens_per_s"]
    basis += (
        f"; at {rate:,.0f} tokens/s and the peak memory of run {measured['run']} ({measured['method']}, batch "
        f"{measured['batch_size']}, same model), measured on this server"
    )
    return {
        "tokens": tokens,
        "steps": steps,
        "seconds": round(tokens / rate, 1),
        "peak_memory_gb": measured["peak_memory_gb"],
        "basis": basis,
    }
