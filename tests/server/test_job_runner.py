"""The job runner below the web layer, with real processes: a job's process is known by its pid and its start time
(a pid the system gave to another process is not the job's), and a job's viewers share one reading of it."""

from __future__ import annotations

import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest

from mlx_ft import progress
from mlx_ft.services import job_runner
from mlx_ft.services.job_runner import JobRunner
from mlx_ft.services.job_store import Job, JobStore

STEPS = 6


def _sleeper() -> subprocess.Popen:
    """A process that looks like a job's to the old checks: `mlx_ft` in its command line, leading its own group."""
    return subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "mlx_ft"],
        start_new_session=True,
        stderr=subprocess.DEVNULL,  # its KeyboardInterrupt traceback when stopped
    )


def _running(job_id: str, proc: subprocess.Popen, started: float | None, tmp_path: Path) -> Job:
    return Job(
        id=job_id,
        kind="eval",
        run="r",
        run_dir=str(tmp_path / "runs" / "r"),
        argv=[],
        command="",
        log=str(tmp_path / f"{job_id}.log"),
        created=time.time(),
        state="running",
        started=1.0,
        pid=proc.pid,
        pid_started=started,
    )


def test_a_jobs_process_is_its_pid_and_start_time(tmp_path: Path) -> None:
    """A new server finds three jobs stored as running, each with a live process of its pid: the one whose start
    time matches is stopped (SIGINT, as Stop does); a record from before start times were kept falls back to the
    command line and process group; a process started at another time holds a pid that was reused, and is left
    alone."""
    db = tmp_path / "chat.db"
    ours, legacy, stranger = _sleeper(), _sleeper(), _sleeper()
    try:
        store = JobStore(db)
        store.save(_running("ours", ours, psutil.Process(ours.pid).create_time(), tmp_path))
        store.save(_running("legacy", legacy, None, tmp_path))
        store.save(_running("reused", stranger, psutil.Process(stranger.pid).create_time() - 100.0, tmp_path))
        assert job_runner._process_alive(ours.pid, psutil.Process(ours.pid).create_time())
        assert not job_runner._process_alive(stranger.pid, psutil.Process(stranger.pid).create_time() - 100.0)

        runner = JobRunner(store, tmp_path / "runs")
        jobs = {j.id: j for j in runner.jobs()}
        assert {j.state for j in jobs.values()} == {"interrupted"}
        for job_id, proc in (("ours", ours), ("legacy", legacy)):
            assert f"its process (pid {proc.pid}) was stopped" in (jobs[job_id].error or ""), jobs[job_id]
            assert proc.wait(timeout=10) != 0, "stopped by the new server's SIGINT"
        assert jobs["reused"].error is not None and jobs["reused"].error.startswith("the server stopped")
        assert stranger.poll() is None, "a process that is not the job's is never signalled"
        assert not job_runner._process_alive(ours.pid, jobs["ours"].pid_started), "a zombie is no job's process"
        store.close()
    finally:
        for proc in (ours, legacy, stranger):
            proc.kill()
            proc.wait()


@pytest.fixture
def fake_python(tmp_path: Path) -> str:
    """Stands in for `python -m mlx_ft …`: progress lines 0.3 s apart, then a quiet second, then its last line."""
    lines = [progress.line("answering", i, STEPS, progress.ANSWERS, eta_s=STEPS - i) for i in range(1, STEPS + 1)]
    body = "\n".join(f"echo {shlex.quote(line)}; sleep 0.3" for line in lines[:-1])
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\nsleep 1\necho {shlex.quote(lines[-1])}\n")
    script.chmod(0o755)
    return str(script)


def test_viewers_of_a_job_share_one_reading_and_see_the_same_stream(
    tmp_path: Path, fake_python: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two event streams on one job: the job's watcher thread reads it for both (each stream at most once, when
    it connects), both see the same views up to the final one, with heartbeats while the job is quiet."""
    monkeypatch.setattr(job_runner, "HEARTBEAT_S", 0.4)
    reads: list[str] = []
    real_log_lines = job_runner.log_lines

    def counted(path: Path, max_bytes: int = job_runner.LOG_TAIL_BYTES) -> list[str]:
        reads.append(threading.current_thread().name)
        return real_log_lines(path, max_bytes)

    monkeypatch.setattr(job_runner, "log_lines", counted)
    store = JobStore(tmp_path / "chat.db")
    runner = JobRunner(store, tmp_path / "runs", python=fake_python)
    try:
        job = runner.submit("export", "r", tmp_path / "runs" / "r", ["export"], "python -m mlx_ft export")
        assert job.state == "running" and job.pid is not None
        assert job.pid_started is not None and abs(job.pid_started - job.started) < 2, "its start time is kept"

        streams: dict[str, list] = {}

        def view(name: str) -> None:
            streams[name] = list(runner.events(job.id))

        viewers = [threading.Thread(target=view, args=(f"viewer-{n}",), name=f"viewer-{n}") for n in range(2)]
        for t in viewers:
            t.start()
        for t in viewers:
            t.join(timeout=60)
        first, second = streams["viewer-0"], streams["viewer-1"]
        views = [v for v in first if v is not None]
        assert views[-1]["state"] == "done" and views[-1]["progress"]["done"] == STEPS
        assert len(views) >= 3, "progress shows as it happens, not only the end"
        assert None in first, "a quiet job still gets its heartbeat"
        assert [v for v in second if v is not None] == views[-len([v for v in second if v is not None]) :]
        by_viewers = [name for name in reads if name.startswith("viewer-")]
        assert len(by_viewers) <= 2, f"each viewer reads the job at most once, when it connects: {reads}"
        assert reads.count(f"job-{job.id}") >= 3, "the watcher reads it for everybody"
    finally:
        runner.shutdown(wait_s=10)
        store.close()


def test_a_stream_ends_after_the_final_state_it_shows(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "chat.db")
    proc = _sleeper()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    job = _running("j", proc, None, tmp_path)
    job.state = "cancelled"
    store.save(job)
    runner = JobRunner(store, tmp_path / "runs")
    assert [v["state"] for v in runner.events("j")] == ["cancelled"]
    store.close()


def test_a_view_that_cannot_be_read_never_stops_the_runner_and_viewers_keep_the_last_one():
    """The runner publishes from its own bookkeeping (a save, the watcher): a run folder someone broke must not
    raise there (a dead watcher would leave its job running forever, a failed _finish the queue stuck)."""
    views = iter([{"state": "running", "step": 1}])

    def read(job_id: str) -> dict:
        return next(views)  # the second read fails, as a broken metrics.jsonl would

    feed = job_runner._Feed(read)
    with feed.watching("j"):
        feed.publish("j")  # raises StopIteration inside: must not escape
        assert feed.wait("j", 0, 0.0) == (1, {"state": "running", "step": 1})
