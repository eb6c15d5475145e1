"""The models behind the server: one or more bases, the runs (adapters) each can wear, and the scheduler that
generates every answer (`scheduler.py`: one thread, concurrent answers batched together).

Several models share one loaded base. A run's adapter is put on the base once, exactly as `loader.load` does it
(attach, load, fuse), and what that changed is kept as a *variant*: the modules it replaced and the weights it
overwrote. Switching to a run then swaps those modules and arrays in (MLX arrays are immutable, so nothing is
copied), and switching to the base swaps the originals back: the base answers exactly as before. A run whose base is
another model, or the same one quantized (QLoRA), gets its own base, loaded when first asked for: the bases of the
runs `serve` was started with stay loaded, and one more is kept for any other run.

Only the scheduler's thread touches the models (switches, loads, generation); request threads build prompts with
the tokenizers and read answers from queues.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlx_ft import chat_template
from mlx_ft import config as config_mod
from mlx_ft.chat_template import Message
from mlx_ft.data import stats as data_stats
from mlx_ft.errors import UserError
from mlx_ft.inference import decode
from mlx_ft.inference.prompt_cache import PromptCache
from mlx_ft.inference.sampling import Sampling
from mlx_ft.inference.scheduler import Job, Scheduler
from mlx_ft.models import loader, sources
from mlx_ft.models.run_folder import Run

FALLBACK_CONTEXT = 4096  # when the model config names no context length
MAX_VARIANTS = 8  # runs kept ready per base; an older one is rebuilt (a first switch) when asked for again
BaseKey = tuple[str, int | None]  # (resolved model source, quantization bits) of a base


class TooLong(ValueError):
    """The conversation plus the answer it may get does not fit the model's context window."""


@dataclass(frozen=True)
class ModelRef:
    """A model the server can answer with: the base (no adapter) or an adapter folder of a run."""

    id: str
    adapter_dir: Path | None = None  # the run folder, or its best/ or checkpoints/step-N/ folder


BASE = ModelRef("base")


@dataclass
class _Variant:
    modules: dict[str, nn.Module]  # path → the module the adapter put there
    weights: dict[str, Any]  # parameter name → the array it overwrote (a full fine-tune's layers)
    stamp: tuple[int, int]  # the adapter file's (mtime_ns, size) when built: a retrained run is rebuilt
    system: str | None  # the system prompt the run was trained with


