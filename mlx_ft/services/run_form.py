"""The studio's new-run form: values with lora_config.yaml's key names → the config `train` will run with, its YAML,
and the `python -m mlx_ft train …` command that runs exactly it.

The defaults are the config file `train` reads (./lora_config.yaml, else the shipped one), and the values go through
`config.from_cli`, the code `train` itself uses, so a value `train` would refuse is refused here, naming the key.
The command is that defaults file plus a flag for every key that differs from it (`--iters 5`; `--set
key.sub=VALUE` for nested ones: `config.to_argv`); it is parsed back here by train's own arguments and must give the
same config, so what the page shows is what runs. The form never takes a path: `data` is a data set's name, the run
folder is `runs/<name>`, a GRPO `recipe` is a shipped recipe's name.

GRPO from the page learns from the built-in rewards only, each option checked here: the page never runs code from an
upload or a path, so `reward_file` (a Python file of rewards) is for the terminal.
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
# init_from names a run folder (a path): the form's warm start is `start_from`, which sets resume_adapter_file.
NOT_FORM_KEYS = ("init_from", "reward_file")
REWARD_FILE_WORDS = (
    "reward files are for the terminal: the page runs no code from a file or an upload; run `python -m mlx_ft "
    "train --reward-file FILE` (the command shown here, plus that flag) in a terminal, or use the built-in rewards"
)
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
    values = {k: v for k, v in cfg.to_dict().items() if k not in (*SET_BY_METHOD, *SET_BY_FORM, *NOT_FORM_KEYS)}
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


def resolve(
    values: dict[str, Any], cfg: ServeConfig, local_models: set[str] | None = None, tokenizer: Any = None
) -> RunSpec:
    """The run the form's `values` describe; UserError naming the first bad key. `local_models`: local model
    sources the form may name (the served base, the bases of existing runs, the models folder's). `tokenizer`: one
    to check a json_schema reward's schema with (the run checks it again with its own model's at its start)."""
    if not isinstance(values, dict):
        raise UserError("'values' must be an object of config keys")
    unknown = sorted(set(values) - set(config_mod.FIELDS) - set(FORM_ONLY))
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}; known: {', '.join([*FORM_ONLY, *config_mod.FIELDS])}")
    if "reward_file" in values:
        raise UserError(REWARD_FILE_WORDS)
    if refused := sorted(set(values) & {*SET_BY_METHOD, *SET_BY_FORM, "init_from"}):
        why = {"init_from": "pick the run to start from in start_from"}.get(refused[0], "the run folder is runs/<name>")
        why = "choose the method" if refused[0] in SET_BY_METHOD else why
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
    if "recipe" in overrides:
        overrides["recipe"] = _recipe(overrides["recipe"])
    if "rewards" in overrides:
        overrides["rewards"] = _rewards(overrides["rewards"])
    # Not even the defaults file's: a job the page starts runs no code from a file, and warm-starts by start_from.
    overrides.update(reward_file=None, init_from=None)
    if overrides.get("reference_adapter_file") in ("", None):
        overrides.pop("reference_adapter_file", None)
    if overrides.get("reference_adapter_file") is not None:
        overrides["reference_adapter_file"] = _reference(overrides["reference_adapter_file"], runs_dir)
    elif warm is not None and overrides.get("train_mode", defaults()["train_mode"]) == "dpo":
        # SFT, then DPO against that SFT adapter. Not GRPO: its reference stays the base (the adapter off), as in
        # the terminal, unless one is picked.
        overrides["reference_adapter_file"] = str(warm.adapter)
    fine_tune_type, quantize = METHODS[method]
    overrides.update(fine_tune_type=fine_tune_type, quantize=quantize, adapter_path=str(runs_dir / name))
    if warm is None and "lora_parameters" in overrides and isinstance(overrides["lora_parameters"], dict):
        overrides["lora_parameters"] = {**config_mod.TrainConfig().lora_parameters, **overrides["lora_parameters"]}

    defaults_file = _defaults_file()
    base = config_mod.load(defaults_file).to_dict()
    wanted = config_mod.load(defaults_file, overrides)  # train's validation, key by key
    if wanted.train_mode == "grpo":
        _check_rewards(wanted, tokenizer)
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


# ---------------------------------------------------------------------------------------- GRPO's rewards

# Each built-in reward's options, and how the page edits each (`training.rewards.OPTIONS` names the same options; a
# test holds the two together). Nothing else is offered: a reward file's functions are for the terminal.
REWARD_OPTIONS: dict[str, dict[str, str]] = {
    "exact": {},
    "fields": {"pattern": "regex"},
    "choice": {"labels": "labels"},
    "regex": {"pattern": "regex"},
    "json_schema": {"schema": "json"},
    "length": {"min": "int", "max": "int"},
}
MAX_REWARDS = 16
MAX_WEIGHT = 1000.0
MAX_PATTERN_CHARS = 2000
MAX_LABELS, MAX_LABEL_CHARS = 200, 200
MAX_SCHEMA_CHARS = 64_000
MAX_CHARS = 1_000_000  # length's min and max
# Text that reads as a file: an absolute, home, parent or explicitly relative path, a drive, a file: URL, or a name
# ending in a file type. No option of a built-in reward is a path, and none may pass for one.
PATH_LIKE = re.compile(
    r"""^\s*(?:[/~]|\\\\|\.{1,2}/|[A-Za-z]:[/\\]|file:)|(?:^|/)\.\.(?:/|$)"""
    r"""|\.(?:py|pyc|so|json|jsonl|ya?ml|txt|csv|toml|cfg|ini|sh|safetensors|gguf)\s*$""",
    re.IGNORECASE,
)
REF_KEYS = ("$ref", "$dynamicRef", "$recursiveRef")


def _recipe(value: Any) -> str | None:
    """A shipped recipe's name (`recipes/`), or None: never a path (the config itself would take a folder)."""
    if value in (None, ""):
        return None
    names = datasets.recipe_names()
    if not isinstance(value, str) or value not in names:
        shown = repr(value) if isinstance(value, str) and len(value) <= 60 else "that value"
        raise UserError(
            f"config key 'recipe': {shown} is not a shipped recipe; the page takes one of {', '.join(names)} "
            "(a name, never a path)"
        )
    return value


