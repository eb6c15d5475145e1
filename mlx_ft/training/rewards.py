"""GRPO's rewards: what a sampled answer is worth, from the config's `rewards` list.

Each reward maps (prompt, completion, reference) to a number; the built-ins lie in [0, 1]:

- `exact`: the completion equals the reference (surrounding whitespace aside)
- `fields`: the share of the reference's fields (a pattern's named groups) the completion has equal, numbers as
  numbers; the pattern is the `pattern` option or the recipe task's whose template wraps the prompt
- `choice`: the right label; the labels are the `labels` option or a recipe task's pattern when it is an alternation
  of labels (router's `(?P<label>问题回答|任务处理)`)
- `regex`: the completion matches the `pattern` option whole
- `json_schema`: the completion is JSON valid against the `schema` option, checked by our structured-outputs grammar
  (there is no jsonschema package here)
- `length`: 1 within [min, max] characters, falling linearly to 0 at max characters outside

and every public function of `reward_file` taking (prompt, completion, reference) is one more, named by the function.
`build` checks every option before the run starts, so a typo costs one line, not a run; the objective weighs the
values with `Rewards.total`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import inspect
import json
import math
import numbers
import re
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from importlib.machinery import SourceFileLoader
from pathlib import Path
from types import ModuleType
from typing import Any

from mlx_ft.data import recipes
from mlx_ft.data.recipes import Recipe, Task
from mlx_ft.errors import Invalid, UserError
from mlx_ft.inference import constrain

BUILT_IN: tuple[str, ...] = ("exact", "fields", "choice", "regex", "json_schema", "length")
OPTIONS: dict[str, tuple[str, ...]] = {  # each built-in's options, beside name and weight
    "exact": (),
    "fields": ("pattern",),
    "choice": ("labels",),
    "regex": ("pattern",),
    "json_schema": ("schema",),
    "length": ("min", "max"),
}
EXCERPT = 24  # characters of a prompt or value quoted in an error

Scorer = Callable[[str, str, str | None], float]  # (prompt, completion, reference) -> value


@dataclass(frozen=True)
class Rewards:
    names: tuple[str, ...]  # each reward's name, in config order ("fields", "length", or a function's name)
    weights: tuple[float, ...]
    scorers: tuple[Scorer, ...] = field(default=(), repr=False, compare=False)
    # The label set each choice reward holds answers to, by recipe task (None: the `labels` option, every prompt);
    # eval reports how many answers were no label at all.
    labels: dict[str | None, tuple[str, ...]] = field(default_factory=dict, compare=False, hash=False)

    def score(self, prompt: str, completion: str, reference: str | None) -> list[float]:
        """Each reward's value (unweighted), in `names` order."""
        return [float(s(prompt, completion, reference)) for s in self.scorers]

    def total(self, values: Sequence[float]) -> float:
        """The weighted sum."""
        if len(values) != len(self.weights):
            raise ValueError(f"{len(values)} reward values for {len(self.weights)} rewards")
        return float(sum(w * v for w, v in zip(self.weights, values)))


class _Refused(Exception):
    """A spec's option cannot be used; `build` prefixes the reward's place and name."""


@dataclass(frozen=True)
class _Context:
    recipe: Recipe | None
    tokenizer: Any


# --- the built-ins ---------------------------------------------------------------------------------------------


def _exact(completion: str, reference: str | None) -> float:
    return float(reference is not None and completion.strip() == reference.strip())


def _make_exact(opts: dict[str, Any], ctx: _Context) -> Scorer:
    return lambda prompt, completion, reference: _exact(completion, reference)


