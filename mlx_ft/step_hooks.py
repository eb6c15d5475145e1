"""What happens between two training steps: progress, metrics, validation, checkpoints, early stopping, Ctrl-C.

mlx_lm's `train` runs the steps; it calls back after each one (we ask it to report every step) and we do the rest
here, counting in *global* steps so that a resumed run reports, evaluates and saves at the same steps as one that
never stopped. Training ends by raising `StopTraining` (finished, early-stopped) or `TrainingInterrupted` (Ctrl-C)
from the callback: mlx_lm's loop has no other exit, and its own end-of-run save writes non-atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
from mlx_lm.tuner.callbacks import TrainingCallback
from tqdm import tqdm

from mlx_ft import checkpoints, devices, flops, loss_plot
from mlx_ft.atomic import atomic_dir, atomic_path
from mlx_ft.checkpoints import ADAPTERS, TrainerState


class StopTraining(Exception):
    """Raised after the last step (or an early stop) once everything is saved."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C, after a checkpoint of the last completed step was saved."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        super().__init__(step)
        self.step = step
        self.checkpoint = checkpoint


def seed_for_step(seed: int, step: int) -> int:
    """The random seed used for `step`. Reseeding every step makes dropout's random stream a function of
    (seed, step), so a resumed run draws exactly what an uninterrupted one would (MLX cannot restore a saved key)."""
    return (seed * 1_000_003 + step) % 2**32


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[Callable[[], bool]]:
    """First Ctrl-C: finish the current step, save a checkpoint, stop. Second Ctrl-C: stop at once."""
    requested = False

    def handler(signum: int, frame: Any) -> None:
        nonlocal requested
        if requested:
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        requested = True
        print("\nmlx_ft: stopping after this step to save a checkpoint (Ctrl-C again to stop now, unsaved)",
              file=sys.stderr, flush=True)

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield lambda: requested
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class Schedule:
    """When things happen, in global steps."""

    iters: int
    steps_per_report: int
    steps_per_eval: int
    save_every: int
    grad_accumulation_steps: int
    early_stopping_patience: int | None
    keep_checkpoints: int