def _not_path(text: str, label: str) -> str:
    if PATH_LIKE.search(text):
        raise checks.FieldError(label, "must not be a path: the page reads no file for a reward")
    return text


def _reward_option(kind: str, value: Any, label: str) -> Any:
    """One option's value, checked by its kind: a regex, a list of labels, a JSON schema (a mapping), a whole number."""
    if kind == "regex":
        text = checks.text(value, label, MAX_PATTERN_CHARS)
        try:
            re.compile(text)
        except re.error as e:
            raise checks.FieldError(label, f"is not a regular expression: {e}") from None
        return _not_path(text, label)
    if kind == "labels":
        if not isinstance(value, list) or not 1 <= len(value) <= MAX_LABELS:
            raise checks.FieldError(label, f"must be a list of 1 to {MAX_LABELS} labels")
        labels = [(f"{label}[{i}]", x) for i, x in enumerate(value)]
        return [_not_path(checks.text(x, at, MAX_LABEL_CHARS), at) for at, x in labels]
    if kind == "json":
        if not isinstance(value, dict):
            raise checks.FieldError(label, 'must be a JSON schema: an object, e.g. {"type": "object"}')
        try:
            size = len(json.dumps(value, allow_nan=False))
        except ValueError:
            raise checks.FieldError(label, "must hold finite numbers only") from None
        if size > MAX_SCHEMA_CHARS:
            raise checks.FieldError(label, f"must be at most {MAX_SCHEMA_CHARS} characters of JSON")
        _schema_refs_inside(value, label)
        return value
    return checks.integer(value, label, 0, MAX_CHARS)