def _make_fields(opts: dict[str, Any], ctx: _Context) -> Scorer:
    if "pattern" in opts:
        pattern = _compile(opts["pattern"])
        if not pattern.groupindex:
            raise _Refused("the pattern has no named groups (?P<name>...) to compare")
        task = Task("pattern", recipes.PLACEHOLDER, pattern=pattern)
        return lambda prompt, completion, reference: _fields_share(task, completion, reference)
    recipe = ctx.recipe
    if recipe is None:
        raise _Refused("needs a `pattern` option with named groups, or a recipe whose tasks have patterns")
    if not any(t.pattern is not None and t.pattern.groupindex for t in recipe.tasks.values()):
        raise _Refused(f"no task of recipe {recipe.name} has a pattern with named groups; give a `pattern` option")
    return lambda prompt, completion, reference: _fields_share(_task_for(recipe, prompt), completion, reference)


def _fields_share(task: Task, completion: str, reference: str | None) -> float:
    """The share of the pattern's fields the completion has as the reference has them (an optional group the
    reference leaves out counts as a field the completion must leave out too); exact match where the task has no
    fields or the reference does not match its own pattern."""
    if reference is None:
        return 0.0
    want = task.fields(reference)
    if not want:
        return _exact(completion, reference)
    got = task.fields(completion)
    if got is None:
        return 0.0
    return sum(got[k] == v for k, v in want.items()) / len(want)


@dataclass(frozen=True)
class _Choice:
    """The choice reward: 1 for the label that is the reference, 0 for a wrong label or no label at all; prompts of
    tasks without labels (router's answer and extract) are scored the same way, as exact. Its `labels` are what
    `Rewards.labels` shows (eval counts the answers that are no label)."""

    labels: dict[str | None, tuple[str, ...]]

    def __call__(self, prompt: str, completion: str, reference: str | None) -> float:
        return _exact(completion, reference)


def _make_choice(opts: dict[str, Any], ctx: _Context) -> Scorer:
    return _Choice(_labels_for(opts, ctx))


def _labels_for(opts: dict[str, Any], ctx: _Context) -> dict[str | None, tuple[str, ...]]:
    """The choice reward's label sets: the `labels` option for every prompt, else each recipe task's."""
    if "labels" in opts:
        given = opts["labels"]
        if not isinstance(given, list) or not given or not all(isinstance(x, str) and x.strip() for x in given):
            raise _Refused("labels must be a non-empty list of non-empty strings")
        return {None: tuple(dict.fromkeys(x.strip() for x in given))}
    if ctx.recipe is None:
        raise _Refused("needs a `labels` option, or a recipe whose task patterns are alternations of labels")
    found = {name: _alternation(t.pattern) for name, t in ctx.recipe.tasks.items()}
    labels = {name: ls for name, ls in found.items() if ls is not None}
    if not labels:
        raise _Refused(
            f"no task of recipe {ctx.recipe.name} has a pattern that is an alternation of labels, like "
            "(?P<label>yes|no); give a `labels` option"
        )
    return labels


def _alternation(pattern: re.Pattern[str] | None) -> tuple[str, ...] | None:
    """The labels of a pattern that is an alternation of literal strings, in one optional group
    (`(?P<label>a|b)`, `(?:a|b)`, `a|b`), or None for any other pattern."""
    if pattern is None:
        return None
    wrapped = re.fullmatch(r"\((?:\?P<\w+>|\?:)?(.*)\)", pattern.pattern, re.S)
    text = wrapped.group(1) if wrapped else pattern.pattern
    labels, current, i = [], "", 0
    while i < len(text):
        ch = text[i]
        if ch == "\\":  # an escaped punctuation mark is itself; \d, \S and the like are classes
            nxt = text[i + 1 : i + 2]
            if not nxt or (nxt.isascii() and nxt.isalnum()):
                return None
            current, i = current + nxt, i + 2
            continue
        if ch == "|":
            labels.append(current)
            current = ""
        elif ch in ".^$*+?{}[]()":
            return None
        else:
            current += ch
        i += 1
    labels.append(current)
    # The parse is ours, the pattern's meaning Python's: each label must be a match of the pattern itself.
    if not all(labels) or not all(pattern.fullmatch(x) for x in labels):
        return None
    return tuple(dict.fromkeys(labels))


