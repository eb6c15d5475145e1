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

Commands that answer a list and exit (eval, `infer --file`, `infer` and `chat` in the terminal) use the same
scheduler without a thread: `answer_here` runs its steps in the calling thread, so a `Sampling` answers alike
wherever it is asked.

The server's scheduler keeps a prompt cache (`prompt_cache.py`): a job starts from the KV state of the earlier answer
sharing the longest prefix with its prompt (the conversation so far) and prefills only the rest; every answer that
ends leaves its KV state there for the next turn.
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

from mlx_ft.inference import decode
from mlx_ft.inference.prompt_cache import PromptCache
from mlx_ft.inference.sampling import Sampling


class Models(Protocol):
    """What the scheduler needs of the models it answers with (the engine): make one of them the one answering."""

    def activate(self, ref: Any) -> tuple[Any, float]:
        """(the base now wearing `ref`'s adapter, with `.model`, `.tokenizer` and `.identity`: a hashable that
        changes whenever the weights answering change; milliseconds the switch took)."""
        ...


MAX_BATCH = 16  # answers decoded together; more wait for a free place (memory grows with each one's cache)
PREFILL_BATCH = 8  # prompts processed together when several arrive at once
# A command's batch (eval, `infer --file`): no chats share its memory. mlx_lm's default, which eval's own batch loop
# used before; 16 decoded ~25% fewer tokens/s (48 greedy answers on the tiny Qwen2 fixture, 2-core CPU).
COMMAND_BATCH = 32


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
    tokens: list[int] = field(default_factory=list)  # the ids generated so far, the end-of-turn token left out
    cached_tokens: int = 0  # how many of the prompt's tokens were read from the prompt cache, not computed

    def cancel(self) -> None:
        self.cancelled.set()

    def figures(self) -> dict[str, Any]:
        """What a page shows under the answer: its prompt's tokens, how many of them came from the prompt cache, and
        its times from when the scheduler took it up (so a job that waited for another model's batch is not
        charged for the wait): `ttft_s` to the first token, `seconds` to now (its end, when asked as it ends),
        `switch_ms` the model switch alone."""
        now = time.perf_counter()
        started = self.started if self.started is not None else now
        first = self.first_token if self.first_token is not None else now
        return {
            "prompt_tokens": len(self.prompt),
            "cached_tokens": self.cached_tokens,
            "seconds": round(now - started, 3),
            "ttft_s": round(first - started, 3),
            "switch_ms": round(self.switch_ms or 0.0, 3),
        }

    def pieces(self) -> Iterator[decode.Chunk]:
        """The answer's pieces as they come; cancels the job if the reader stops early (a client went away)."""
        try:
            while (item := self.events.get()) is not None:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            self.cancel()


def _events(job: Job) -> Iterator[decode.Chunk | BaseException | None]:
    """One job's events as `merged` tags them: its pieces, then None when it ends or the exception that ended it."""
    try:
        yield from job.pieces()
    except Exception as e:  # noqa: BLE001 - handed to the reader, tagged with its job
        yield e
        return
    yield None


def merged(jobs: Sequence[Job]) -> Iterator[tuple[int, decode.Chunk | BaseException | None]]:
    """The events of several jobs as they come, each tagged with its job's index: the job's pieces, then None when it
    ends or the exception that ended it; one job failing leaves the others going. Closing the iterator early (a
    client that went away) cancels them all."""
    try:
        if len(jobs) == 1:  # no reader thread to start: the one job's queue is read here
            yield from ((0, item) for item in _events(jobs[0]))
            return
        out: queue.Queue[tuple[int, decode.Chunk | BaseException | None]] = queue.Queue()

        def forward(i: int, job: Job) -> None:
            for item in _events(job):
                out.put((i, item))

        for i, job in enumerate(jobs):  # a reader per job: a queue cannot be waited on together with others
            threading.Thread(target=forward, args=(i, job), name="mlx_ft-merge", daemon=True).start()
        left = len(jobs)
        while left:
            i, item = out.get()
            if not isinstance(item, decode.Chunk):
                left -= 1
            yield i, item
    finally:
        for job in jobs:
            job.cancel()


@dataclass
class _Active:
    job: Job
    text: decode.AnswerText
    started: float
    tokens: int = 0


