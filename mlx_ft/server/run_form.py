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
import re
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlx_ft import checks
from mlx_ft import config as config_mod
from mlx_ft.errors import UserError
from mlx_ft.models import sources
from mlx_ft.models.adapters import ADAPTERS
from mlx_ft.resources import local_or_shipped
from mlx_ft.server import datasets
from mlx_ft.server.state import ServeConfig

# method → (fine_tune_type, quantize): QLoRA is LoRA on a quantized base.
METHODS: dict[str, tuple[str, int | None]] = {
    "lora": ("lora", None),
    "dora": ("dora", None),
    "qlora4": ("lora", 4),
    "qlora8": ("lora", 8),
    "full": ("full", None),
}
FORM_ONLY = ("method", "name")  # form values that are not config keys
# A Hugging Face repo id (owner/name), as the hub spells them: nothing else is fetched, and nothing that could pass
# for a flag (`-h/x`, `--config=/x`) or a path (`../x`) is taken for one.
HUB_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}")
SET_BY_METHOD = ("fine_tune_type", "quantize")
SET_BY_FORM = ("adapter_path", "resume_adapter_file")  # the run folder is runs/<name>; a warm start names a path


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
    if isinstance(value, str) and checks.NAME.fullmatch(value) and (runs_dir / value / ADAPTERS).is_file():
        return str(runs_dir / value / ADAPTERS)
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
    if "model" in overrides:
        overrides["model"] = _model(overrides["model"], local_models or set(), Path(cfg.models_dir))
    if "data" in overrides:
        try:
            found = datasets.find(cfg.data_dir, datasets.check_name(overrides["data"], "data set"))
        except datasets.Refused as e:
            raise UserError(f"config key 'data': {e}") from None
        if found.path is None:
            raise UserError(f"config key 'data': recipe {found.name!r} is not prepared yet; take it on the Data tab")
        overrides["data"] = str(found.path)
    if overrides.get("reference_adapter_file") is not None:
        overrides["reference_adapter_file"] = _reference(overrides["reference_adapter_file"], runs_dir)
    fine_tune_type, quantize = METHODS[method]
    overrides.update(fine_tune_type=fine_tune_type, quantize=quantize, adapter_path=str(runs_dir / name))
    if "lora_parameters" in overrides and isinstance(overrides["lora_parameters"], dict):
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
