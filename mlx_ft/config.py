"""The training configuration: `lora_config.yaml`'s schema, defaults, validation and command-line overrides.

Keys follow mlx-lm's names so an mlx-lm user feels at home; what we add is added, nothing is renamed.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mlx_ft import checks
from mlx_ft.errors import UserError
from mlx_ft.resources import local_or_shipped

FINE_TUNE_TYPES = ("lora", "dora", "full")
TRAIN_MODES = ("sft", "dpo", "orpo", "grpo")  # mlx-lm-lora's key and names
OPTIMIZERS = ("adam", "adamw", "sgd", "adafactor", "muon")
LORA_KEYS = {"rank": int, "scale": float, "dropout": float, "keys": list}
# mlx-lm keys that mean nothing here (our `train` command always trains and writes its own config); accepted so
# mlx-lm configs load unchanged.
IGNORED_MLX_LM_KEYS = ("train", "test", "test_batches", "report_to", "project_name", "config", "trust_remote_code")
NESTED = ("lora_parameters", "optimizer_config", "lr_schedule")
# Settings a resumed run may change: when to stop, report and save. Anything else would make it a different run.
RESUMABLE_KEYS = (
    "iters",
    "epochs",
    "steps_per_report",
    "steps_per_eval",
    "val_batches",
    "save_every",
    "keep_checkpoints",
    "early_stopping_patience",
    "clear_cache_threshold",
)


@dataclass(frozen=True)
class Bounds:
    """What a numeric key takes, checked by `checks` for YAML, flags and the studio's form alike: the whole range a
    run can use, so an absurd value (rank 1e12, dropout 5) is refused before it starts a job that fails inside."""

    lo: float | None = None
    hi: float | None = None
    lo_open: bool = False  # lo itself is refused (a learning rate of 0)
    also: tuple[int, ...] = ()  # special values outside [lo, hi]: -1 for "all"


BIG = 100_000_000  # steps, reports, batches: past any run on one machine


def _f(default: Any, help: str, choices: tuple[Any, ...] | None = None, bounds: Bounds | None = None) -> Any:
    meta = {"help": help, "choices": choices, "bounds": bounds}
    if isinstance(default, (dict, list)):
        return field(default_factory=lambda: typing.cast(Any, type(default))(default), metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class TrainConfig:
    model: str = _f("smollm2-135m-instruct", "model folder, .gguf file, built-in alias or Hugging Face repo id")
    data: str = _f("data/fish_care", "folder with train.jsonl and valid.jsonl (made by `mlx_ft prepare`)")
    fine_tune_type: str = _f("lora", "lora, dora or full", FINE_TUNE_TYPES)
    train_mode: str = _f(
        "sft",
        "sft (learn the answers), preference tuning on chosen/rejected pairs: dpo (against a reference: the "
        "base with the adapter off, or reference_adapter_file) or orpo (no reference), or grpo (learn from rewards "
        "on sampled answers)",
        TRAIN_MODES,
    )
    beta: float = _f(
        0.1,
        "dpo: strength of the pull towards the reference; orpo: weight of the odds-ratio term; grpo: weight of the "
        "KL penalty towards the reference (0: none, and no reference pass)",
        bounds=Bounds(0, 1000),
    )
    reference_adapter_file: str | None = _f(
        None,
        "dpo, grpo: adapters.safetensors whose model is the reference (default: the base with the adapter off)",
    )
    group_size: int = _f(8, "grpo: answers sampled per prompt (a group)", bounds=Bounds(2, 256))
    temperature: float = _f(1.0, "grpo: sampling temperature of the answers", bounds=Bounds(0, 10, lo_open=True))
    max_completion_tokens: int = _f(64, "grpo: the longest sampled answer, in tokens", bounds=Bounds(1, 1 << 16))
    grpo_updates: int = _f(
        1,
        "grpo: optimizer updates per batch of sampled answers (more than 1 clips the policy ratio)",
        bounds=Bounds(1, 64),
    )
    clip_epsilon: float = _f(
        0.2,
        "grpo: the policy ratio is clipped to 1 +- this (matters when grpo_updates > 1)",
        bounds=Bounds(0, 1, lo_open=True),
    )
    rewards: list = _f(
        [{"name": "exact", "weight": 1.0}],
        "grpo: rewards summed with their weights, e.g. [{name: fields, weight: 1.0}, {name: length, weight: 0.1, "
        "max: 40}] (exact, fields, choice, regex, json_schema, length, or a function of reward_file)",
    )
    reward_file: str | None = _f(
        None, "grpo: a Python file whose functions (prompt, completion, reference) -> float are rewards (terminal only)"
    )
    recipe: str | None = _f(
        None,
        "the recipe (a name or folder) whose task patterns and labels GRPO's fields and choice rewards read; "
        "`train --recipe NAME` without -c trains the recipe's own plan",
    )
    init_from: str | None = _f(
        None, "start from this run's adapter (its base, adapter type and layers too), e.g. an SFT run before grpo"
    )
    num_layers: int = _f(16, "how many of the last layers get adapters (-1: all)", bounds=Bounds(1, 1000, also=(-1,)))
    quantize: int | None = _f(None, "quantize the base model to 4 or 8 bits before training (QLoRA)", (None, 4, 8))
    lora_parameters: dict = _f({"rank": 8, "scale": 20.0, "dropout": 0.0}, "rank, scale, dropout, keys")
    batch_size: int = _f(4, "examples per step", bounds=Bounds(1, 1024))
    iters: int = _f(1000, "steps to train for", bounds=Bounds(1, BIG))
    epochs: float | None = _f(
        None, "passes over the training data; when set, it decides iters", bounds=Bounds(0, 10_000, lo_open=True)
    )
    learning_rate: float = _f(1e-5, "peak learning rate", bounds=Bounds(0, lo_open=True))
    lr_schedule: dict | None = _f(None, "mlx-lm schedule: {name, arguments, warmup, warmup_init}")
    optimizer: str = _f("adam", "optimizer", OPTIMIZERS)
    optimizer_config: dict = _f({}, "extra optimizer arguments per optimizer name")
    grad_accumulation_steps: int = _f(1, "micro-batches per optimizer update", bounds=Bounds(1, 1024))
    grad_checkpoint: bool = _f(False, "recompute activations in the backward pass to save memory")
    max_seq_length: int = _f(2048, "longer examples are truncated to this many tokens", bounds=Bounds(1, 1 << 20))
    pack: bool = _f(
        False,
        "pack several examples into each row of max_seq_length tokens (attention kept inside "
        "each example); batch_size then counts rows",
    )
    mask_prompt: bool = _f(True, "learn only the assistant turns (never system/user text)")
    seed: int = _f(0, "random seed (data order, adapter init)", bounds=Bounds(0, (1 << 32) - 1))
    steps_per_report: int = _f(10, "steps between training-loss reports", bounds=Bounds(1, BIG))
    steps_per_eval: int = _f(200, "steps between validation-loss reports", bounds=Bounds(1, BIG))
    val_batches: int = _f(
        25, "validation batches per evaluation (-1: the whole split)", bounds=Bounds(1, BIG, also=(-1,))
    )
    save_every: int = _f(
        100, "steps between checkpoints (adapter, optimizer state and counters)", bounds=Bounds(1, BIG)
    )
    keep_checkpoints: int = _f(3, "newest checkpoints kept on disk (0: all)", bounds=Bounds(0, BIG))
    early_stopping_patience: int | None = _f(
        None,
        "stop after this many evaluations without a better validation loss, keeping the best adapter",
        bounds=Bounds(1, BIG),
    )
    clear_cache_threshold: int = _f(
        0,
        "free MLX's allocator cache after a step once it holds more than this many bytes (0: every step, as mlx-lm)",
        bounds=Bounds(0, 1 << 50),
    )
    resume_adapter_file: str | None = _f(None, "adapters.safetensors to start from (mlx-lm's warm start)")
    adapter_path: str | None = _f(None, "run folder to write (default: runs/<date-time>)")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
HINTS = typing.get_type_hints(TrainConfig)


def base_type(kind: Any) -> type:
    """The plain type behind an annotation: `int | None` → int, `dict | None` → dict."""
    inner = next((a for a in typing.get_args(kind) if a is not type(None)), kind)
    return typing.get_origin(inner) or inner


def _coerce(key: str, value: Any, kind: Any) -> Any:
    """`value` as the type of `key`, or a UserError naming the key. YAML gives '1e-5' as a string; accept it."""
    optional = type(None) in typing.get_args(kind)
    base = base_type(kind)
    if value is None:
        if optional:
            return None
        raise UserError(f"config key {key!r} must not be empty")
    if base is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "1", "0"):
            return value.lower() in ("true", "yes", "1")
    elif base in (int, float):
        exact = (int,) if base is int else (int, float)  # an int may stand for a float, never the reverse
        if isinstance(value, exact) and not isinstance(value, bool):
            return base(value)
        if isinstance(value, str):
            try:
                return base(value)
            except ValueError:
                pass
    elif base is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    elif isinstance(value, base):
        return value
    raise UserError(f"config key {key!r}: expected {getattr(base, '__name__', base)}, got {value!r}")


LORA_BOUNDS = {"rank": Bounds(1, 2048), "scale": Bounds(0, 10_000, lo_open=True), "dropout": Bounds(0, 0.9)}


def check_bounds(label: str, value: Any, bounds: Bounds, kind: type) -> Any:
    """`value` (of type `kind`) within `bounds`, by `checks`: the words the server uses for its own fields too."""
    if kind is int:
        lo, hi = (None if x is None else int(x) for x in (bounds.lo, bounds.hi))
        return checks.integer(value, label, lo, hi, also=bounds.also)
    return checks.number(value, label, bounds.lo, bounds.hi, lo_open=bounds.lo_open)


def _finite_inside(key: str, value: Any) -> None:
    """No NaN or infinity anywhere in a mapping or list key (YAML spells them .nan and .inf)."""
    if isinstance(value, float) and not math.isfinite(value):
        raise checks.FieldError(f"config key {key!r}", "must hold finite numbers only")
    if isinstance(value, dict):
        for k, v in value.items():
            _finite_inside(f"{key}.{k}", v)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _finite_inside(f"{key}[{i}]", v)


def _validate(cfg: TrainConfig) -> TrainConfig:
    for name, f in FIELDS.items():
        value = getattr(cfg, name)
        choices = f.metadata.get("choices")
        if choices and value not in choices:
            raise UserError(f"config key {name!r}: {value!r} is not one of {', '.join(map(str, choices))}")
        if (bounds := f.metadata.get("bounds")) is not None and value is not None:
            check_bounds(f"config key {name!r}", value, bounds, base_type(HINTS[name]))
        if name != "lora_parameters":  # checked key by key below, with its bounds
            _finite_inside(name, value)
    if cfg.save_every % cfg.grad_accumulation_steps:
        raise UserError(
            "config key 'save_every' must be a multiple of grad_accumulation_steps (a checkpoint cannot "
            "hold a half-accumulated gradient)"
        )
    if cfg.quantize and cfg.fine_tune_type == "full":
        raise UserError(
            "config key 'quantize' needs fine_tune_type lora or dora: a full fine-tune cannot train quantized weights"
        )
    if cfg.train_mode != "sft" and cfg.pack:
        raise UserError(
            f"train_mode {cfg.train_mode} compares whole answers row by row and cannot pack; set pack: false"
        )
    if cfg.reference_adapter_file and cfg.train_mode not in ("dpo", "grpo"):
        raise UserError(
            "config key 'reference_adapter_file' is for train_mode dpo or grpo (only they have a reference model)"
        )
    if cfg.train_mode in ("dpo", "orpo") and cfg.beta == 0:
        raise UserError(f"config key 'beta' must be above 0 for train_mode {cfg.train_mode}")
    if cfg.train_mode == "grpo":
        _check_grpo(cfg)
    elif cfg.reward_file:
        raise UserError("config key 'reward_file' is for train_mode grpo (only GRPO learns from rewards)")
    lora = dict(cfg.lora_parameters)
    for key, value in lora.items():
        if key not in LORA_KEYS:
            raise UserError(f"config key 'lora_parameters.{key}' is unknown; known: {', '.join(LORA_KEYS)}")
        lora[key] = _coerce(f"lora_parameters.{key}", value, LORA_KEYS[key])
        if key in LORA_BOUNDS:
            check_bounds(f"config key 'lora_parameters.{key}'", lora[key], LORA_BOUNDS[key], LORA_KEYS[key])
    defaults = TrainConfig().lora_parameters
    cfg.lora_parameters = {**defaults, **lora}
    return cfg


def _check_grpo(cfg: TrainConfig) -> None:
    """GRPO's keys, as far as the ground floor can tell (each reward's own options are checked when the run starts,
    by `training.rewards`, which knows them)."""
    if not cfg.rewards or not all(isinstance(r, dict) and isinstance(r.get("name"), str) for r in cfg.rewards):
        raise UserError(
            "config key 'rewards' must be a non-empty list of mappings with a name, e.g. [{name: exact, weight: 1.0}]"
        )
    if cfg.grpo_updates > 1 and cfg.grad_accumulation_steps > 1:
        raise UserError(
            "grpo_updates > 1 reuses each batch of sampled answers for several updates; it cannot be combined with "
            "grad_accumulation_steps > 1 (raise batch_size instead)"
        )
    if cfg.max_completion_tokens >= cfg.max_seq_length:
        raise UserError(
            f"max_completion_tokens {cfg.max_completion_tokens} leaves no room for the prompt in max_seq_length "
            f"{cfg.max_seq_length}"
        )


def _set(values: dict[str, Any], key: str, value: Any) -> None:
    """Set `key` in `values`; dotted keys reach into the nested mappings (optimizer_config.adamw.weight_decay)."""
    parts = key.split(".")
    if len(parts) > 1 and parts[0] not in NESTED:
        raise UserError(f"config key {key!r}: only {', '.join(NESTED)} have sub-keys")
    target = values
    for part in parts[:-1]:  # copy on the way down: the file's own mappings stay untouched
        target[part] = dict(target.get(part) or {})
        target = target[part]
    target[parts[-1]] = value


def build(
    file_values: dict[str, Any] | None, overrides: dict[str, Any] | None = None, source: str = "config"
) -> TrainConfig:
    """A validated config from a YAML mapping plus overrides (dotted keys allowed: `lora_parameters.rank`)."""
    values: dict[str, Any] = {}
    for key, value in (file_values or {}).items():
        if key in IGNORED_MLX_LM_KEYS:
            continue
        if key not in FIELDS:
            raise UserError(f"{source}: unknown key {key!r}; known keys: {', '.join(FIELDS)}")
        values[key] = value
    for key, value in (overrides or {}).items():
        top = key.split(".", 1)[0]
        if top not in FIELDS:
            raise UserError(f"unknown config key {key!r}; known keys: {', '.join(FIELDS)}")
        _set(values, key, value)
    coerced = {k: _coerce(k, v, HINTS[k]) for k, v in values.items()}
    return _validate(TrainConfig(**coerced))


def load(path: Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """Read a lora_config.yaml (None: defaults only) and apply overrides."""
    if path is None:
        return build({}, overrides)
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: no such config file")
    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise UserError(f"{where}: invalid YAML: {getattr(e, 'problem', e)}") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of config keys")
    return build(values, overrides, source=str(path))


def from_cli(path: str | None, flags: dict[str, Any], set_items: list[str]) -> TrainConfig:
    """The config `train` runs with: the file (default ./lora_config.yaml, else the shipped one), then each
    `--key value` flag, then each `--set KEY=VALUE` (VALUE read as YAML, so 1e-4, true and [a, b] work)."""
    overrides = {k: v for k, v in flags.items() if v is not None}
    for item in set_items:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"--set {item!r}: expected KEY=VALUE, e.g. --set lora_parameters.rank=16")
        overrides[key.strip()] = yaml.safe_load(value)
    return load(Path(path) if path else default_path(), overrides)


def _flag(name: str) -> str | None:
    """The `train` flag of config key `name` (`--learning-rate`), or None for a mapping or list (`--set` only)."""
    return None if base_type(HINTS[name]) in (dict, list) else "--" + name.replace("_", "-")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """`train`'s config arguments: the file, `--set`, and one flag per scalar key, its help taken from the schema."""
    p.add_argument("-c", "--config", metavar="YAML", help="config file (default: ./lora_config.yaml)")
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="override any key, nested ones too: --set lora_parameters.rank=16",
    )
    for name, f in FIELDS.items():
        flag = _flag(name)
        if flag is None:
            continue
        base = base_type(HINTS[name])
        help_text = f.metadata["help"]
        if base is bool:
            p.add_argument(flag, dest=name, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        else:
            choices = [c for c in f.metadata.get("choices") or () if c is not None] or None
            p.add_argument(flag, dest=name, type=base, default=None, choices=choices, help=help_text)


def flags_of(args: argparse.Namespace) -> dict[str, Any]:
    """The config keys given as flags in `args` (None: not given)."""
    return {k: getattr(args, k, None) for k in FIELDS}


def _flow(value: Any) -> str:
    """`value` as one line of YAML. Not JSON: YAML 1.1 reads JSON's 1e-05 back as a string."""
    text = yaml.safe_dump(value, default_flow_style=True, allow_unicode=True, sort_keys=False, width=1 << 30).strip()
    return text.removesuffix("...").strip()


def to_argv(changes: dict[str, Any], base: dict[str, Any]) -> list[str]:
    """`train` arguments that turn the config `base` into one with `changes`: a key's own flag where it has one
    (`--iters=5`, `--no-pack`), `--set=key.sub=VALUE` for each changed entry of a mapping, `--set=key=VALUE`
    otherwise (VALUE in YAML's flow style, which `--set` reads back exactly). Every value is joined to its flag
    with `=`, so none can be read as an option of its own (a model named `-h/x` stays a value)."""
    argv: list[str] = []
    for key, value in changes.items():
        flag = _flag(key)
        if flag is not None and isinstance(value, bool):
            argv.append(flag if value else f"--no-{flag[2:]}")
        elif flag is not None and value is not None:
            argv.append(f"{flag}={value}")
        elif isinstance(value, dict) and isinstance(base.get(key), dict) and value.keys() >= base[key].keys():
            for sub, v in value.items():
                if base[key].get(sub) != v or sub not in base[key]:
                    argv.append(f"--set={key}.{sub}={_flow(v)}")
        else:
            argv.append(f"--set={key}={_flow(value)}")
    return argv


def default_path() -> Path | None:
    """./lora_config.yaml, else the shipped one."""
    path = local_or_shipped("lora_config.yaml")
    return path if path.is_file() else None


RUN_CONFIG = "config.yaml"  # the file a run folder keeps its config in (models.run_folder.Run reads it)


def dump(cfg: TrainConfig) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False, allow_unicode=True)


def for_resume(run: Path, flags: dict[str, Any], set_items: list[str]) -> TrainConfig:
    """The config of the run in `run`, with overrides of the keys a resumed run may change (and only those)."""
    saved_path = Path(run) / RUN_CONFIG
    if not saved_path.is_file():
        raise UserError(f"{run}: not a run folder (no config.yaml)")
    if flags.get("adapter_path"):
        raise UserError("--resume continues the run where it is; --adapter-path cannot move it")
    saved = load(saved_path)
    cfg = from_cli(str(saved_path), flags, set_items)
    cfg.adapter_path = saved.adapter_path = str(run)  # the folder may have moved since it was written
    changed = [k for k, v in cfg.to_dict().items() if k not in RESUMABLE_KEYS and v != getattr(saved, k)]
    if changed:
        raise UserError(
            f"--resume continues {run} as it was configured; it cannot change {', '.join(changed)} "
            f"(changeable: {', '.join(RESUMABLE_KEYS)})"
        )
    return cfg