def _schema_refs_inside(node: Any, label: str) -> None:
    """A schema's references point inside it ('#/$defs/x'): none names a file or a URL to read."""
    if isinstance(node, dict):
        for key, v in node.items():
            if key in REF_KEYS and not (isinstance(v, str) and v.startswith("#")):
                raise checks.FieldError(label, f"may only refer inside itself ({key} '#/...'): the page reads no file")
            _schema_refs_inside(v, label)
    elif isinstance(node, list):
        for v in node:
            _schema_refs_inside(v, label)


def _rewards(value: Any) -> list[dict[str, Any]]:
    """The form's `rewards`: a list of built-in rewards, {name, weight, ...its options}, each checked and written in
    that order. A reward file's function, an unknown option, a weight that is not a finite number or an option that
    could be a path is refused, naming the reward."""
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_REWARDS:
        raise UserError(
            f"config key 'rewards' must be a list of 1 to {MAX_REWARDS} rewards, e.g. [{{name: exact, weight: 1.0}}]"
        )
    out = []
    for i, spec in enumerate(value):
        where = f"config key 'rewards[{i}]'"
        if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
            raise UserError(f"{where} must be a mapping with a name, e.g. {{name: exact, weight: 1.0}}")
        name = spec["name"]
        if name not in REWARD_OPTIONS:
            shown = repr(name) if len(name) <= 60 else "that name"
            raise UserError(
                f"{where}: unknown reward {shown}; the page offers the built-in rewards ({', '.join(REWARD_OPTIONS)}); "
                "a reward file's functions are for the terminal (train --reward-file)"
            )
        options = REWARD_OPTIONS[name]
        if unknown := sorted(set(spec) - {"name", "weight", *options}):
            takes = f"weight, {', '.join(options)}" if options else "only weight"
            raise UserError(f"{where} ({name}): unknown option {unknown[0][:60]!r}; {name} takes {takes}")
        if any(r["name"] == name for r in out):
            raise UserError(f"{where} ({name}): listed twice; give each reward once")
        weight = checks.number(spec.get("weight", 1.0), f"{where} ({name}) weight", -MAX_WEIGHT, MAX_WEIGHT)
        entry: dict[str, Any] = {"name": name, "weight": weight}
        for key, kind in options.items():
            if spec.get(key) is not None:
                entry[key] = _reward_option(kind, spec[key], f"{where} ({name}) {key}")
        out.append(entry)
    return out


def _check_rewards(cfg: config_mod.TrainConfig, tokenizer: Any) -> None:
    """The rewards as the run will build them (`training.rewards.build`, no reward file): what a reward needs and
    cannot have (fields without a pattern or a recipe, a bad schema) is refused now, in training's words."""
    from mlx_ft.training import rewards as rewards_mod  # here: it loads the structured-outputs grammar (~1 s)

    if tokenizer is None and any(isinstance(r, dict) and r.get("name") == "json_schema" for r in cfg.rewards):
        return  # no tokenizer to check a schema with here: the run checks it at its start
    try:
        rewards_mod.build(cfg.rewards, cfg.recipe, None, tokenizer)
    except UserError as e:
        text = str(e)
        m = re.match(r"(rewards\[\d+\])(.*)", text, re.S)
        raise UserError(f"config key '{m[1]}'{m[2]}" if m else f"config key 'rewards': {text}") from None


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