def _task_for(recipe: Recipe, prompt: str) -> Task:
    """The recipe task whose template wraps `prompt` (the longest such, when one template's text contains
    another's); a one-task recipe's task for any prompt."""
    if len(recipe.tasks) == 1:
        return next(iter(recipe.tasks.values()))
    best: tuple[int, Task] | None = None
    for task in recipe.tasks.values():
        before, after = task.template.split(recipes.PLACEHOLDER)
        fits = len(prompt) >= len(before) + len(after) and prompt.startswith(before) and prompt.endswith(after)
        if fits and (best is None or len(before) + len(after) > best[0]):
            best = (len(before) + len(after), task)
    if best is None:
        raise UserError(
            f"rewards: the prompt {_excerpt(prompt)} is not the template of any task of recipe {recipe.name} "
            f"({recipe.path}); is the data made with another recipe?"
        )
    return best[1]


def _make_regex(opts: dict[str, Any], ctx: _Context) -> Scorer:
    if "pattern" not in opts:
        raise _Refused("needs a `pattern` option (a regex the whole answer must match)")
    pattern = _compile(opts["pattern"])
    return lambda prompt, completion, reference: float(pattern.fullmatch(completion.strip()) is not None)


def _compile(pattern: Any) -> re.Pattern[str]:
    if not isinstance(pattern, str) or not pattern:
        raise _Refused("pattern must be a non-empty string (a regex)")
    try:
        return re.compile(pattern)
    except re.error as e:
        raise _Refused(f"bad pattern: {e}") from None


def _make_json_schema(opts: dict[str, Any], ctx: _Context) -> Scorer:
    schema = opts.get("schema")
    if not isinstance(schema, dict):
        raise _Refused("needs a `schema` option: a JSON schema as a mapping, e.g. {type: object, properties: ...}")
    if ctx.tokenizer is None:
        raise _Refused("needs the model's tokenizer to check answers against the schema (none was given)")
    try:
        constraint = constrain.json_schema(schema)
        constrain.check(constraint, ctx.tokenizer)  # a schema this tokenizer cannot follow fails here, not mid-run
    except Invalid as e:
        raise _Refused(str(e)) from None
    tokenizer = ctx.tokenizer

    def score(prompt: str, completion: str, reference: str | None) -> float:
        try:
            value = json.loads(completion)
        except ValueError:
            return 0.0
        # The grammar judges JSON text, not values: it wants an object's keys in the schema's order and at most 24
        # blanks in a row. Written again in one canonical form, valid JSON is judged on what it says alone.
        text = json.dumps(_schema_order(value, schema), ensure_ascii=False)
        ids = tokenizer.encode(text, add_special_tokens=False)
        return float(constrain.allows(constraint, tokenizer, ids, complete=True))

    return score


def _schema_order(value: Any, schema: Any) -> Any:
    """`value` with each object's keys in the order of its schema's `properties` (others after them, as written),
    as far as plain `properties` and `items` reach ($ref, anyOf and the like are left as written)."""
    if not isinstance(schema, dict):
        return value
    if isinstance(value, dict) and isinstance(schema.get("properties"), dict):
        props = schema["properties"]
        keys = [k for k in props if k in value] + [k for k in value if k not in props]
        return {k: _schema_order(value[k], props.get(k)) for k in keys}
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [_schema_order(v, schema["items"]) for v in value]
    return value


def _make_length(opts: dict[str, Any], ctx: _Context) -> Scorer:
    high = opts.get("max")
    if not _is_int(high) or high < 1:
        raise _Refused("max must be a positive integer (characters)")
    low = opts.get("min", 0)
    if not _is_int(low) or not 0 <= low <= high:
        raise _Refused(f"min must be an integer from 0 to max ({high})")
    return lambda prompt, completion, reference: _length(len(completion.strip()), low, high)


def _length(n: int, low: int, high: int) -> float:
    distance = low - n if n < low else max(0, n - high)
    return max(0.0, 1.0 - distance / high)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