class Scheduler:
    def __init__(self, engine: Models, max_batch: int = MAX_BATCH, cache: PromptCache | None = None) -> None:
        self._engine = engine
        self._max_batch = max_batch
        self.cache = cache
        self._weights: Any = None  # the identity of the weights answering: the prompt cache's key
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

    def run_here(self, jobs: Sequence[Job]) -> Iterator[None]:
        """Generate `jobs` in the calling thread, one decode step per iteration, until every one has ended: for a
        scheduler without a thread (a command answering a list). An error ends the iteration, not just the jobs."""
        if self._thread is not None:
            raise RuntimeError("this scheduler generates in its own thread: submit jobs to it instead")
        self._waiting.extend(jobs)
        try:
            while self._waiting or self._active:
                self._admit()
                if self._active:
                    self._step()
                yield
        finally:
            self._close()

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
        while self._waiting and len(self._active) < self._max_batch:
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
                completion_batch_size=self._max_batch,
                prefill_batch_size=PREFILL_BATCH,
            )
        self._model = job.key
        self._tokenizer = base.tokenizer
        self._weights = base.identity

    def _insert(self, job: Job) -> None:
        assert self._gen is not None
        sampling = job.sampling
        cache, job.cached_tokens = self.cache.take(self._weights, job.prompt) if self.cache is not None else (None, 0)
        (uid,) = self._gen.insert(
            [job.prompt[job.cached_tokens :]],
            [sampling.max_tokens],
            caches=[cache] if cache is not None else None,
            # the tokens the cache holds: the penalties' context is the whole prompt, as without a cache
            all_tokens=[job.prompt[: job.cached_tokens]],
            samplers=[decode.sampler(sampling)],
            logits_processors=[decode.logits_processors(sampling, self._tokenizer)],
            stop_sequences=[make_stop_sequences(self._tokenizer)],
        )
        self._active[uid] = _Active(job, decode.AnswerText(self._tokenizer, sampling.stop), time.perf_counter())

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
            if r.finish_reason != "stop":
                a.job.tokens.append(r.token)
            if a.job.first_token is None:
                a.job.first_token = time.perf_counter()
            reason = r.finish_reason
            if reason == "stop":  # the end-of-turn token: not part of the answer
                a.tokens -= 1
                text, infos = a.text.finish()
            else:
                top = a.job.sampling.top_logprobs
                info = decode.token_logprob(r.token, r.logprobs, top) if top is not None else None
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
                    decode.Chunk(
                        text,
                        reason,
                        len(a.job.prompt),
                        a.tokens,
                        a.tokens / elapsed if elapsed else 0.0,
                        infos,
                        a.job.cached_tokens,
                    )
                )
            if reason is not None:
                a.job.events.put(None)
                ended.append(r.uid)
                if r.prompt_cache is not None:
                    self._keep(r.all_tokens, r.prompt_cache)
        for uid in ended:
            self._active.pop(uid)
        if stopped:
            for cache, tokens in self._gen.remove(stopped, return_prompt_caches=self.cache is not None).values():
                self._keep(tokens, cache)

    def _keep(self, tokens: list[int], cache: list[Any]) -> None:
        """An ended answer's KV state (its prompt and what it generated), for a next turn to start from."""
        if self.cache is not None:
            self.cache.keep(self._weights, tokens, cache)

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


class _Fixed:
    """One loaded model that answers every job (a command's: nothing to switch)."""

    def __init__(self, model: Any, tokenizer: Any) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.identity = id(model)

    def activate(self, ref: Any) -> tuple[Any, float]:
        return self, 0.0


def answer_here(model: Any, tokenizer: Any, jobs: Sequence[Job]) -> Iterator[tuple[int, decode.Chunk]]:
    """`jobs` answered by `model`, generated in the calling thread by a scheduler of their own: the server's
    batching, samplers, penalties and stop strings. Yields each piece with its job's index as it comes (a job's
    last piece has its `finish_reason`; `job.tokens` then holds its ids). Closing the iterator stops them all."""
    live: deque[int] = deque()  # admitted and not ended: jobs are admitted in order, the unadmitted are a tail
    admitted = 0
    for _ in Scheduler(_Fixed(model, tokenizer), COMMAND_BATCH).run_here(jobs):
        while admitted < len(jobs) and jobs[admitted].started is not None:
            live.append(admitted)
            admitted += 1
        for _ in range(len(live)):
            i = live.popleft()
            events, ended = jobs[i].events, False
            while not events.empty():
                item = events.get_nowait()
                if isinstance(item, BaseException):
                    raise item
                if item is None:
                    ended = True
                else:
                    yield i, item
            if not ended:
                live.append(i)
