"""One thread generates every answer the server gives; answers asked for at the same time are generated together.

MLX generation is not re-entrant across threads, and on one device the way to serve eight people at once is to
run their decode steps as one batch: each step then costs little more than one answer's step. So request threads
only submit a `Job` and read its pieces from a queue, and this thread runs mlx_lm's `BatchGenerator` (continuous
batching): a job that arrives while others are being generated joins the batch at the next step, a finished or
cancelled one leaves it, and the others go on undisturbed. Each job keeps its own sampler, penalties, stop strings
and detokenizer, so a stream never sees another's tokens.

A batch runs on one model. A job for another model (another run's adapter, another base) waits until the batch
has drained, then the engine switches (swapping the adapter in, which takes a millisecond, or loading another
base) and that model's jobs are generated together.
"""

from __future__ import annotations

import queue
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import mlx.core as mx
from mlx_lm.generate import BatchGenerator, make_stop_sequences

from mlx_ft.inference import generation
from mlx_ft.inference.sampling import Sampling


class Models(Protocol):
    """What the scheduler needs of the models it answers with (the engine): make one of them the one answering."""

    def activate(self, ref: Any) -> tuple[Any, float]:
        """(the base now wearing `ref`'s adapter, with `.model` and `.tokenizer`; milliseconds the switch took)."""
        ...


MAX_BATCH = 16  # answers decoded together; more wait for a free place (memory grows with each one's cache)
PREFILL_BATCH = 8  # prompts processed together when several arrive at once