MAKERS: dict[str, Callable[[dict[str, Any], _Context], Scorer]] = {
    "exact": _make_exact,
    "fields": _make_fields,
    "choice": _make_choice,
    "regex": _make_regex,
    "json_schema": _make_json_schema,
    "length": _make_length,
}


# --- reward files ----------------------------------------------------------------------------------------------

_loaded: dict[tuple[str, int, int], ModuleType] = {}  # (resolved path, mtime, size): a file is run once


def _load(path: str) -> ModuleType:
    """The reward file run as a module under a private name (its folder on sys.path while it runs, so that it can
    import files beside it)."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"reward_file {path}: no such file")
    stat = file.stat()
    key = (str(file.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _loaded:
        return _loaded[key]
    name = "_mlx_ft_reward_file_" + hashlib.sha1(key[0].encode()).hexdigest()[:12]
    # Any file name will do (my_rewards.txt too): the loader is given, not guessed from the suffix.
    spec = importlib.util.spec_from_file_location(name, file, loader=SourceFileLoader(name, str(file)))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickle look a module up by name
    folder = str(file.resolve().parent)
    sys.path.insert(0, folder)
    try:
        spec.loader.exec_module(module)
    except SyntaxError as e:
        sys.modules.pop(name, None)
        raise UserError(f"{path}:{e.lineno}: syntax error: {e.msg}") from None
    except Exception as e:
        sys.modules.pop(name, None)
        lines = [
            f.lineno for f in traceback.extract_tb(e.__traceback__) if Path(f.filename).resolve() == file.resolve()
        ]
        where = f"{path}:{lines[-1]}" if lines else path
        raise UserError(f"{where}: running the reward file raised {_exception(e)}") from e
    finally:
        if folder in sys.path:
            sys.path.remove(folder)
    _loaded[key] = module
    return module


def _is_reward(fn: Callable[..., Any]) -> bool:
    """Whether `fn` takes exactly (prompt, completion, reference), positionally."""
    try:
        params = inspect.signature(fn).parameters.values()
    except (TypeError, ValueError):
        return False
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    others_needed = [p for p in params if p.kind == p.KEYWORD_ONLY and p.default is p.empty]
    return len(positional) == 3 and not others_needed and not any(p.kind == p.VAR_POSITIONAL for p in params)


def _public_functions(module: ModuleType) -> dict[str, Callable[..., Any]]:
    """The public functions defined in the file itself (not those it imports)."""
    return {
        name: fn
        for name, fn in vars(module).items()
        if not name.startswith("_") and inspect.isfunction(fn) and fn.__module__ == module.__name__
    }


def _file_functions(path: str) -> dict[str, Callable[..., Any]]:
    functions = {name: fn for name, fn in _public_functions(_load(path)).items() if _is_reward(fn)}
    if not functions:
        raise UserError(
            f"reward_file {path}: no reward in it: a reward is a public function (prompt, completion, reference) "
            "returning a number"
        )
    clash = sorted(set(functions) & set(BUILT_IN))
    if clash:
        raise UserError(f"reward_file {path}: function `{clash[0]}` has a built-in reward's name; rename it")
    return functions


def list_functions(path: str | Path) -> list[str]:
    """The rewards of a reward file, in the order it defines them (a UserError when it cannot be loaded or has
    none)."""
    return list(_file_functions(str(path)))


def _file_scorer(path: str, name: str, fn: Callable[..., Any]) -> Scorer:
    def score(prompt: str, completion: str, reference: str | None) -> float:
        try:
            value = fn(prompt, completion, reference)
        except Exception as e:
            raise UserError(f"{path}: reward `{name}` raised {_exception(e)} (prompt {_excerpt(prompt)})") from e
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
            raise UserError(
                f"{path}: reward `{name}` returned {_excerpt(repr(value), quote=False)} ({type(value).__name__}), "
                f"not a finite number (prompt {_excerpt(prompt)})"
            )
        return float(value)

    return score


def _exception(e: BaseException) -> str:
    said = str(e).strip().splitlines()
    return f"{type(e).__name__}: {said[0]}" if said else type(e).__name__


def _excerpt(text: str, quote: bool = True) -> str:
    cut = text if len(text) <= EXCERPT else text[:EXCERPT] + "…"
    return repr(cut) if quote else cut.replace("\n", " ")


# --- building ----------------------------------------------------------------------------------------------------


def _weight(spec: dict[str, Any]) -> float:
    weight = spec.get("weight", 1.0)
    if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not math.isfinite(weight):
        raise _Refused(f"weight must be a finite number, not {_excerpt(repr(weight), quote=False)}")
    return float(weight)


def build(
    specs: list[dict],
    recipe: str | Path | None = None,
    reward_file: str | Path | None = None,
    tokenizer: Any = None,
) -> Rewards:
    """The rewards of the config's `rewards` list (and `reward_file`'s functions), every option checked: a spec that
    cannot be used raises one UserError line naming it, e.g. "rewards[1] (length): max must be a positive integer"."""
    ctx = _Context(recipes.load(recipe) if recipe else None, tokenizer)
    path = str(reward_file) if reward_file else None
    functions = _file_functions(path) if path else {}
    if not isinstance(specs, list) or not (specs or functions):
        raise UserError("config key 'rewards' must be a non-empty list, e.g. [{name: exact, weight: 1.0}]")
    names: list[str] = []
    weights: list[float] = []
    scorers: list[Scorer] = []
    labels: dict[str | None, tuple[str, ...]] = {}
    for i, spec in enumerate(specs):
        name = spec.get("name") if isinstance(spec, dict) else None
        if not isinstance(name, str):
            raise UserError(f"rewards[{i}] must be a mapping with a name, e.g. {{name: exact, weight: 1.0}}")
        where = f"rewards[{i}] ({name})"
        if name in names:
            raise UserError(f"{where}: listed twice; give each reward once")
        if name not in MAKERS and name not in functions:
            if path and name in _public_functions(_load(path)):
                raise UserError(
                    f"rewards[{i}]: {path}: `{name}` is not a reward: it must take exactly (prompt, "
                    "completion, reference)"
                )
            raise UserError(f"rewards[{i}]: unknown reward {name!r}; {_known(path, functions)}")
        allowed = OPTIONS.get(name, ())
        unknown = sorted(str(k) for k in spec if k not in {"name", "weight", *allowed})
        if unknown:
            takes = f"takes weight, {', '.join(allowed)}" if allowed else "takes only weight"
            raise UserError(f"{where}: unknown option {unknown[0]!r}; {name} {takes}")
        try:
            weight = _weight(spec)
            if name in MAKERS:
                scorer = MAKERS[name]({k: v for k, v in spec.items() if k in allowed}, ctx)
            else:
                scorer = _file_scorer(str(path), name, functions[name])
        except _Refused as e:
            raise UserError(f"{where}: {e}") from None
        if isinstance(scorer, _Choice):
            labels.update(scorer.labels)
        names.append(name)
        weights.append(weight)
        scorers.append(scorer)
    if functions and not set(functions) & set(names):  # `--reward-file my.py` alone: all of its functions
        for name, fn in functions.items():
            names.append(name)
            weights.append(1.0)
            scorers.append(_file_scorer(str(path), name, fn))
    return Rewards(tuple(names), tuple(weights), tuple(scorers), labels)


def _known(path: str | None, functions: dict[str, Callable[..., Any]]) -> str:
    built_in = f"built-in: {', '.join(BUILT_IN)}"
    if path is None:
        return f"{built_in}; or a function of reward_file"
    return f"{built_in}; or a function of {path} ({', '.join(functions)})"


def describe(rewards: Rewards) -> str:
    """One line for the run's start: "rewards: fields x1.0 + length x0.1"."""
    return "rewards: " + " + ".join(f"{n} x{w!r}" for n, w in zip(rewards.names, rewards.weights))
