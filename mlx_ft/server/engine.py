"""The models behind the server, and the lock that makes their answers one at a time.

MLX generation is not re-entrant across threads and interleaving two conversations' decode steps would buy nothing
on one device, so every answer (streamed or not) holds the lock from its first to its last token: concurrent
requests queue, and tokens can never cross between conversations.

Several models share one loaded base. A run's adapter is put on the base once, exactly as `loader.load` does it
(attach, load, fuse), and what that changed is kept as a *variant*: the modules it replaced and the weights it
overwrote. Switching to a run then swaps those modules and arrays in (MLX arrays are immutable, so nothing is
copied), and switching to the base swaps the originals back: the base answers exactly as before. A run whose base is
another model, or the same one quantized (QLoRA), gets its own base, loaded when first asked for; one such base is
kept besides the served one.
"""

from __future__ import annotations

import functools
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from mlx_ft import chat_template
from mlx_ft import config as config_mod
from mlx_ft.chat_template import Message
from mlx_ft.inference import generation
from mlx_ft.inference.sampling import Sampling
from mlx_ft.models import loader, sources

FALLBACK_CONTEXT = 4096  # when the model config names no context length
MAX_VARIANTS = 8  # runs kept ready per base; an older one is rebuilt (a first switch) when asked for again


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
    def __init__(self, loaded: loader.Loaded) -> None:
        """Serve `loaded`. A run loaded without its adapter (`loader.load(run, adapter=False)`) is served as a
        variant of its base, so the base and other runs on it can answer too; a run loaded with its adapter fused
        in has no bare base left, and other models then load their own."""
        self.loaded = loaded
        self._lock = threading.Lock()
        args = getattr(loaded.model, "args", None)
        self.context = int(getattr(args, "max_position_embeddings", None) or FALLBACK_CONTEXT)
        quantize = loaded.cfg.quantize if loaded.cfg else None
        self._main = _Base(loaded.model, loaded.tokenizer, _base_key(loaded.base, quantize))
        self._fixed = loaded.adapted  # the model already wears its adapter for good
        self._other: _Base | None = None  # the one base kept besides the served one
        self._configs: dict[Path, tuple[tuple[int, int], config_mod.TrainConfig]] = {}
        self.served = ModelRef("served", loaded.adapter_file.parent) if loaded.adapter_file is not None else BASE
        if loaded.adapter_file is not None and not loaded.adapted:
            self._main.wear(loaded.adapter_file.parent, loaded.cfg)

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
        path = found[0] / "config.yaml"
        stamp = _stamp(path)
        cached = self._configs.get(path)
        if cached is None or cached[0] != stamp:
            cached = self._configs[path] = (stamp, config_mod.load(path))
        return cached[1]

    def _base_for(self, ref: ModelRef | None) -> tuple[_Base, config_mod.TrainConfig | None]:
        """The base that answers for `ref` (loaded now when it is another model), and the run's config. Called with
        the lock held."""
        if ref is None or self._fixed:
            if ref is not None and ref.adapter_dir != self.served.adapter_dir:
                raise ValueError("this server's model has its adapter fused in; it answers with that model only")
            return self._main, self.loaded.cfg if ref is None else self._cfg(ref)
        cfg = self._cfg(ref)
        if cfg is None:
            return self._main, None
        key = _base_key(cfg.model, cfg.quantize)
        if key == self._main.key:
            return self._main, cfg
        if self._other is None or self._other.key != key:
            self._other = None  # free the previous one before loading the next
            base = loader.load(str(ref.adapter_dir), adapter=False)
            self._other = _Base(base.model, base.tokenizer, key)
        return self._other, cfg

    def _activate(self, ref: ModelRef | None) -> tuple[_Base, float]:
        """Make `ref` the model that answers (None: the served one); returns its base and the switch time in ms."""
        start = time.perf_counter()
        base, cfg = self._base_for(ref)
        if not self._fixed:
            target = ref if ref is not None else self.served
            base.wear(target.adapter_dir, cfg)
        return base, (time.perf_counter() - start) * 1000

    def tokenizer_for(self, ref: ModelRef | None) -> Any:
        with self._lock:
            return self._base_for(ref)[0].tokenizer

    def prompt(self, messages: Sequence[Message], max_tokens: int, ref: ModelRef | None = None) -> list[int]:
        """The prompt ids for `messages`, refused when the prompt plus `max_tokens` exceeds the context window."""
        tokenizer = self.tokenizer if ref is None else self.tokenizer_for(ref)
        ids = chat_template.prompt_ids(tokenizer, messages)
        if len(ids) + max_tokens > self.context:
            raise TooLong(
                f"the conversation is {len(ids)} tokens; with max_tokens {max_tokens} it exceeds the "
                f"model's context window of {self.context} tokens (clear it or lower max_tokens)"
            )
        return ids

    def stream(
        self, prompt: list[int], sampling: Sampling, ref: ModelRef | None = None, timing: list[float] | None = None
    ) -> Iterator[generation.Chunk]:
        """The answer piece by piece, holding the model for the whole answer. Closing the iterator early (a client
        that went away) releases it. `ref` names the model (None: the served one); `timing` receives the switch
        time in ms."""
        with self._lock:
            base, switch_ms = self._activate(ref)
            if timing is not None:
                timing.append(switch_ms)
            yield from generation.stream_ids(base.model, base.tokenizer, prompt, sampling)

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
        """Answers to many prompts in one batched generation by the served model, holding it for all of them."""
        with self._lock:
            base, _ = self._activate(None)
            return generation.answer_many_ids(base.model, base.tokenizer, prompts, sampling, desc="task batch")