@dataclass
class Job:
    """One answer asked of the scheduler: read `pieces()`, `cancel()` to stop it early."""

    prompt: list[int]
    sampling: Sampling
    ref: Any  # the engine's ModelRef (None: the served model)
    key: Any = None  # the engine's model key: jobs with equal keys are generated in one batch
    events: queue.Queue[Any] = field(default_factory=queue.Queue)  # Chunk ... then None; or an exception
    switch_ms: float | None = None  # the time it took to make the job's model the one answering
    # perf_counter() when the scheduler took the job up (before its model switch) and when its first token came: a
    # job queued behind another model's batch is not charged for the wait.
    started: float | None = None
    first_token: float | None = None
    cancelled: threading.Event = field(default_factory=threading.Event)

    def cancel(self) -> None:
        self.cancelled.set()

    def pieces(self) -> Iterator[generation.Chunk]:
        """The answer's pieces as they come; cancels the job if the reader stops early (a client went away)."""
        try:
            while (item := self.events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()


def merged(jobs: Sequence[Job]) -> Iterator[tuple[int, generation.Chunk | BaseException | None]]:
    """The events of several jobs as they come, each tagged with its job's index: the job's pieces, then None when it
    ends or the exception that ended it; one job failing leaves the others going. Closing the iterator early (a
    client that went away) cancels them all."""
    out: queue.Queue[tuple[int, generation.Chunk | BaseException | None]] = queue.Queue()

    def forward(i: int, job: Job) -> None:
        try:
            for chunk in job.pieces():
                out.put((i, chunk))
            out.put((i, None))
        except BaseException as e:  # noqa: BLE001 - handed to the reader, tagged with its job
            out.put((i, e))

    for i, job in enumerate(jobs):  # a reader per job: a queue cannot be waited on together with others
        threading.Thread(target=forward, args=(i, job), name="mlx_ft-merge", daemon=True).start()
    left = len(jobs)
    try:
        while left:
            i, item = out.get()
            if not isinstance(item, generation.Chunk):
                left -= 1
            yield i, item
    finally:
        for job in jobs:
            job.cancel()


@dataclass
class _Active:
    job: Job
    text: generation.AnswerText
    started: float
    tokens: int = 0


class Scheduler:
    def __init__(self, engine: Models) -> None:
        self._engine = engine
        self._inbox: queue.Queue[list[Job]] = queue.Queue()
        self._waiting: deque[Job] = deque()
        self._active: dict[int, _Active] = {}
        self._gen: BatchGenerator | None = None
        self._model: Any = None  # the model key the batch runs on
        self._tokenizer: Any = None
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def submit(self, *jobs: Job) -> None:
        """Queue `jobs`; those submitted together start together (one prompt batch), so the `n` choices of one
        request are computed alike."""
        self._ensure_thread()
        self._inbox.put(list(jobs))

    def _ensure_thread(self) -> None:
        with self._start_lock:
            if self._thread is None:
                # A daemon: an idle scheduler must not keep the process alive (the server ends with os._exit).
                self._thread = threading.Thread(target=self._run, name="mlx_ft-generation", daemon=True)
                self._thread.start()

    def _run(self) -> None:
        stream = mx.default_stream(mx.default_device())  # this thread's stream, for every step it runs
        with mx.stream(stream):
            while True:
                try:
                    self._take_inbox(block=not self._active and not self._waiting)
                    self._admit()
                    if self._active:
                        self._step()
                except Exception as e:  # noqa: BLE001 - reported to the requests it broke; the thread goes on
                    self._fail_all(e)

    def _take_inbox(self, block: bool) -> None:
        while True:
            try:
                item = self._inbox.get(block=block)
            except queue.Empty:
                return
            block = False
            self._waiting.extend(item)

    def _admit(self) -> None:
        """Move waiting jobs into the batch: those for the batch's model, in order, until one is for another model
        (which then waits for the batch to drain, so no model waits forever)."""
        while self._waiting and len(self._active) < MAX_BATCH:
            job = self._waiting[0]
            if job.cancelled.is_set():
                self._waiting.popleft()
                job.events.put(None)
                continue
            if self._active and job.key != self._model:
                return
            self._waiting.popleft()
            job.started = time.perf_counter()
            try:
                self._switch(job)
                self._insert(job)
            except Exception as e:  # noqa: BLE001 - a model that cannot load fails its job, not the server
                job.events.put(e)

    def _switch(self, job: Job) -> None:
        """Make the job's model the one answering (the batch is empty, or already runs on it)."""
        if self._active and job.key == self._model:
            job.switch_ms = 0.0  # already answering: never touch the model under a running batch
            return
        base, job.switch_ms = self._engine.activate(job.ref)
        if self._gen is None or self._gen.model is not base.model:
            self._close()
            self._gen = BatchGenerator(
                base.model,
                stop_tokens=[[t] for t in base.tokenizer.eos_token_ids],
                completion_batch_size=MAX_BATCH,
                prefill_batch_size=PREFILL_BATCH,
            )
        self._model = job.key
        self._tokenizer = base.tokenizer

    def _insert(self, job: Job) -> None:
        assert self._gen is not None
        sampling = job.sampling
        (uid,) = self._gen.insert(
            [job.prompt],
            [sampling.max_tokens],
            samplers=[generation.sampler(sampling)],
            logits_processors=[generation.logits_processors(sampling)],
            stop_sequences=[make_stop_sequences(self._tokenizer)],
        )
        self._active[uid] = _Active(job, generation.AnswerText(self._tokenizer, sampling.stop), time.perf_counter())

    def _step(self) -> None:
        assert self._gen is not None
        gone = [uid for uid, a in self._active.items() if a.job.cancelled.is_set()]
        if gone:
            self._gen.remove(gone)
            for uid in gone:
                self._active.pop(uid).job.events.put(None)
            if not self._active:
                return
        _, responses = self._gen.next()
        ended, stopped = [], []
        for r in responses:
            a = self._active.get(r.uid)
            if a is None:
                continue
            a.tokens += 1
            if a.job.first_token is None:
                a.job.first_token = time.perf_counter()
            reason = r.finish_reason
            if reason == "stop":  # the end-of-turn token: not part of the answer
                a.tokens -= 1
                text, infos = a.text.finish()
            else:
                top = a.job.sampling.top_logprobs
                info = generation.token_logprob(r.token, r.logprobs, top) if top is not None else None
                text, infos = a.text.add(r.token, info)
                if a.text.stopped:
                    reason = "stop"
                    if r.finish_reason is None:  # a stop string: mlx_lm does not know, so take it out of the batch
                        stopped.append(r.uid)
                elif reason == "length":
                    more, more_infos = a.text.finish()
                    text, infos = text + more, infos + more_infos
                    reason = "stop" if a.text.stopped else reason  # the last piece held a stop string
            if text or infos or reason is not None:
                elapsed = time.perf_counter() - a.started
                a.job.events.put(
                    generation.Chunk(
                        text, reason, len(a.job.prompt), a.tokens, a.tokens / elapsed if elapsed else 0.0, infos
                    )
                )
            if reason is not None:
                a.job.events.put(None)
                ended.append(r.uid)
        for uid in ended:
            self._active.pop(uid)
        if stopped:
            self._gen.remove(stopped)

    def _fail_all(self, error: BaseException) -> None:
        """A step that raised (out of memory, a bug) ends every answer in the batch with the error; the thread and
        the server go on."""
        for a in self._active.values():
            a.job.events.put(error)
        self._active.clear()
        self._model = None
        gen, self._gen = self._gen, None
        if gen is not None:
            try:
                gen.close()
            except Exception:  # noqa: BLE001, S110 - the generator is dropped anyway
                pass

    def _close(self) -> None:
        if self._gen is not None:
            self._gen.close()
            self._gen = None