class StepHooks(TrainingCallback):
    def __init__(self, run: Path, model: nn.Module, optimizer: optim.Optimizer, state: TrainerState,
                 schedule: Schedule, seed: int, evaluate: Callable[[], float] | None,
                 interrupt_requested: Callable[[], bool]) -> None:
        self.run, self.model, self.optimizer, self.state = run, model, optimizer, state
        self.schedule, self.seed, self.evaluate = schedule, seed, evaluate
        self.interrupt_requested = interrupt_requested
        self.tokens_seen = 0  # real tokens in the training batches this worker has been handed since the start
        self.work = flops.StepWork.of(model)
        self.window_flops = 0.0  # FLOPs those batches need (flops.py), since the last report
        self.peak_flops = devices.current().peak_flops
        self.start_step = state.step
        self.tokens_at_start = state.tokens
        self.tokens_at_report = state.tokens
        self.group = mx.distributed.init()
        self.main = self.group.rank() == 0
        self.t0 = time.time()
        self.window: list[tuple[float, float, int]] = []  # per step since the last report: loss, seconds, learned
        self.trained_in_call = 0
        self.train_seconds = 0.0
        self.bar = tqdm(total=schedule.iters, initial=state.step, unit="step", file=sys.stderr, dynamic_ncols=True,
                        disable=None if self.main else True, leave=True)

    # ------------------------------------------------------------------------------------------------- reporting

    def _log(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        row = {"time": round(time.time() - self.t0, 3), **row}
        with (self.run / "metrics.jsonl").open("a", encoding="utf-8") as f:
            f.write(json.dumps(row) + "\n")  # one whole line per write: a live reader never sees half a row

    def _say(self, text: str) -> None:
        if self.main:
            self.bar.write(text, file=sys.stderr)

    def count_batch(self, lengths: list[int], learned: int) -> None:
        """`iterate_batches`' on_batch: the real length of each example of a training batch (this worker's share)
        and its learned tokens."""
        self.tokens_seen += sum(lengths)
        if self.work is not None:
            self.window_flops += self.work.batch(lengths, learned)

    def _count_tokens(self) -> None:
        """Bring the count of real tokens processed by all workers up to date."""
        local = self.tokens_seen
        if self.group.size() > 1:
            local = int(mx.distributed.all_sum(mx.array(local), stream=mx.cpu).item())
        self.state.tokens = self.tokens_at_start + local

    def _report(self, step: int, info: dict) -> None:
        losses, seconds, learned = zip(*self.window)
        self._count_tokens()
        tokens = self.state.tokens
        real = tokens - self.tokens_at_report
        self.tokens_at_report = tokens
        secs = sum(seconds)
        row = {"step": step, "loss": sum(losses) / len(losses), "lr": info["learning_rate"],
               "tokens_per_s": real / secs, "trained_tokens_per_s": sum(learned) / secs,
               "tokens": tokens, "trained_tokens": self.state.trained_tokens,
               "peak_memory_gb": info["peak_memory"]}
        if self.work is not None:  # per device: this worker's own batches over its own time
            row["tflops"] = self.window_flops / secs / 1e12
            if self.peak_flops:
                row["mfu"] = self.window_flops / secs / self.peak_flops
        self.window_flops = 0.0
        self._log(row)
        speed = (f"  MFU {row['mfu']:.1%}" if "mfu" in row
                 else f"  {row['tflops'] * 1e3:,.0f} GFLOP/s" if "tflops" in row else "")
        done = step - self.start_step
        eta = self.train_seconds / max(done, 1) * (self.schedule.iters - step)
        self._say(f"step {step}/{self.schedule.iters}  loss {row['loss']:.3f}  lr {row['lr']:.2e}  "
                  f"{row['tokens_per_s']:,.0f} tok/s{speed}  peak {row['peak_memory_gb']:.2f} GB  "
                  f"eta {_duration(eta)}")
        self.bar.set_postfix_str(f"loss {row['loss']:.3f} lr {row['lr']:.1e} {row['tokens_per_s']:,.0f} tok/s "
                                 f"mem {row['peak_memory_gb']:.2f}GB", refresh=False)
        self.window = []

    # ------------------------------------------------------------------------------------------------ validation

    def validate(self, step: int) -> None:
        """Score the validation split, keep the best adapter, count evaluations without improvement."""
        if self.evaluate is None:
            return
        t = time.perf_counter()
        val = self.evaluate()
        self.model.train()
        st = self.state
        improved = st.best_val_loss is None or val < st.best_val_loss
        if improved:
            st.best_val_loss, st.best_step, st.evals_without_improvement = val, step, 0
            if self.main and step > 0:
                self._save_best()
        else:
            st.evals_without_improvement += 1
        self._log({"step": step, "val_loss": val, "val_time": round(time.perf_counter() - t, 3)})
        self._say(f"step {step}/{self.schedule.iters}  val_loss {val:.3f}"
                  + ("  (best)" if improved else f"  (best {st.best_val_loss:.3f} at step {st.best_step})"))
        if self.main:
            loss_plot.draw(self.run / "metrics.jsonl", self.run / "loss.png")

    def _save_best(self) -> None:
        with atomic_dir(self.run / "best") as tmp:
            checkpoints.save_weights(self.model, tmp / ADAPTERS)
            shutil.copy2(self.run / "adapter_config.json", tmp / "adapter_config.json")

    # ------------------------------------------------------------------------------------------------- each step

    def on_train_loss_report(self, info: dict) -> None:
        step = self.start_step + info["iteration"]
        sch, st = self.schedule, self.state
        st.step = step
        learned = info["trained_tokens"] - self.trained_in_call
        self.trained_in_call = info["trained_tokens"]
        st.trained_tokens += learned
        seconds = 1.0 / info["iterations_per_second"]
        self.train_seconds += seconds
        self.window.append((info["train_loss"], seconds, learned))
        mx.random.seed(seed_for_step(self.seed, step + 1))
        self.bar.update(1)

        last = step >= sch.iters
        if step % sch.steps_per_report == 0 or last:
            self._report(step, info)
        if step % sch.steps_per_eval == 0 or last:
            self.validate(step)
        patience = sch.early_stopping_patience
        early_stop = patience is not None and st.evals_without_improvement >= patience
        at_update = step % sch.grad_accumulation_steps == 0  # a checkpoint cannot hold a half-accumulated gradient
        interrupted = at_update and self._interrupt_agreed()
        ckpt = None
        if step % sch.save_every == 0 or last or early_stop or interrupted:
            self._count_tokens()  # collective: every worker takes part
            if self.main:
                ckpt = checkpoints.save(self.run, self.model, self.optimizer, st)
                checkpoints.prune(self.run, sch.keep_checkpoints)
        if interrupted:
            if self.main:
                checkpoints.save_weights(self.model, self.run / ADAPTERS)
            self.bar.close()
            raise TrainingInterrupted(step, ckpt)
        if early_stop or last:
            if self.main:
                if early_stop and (self.run / "best" / ADAPTERS).is_file():
                    with atomic_path(self.run / ADAPTERS) as tmp:
                        shutil.copy2(self.run / "best" / ADAPTERS, tmp)
                else:
                    checkpoints.save_weights(self.model, self.run / ADAPTERS)
            self.bar.close()
            reason = (f"early stop: validation loss has not improved for {patience} evaluations; kept the best "
                      f"adapter, from step {st.best_step}") if early_stop else "finished"
            raise StopTraining(reason)

    def _interrupt_agreed(self) -> bool:
        """Whether to stop now. Every worker must agree on the step, or the others would wait forever in all_sum."""
        local = self.interrupt_requested()
        if self.group.size() == 1:
            return local
        return mx.distributed.all_sum(mx.array(int(local)), stream=mx.cpu).item() > 0


def _duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}h{s // 60 % 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"