def _stamp(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_mtime_ns, st.st_size


@functools.lru_cache(maxsize=64)  # a source resolves to the same model for the life of the process
def _base_key(source: str, quantize: int | None) -> tuple[str, int | None]:
    resolved = sources.resolve(source)
    return (str(Path(resolved).resolve()) if Path(resolved).exists() else resolved), quantize


@functools.lru_cache(maxsize=64)  # read once per base: listing many checkpoints of one base reads it once
def _generation_defaults(model_path: str) -> dict[str, float | int]:
    return loader.generation_defaults(model_path)


class _Base:
    """One loaded base model and the variants (runs) it can wear, one at a time."""

    def __init__(self, model: nn.Module, tokenizer: Any, key: tuple[str, int | None]) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.key = key
        self.modules = dict(model.named_modules())  # the pristine structure and weights, to swap back to
        self.weights = dict(tree_flatten(model.parameters()))
        self.variants: dict[Path, _Variant] = {}
        self.current: Path | None = None  # the adapter folder worn now; None: the bare base

    @property
    def identity(self) -> tuple[Any, ...]:
        """The weights answering now: the base, the adapter worn and its file's stamp when built (a prompt cache
        entry is only ever continued by the weights that computed it)."""
        variant = self.variants.get(self.current) if self.current is not None else None
        return self.key, self.current, variant.stamp if variant is not None else None

    def wear(self, adapter_dir: Path | None, cfg: config_mod.TrainConfig | None) -> None:
        """Put the adapter of `adapter_dir` on (None: take every adapter off)."""
        if adapter_dir == self.current and (adapter_dir is None or self._fresh(adapter_dir)):
            return
        self._bare()
        if adapter_dir is None:
            return
        variant = self.variants.get(adapter_dir)
        if variant is None or not self._fresh(adapter_dir):
            assert cfg is not None
            variant = self.variants[adapter_dir] = self._build(adapter_dir, cfg)
        self.model.update_modules(tree_unflatten(list(variant.modules.items())))
        if variant.weights:
            self.model.update(tree_unflatten(list(variant.weights.items())))
        self.current = adapter_dir
        self.variants[adapter_dir] = self.variants.pop(adapter_dir)  # most recently worn last
        while len(self.variants) > MAX_VARIANTS:  # each holds its fused layers' weights: bound the memory
            del self.variants[next(iter(self.variants))]

    def _fresh(self, adapter_dir: Path) -> bool:
        variant = self.variants.get(adapter_dir)
        file = adapter_dir / loader.ADAPTERS
        return variant is not None and file.is_file() and variant.stamp == _stamp(file)

    def _bare(self) -> None:
        if self.current is None:
            return
        variant = self.variants[self.current]
        self.model.update_modules(tree_unflatten([(p, self.modules[p]) for p in variant.modules]))
        if variant.weights:
            self.model.update(tree_unflatten([(k, self.weights[k]) for k in variant.weights]))
        self.current = None

    def _build(self, adapter_dir: Path, cfg: config_mod.TrainConfig) -> _Variant:
        """The run's adapter applied as `loader.load` applies it, recorded as what changed, then taken off again."""
        found = loader.find_run(adapter_dir)
        assert found is not None
        run, adapter_file = found
        stamp = _stamp(adapter_file)
        view = loader.Loaded(self.model, self.tokenizer, str(adapter_dir), cfg.model, run, adapter_file, cfg)
        try:
            view.apply_adapter()
            view.fuse()
        finally:
            after = dict(self.model.named_modules())
            modules = {p: m for p, m in after.items() if p in self.modules and m is not self.modules[p]}
            replaced = tuple(f"{p}." for p in modules)
            weights = {
                k: v
                for k, v in tree_flatten(self.model.parameters())
                if k in self.weights and v is not self.weights[k] and not k.startswith(replaced)
            }
            variant = _Variant(modules, weights, stamp, loader.training_system(run))
            self.variants[adapter_dir] = variant
            self.current = adapter_dir
            self._bare()
        return variant


class Engine:
    def __init__(self, loaded: loader.Loaded, prompt_cache: PromptCache | None = None) -> None:
        """Serve `loaded`. A run loaded without its adapter (`loader.load(run, adapter=False)`) is served as a
        variant of its base, so the base and other runs on it can answer too; a run loaded with its adapter fused
        in has no bare base left, and other models then load their own (`pin` keeps one loaded for good).
        `prompt_cache`: where answers leave their KV state for the next turn (None: one with the default bounds)."""
        self.loaded = loaded
        args = getattr(loaded.model, "args", None)
        self.context = int(getattr(args, "max_position_embeddings", None) or FALLBACK_CONTEXT)
        quantize = loaded.cfg.quantize if loaded.cfg else None
        self._main = _Base(loaded.model, loaded.tokenizer, _base_key(loaded.base, quantize))
        self._fixed = loaded.adapted  # the model already wears its adapter for good
        self._pinned: dict[BaseKey, _Base] = {}  # bases kept loaded for good (`pin`)
        # MLX streams belong to the thread that made them: evaluate every weight here, so that no lazy array of
        # this thread is left for the scheduler's thread to compute ("There is no Stream(cpu, 0) in current thread").
        mx.eval(loaded.model.parameters())
        self._other: _Base | None = None  # one more base, for a run on none of the above
        self._tokenizers: dict[BaseKey, Any] = {}  # of bases not loaded: prompts are built without the weights
        self._configs: dict[Path, tuple[tuple[int, int], config_mod.TrainConfig]] = {}
        self.served = ModelRef("served", loaded.adapter_file.parent) if loaded.adapter_file is not None else BASE
        if loaded.adapter_file is not None and not loaded.adapted:
            self._main.wear(loaded.adapter_file.parent, loaded.cfg)
        self.scheduler = Scheduler(self, cache=prompt_cache if prompt_cache is not None else PromptCache())

    @property
    def tokenizer(self) -> Any:
        return self.loaded.tokenizer

    def loaded_id(self) -> str | None:
        """The adapter folder the served base wears now (None: the bare base)."""
        current = self._main.current
        return None if current is None else str(current)

    def system(self, ref: ModelRef | None) -> str | None:
        """The system prompt `ref` was trained with (None: the served model's), a new conversation's default."""
        if ref is None:
            return self.loaded.system
        found = loader.find_run(ref.adapter_dir) if ref.adapter_dir is not None else None
        return loader.training_system(found[0]) if found else None

    def _cfg(self, ref: ModelRef) -> config_mod.TrainConfig | None:
        """The run's config, read again only when its config.yaml changed (a switch should not parse YAML)."""
        if ref.adapter_dir is None:
            return None
        found = loader.find_run(ref.adapter_dir)
        if found is None:
            raise ValueError(f"{ref.adapter_dir} is not a run or an adapter folder of one")
        path = Run(found[0]).config_file
        stamp = _stamp(path)
        cached = self._configs.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._configs[path] = (stamp, config_mod.load(path))
        return cached[1]

    def model_key(self, ref: ModelRef | None) -> tuple[BaseKey, Path | None]:
        """Which base and adapter answer for `ref` (None: the served model), without loading anything: answers
        with the same key can be generated in one batch."""
        if ref is None or self._fixed:
            if ref is not None and ref.adapter_dir != self.served.adapter_dir:
                raise ValueError("this server's model has its adapter fused in; it answers with that model only")
            return self._main.key, self.served.adapter_dir
        cfg = self._cfg(ref)
        if cfg is None:
            return self._main.key, None
        return _base_key(cfg.model, cfg.quantize), ref.adapter_dir

    def generation_defaults(self, ref: ModelRef | None) -> dict[str, float | int]:
        """The sampling defaults `ref`'s base model ships (its generation_config.json; None: the served model's),
        under Hugging Face's names; {} when it has none, or when the run's base cannot be found."""
        try:
            (path, _), _ = self.model_key(ref)
        except (ValueError, UserError):  # a run whose base is gone: nothing to read, and nothing to refuse here
            return {}
        return dict(_generation_defaults(path))

    def _base(self, key: BaseKey, ref: ModelRef | None) -> _Base:
        """The base of `key`, loaded now when it is none kept. Called by the scheduler's thread only."""
        if key == self._main.key:
            return self._main
        if key in self._pinned:
            return self._pinned[key]
        if self._other is None or self._other.key != key:
            self._other = None  # free the previous one before loading the next
            assert ref is not None and ref.adapter_dir is not None
            base = loader.load(str(ref.adapter_dir), adapter=False)
            self._other = _Base(base.model, base.tokenizer, key)
        return self._other

    def activate(self, ref: ModelRef | None) -> tuple[_Base, float]:
        """Make `ref` the model that answers (None: the served one); returns its base and the switch time in ms.
        Called by the scheduler's thread only."""
        start = time.perf_counter()
        key, adapter_dir = self.model_key(ref)
        base = self._base(key, ref)
        if not self._fixed:
            base.wear(adapter_dir, self._cfg(ref) if ref is not None else self.loaded.cfg)
        return base, (time.perf_counter() - start) * 1000

    def pin(self, ref: ModelRef) -> None:
        """Keep the base of `ref` loaded for good (a run `serve` was given), loading it now unless it is loaded
        already: runs on one base share one copy. Called before serving starts."""
        key, _ = self.model_key(ref)
        if key == self._main.key or key in self._pinned:
            return
        assert ref.adapter_dir is not None
        base = loader.load(str(ref.adapter_dir), adapter=False)
        mx.eval(base.model.parameters())  # in this thread: see __init__
        self._pinned[key] = _Base(base.model, base.tokenizer, key)

    def tokenizer_for(self, ref: ModelRef | None) -> Any:
        """The tokenizer prompts for `ref` are built with. A base that is not loaded is not loaded for it (that is
        the generation thread's, when the answer's turn comes): only its tokenizer is read."""
        key, _ = self.model_key(ref)
        other = self._other
        for base in (self._main, *self._pinned.values(), *([other] if other else [])):
            if base.key == key:
                return base.tokenizer
        if key not in self._tokenizers:
            cfg = self._cfg(ref) if ref is not None else None
            assert cfg is not None
            self._tokenizers[key] = data_stats.load_tokenizer(cfg.model)
        return self._tokenizers[key]

    def prompt(
        self,
        messages: Sequence[Message],
        max_tokens: int,
        ref: ModelRef | None = None,
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> list[int]:
        """The prompt ids for `messages` (and the `tools` the model may call), refused when the prompt plus
        `max_tokens` exceeds the context window."""
        tokenizer = self.tokenizer_for(ref)
        ids = chat_template.prompt_ids(tokenizer, messages, tools=tools)
        self.check_fits(len(ids), max_tokens)
        return ids

    def check_fits(self, prompt_tokens: int, max_tokens: int) -> None:
        if prompt_tokens + max_tokens > self.context:
            raise TooLong(
                f"the conversation is {prompt_tokens} tokens; with max_tokens {max_tokens} it exceeds the "
                f"model's context window of {self.context} tokens (clear it or lower max_tokens)"
            )

    def submit(self, prompt: list[int], sampling: Sampling, ref: ModelRef | None = None) -> Job:
        """Start generating an answer (with the others being generated); read it with `job.pieces()`."""
        return self.submit_many([(prompt, sampling)], ref)[0]

    def submit_many(self, asks: Sequence[tuple[list[int], Sampling]], ref: ModelRef | None = None) -> list[Job]:
        """Start generating answers to several (prompt, sampling) pairs, together."""
        key = self.model_key(ref)  # a bad reference fails here, in the caller's thread
        jobs = [Job(prompt, sampling, ref, key) for prompt, sampling in asks]
        self.scheduler.submit(*jobs)
        return jobs

    def submit_each(self, asks: Sequence[tuple[list[int], Sampling, ModelRef | None]]) -> list[Job]:
        """Start answers of several models at once (a compare), in this order: a batch runs on one model, so the
        models answer one after another, and neighbouring answers of one model are generated together."""
        jobs = [Job(prompt, sampling, ref, self.model_key(ref)) for prompt, sampling, ref in asks]
        self.scheduler.submit(*jobs)
        return jobs

    def stream(
        self, prompt: list[int], sampling: Sampling, ref: ModelRef | None = None, timing: list[float] | None = None
    ) -> Iterator[decode.Chunk]:
        """The answer piece by piece. Closing the iterator early (a client that went away) cancels it, and only it.
        `ref` names the model (None: the served one); `timing` receives the switch time in ms."""
        job = self.submit(prompt, sampling, ref)
        for i, chunk in enumerate(job.pieces()):
            if i == 0 and timing is not None:
                timing.append(job.switch_ms or 0.0)
            yield chunk

    def answer(
        self, prompt: list[int], sampling: Sampling, ref: ModelRef | None = None, timing: list[float] | None = None
    ) -> tuple[str, str | None, int]:
        """The whole answer, why it ended, and how many tokens it has."""
        text, reason, n = [], None, 0
        for chunk in self.stream(prompt, sampling, ref, timing):
            text.append(chunk.text)
            reason, n = chunk.finish_reason, chunk.generation_tokens
        return "".join(text), reason, n

    def answer_many(self, prompts: Sequence[list[int]], sampling: Sampling) -> list[str]:
        """Answers to many prompts by the served model, generated together (with any chats being answered)."""
        jobs = self.submit_many([(p, sampling) for p in prompts])
        return ["".join(c.text for c in job.pieces()) for job in jobs]