GROUPS = ("basics", "adapter", "preference", "grpo", "advanced")
# GRPO's keys, in the order the page shows them (reward_file is for the terminal, never the page's).
GRPO_KEYS = ("rewards", "recipe", "group_size", "max_completion_tokens", "temperature", "grpo_updates", "clip_epsilon")
GROUP_OF = {
    **dict.fromkeys(("start_from", "model", "data", "method", "name", "iters", "epochs", "learning_rate"), "basics"),
    **dict.fromkeys((*(f"lora_parameters.{k}" for k in config_mod.LORA_KEYS), "num_layers"), "adapter"),
    **dict.fromkeys(("train_mode", "beta", "reference_adapter_file"), "preference"),
    **dict.fromkeys(GRPO_KEYS, "grpo"),
}
ADAPTER_METHODS = [m for m, (fine_tune_type, _) in METHODS.items() if fine_tune_type != "full"]
# When a field applies (the page hides it otherwise, and does not send it): form key -> the values it needs.
WHEN = {
    **{f"lora_parameters.{k}": {"method": ADAPTER_METHODS} for k in config_mod.LORA_KEYS},
    "num_layers": {"method": ADAPTER_METHODS},
    "beta": {"train_mode": ["dpo", "orpo", "grpo"]},
    "reference_adapter_file": {"train_mode": ["dpo", "grpo"]},
    **dict.fromkeys(GRPO_KEYS, {"train_mode": ["grpo"]}),
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
    "rewards": "what a sampled answer is worth: the built-in rewards, summed with their weights. exact: the data's "
    "answer; fields: the share of a pattern's named fields right (its pattern, or the recipe's); choice: the right "
    "label (its labels, or the recipe's); regex: the whole answer matches; json_schema: JSON valid against the "
    "schema; length: min to max characters. A reward file's functions are for the terminal (train --reward-file)",
    "recipe": "a shipped recipe whose task patterns and labels the fields and choice rewards read (without one, "
    "give them a pattern or labels)",
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
    "max_completion_tokens": "Max answer tokens",
    "grpo_updates": "Updates per batch",
}


def _kind(key: str, hint: Any, choices: Any) -> str:
    """How the page edits a key: choice, bool, int, float, json (a mapping), list, run, model, dataset or str."""
    if choices:
        return "choice"
    if key in ("reference_adapter_file", "start_from"):
        return "run"  # a run of the runs folder with an adapter, by name
    if key == "rewards":
        return "rewards"  # the built-in rewards, each with its weight and options
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
        if key in (*SET_BY_METHOD, *SET_BY_FORM, *NOT_FORM_KEYS):
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
        if key == "recipe":
            choices = datasets.recipe_names()  # by name: the page never names a folder
        entry = _field(key, _kind(key, hint, choices), hint, HELP.get(key, f.metadata["help"]), choices=choices)
        entry.update(bounds=_bounds(f.metadata.get("bounds")), default=form_defaults.get(key))
        if key == "rewards":
            # The names the page offers, in order, each with its options and their kinds (a list: JSON keeps it).
            entry["rewards"] = [
                {"name": name, "options": [{"key": k, "type": kind} for k, kind in options.items()]}
                for name, options in REWARD_OPTIONS.items()
            ]
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
    of the newest finished run of another model when there is none. A GRPO run is no measure: its steps sample
    answers before they learn, so its tokens/s are not a training speed."""
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
        if not reports or not saved or saved.get("train_mode") == "grpo":
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
    if cfg["train_mode"] == "grpo":
        return _grpo_estimate(cfg, n, mean, lengths_from)
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


def _grpo_estimate(cfg: dict[str, Any], n: int, mean: float, lengths_from: str) -> dict[str, Any]:
    """A GRPO run's tokens, as an upper bound: every prompt of a step gets group_size answers of up to
    max_completion_tokens, and the prompt is counted as its whole example (its answer included). Its time is not
    estimated: a step first samples those answers, one token at a time, which no training speed measured here tells
    (the job shows its sampling and update time per step as it runs)."""
    batch, group, answer = cfg["batch_size"], cfg["group_size"], cfg["max_completion_tokens"]
    prompt = min(mean, cfg["max_seq_length"] - answer)  # a longer prompt is left out of training
    steps = cfg["iters"] if cfg.get("epochs") is None else max(1, math.ceil(cfg["epochs"] * (n // batch)))
    tokens = round(steps * batch * group * (prompt + answer))
    basis = (
        f"{steps} steps × batch {batch} × group_size {group} × (~{prompt:,.0f} prompt + {answer} answer "
        f"tokens): an upper bound, each prompt counted as its whole example and each answer at max_completion_tokens "
        f"({n} training examples; {lengths_from}); the time is not estimated: each step first samples "
        f"{batch * group} answers, and the speed of a training run does not tell how long that takes (the job shows "
        "its sampling and update time per step)"
    )
    return {"tokens": tokens, "steps": steps, "seconds": None, "peak_memory_gb": None, "basis": basis}
