"""The studio's jobs as processes: one at a time, the others queued first come, first served.

Each job is a `python -m mlx_ft train|eval|export …` child in its own process group (so the server's Ctrl-C does not
reach it by accident), its output appended to a log file: `RUN/studio.log` for a train job (first under the runs
folder's `.studio/` until `train` has made the run folder: train refuses a folder that is not empty), `.studio/<job
id>.log` for the others. A thread per process waits for it and records how it ended.

- Stop sends SIGINT, which is train's Ctrl-C: it saves a checkpoint after the current step and exits; the job is
  then `stopped`. Resume runs `train --resume RUN` (the same job, continuing from that checkpoint; a train stopped
  before its first checkpoint starts again), or the eval/export command again.
- A process that exits non-zero without being asked to is `failed`, with the reason from its last log lines.
- When the server stops (Ctrl-C or SIGTERM; `shutdown`), a running job is stopped as Stop does, waited for, and left
  `interrupted`: resumable, nothing lost but the step in progress. Queued jobs stay queued for the next server.
- A job's run folder has the last word: a train whose run trained all its iters (last checkpoint at the last step,
  the final adapter written after it, metrics at that step) is `done` however its process ended, stopped in its
  last step or while the server stopped, and the next server settles such jobs it finds stopped or interrupted too.
  Resume of a finished job is refused (409): nothing is left to run.
- A job's progress, as the page shows it, is one record read from the last progress line of its log
  (`mlx_ft.progress`): the card and the log's last line never disagree.
- A job's viewers (the page's event streams) share one reading of it: while anyone watches, its watcher thread reads
  it again every POLL_S and each change of its record is read at once; the streams wait for what changed (`_Feed`).
- When the server was killed (SIGKILL, a crash) its job's process lives on with nobody to watch it. The next server
  does not adopt it (it could not learn how it ends): at start it stops it as Stop does, waits, and shows the job
  `interrupted`, resumable from that checkpoint. A job that was running and whose process is gone is `interrupted`
  too (resume continues from its last periodic checkpoint).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psutil

from mlx_ft import progress as progress_lines
from mlx_ft.errors import Conflict, NotFound
from mlx_ft.models.run_folder import Run, step_of
from mlx_ft.services.job_store import ACTIVE, FINAL, RESUMABLE, Job, JobStore
from mlx_ft.training import checkpoints

POLL_S = 0.5  # how often a running job's log is looked after and its view read again for its viewers
HEARTBEAT_S = 15.0  # an SSE comment this often while a job shows no change
STOP_WAIT_S = 120.0  # how long a stopped process gets to finish its step and save its checkpoint
LOG_TAIL_LINES = 20
# How far a process's start time may move between two reads: on Linux psutil adds the boot time, which follows
# changes of the system clock. A pid is reused within this window of its last owner's start hardly ever.
START_TIME_SLACK_S = 1.0
LOG_TAIL_BYTES = 16 << 10
LOG_SCAN_BYTES = 64 << 10  # how far back a log is searched for its last progress line
PREDICTIONS_SHOWN = 50
TRAIN_LOG = "studio.log"
SERVE_PREFIX = "mlx_ft serve: "  # what the server itself writes into a job's log
RECORD_KEYS = ("stage", "done", "total", "unit", "rate", "rate_unit", "eta_s", "line")
TRAIN_KEYS = ("step", "iters", "loss", "val_loss", "tokens_per_sec", "learned_tokens_per_sec", "peak_memory_gb")
# train's words when Stop (Ctrl-C) ends it: the step its checkpoint holds, which is past its last report's
_STOPPED_AT = re.compile(r"^mlx_ft: interrupted after step (\d+);")


def command_line(argv: list[str]) -> str:
    """The job's command as a user would type it."""
    return shlex.join(["python", "-m", "mlx_ft", *argv])


