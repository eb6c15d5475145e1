"""The training loop: one compiled step per batch, and what happens between two steps, in plain sight.

`loop` below is the whole run, top to bottom: a compiled step (forward, backward, gradient accumulation, the
average over `mlx.launch` workers, the optimizer update), then the progress report, validation, checkpoint, early
stop and Ctrl-C, each counted in *global* steps, so a resumed run reports, evaluates and saves at the same steps as
one that never stopped. Everything the loop needs to be exact on resume is a function of (seed, step) or saved in
the checkpoint: the k-th batch (`batches.iterate_batches(skip=...)`), the dropout draws (`seed_for_step`), the
optimizer state with its step counter (`checkpoints.save`). A checkpoint is only ever taken after an optimizer
update, never in the middle of an accumulated gradient.

From mlx_lm we take the building blocks (`grad_checkpoint`, the wired-memory limit; the optimizers, schedules and
LoRA layers come in through run.py), not its loop.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx.utils import tree_map
from mlx_lm.tuner.trainer import grad_checkpoint
from mlx_lm.utils import maybe_set_recommended_wired_limit
from tqdm import tqdm

from mlx_ft import progress
from mlx_ft.atomic import atomic_dir, atomic_path
from mlx_ft.config import TrainConfig
from mlx_ft.errors import UserError
from mlx_ft.models.adapters import ADAPTERS
from mlx_ft.models.run_folder import Run
from mlx_ft.system import devices
from mlx_ft.training import checkpoints, flops, loss_plot
from mlx_ft.training.batches import TokenizedChats, TokenizedPairs, TokenizedPrompts
from mlx_ft.training.checkpoints import TrainerState
from mlx_ft.training.loss import masked_loss
from mlx_ft.training.objectives import Objective, clear_cache


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, raised once a checkpoint of the last completed update is saved."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(step)
        self.step = step
        self.checkpoint = checkpoint


def loop(
    cfg: TrainConfig,
    run: Path,
    model: nn.Module,
    optimizer: optim.Optimizer,
    state: TrainerState,
    train_set: TokenizedChats | TokenizedPairs | TokenizedPrompts,
    valid_set: TokenizedChats | TokenizedPairs | TokenizedPrompts,
    objective: Objective[Any],
) -> str:
    """Train from step `state.step` to `cfg.iters`, writing into the run folder `run`; return why training ended:
    "finished", or the early stop's explanation. Ctrl-C raises `TrainingInterrupted` after saving a checkpoint.
    A NaN or infinite training or validation loss raises `UserError` at once, before anything is saved from that
    step on: the run's adapter and best/ are never written from diverged weights (earlier checkpoints stay).
    The `objective` (objectives.py) cuts the batches, prepares each one (DPO: its reference log-probabilities,
    part of the step's cost), gives the step's loss and scores the validation split."""
    world = mx.distributed.init()
    maybe_set_recommended_wired_limit()
    if cfg.grad_checkpoint:
        grad_checkpoint(model.layers[0])  # every layer of that class recomputes its activations in the backward pass
    step_fn, step_state = compiled_step(model, optimizer, cfg.grad_accumulation_steps, objective.loss)
    log = RunLog(run, model, state, cfg.iters, world, objective)
    steps = Steps(cfg, run, model, optimizer, state, objective, valid_set, world, log, step_fn, step_state)
    order = dict(loop=True, seed=cfg.seed, comm_group=world, skip=state.step, on_batch=log.count_batch)
    batches = objective.batches(train_set, cfg.batch_size, cfg.max_seq_length, **order)

    with deferred_interrupt() as interrupt_requested, log:
        model.train()
        if state.step == 0:
            steps.validate(0)
        grad = None  # the gradient summed over the micro-batches since the last update
        for step in range(state.step + 1, cfg.iters + 1):
            update = step % cfg.grad_accumulation_steps == 0
            grad = steps.train(step, next(batches), grad, update)
            steps.report(step)
            if reason := steps.save(step, update, interrupt_requested()):
                return reason
    if steps.main:
        checkpoints.save_weights(model, Run(run).adapter_file)
    return "finished"


@dataclass
class Steps:
    """What happens at each step of `loop`, in order: `train` (the compiled step and its checks), `report` (the
    progress row, validation), `save` (checkpoint, early stop, Ctrl-C). Everything is counted in global steps."""

    cfg: TrainConfig
    run: Path
    model: nn.Module
    optimizer: optim.Optimizer
    state: TrainerState
    objective: Objective[Any]
    valid_set: TokenizedChats | TokenizedPairs | TokenizedPrompts
    world: Any
    log: RunLog
    step_fn: Callable[..., tuple[mx.array, mx.array, Any]]
    step_state: list
    # Whether the weights may differ from those the run started from (a resumed run's were trained): a loss that
    # is already non-finite before that cannot be the learning rate's fault.
    trained: bool = field(init=False)
    main: bool = field(init=False)  # the one worker that writes files

    def __post_init__(self) -> None:
        self.trained = self.state.step > 0
        self.main = self.world.rank() == 0

    def train(self, step: int, batch: tuple[mx.array, ...], grad: Any, update: bool) -> Any:
        """One micro-batch through the compiled step (an optimizer update with `update`); the summed gradient."""
        mx.random.seed(seed_for_step(self.cfg.seed, step))  # dropout's draws: a function of (seed, step)
        tic = time.perf_counter()
        batch = self.objective.prepare(batch)
        for _ in range(self.objective.updates):  # more than one only where the config forbids accumulation
            loss, aux, grad = self.step_fn(batch, grad, update)
            mx.eval(self.step_state, loss, aux, grad)
            clear_cache(self.cfg.clear_cache_threshold)
        # Checked before anything below saves: this step's update has already applied the non-finite gradient.
        if kind := nonfinite(self.world, loss_value := loss.item()):
            raise diverged("loss", kind, step, self.optimizer.learning_rate.item(), self.trained)
        self.trained = self.trained or update
        self.state.step = step
        self.log.step(loss_value, time.perf_counter() - tic, aux)
        return grad

    def report(self, step: int) -> None:
        last = step == self.cfg.iters
        if step % self.cfg.steps_per_report == 0 or last:
            self.log.report(step, self.optimizer.learning_rate.item())
        if step % self.cfg.steps_per_eval == 0 or last:
            self.validate(step)

    def validate(self, step: int) -> None:
        """Score the validation split, keep the best adapter in best/, count evaluations without improvement."""
        cfg, run, model, state = self.cfg, self.run, self.model, self.state
        if not len(self.valid_set):
            return
        tic = time.perf_counter()
        sizes = (cfg.batch_size, cfg.max_seq_length, cfg.val_batches, cfg.clear_cache_threshold)
        extra = self.objective.evaluate(model, self.valid_set, *sizes)
        val = extra.pop("loss")
        if kind := nonfinite(self.world, val):
            raise diverged("validation loss", kind, step, self.optimizer.learning_rate.item(), self.trained)
        model.train()
        improved = state.best_val_loss is None or val < state.best_val_loss
        if improved:
            state.best_val_loss, state.best_step, state.evals_without_improvement = val, step, 0
            if self.main and step > 0:
                save_adapter_folder(run, model, Run(run).best_dir)
        else:
            state.evals_without_improvement += 1
        self.log.validation(step, val, time.perf_counter() - tic, improved, extra)

    def save(self, step: int, update: bool, interrupt_requested: bool) -> str | None:
        """Checkpoint when due, and stop early or on Ctrl-C (raising `TrainingInterrupted`): the early stop's
        explanation, or None to go on."""
        cfg, run, model, state = self.cfg, self.run, self.model, self.state
        patience = cfg.early_stopping_patience
        early_stop = patience is not None and state.evals_without_improvement >= patience
        # Ctrl-C is heeded at the next update, and only when every worker agrees on the step to stop at.
        interrupted = update and agreed(self.world, interrupt_requested)
        checkpoint = None  # only after an update: a checkpoint never holds half an accumulated gradient
        if update and (step % cfg.save_every == 0 or step == cfg.iters or early_stop or interrupted):
            self.log.count_tokens()  # a collective: every worker takes part
            if self.main:
                checkpoint = checkpoints.save(run, model, self.optimizer, state)
                checkpoints.prune(run, cfg.keep_checkpoints)
        if interrupted:
            if self.main:
                checkpoints.save_weights(model, Run(run).adapter_file)
            raise TrainingInterrupted(step, checkpoint)
        if early_stop:
            if self.main:
                keep_best_adapter(run, model)
            return (
                f"early stop: validation loss has not improved for {patience} evaluations; kept the best "
                f"adapter, from step {state.best_step}"
            )
        return None


# ------------------------------------------------------------------------------------------------ the compiled step


def compiled_step(
    model: nn.Module,
    optimizer: optim.Optimizer,
    accumulate: int,
    loss_fn: Callable[..., tuple[mx.array, mx.array]] = masked_loss,
) -> tuple[Callable[..., tuple[mx.array, mx.array, Any]], list]:
    """`step(batch, grad, update) -> (loss, aux, grad)`: the loss (and `loss_fn`'s second output: the learned tokens,
    or a preference batch's metrics) and gradient of one micro-batch, added to `grad` (the sum so far, or None);
    with `update`, the sum is averaged over the micro-batches and the workers and applied, and the returned gradient
    is None. Compiled once per batch shape, with the model's and the optimizer's state and the random key as implicit
    inputs and outputs (the returned list: evaluate it after each step)."""
    loss_and_grad = nn.value_and_grad(model, loss_fn)
    state = [model.state, optimizer.state, mx.random.state]

    @partial(mx.compile, inputs=state, outputs=state)
    def step(batch: tuple[mx.array, ...], grad: Any, update: bool) -> tuple[mx.array, mx.array, Any]:
        (loss, aux), g = loss_and_grad(model, *batch)
        if grad is not None:
            g = tree_map(mx.add, g, grad)
        if not update:
            return loss, aux, g
        g = nn.average_gradients(g)  # mean over the mlx.launch workers; nothing to do for one
        if accumulate > 1:
            g = tree_map(lambda x: x / accumulate, g)
        optimizer.update(model, g)
        return loss, aux, None

    return step, state


def agreed(world: Any, local: bool) -> bool:
    """Whether any worker says yes. Every worker must stop at the same step, or the others would wait forever in
    their next collective."""
    if world.size() == 1:
        return local
    return mx.distributed.all_sum(mx.array(int(local)), stream=mx.cpu).item() > 0


def nonfinite(world: Any, value: float) -> str | None:
    """Whether `value` is NaN or infinite on some worker ("NaN", "inf"; None when finite everywhere). Every worker
    gets the same answer, so all of them stop at the same step; one that went on would wait forever in its next
    collective."""
    nan, inf = math.isnan(value), math.isinf(value)
    if world.size() > 1:
        nan, inf = (n > 0 for n in mx.distributed.all_sum(mx.array([nan, inf], mx.int32), stream=mx.cpu).tolist())
    return "NaN" if nan else "inf" if inf else None


def diverged(what: str, kind: str, step: int, lr: float, trained: bool) -> UserError:
    """The one-line error for a non-finite loss. Before any update it is the model's (or the data's) doing, and
    lowering the learning rate would not help."""
    if not trained:
        return UserError(
            f"{what} became {kind} at step {step}, before any update: the model gives non-finite outputs on this "
            "data, so the learning rate is not the cause"
        )
    return UserError(f"{what} became {kind} at step {step} (learning rate {lr:.3g}): lower it")


def seed_for_step(seed: int, step: int) -> int:
    """The random seed used for `step`. Reseeding every step makes dropout's random stream a function of
    (seed, step), so a resumed run draws exactly what an uninterrupted one would (MLX cannot restore a saved key)."""
    return (seed * 1_000_003 + step) % 2**32


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C: finish the current update, save a checkpoint, stop. Second Ctrl-C: stop at once."""
    requested = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal requested
        if requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        requested = True
        print(
            "\nmlx_ft: stopping after this step to save a checkpoint (Ctrl-C again to stop now, unsaved)",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


def save_adapter_folder(run: Path, model: nn.Module, dest: Path) -> None:
    """An adapter folder (weights + the run's adapter_config.json) that mlx_lm.load accepts, e.g. `run/best`."""
    with atomic_dir(dest) as tmp:
        checkpoints.save_weights(model, tmp / ADAPTERS)
        shutil.copy2(Run(run).adapter_config_file, tmp / "adapter_config.json")


def keep_best_adapter(run: Path, model: nn.Module) -> None:
    """After an early stop the run's adapter is the best one seen (best/), or the current one if none was saved."""
    best = Run(run).best_dir / ADAPTERS
    if not best.is_file():
        checkpoints.save_weights(model, Run(run).adapter_file)
        return
    with atomic_path(Run(run).adapter_file) as tmp:
        shutil.copy2(best, tmp)


# ---------------------------------------------------------------------------------------- what the run writes down


class RunLog:
    """The run's bookkeeping: token and FLOP counters, metrics.jsonl rows, the progress line and bar.

    Counters are per worker until `count_tokens` sums them over all workers into `state` (a collective, so every
    worker calls it at the same steps: `report` and the checkpoint do). Only the first worker writes and prints."""

    def __init__(
        self, run: Path, model: nn.Module, state: TrainerState, iters: int, world: Any, objective: Objective[Any]
    ) -> None:
        self.run, self.state, self.iters, self.world = run, state, iters, world
        self.objective = objective  # the names of its metrics, and how they read on the progress line
        self.main = world.rank() == 0
        self.work = flops.StepWork.of(model)  # None for models whose shapes it cannot read
        self.peak_flops = devices.current().peak_flops
        self.start_step = state.step
        self.start = (state.tokens, state.trained_tokens)
        self.tokens = self.learned = 0  # this worker's real and learned tokens since the start of this call
        self.at_report = (state.tokens, state.trained_tokens)
        self.losses: list[float] = []  # this worker's loss of each step since the last report
        self.metrics: list[list[float]] = []  # and the objective's metrics of each step, if it has any
        self.seconds = 0.0  # time in the steps since the last report
        self.flops = 0.0  # FLOPs this worker's batches needed since the last report (flops.py)
        self.train_seconds = 0.0  # time in the steps since the start of this call (for the ETA)
        self.t0 = time.time()
        self.bar = tqdm(
            total=iters,
            initial=state.step,
            unit="step",
            file=sys.stderr,
            dynamic_ncols=True,
            disable=None if self.main else True,
            leave=True,
        )

    def __enter__(self) -> RunLog:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.close()

    def count_batch(self, lengths: list[int], learned: int) -> None:
        """`iterate_batches`' on_batch: the real length of each example of a training batch (this worker's share)
        and its learned tokens."""
        self.tokens += sum(lengths)
        self.learned += learned
        if self.work is not None:
            self.flops += self.work.batch(lengths, learned)

    def step(self, loss: float, seconds: float, aux: mx.array) -> None:
        """One step's loss and time, and the metrics in the loss's `aux` (when the objective names any)."""
        self.losses.append(loss)
        if self.objective.metrics:
            self.metrics.append(aux.tolist())
        self.seconds += seconds
        self.train_seconds += seconds
        self.bar.update(1)

    def count_tokens(self) -> None:
        """Bring state.tokens and state.trained_tokens up to date with every worker's batches."""
        counts = mx.array([self.tokens, self.learned], mx.int64)
        if self.world.size() > 1:
            counts = mx.distributed.all_sum(counts, stream=mx.cpu)
        tokens, learned = counts.tolist()
        self.state.tokens, self.state.trained_tokens = self.start[0] + tokens, self.start[1] + learned

    def report(self, step: int, lr: float) -> None:
        """The training row (mean loss, speed, memory since the last report) and progress line."""
        loss = sum(self.losses)
        if self.world.size() > 1:  # each worker's loss is its share of the global batch's mean
            loss = mx.distributed.all_sum(mx.array(loss), stream=mx.cpu).item() / self.world.size()
        means: dict[str, float] = {}
        if self.metrics:  # each worker's are means over its own examples, and every worker has as many
            summed = mx.array(self.metrics).sum(axis=0) / (len(self.metrics) * self.world.size())
            if self.world.size() > 1:
                summed = mx.distributed.all_sum(summed, stream=mx.cpu)
            means = dict(zip(self.objective.metrics, summed.tolist()))
        self.count_tokens()
        st, secs = self.state, self.seconds
        row = {
            "step": step,
            "loss": loss / len(self.losses),
            **means,
            "lr": lr,
            "step_s": secs / len(self.losses),
            "tokens_per_s": (st.tokens - self.at_report[0]) / secs,
            "trained_tokens_per_s": (st.trained_tokens - self.at_report[1]) / secs,
            "tokens": st.tokens,
            "trained_tokens": st.trained_tokens,
            "peak_memory_gb": mx.get_peak_memory() / 1e9,
        }
        if self.work is not None:  # per device: this worker's own batches over its own time
            row["tflops"] = self.flops / secs / 1e12
            if self.peak_flops:
                row["mfu"] = self.flops / secs / self.peak_flops
        self.at_report, self.losses, self.seconds, self.flops = (st.tokens, st.trained_tokens), [], 0.0, 0.0
        self.metrics = []
        self._write({**row, **self.objective.extras()})
        speed = (
            f"  MFU {row['mfu']:.1%}"
            if "mfu" in row
            else f"  {row['tflops'] * 1e3:,.0f} GFLOP/s"
            if "tflops" in row
            else ""
        )
        eta = self.train_seconds / max(step - self.start_step, 1) * (self.iters - step)
        self._say(
            f"step {step}/{self.iters}  loss {row['loss']:.3f}{self.objective.describe(row)}  lr {lr:.2e}  "
            f"{row['tokens_per_s']:,.0f} tok/s{speed}  peak {row['peak_memory_gb']:.2f} GB  "
            f"eta {progress.duration(eta)}"
        )
        self.bar.set_postfix_str(
            f"loss {row['loss']:.3f} lr {lr:.1e} {row['tokens_per_s']:,.0f} tok/s mem {row['peak_memory_gb']:.2f}GB",
            refresh=False,
        )

    def validation(
        self, step: int, val: float, seconds: float, improved: bool, extra: dict[str, float] | None = None
    ) -> None:
        st = self.state
        extra = extra or {}
        self._write(
            {"step": step, "val_loss": val, **{f"val_{k}": v for k, v in extra.items()}, "val_time": round(seconds, 3)}
        )
        self._say(
            f"step {step}/{self.iters}  val_loss {val:.3f}{self.objective.describe(extra, 'val_')}"
            + ("  (best)" if improved else f"  (best {st.best_val_loss:.3f} at step {st.best_step})")
        )
        if self.main:
            loss_plot.draw(Run(self.run).metrics_file, Run(self.run).loss_plot)

    def _write(self, row: dict[str, Any]) -> None:
        if self.main:
            row = {"time": round(time.time() - self.t0, 3), **row}
            with Run(self.run).metrics_file.open("a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")  # one whole line per write: a live reader never sees half a row

    def _say(self, text: str) -> None:
        if self.main:
            self.bar.write(text, file=sys.stderr)