def log_lines(path: Path, max_bytes: int = LOG_TAIL_BYTES) -> list[str]:
    """The non-empty lines of the last `max_bytes` of a log (a progress bar's carriage returns end lines too)."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - max_bytes))
            text = f.read().decode("utf-8", errors="replace")
    except OSError:
        return []
    return [line for line in text.splitlines() if line.strip()]


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    """The last lines of a log."""
    return log_lines(path)[-lines:]


def failure(log: Path, returncode: int) -> str:
    """Why a process failed, in one line: its error message when it printed one, else its last line."""
    tail = log_tail(log, 200)
    errors = [line.split("error:", 1)[1].strip() for line in tail if line.startswith("mlx_ft: error:")]
    how = f"killed by {signal.Signals(-returncode).name}" if returncode < 0 else f"exit status {returncode}"
    last = errors[-1] if errors else (tail[-1] if tail else "no output")
    return f"{how}: {last}"


def progress(job: Job, lines: list[str] | None = None) -> dict[str, Any]:
    """Where the job is, as one record: its log's last progress line (RECORD_KEYS, all None before the first one;
    `lines`: the log's, when already read). A train job adds its run's latest figures (TRAIN_KEYS) from
    metrics.jsonl, its step and iters those of that same line. The ETA is shown only while a process runs."""
    out: dict[str, Any] = dict.fromkeys(RECORD_KEYS + TRAIN_KEYS)
    if job.kind == "train":
        out.update(_train_figures(Run(job.run_dir)))
    record = last_record(job, log_lines(Path(job.log), LOG_SCAN_BYTES) if lines is None else lines, out["iters"])
    if record is not None:
        out.update(record)
        if job.kind == "train":
            out["step"], out["iters"] = record["done"], record["total"]
    if job.state not in ACTIVE:
        out["eta_s"] = None  # nothing is left to wait for (a stopped job's last line still names its old ETA)
    return out


def last_record(job: Job, lines: list[str], iters: int | None = None) -> dict[str, Any] | None:
    """The record of the last progress line in `lines`; for a train job, also train's line saying at which step
    Stop (or the server's stop) ended it: its checkpoint's step, past its last report's."""
    for text in reversed(lines):
        if job.kind == "train" and (m := _STOPPED_AT.match(text)) and iters is not None:
            stopped = progress_lines.Record(progress_lines.TRAINING, int(m[1]), iters, "steps", None, None, None, text)
            return stopped.as_dict()
        if (record := progress_lines.parse(text)) is not None:
            return record.as_dict()
    return None


def measured_rate(job: Job) -> float | None:
    """The speed a finished job measured, from its log: an eval's generation (tok/s of its last answering line), a
    train's training (tok/s of its last report)."""
    want = progress_lines.ANSWERS if job.kind == "eval" else "steps" if job.kind == "train" else None
    for text in reversed(log_lines(Path(job.log), LOG_SCAN_BYTES)):
        record = progress_lines.parse(text)
        if record is not None and record.unit == want and record.rate_unit == "tok/s" and record.rate:
            return record.rate
    return None


def _train_figures(run: Run) -> dict[str, Any]:
    """A run's iters and its latest figures from metrics.jsonl."""
    out: dict[str, Any] = {"iters": run.iters()}
    try:
        rows = run.metrics()
    except (OSError, ValueError):
        return out
    train_rows = [r for r in rows if "loss" in r]
    vals = [r["val_loss"] for r in rows if "val_loss" in r]
    out["val_loss"] = vals[-1] if vals else None
    if train_rows:
        last = train_rows[-1]
        out.update(
            step=last["step"],
            loss=last["loss"],
            tokens_per_sec=last.get("tokens_per_s"),
            learned_tokens_per_sec=last.get("trained_tokens_per_s"),
            peak_memory_gb=last.get("peak_memory_gb"),
        )
    return out


def resume_line(run: Path, step: int) -> str | None:
    """A progress line for a train resumed at `step`, written into its log before its process starts: the speed of
    the last report before that step and the ETA it gives for the steps left. The page then shows the resumed
    job's ETA at once, not the stopped process's last one (nor none until the first new report)."""
    folder = Run(run)
    iters = folder.iters()
    try:
        rows = [r for r in folder.metrics() if "loss" in r and r["step"] <= step]
    except (OSError, ValueError):
        return None
    if iters is None or not rows:
        return None
    last = rows[-1]
    rate, tokens = last.get("tokens_per_s"), last.get("tokens")
    eta = (iters - step) * tokens / last["step"] / rate if rate and tokens else None
    return progress_lines.line("resuming training", step, iters, "steps", rate, "tok/s", eta, prefix=SERVE_PREFIX)


def _files_under(folder: Path) -> list[str]:
    """The finished files a job left in its folder (not the temporary ones of an atomic write)."""
    return sorted(
        p.relative_to(folder).as_posix()
        for p in folder.rglob("*")
        if p.is_file() and not any(part.startswith(".") for part in p.relative_to(folder).parts)
    )


def ollama_name(run: str) -> str:
    """A model name Ollama accepts (lower case letters, digits, `_.-`) for a run."""
    return re.sub(r"[^a-z0-9_.-]+", "-", run.lower()).strip("-.") or "mlx-ft"


def _result(job: Job) -> tuple[dict[str, Any] | None, list[str]]:
    """What a finished job shows and the files it offers for download."""
    if job.kind == "train" or job.out_dir is None:
        return None, []
    out = Path(job.out_dir)
    files = _files_under(out)
    if job.kind == "eval":
        metrics = json.loads((out / "metrics.json").read_text(encoding="utf-8"))
        with open(out / "predictions.jsonl", encoding="utf-8") as f:
            predictions = [json.loads(line) for _, line in zip(range(PREDICTIONS_SHOWN), f)]
        return {"metrics": metrics, "predictions": predictions, "files": files}, files
    ollama = f"ollama create {ollama_name(job.run)} -f Modelfile" if "Modelfile" in files else None
    return {"files": files, "ollama": ollama}, files


def _train_finished(job: Job) -> bool:
    """Whether a train job's run trained all its iters: its last checkpoint at the last step, the final adapter
    written after it, and metrics at that step (what train leaves at its end, even when stopped in that step)."""
    return job.kind == "train" and Run(job.run_dir).finished()


def _eval_finished(job: Job) -> bool:
    """Whether an eval job's results are written (atomically: both files, or neither)."""
    out = Path(job.out_dir) if job.out_dir else None
    return job.kind == "eval" and out is not None and (out / "metrics.json").is_file()


def finished(job: Job) -> bool:
    """Whether the job's work is complete in its folder, however its process ended."""
    return _train_finished(job) or _eval_finished(job)


def _finished_words(job: Job) -> str:
    if job.kind == "train":
        return f"its run trained all {Run(job.run_dir).iters()} steps and wrote its adapter"
    return "its results are written"


def _resume_words(job: Job) -> str:
    """What Resume will do, for an interrupted job's message."""
    return "resume continues from its last checkpoint" if job.kind == "train" else "resume runs it again"


def _step_of(checkpoint: Path) -> int:
    return step_of(checkpoint)


def _process_alive(pid: int, started: float | None = None) -> bool:
    """Whether `pid` is still the job's live (not zombie) process, not another program that got its pid after it
    ended: the process of that pid started at `started` (the job's record), or, for a record from before start times
    were kept, it is an mlx_ft process leading its own group."""
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return False
        if started is not None:
            return abs(proc.create_time() - started) <= START_TIME_SLACK_S
        return os.getpgid(pid) == pid and "mlx_ft" in " ".join(proc.cmdline())
    except (psutil.Error, OSError):
        return False


def _start_time(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:  # already gone (and reaped): nothing can take it for the job's any more
        return None


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _append_note(log: Path, text: str) -> None:
    try:
        with open(log, "a", encoding="utf-8") as f:
            f.write(f"mlx_ft serve: {text}\n")
    except OSError:
        pass


class _Feed:
    """The latest view of each job that someone watches, read again by whoever changes the job (a save, the job's
    watcher thread at each POLL_S) and waited on by its event streams: however many viewers a job has, its record
    and files are read once per look, not once per viewer."""

    def __init__(self, read: Callable[[str], dict[str, Any]]) -> None:
        self._read = read
        self._changed = threading.Condition()  # its lock also keeps reads in order: a stale view never wins
        self._viewers: dict[str, int] = {}
        self._views: dict[str, tuple[int, dict[str, Any]]] = {}  # job id -> (serial, view)

    def publish(self, job_id: str) -> None:
        """Read the job's view again when anyone watches it, and wake its viewers if it changed. Best effort: the
        runner publishes from its own bookkeeping (a save, the watcher thread), which a view that cannot be read (a
        run folder someone broke) must never stop; the viewers keep the last view they had."""
        with self._changed:
            if self._viewers.get(job_id):
                try:
                    self._refresh(job_id)
                except Exception:  # noqa: BLE001 - see above; a new viewer's first read still raises in its request
                    logging.getLogger(__name__).exception("job %s: its view could not be read", job_id)

    def _refresh(self, job_id: str) -> None:
        view = self._read(job_id)
        serial, last = self._views.get(job_id, (0, None))
        if view != last:
            self._views[job_id] = (serial + 1, view)
            self._changed.notify_all()

    @contextlib.contextmanager
    def watching(self, job_id: str) -> Iterator[None]:
        """One viewer of the job, for as long as the block runs; the first one reads its view."""
        with self._changed:
            if job_id not in self._views:
                self._refresh(job_id)
            self._viewers[job_id] = self._viewers.get(job_id, 0) + 1
        try:
            yield
        finally:
            with self._changed:
                self._viewers[job_id] -= 1
                if not self._viewers[job_id]:  # nobody keeps it fresh any more
                    del self._viewers[job_id], self._views[job_id]

    def wait(self, job_id: str, seen: int, timeout: float) -> tuple[int, dict[str, Any]]:
        """The job's (serial, view) once its serial is past `seen`, or as it is after `timeout` seconds."""
        with self._changed:
            self._changed.wait_for(lambda: self._views[job_id][0] != seen, max(timeout, 0.0))
            return self._views[job_id]


class JobRunner:
    def __init__(self, store: JobStore, runs_dir: Path, python: str = sys.executable) -> None:
        self.store = store
        self.runs_dir = Path(runs_dir)
        self.python = python
        self._lock = threading.RLock()
        self._procs: dict[str, subprocess.Popen] = {}
        self._watchers: dict[str, threading.Thread] = {}
        self._closing = False
        self._feed = _Feed(lambda job_id: self.view(self.job(job_id)))
        self._recover()

    # --- what the API reads ------------------------------------------------------------------------------------------

    def job(self, job_id: str) -> Job:
        job = self.store.get(job_id)
        if job is None:
            raise NotFound(f"no job {job_id!r}")
        return job

    def jobs(self) -> list[Job]:
        return self.store.all()

    def speed(self) -> tuple[Job, float] | None:
        """The job whose measured speed best predicts an eval's, and that speed (tok/s): the newest finished eval's
        generation, else the newest finished train's training (see `measured_rate`)."""
        done = [j for j in self.store.all() if j.state == "done"]  # newest first
        for kind in ("eval", "train"):
            for job in done:
                if job.kind == kind and (rate := measured_rate(job)) is not None:
                    return job, rate
        return None

    def running(self) -> bool:
        with self._lock:
            return any(proc.poll() is None for proc in self._procs.values())

    def view(self, job: Job) -> dict[str, Any]:
        """The job as the API shows it."""
        lines = log_lines(Path(job.log), LOG_SCAN_BYTES)
        return {
            "id": job.id,
            "kind": job.kind,
            "state": job.state,
            "run": job.run,
            "command": job.command,
            "created": job.created,
            "started": job.started,
            "ended": job.ended,
            "progress": progress(job, lines),
            "log_tail": lines[-LOG_TAIL_LINES:],
            "error": job.error,
            "result": job.result,
        }

    def events(self, job_id: str) -> Iterator[dict[str, Any] | None]:
        """The job's view each time it changes, until it reaches a final state; None after HEARTBEAT_S without a
        change, for the stream to write something: only a write finds a viewer that went away, and until then it
        holds one of the server's threads. The views come from the job's feed (`_Feed`), not from reading the job
        here: a job with many viewers is read as often as a job with one."""
        with self._feed.watching(job_id):
            seen, last, quiet_since = 0, None, time.monotonic()
            while True:
                seen, view = self._feed.wait(job_id, seen, quiet_since + HEARTBEAT_S - time.monotonic())
                if view != last:
                    yield view
                    last, quiet_since = view, time.monotonic()
                elif time.monotonic() - quiet_since >= HEARTBEAT_S:
                    yield None
                    quiet_since = time.monotonic()
                if view["state"] in FINAL:
                    return

    def file(self, job_id: str, name: str) -> Path:
        """A file the job produced; nothing else (the name must be one of the job's own files)."""
        job = self.job(job_id)
        if name not in job.files or job.out_dir is None:
            raise NotFound(f"job {job_id} produced no file {name!r}")
        folder = Path(job.out_dir).resolve()
        path = (folder / name).resolve()
        if not path.is_relative_to(folder) or not path.is_file():
            raise NotFound(f"{name} of job {job_id} is gone")
        return path

    # --- what the API does -------------------------------------------------------------------------------------------

    def submit(
        self,
        kind: str,
        run: str,
        run_dir: Path,
        argv: list[str],
        command: str,
        out_dir: Path | None = None,
        job_id: str | None = None,
    ) -> Job:
        """A new job: started now when nothing runs, else queued. `job_id`: the id its command was made with (an
        eval job's folder is named after it), else a new one."""
        with self._lock:
            for other in self.store.all():
                same = other.kind == "train" and Path(other.run_dir) == Path(run_dir)
                if kind == "train" and same and other.state not in ("failed", "cancelled"):
                    raise Conflict(f"job {other.id} already trains {run_dir} ({other.state})")
            job_id = job_id or Job.new_id()
            now = time.time()
            log = self.runs_dir / ".studio" / f"{job_id}.log"  # a train job's moves into its run folder later
            job = Job(
                id=job_id,
                kind=kind,
                run=run,
                run_dir=str(run_dir),
                argv=list(argv),
                command=command,
                log=str(log),
                created=now,
                queued=now,
                out_dir=str(out_dir) if out_dir is not None else None,
            )
            self._save(job)
            self._start_next()
            return self.job(job_id)

    def _job_in(self, job_id: str, states: tuple[str, ...], rule: str, hint: tuple[str, str] = ("", "")) -> Job:
        """The job, when its state allows the action (`rule` says which do), else 409; `hint`: (state, advice)."""
        job = self.job(job_id)
        if job.state not in states:
            advice = f"; {hint[1]}" if job.state == hint[0] else ""
            raise Conflict(f"job {job_id} is {job.state}: {rule}{advice}")
        return job

    def stop(self, job_id: str) -> Job:
        with self._lock:
            job = self._job_in(
                job_id, ("running",), "only a running job can be stopped", ("queued", "cancel it instead")
            )
            job.stop_requested, job.state = True, "stopping"
            self._save(job)
            if job.pid is not None:
                _signal_group(job.pid, signal.SIGINT)  # train's Ctrl-C: checkpoint after this step, then exit
            return job

    def cancel(self, job_id: str) -> Job:
        with self._lock:
            job = self._job_in(
                job_id, ("queued",), "only a queued job can be cancelled", ("running", "stop it instead")
            )
            job.state, job.ended = "cancelled", time.time()
            self._save(job)
            return job

    def resume(self, job_id: str) -> Job:
        with self._lock:
            job = self.job(job_id)
            if job.state in RESUMABLE and finished(job):  # it ended in its last step: resuming would find no work
                self._settle_done(job)
                raise Conflict(f"job {job_id} has finished ({_finished_words(job)}): nothing is left to resume")
            job = self._job_in(
                job_id,
                RESUMABLE,
                "only a stopped or interrupted job can be resumed",
                ("done", "it has finished, so nothing is left to resume"),
            )
            job.state, job.queued = "queued", time.time()
            job.stop_requested, job.error, job.result, job.ended = False, None, None, None
            self._save(job)
            self._start_next()
            return self.job(job_id)

    def shutdown(self, wait_s: float = STOP_WAIT_S) -> None:
        """The server is stopping: stop the running job as Stop does, wait for its checkpoint, leave it
        `interrupted`. Start nothing more."""
        with self._lock:
            self._closing = True
            running = [(job_id, proc) for job_id, proc in self._procs.items() if proc.poll() is None]
        for _, proc in running:
            _signal_group(proc.pid, signal.SIGINT)
        for job_id, proc in running:
            try:
                proc.wait(timeout=wait_s)
            except subprocess.TimeoutExpired:
                _signal_group(proc.pid, signal.SIGKILL)
            watcher = self._watchers.get(job_id)
            if watcher is not None:
                watcher.join()

    # --- processes ---------------------------------------------------------------------------------------------------

    def _start_next(self) -> None:
        """Start the first queued job when nothing runs (called with the lock held)."""
        if self._closing:
            return
        jobs = self.store.all()
        if any(j.state in ACTIVE for j in jobs):
            return
        for job in sorted((j for j in jobs if j.state == "queued"), key=lambda j: j.queued):
            if self._launch(job):
                return

    def _argv(self, job: Job) -> list[str]:
        """This start's command: a stopped train continues from its newest checkpoint."""
        job.start_step = 0
        if job.kind == "train" and job.started is not None:
            ckpt = checkpoints.latest(Path(job.run_dir))
            if ckpt is not None:
                job.start_step = _step_of(ckpt)
                return ["train", "--resume", job.run_dir]
        return job.argv

    def _launch(self, job: Job) -> bool:
        argv = self._argv(job)
        if argv is not job.argv:
            job.command = command_line(argv)
        log = Path(job.log)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}  # the log shows output as it happens
        try:
            log.parent.mkdir(parents=True, exist_ok=True)
            with open(log, "a", encoding="utf-8") as f:
                f.write(f"$ {job.command}\n")
                if job.start_step and (line := resume_line(Path(job.run_dir), job.start_step)):
                    f.write(line + "\n")
                f.flush()
                proc = subprocess.Popen(
                    [self.python, "-m", "mlx_ft", *argv],
                    stdin=subprocess.DEVNULL,
                    stdout=f,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,  # its own process group: signals reach it and its children only
                )
        except OSError as e:
            job.state, job.ended, job.error = "failed", time.time(), f"could not start: {e}"
            self._save(job)
            return False
        job.state, job.started, job.ended, job.pid = "running", time.time(), None, proc.pid
        job.pid_started = _start_time(proc.pid)
        self._save(job)
        self._procs[job.id] = proc
        watcher = threading.Thread(target=self._watch, args=(job.id, proc), name=f"job-{job.id}", daemon=True)
        self._watchers[job.id] = watcher
        watcher.start()
        return True

    def _save(self, job: Job) -> None:
        """Store the job and show its viewers what changed."""
        self.store.save(job)
        self._feed.publish(job.id)

    def _watch(self, job_id: str, proc: subprocess.Popen) -> None:
        while True:
            try:
                returncode = proc.wait(timeout=POLL_S)
                break
            except subprocess.TimeoutExpired:
                self._move_log_into_run(job_id)
                self._feed.publish(job_id)  # its progress: the log and the run folder grow without a save
        self._move_log_into_run(job_id)
        with self._lock:
            self._finish(self.job(job_id), returncode)
            self._procs.pop(job_id, None)
            self._start_next()

    def _move_log_into_run(self, job_id: str) -> None:
        """A train job's log joins its run once train has made the folder (open files may be renamed on POSIX)."""
        with self._lock:
            job = self.job(job_id)
            target = Path(job.run_dir) / TRAIN_LOG
            if job.kind != "train" or Path(job.log) == target or not Run(job.run_dir).is_run():
                return
            if target.exists():
                return
            try:
                os.replace(job.log, target)
            except OSError:
                return
            job.log = str(target)
            self._save(job)

    def _settle_done(self, job: Job) -> None:
        """Record a job as done (its results read from its folder)."""
        job.ended = job.ended or time.time()
        try:
            job.result, job.files = _result(job)
            job.state, job.error = "done", None
        except (OSError, ValueError) as e:
            job.state, job.error = "failed", f"it finished, but its results cannot be read: {e}"
        self._save(job)

    def _finish(self, job: Job, returncode: int) -> None:
        job.ended = time.time()
        if returncode == 0 or finished(job):  # stopped in its last step (Stop, or the server's): its work is done
            self._settle_done(job)
            return
        if self._closing:
            job.state = "interrupted"
            job.error = f"the server stopped while this job ran; {_resume_words(job)}"
        elif job.stop_requested:
            job.state, job.error = "stopped", None
        else:
            job.state, job.error = "failed", failure(Path(job.log), returncode)
        self._save(job)

    def _recover(self) -> None:
        """At start: jobs stored as running belong to a server that is gone; and a job stopped or interrupted (by an
        older server) whose run folder shows its work complete is done."""
        with self._lock:
            for job in self.store.all():
                if job.state in RESUMABLE and finished(job):
                    self._settle_done(job)
                    continue
                if job.state not in ACTIVE:
                    continue
                self._move_log_into_run(job.id)
                job = self.job(job.id)
                why = "the server stopped while this job ran"
                if job.pid is not None and _process_alive(job.pid, job.pid_started):
                    self._stop_orphan(job)
                    why = (
                        f"the server was killed while this job ran; its process (pid {job.pid}) was stopped when "
                        "the next server started"
                    )
                job.ended = time.time()
                if finished(job):  # it ended on its own before anyone could watch it
                    self._settle_done(job)
                    continue
                job.state, job.error = "interrupted", f"{why}; {_resume_words(job)}"
                self._save(job)
            self._start_next()

    def _stop_orphan(self, job: Job) -> None:
        """Stop a process a killed server left running, as Stop would (its checkpoint first), and wait for it."""
        assert job.pid is not None
        _append_note(Path(job.log), "a new server found this job's process still running: stopping it (SIGINT)")
        _signal_group(job.pid, signal.SIGINT)
        deadline = time.monotonic() + STOP_WAIT_S
        while _process_alive(job.pid, job.pid_started):
            if time.monotonic() > deadline:
                _signal_group(job.pid, signal.SIGKILL)
                break
            time.sleep(0.1)
