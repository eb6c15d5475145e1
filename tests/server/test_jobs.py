"""The studio's jobs: every route and error through Flask's test client, real short train / eval / export jobs on the
tiny Qwen2 fixture (each a real `python -m mlx_ft` process), and a restart test with real server processes: a
server killed while its job trains, the next one showing it interrupted, resume ending with the adapter an
uninterrupted run writes."""

import json
import os
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_ft import config, data, progress
from mlx_ft.inference.engine import Engine
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.state import ServeConfig, of
from mlx_ft.services import job_runner
from mlx_ft.services.job_store import Job, JobStore
from mlx_ft.training import checkpoints
from mlx_ft.training.run import train
from tests.serving import call, free_port, start_server

FACTS = [
    ("金鱼每天喂几次？", "每天一到两次，三分钟内吃完。"),
    ("斗鱼要加热棒吗？", "要，水温保持26度左右。"),
    ("孔雀鱼怎么繁殖？", "卵胎生，母鱼直接产下小鱼。"),
    ("新缸多久放鱼？", "硝化建立后，一般两到四周。"),
]
TRAIN_VALUES = {
    "method": "lora",
    "num_layers": 2,
    "batch_size": 2,
    "max_seq_length": 64,
    "steps_per_report": 1,
    "steps_per_eval": 1000,
    "save_every": 1000,
    "learning_rate": 1e-3,
}


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir)))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """The server's data folder with one prepared set, `fish` (train, valid and test: eval needs the test split)."""
    root = tmp_path_factory.mktemp("fish")
    src = root / "facts.json"
    rows = [{"question": q + "?" * i, "answer": a} for i, (q, a) in enumerate(FACTS * 3)]
    src.write_text(json.dumps(rows, ensure_ascii=False))
    data.prepare([src], root / "data" / "fish", valid=0.2, test=0.2)
    return root / "data"


@pytest.fixture
def studio(engine, data_dir, tmp_path):
    cfg = ServeConfig(
        str(engine.loaded.source),
        tmp_path / "chat.db",
        tmp_path / "runs",
        data_dir=data_dir,
        exports_dir=tmp_path / "exports",
    )
    app = create_app(cfg, engine)
    yield app
    of(app).jobs.shutdown(wait_s=60)


def _train_values(model: Path, name: str, iters: int, **values) -> dict:
    return {**TRAIN_VALUES, "model": str(model), "data": "fish", "name": name, "iters": iters, **values}


def _submit_train(client, model: Path, name: str, iters: int, **values) -> dict:
    resp = client.post(
        "/api/studio/jobs", json={"kind": "train", "values": _train_values(model, name, iters, **values)}
    )
    assert resp.status_code == 201, resp.get_json()
    return resp.get_json()["job"]


def _events(resp) -> list[dict]:
    text = resp.get_data(as_text=True)
    return [json.loads(x[len("data: ") :])["job"] for x in text.split("\n\n") if x.startswith("data: ")]


def _wait(client, job_id: str, until, timeout: float = 240) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = client.get(f"/api/studio/jobs/{job_id}").get_json()["job"]
        if until(job):
            return job
        time.sleep(0.1)
    raise AssertionError(f"job never got there: {job}")


# --------------------------------------------------------------------------------------- routes and errors, no process


def test_every_error_of_the_jobs_api(studio, tmp_path):
    client = studio.test_client()
    assert client.get("/api/studio/jobs").get_json() == {"jobs": []}
    for method, path in [
        ("get", "/api/studio/jobs/nope"),
        ("get", "/api/studio/jobs/nope/events"),
        ("post", "/api/studio/jobs/nope/stop"),
        ("post", "/api/studio/jobs/nope/resume"),
        ("post", "/api/studio/jobs/nope/cancel"),
        ("get", "/api/studio/jobs/nope/files/Modelfile"),
    ]:
        resp = getattr(client, method)(path)
        assert resp.status_code == 404 and "no job 'nope'" in resp.get_json()["error"], path
    runs = tmp_path / "runs"
    (runs / "untrained").mkdir(parents=True)
    (runs / "untrained" / "config.yaml").write_text("model: tiny\niters: 2\n")
    (runs / "trained").mkdir()
    (runs / "trained" / "config.yaml").write_text("model: tiny\niters: 2\n")
    (runs / "trained" / "adapters.safetensors").write_bytes(b"")
    (runs / "dora").mkdir()
    (runs / "dora" / "config.yaml").write_text("model: tiny\niters: 2\nfine_tune_type: dora\n")
    (runs / "dora" / "adapter_config.json").write_text("{}")
    (runs / "dora" / "adapters.safetensors").write_bytes(b"")
    for body, status, words in [
        ({"kind": "bake"}, 400, "'kind' must be one of train, eval, export"),
        ({}, 400, "'kind'"),
        ({"kind": "eval"}, 400, "'run' is required"),
        ({"kind": "eval", "run": "../untrained"}, 400, "'run' must be a name"),
        ({"kind": "eval", "run": "nothere"}, 404, "no run 'nothere'"),
        ({"kind": "eval", "run": "untrained"}, 409, "has no adapter yet"),
        ({"kind": "eval", "run": "trained", "colour": 1}, 400, "unknown field(s) for a eval job: colour"),
        ({"kind": "eval", "run": "trained", "limit": 0}, 400, "'limit'"),
        ({"kind": "eval", "run": "trained", "limit": True}, 400, "'limit'"),
        ({"kind": "eval", "run": "trained", "split": "../x"}, 400, "'split'"),
        ({"kind": "export", "run": "trained"}, 400, "'format' must be one of gguf, adapter, hf"),
        ({"kind": "export", "run": "trained", "format": "adapter", "type": "q4_k_m"}, 400, "f32, f16, bf16, q8_0"),
        ({"kind": "export", "run": "dora", "format": "adapter"}, 400, "DoRA's magnitude vector has no llama.cpp"),
        ({"kind": "export", "run": "trained", "format": "gguf", "type": "q9"}, 400, "'type' must be one of"),
        ({"kind": "export", "run": "trained", "format": "hf", "type": "q8_0"}, 400, "'type' is for GGUF"),
        ({"kind": "train"}, 400, "'values' is required"),
        ({"kind": "train", "values": [1]}, 400, "'values' is required"),
        ({"kind": "train", "values": {}, "run": "x"}, 400, "unknown field(s) for a train job: run"),
    ]:
        resp = client.post("/api/studio/jobs", json=body)
        assert resp.status_code == status and words in resp.get_json()["error"], (body, resp.get_json())
    assert client.post("/api/studio/jobs", data="[1]").status_code == 400
    assert client.get("/api/studio/jobs").get_json() == {"jobs": []}, "no error left a job behind"

    # Another web site may neither read the jobs nor start one.
    foreign = {"Origin": "http://evil.example"}
    assert client.get("/api/studio/jobs", headers=foreign).status_code == 403
    resp = client.post("/api/studio/jobs", json={"kind": "eval", "run": "trained"}, headers=foreign)
    assert resp.status_code == 403 and client.get("/api/studio/jobs").get_json() == {"jobs": []}


def test_each_eval_job_writes_to_its_own_folder(studio, tmp_path, monkeypatch):
    """Two evals of one run: each job's command writes to RUN/eval-job-<its id> (not the terminal's RUN/eval), the
    folder its results and downloads come from, so neither shows the other's files."""
    client = studio.test_client()
    jobs = of(studio).jobs
    monkeypatch.setattr(jobs, "_launch", lambda job: False)  # left queued: only their commands matter here
    run = tmp_path / "runs" / "trained"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny\niters: 2\n")
    (run / "adapters.safetensors").write_bytes(b"")
    first, second = (
        client.post("/api/studio/jobs", json={"kind": "eval", "run": "trained", **extra}).get_json()["job"]
        for extra in ({"limit": 1}, {})
    )
    assert first["id"] != second["id"]
    for job in (first, second):
        out = run / f"eval-job-{job['id']}"
        assert job["command"].endswith(f"--compare-base{' --limit=1' if job is first else ''} --out {out}")
        assert jobs.job(job["id"]).out_dir == str(out) and jobs.job(job["id"]).argv[-2:] == ["--out", str(out)]


def test_finished_jobs_refuse_every_action_and_serve_only_their_own_files(studio, tmp_path):
    """States come from the store, as after a restart: a finished export job and a tampered record."""
    client = studio.test_client()
    store = of(studio).jobs.store
    out = tmp_path / "exports" / "r-q8_0"
    out.mkdir(parents=True)
    (out / "r-q8_0.gguf").write_bytes(b"GGUF")
    (out / "Modelfile").write_text("FROM ./r-q8_0.gguf\n")
    (tmp_path / "secret.txt").write_text("not yours")
    common = dict(kind="export", run="r", run_dir=str(tmp_path / "runs" / "r"), argv=[], command="", log="x")
    store.save(
        Job(id="done1", created=1.0, state="done", out_dir=str(out), files=["r-q8_0.gguf", "Modelfile"], **common)
    )
    store.save(Job(id="evil1", created=2.0, state="done", out_dir=str(out), files=["../../secret.txt"], **common))
    store.save(Job(id="gone1", created=3.0, state="cancelled", **common))
    assert [j["id"] for j in client.get("/api/studio/jobs").get_json()["jobs"]] == ["gone1", "evil1", "done1"]
    for job_id, state in (("done1", "done"), ("gone1", "cancelled")):
        for action in ("stop", "resume", "cancel"):
            resp = client.post(f"/api/studio/jobs/{job_id}/{action}")
            assert resp.status_code == 409 and f"is {state}" in resp.get_json()["error"], (job_id, action)
    assert client.post("/api/studio/jobs/done1/explode").status_code == 404

    resp = client.get("/api/studio/jobs/done1/files/r-q8_0.gguf")
    assert resp.status_code == 200 and resp.data == b"GGUF" and "attachment" in resp.headers["Content-Disposition"]
    assert client.get("/api/studio/jobs/done1/files/Modelfile").data.startswith(b"FROM")
    for name in ("..%2F..%2Fsecret.txt", "../../secret.txt", "%2Fetc%2Fpasswd", "config.yaml", "r-q8_0.gguf%00"):
        assert client.get(f"/api/studio/jobs/done1/files/{name}", follow_redirects=True).status_code == 404, name
    assert client.get("/api/studio/jobs/evil1/files/../../secret.txt").status_code == 404
    assert client.get("/api/studio/jobs/evil1/files/..%2F..%2Fsecret.txt").status_code == 404
    events = _events(client.get("/api/studio/jobs/done1/events"))
    assert [e["state"] for e in events] == ["done"], "a finished job's stream says so once and ends"


def test_a_new_server_settles_the_jobs_a_gone_one_left_running(engine, tmp_path):
    """Jobs stored as running when a server starts: a process that is gone leaves its job interrupted; a live process
    that is not one of ours (its pid reused) is left alone; a train that reached its last step while nobody watched
    is done."""
    db, runs = tmp_path / "chat.db", tmp_path / "runs"
    gone = subprocess.Popen(["true"], start_new_session=True)
    gone.wait()
    stranger = subprocess.Popen(["sleep", "60"], start_new_session=True)
    finished = runs / "finished"
    (finished / "checkpoints" / "step-0000004").mkdir(parents=True)
    (finished / "config.yaml").write_text("model: tiny\niters: 4\n")
    (finished / "checkpoints" / "step-0000004" / "adapters.safetensors").write_bytes(b"")
    (finished / "adapters.safetensors").write_bytes(b"")  # the final adapter: written after the last checkpoint
    (finished / "metrics.jsonl").write_text('{"step": 4, "loss": 1.0}\n')
    store = JobStore(db)
    common = dict(argv=[], command="", log=str(tmp_path / "x.log"), state="running", started=1.0)
    store.save(Job(id="gone", kind="train", run="a", run_dir=str(runs / "a"), created=1.0, pid=gone.pid, **common))
    store.save(Job(id="reused", kind="eval", run="a", run_dir=str(runs / "a"), created=2.0, pid=stranger.pid, **common))
    store.save(Job(id="finished", kind="train", run="finished", run_dir=str(finished), created=3.0, pid=None, **common))
    store.close()
    try:
        app = create_app(ServeConfig(str(engine.loaded.source), db, runs), engine)
        client = app.test_client()
        jobs = {j["id"]: j for j in client.get("/api/studio/jobs").get_json()["jobs"]}
        assert jobs["gone"]["state"] == jobs["reused"]["state"] == "interrupted"
        assert jobs["gone"]["error"].startswith("the server stopped while this job ran; resume continues")
        assert stranger.poll() is None, "a process that is not a job's is never signalled"
        assert jobs["finished"]["state"] == "done" and jobs["finished"]["error"] is None
        assert all(j["ended"] for j in jobs.values())
    finally:
        stranger.kill()
        stranger.wait()


# ------------------------------------------------------------------------------------------------- real job processes


def test_train_queue_stop_resume_then_eval_and_export(studio, qwen2_dir):
    client = studio.test_client()
    first = _submit_train(client, qwen2_dir, "first", iters=40)
    assert first["state"] == "running"
    form = client.post("/api/studio/form", json={"values": _train_values(qwen2_dir, "first", 40)}).get_json()
    assert first["command"] == form["command"], "the job runs the command the form shows"
    resp = client.post("/api/studio/jobs", json={"kind": "train", "values": _train_values(qwen2_dir, "first", 40)})
    assert resp.status_code == 409 and "already trains" in resp.get_json()["error"]
    resp = client.post("/api/studio/jobs", json={"kind": "train", "values": {"colour": 1}})
    assert resp.status_code == 400 and "colour" in resp.get_json()["error"]
    second = _submit_train(client, qwen2_dir, "second", iters=2)
    assert second["state"] == "queued", "one job at a time"
    resp = client.post(f"/api/studio/jobs/{second['id']}/stop")
    assert resp.status_code == 409 and "cancel it instead" in resp.get_json()["error"]
    resp = client.post(f"/api/studio/jobs/{first['id']}/cancel")
    assert resp.status_code == 409 and "stop it instead" in resp.get_json()["error"]
    assert client.post(f"/api/studio/jobs/{second['id']}/cancel").get_json()["job"]["state"] == "cancelled"
    assert client.post(f"/api/studio/jobs/{second['id']}/cancel").status_code == 409

    job = _wait(client, first["id"], lambda j: (j["progress"]["step"] or 0) >= 2)
    p = job["progress"]
    assert p["iters"] == 40 and p["loss"] > 0 and p["tokens_per_sec"] > 0 and p["learned_tokens_per_sec"] > 0
    assert p["peak_memory_gb"] > 0 and p["eta_s"] is not None and p["val_loss"] > 0, p
    assert any(line.startswith("step ") for line in job["log_tail"]), job["log_tail"]
    stopping = client.post(f"/api/studio/jobs/{first['id']}/stop").get_json()["job"]
    assert stopping["state"] in ("stopping", "stopped")
    events = _events(client.get(f"/api/studio/jobs/{first['id']}/events"))
    assert events[-1]["state"] == "stopped" and events[-1]["error"] is None, events[-1]
    run = Path(of(studio).config.runs_dir) / "first"
    (ckpt,) = (run / "checkpoints").iterdir()
    stopped_at = int(ckpt.name.removeprefix("step-"))
    assert stopped_at >= 2 and events[-1]["progress"]["step"] == stopped_at
    assert (run / "studio.log").is_file(), "the log joined its run folder"
    assert client.post(f"/api/studio/jobs/{first['id']}/stop").status_code == 409

    resumed = client.post(f"/api/studio/jobs/{first['id']}/resume").get_json()["job"]
    assert resumed["state"] == "running" and f"train --resume {run}" in resumed["command"]
    assert resumed["error"] is None and resumed["ended"] is None
    # Queued behind the resumed training, on the same run: an eval, then two exports; they run after it, in order.
    ev = client.post("/api/studio/jobs", json={"kind": "eval", "run": "first", "limit": 2}).get_json()["job"]
    ev1 = client.post("/api/studio/jobs", json={"kind": "eval", "run": "first", "limit": 1}).get_json()["job"]
    gguf = client.post(
        "/api/studio/jobs", json={"kind": "export", "run": "first", "format": "gguf", "type": "q8_0"}
    ).get_json()["job"]
    hf = client.post("/api/studio/jobs", json={"kind": "export", "run": "first", "format": "hf"}).get_json()["job"]
    lora = client.post(
        "/api/studio/jobs", json={"kind": "export", "run": "first", "format": "adapter", "type": "q8_0"}
    ).get_json()["job"]
    assert ev["state"] == ev1["state"] == gguf["state"] == hf["state"] == lora["state"] == "queued"
    assert ev["command"].endswith(f"eval {run} --compare-base --limit=2 --out {run / ('eval-job-' + ev['id'])}")
    job = _wait(client, first["id"], lambda j: j["state"] == "done")
    assert job["progress"]["step"] == 40 and job["result"] is None
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 41)), "every step once, none twice"
    log = (run / "studio.log").read_text()
    assert log.count("$ python") == 2 and "interrupted after step" in log and "adapter written to" in log
    resp = client.post(f"/api/studio/jobs/{first['id']}/resume")
    assert resp.status_code == 409 and "is done" in resp.get_json()["error"]

    ev = _events(client.get(f"/api/studio/jobs/{ev['id']}/events"))[-1]
    assert ev["state"] == "done", ev
    metrics = ev["result"]["metrics"]
    assert json.loads((run / f"eval-job-{ev['id']}" / "metrics.json").read_text()) == metrics
    assert len(ev["result"]["predictions"]) == 2 and {"base", "tuned", "expected"} <= set(
        ev["result"]["predictions"][0]
    )
    ev1 = _events(client.get(f"/api/studio/jobs/{ev1['id']}/events"))[-1]
    assert ev1["state"] == "done" and len(ev1["result"]["predictions"]) == 1, "its own results, not the first eval's"
    first_file = client.get(f"/api/studio/jobs/{ev['id']}/files/predictions.jsonl").data
    assert len(first_file.splitlines()) == 2, "the first eval's download is still its own"
    assert not (run / "eval").exists(), "RUN/eval is the terminal's eval's"

    gguf = _events(client.get(f"/api/studio/jobs/{gguf['id']}/events"))[-1]
    assert gguf["state"] == "done", gguf
    assert gguf["result"] == {"files": ["Modelfile", "first-q8_0.gguf"], "ollama": "ollama create first -f Modelfile"}
    resp = client.get(f"/api/studio/jobs/{gguf['id']}/files/first-q8_0.gguf")
    assert resp.status_code == 200 and resp.data[:4] == b"GGUF"
    assert b"FROM ./first-q8_0.gguf" in client.get(f"/api/studio/jobs/{gguf['id']}/files/Modelfile").data
    assert client.get(f"/api/studio/jobs/{gguf['id']}/files/..%2Fexports").status_code == 404
    hf = _events(client.get(f"/api/studio/jobs/{hf['id']}/events"))[-1]
    assert hf["state"] == "done" and "config.json" in hf["result"]["files"] and hf["result"]["ollama"] is None, hf
    config_json = client.get(f"/api/studio/jobs/{hf['id']}/files/config.json")
    assert config_json.status_code == 200 and "model_type" in config_json.get_json()
    lora = _events(client.get(f"/api/studio/jobs/{lora['id']}/events"))[-1]
    assert lora["state"] == "done", lora
    files = lora["result"]["files"]
    assert "first-lora-q8_0.gguf" in files and "Modelfile" in files and len(files) == 3, files  # + the base GGUF
    modelfile = client.get(f"/api/studio/jobs/{lora['id']}/files/Modelfile").data.decode()
    assert "ADAPTER ./first-lora-q8_0.gguf" in modelfile or "ADAPTER first-lora-q8_0.gguf" in modelfile, modelfile
    assert lora["result"]["ollama"] == "ollama create first -f Modelfile"
    listed = [j["id"] for j in client.get("/api/studio/jobs").get_json()["jobs"]]
    assert listed == [lora["id"], hf["id"], gguf["id"], ev1["id"], ev["id"], second["id"], first["id"]], "newest first"


def test_a_job_that_fails_says_why(studio, qwen2_dir):
    client = studio.test_client()
    job = _submit_train(client, qwen2_dir, "broken", iters=2, batch_size=64)  # more than the set has examples
    job = _events(client.get(f"/api/studio/jobs/{job['id']}/events"))[-1]
    assert job["state"] == "failed" and job["error"].startswith("exit status 2: "), job
    assert "fewer than batch_size 64" in job["error"] and any("fewer than batch_size" in x for x in job["log_tail"])
    resp = client.post(f"/api/studio/jobs/{job['id']}/resume")
    assert resp.status_code == 409 and "is failed" in resp.get_json()["error"]


# ---------------------------------------------------------------------------------------------- restart, for real


def _alive(pid: int) -> bool:
    ps = subprocess.run(["ps", "-o", "stat=", "-p", str(pid)], capture_output=True, text=True).stdout.strip()
    return bool(ps) and not ps.startswith("Z")


def _wait_http(port: int, job_id: str, until, timeout: float = 300) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        job = call(port, "GET", f"/api/studio/jobs/{job_id}")["job"]
        if until(job):
            return job
        time.sleep(0.5)
    raise AssertionError(f"job never got there: {job}")


def _pid(db: Path, job_id: str) -> int:
    """The job's process, as the server recorded it (the API does not show pids)."""
    with sqlite3.connect(db) as conn:
        (record,) = conn.execute("SELECT record FROM jobs WHERE id = ?", (job_id,)).fetchone()
    return json.loads(record)["pid"]


def test_killed_server_leaves_the_job_interrupted_and_resume_ends_as_an_uninterrupted_run(
    qwen2_dir, data_dir, tmp_path
):
    """SIGKILL the server while its job trains: the orphaned train keeps going until the next server starts, which
    stops it (it checkpoints) and shows the job interrupted. Resume there, then SIGTERM that server: it stops the job
    the same way and exits 0. A third server resumes it to the end, and the adapter equals one trained without a
    stop (dropout and AdamW: the random stream and the optimizer state both matter)."""
    db, runs = tmp_path / "chat.db", tmp_path / "runs"
    serve_args = ("--runs", str(runs), "--data-dir", str(data_dir), "--exports-dir", str(tmp_path / "exports"))
    values = _train_values(
        qwen2_dir, "restart", 150, optimizer="adamw", lora_parameters={"rank": 4, "scale": 10.0, "dropout": 0.2}
    )
    run = runs / "restart"

    port = free_port()
    server = start_server(qwen2_dir, port, db, *serve_args)
    try:
        job_id = call(port, "POST", "/api/studio/jobs", {"kind": "train", "values": values})["job"]["id"]
        _wait_http(port, job_id, lambda j: (j["progress"]["step"] or 0) >= 2)
        orphan = _pid(db, job_id)
        server.send_signal(signal.SIGKILL)
        server.wait()
        assert _alive(orphan), "a killed server cannot stop its job: the train process lives on"
    finally:
        server.kill()
        server.wait()

    port = free_port()
    server = start_server(qwen2_dir, port, db, *serve_args)
    try:
        job = call(port, "GET", f"/api/studio/jobs/{job_id}")["job"]
        assert job["state"] == "interrupted" and f"its process (pid {orphan}) was stopped" in job["error"], job
        assert not _alive(orphan), "the new server stopped the orphan"
        tail = "\n".join(job["log_tail"])
        assert "a new server found this job's process still running" in tail and "interrupted after step" in tail
        first_stop = int(checkpoints.latest(run).name.removeprefix("step-"))
        assert 2 <= first_stop < 150 and job["progress"]["step"] == first_stop
        job = call(port, "POST", f"/api/studio/jobs/{job_id}/resume")["job"]
        assert job["state"] == "running" and "--resume" in job["command"]
        _wait_http(port, job_id, lambda j: (j["progress"]["step"] or 0) >= first_stop + 2)
        child = _pid(db, job_id)
        server.send_signal(signal.SIGTERM)  # what a service manager sends; Ctrl-C (SIGINT) ends serve the same way
        server.wait(timeout=180)
        assert server.returncode == 0 and "stopping the running job" in server.output(), server.output()[-4000:]
        assert not _alive(child), "a server that stops stops its job first"
    finally:
        server.kill()
        server.wait()
    second_stop = int(checkpoints.latest(run).name.removeprefix("step-"))
    assert second_stop > first_stop

    port = free_port()
    server = start_server(qwen2_dir, port, db, *serve_args)
    try:
        job = call(port, "GET", f"/api/studio/jobs/{job_id}")["job"]
        assert job["state"] == "interrupted" and job["error"].startswith("the server stopped while this job ran"), job
        call(port, "POST", f"/api/studio/jobs/{job_id}/resume")
        job = _wait_http(port, job_id, lambda j: j["state"] not in ("queued", "running"))
        assert job["state"] == "done" and job["progress"]["step"] == 150, job
    finally:
        server.send_signal(signal.SIGINT)
        server.wait(timeout=60)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 151)), "every step reported once, none twice"

    straight = train(config.load(run / "config.yaml", {"adapter_path": str(tmp_path / "straight")}))
    resumed, uninterrupted = mx.load(str(run / "adapters.safetensors")), mx.load(str(straight / "adapters.safetensors"))
    assert resumed.keys() == uninterrupted.keys()
    for k in resumed:
        np.testing.assert_allclose(np.array(resumed[k]), np.array(uninterrupted[k]), rtol=0, atol=1e-6, err_msg=k)


# --------------------------------------------------------------------- progress, cost estimate, eval results (issue 29)


def _log(tmp_path: Path, name: str, *lines: str) -> str:
    path = tmp_path / f"{name}.log"
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_the_progress_record_is_the_logs_last_progress_line(studio, tmp_path):
    """One record per job, read from the last progress line of its log, so the card and the log's last line agree:
    a stopped train's step is the checkpoint's (its last words), not its last report's, and its ETA is gone."""
    client = studio.test_client()
    store = of(studio).jobs.store
    run = tmp_path / "runs" / "r"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text("model: tiny\niters: 40\n")
    row = {"time": 9.0, "step": 16, "loss": 2.5, "tokens_per_s": 1840.0, "tokens": 3200, "peak_memory_gb": 0.4}
    (run / "metrics.jsonl").write_text(json.dumps(row) + "\n")
    report = "step 16/40  loss 2.500  lr 1.00e-03  1,840 tok/s  peak 0.42 GB  eta 13m05s"
    stopped = "mlx_ft: interrupted after step 17; checkpoint saved in x; continue with `python -m mlx_ft train ...`"
    answers = progress.line("scoring tuned", 12, 110, "answers", 41.2, "tok/s", 185)
    loss = progress.line("scoring tuned loss", 110, 110, "examples", 500.0, "tok/s", 0)
    common = dict(run="r", run_dir=str(run), argv=[], command="")
    for job_id, kind, state, lines in [
        ("t1", "train", "running", ["$ python -m mlx_ft train", report, "step 16/40  val_loss 2.400  (best)"]),
        ("t2", "train", "stopped", [report, "mlx_ft: stopping after this step", stopped]),
        ("e1", "eval", "running", [loss, answers, "a warning"]),
        ("x1", "export", "queued", []),
    ]:
        store.save(Job(id=job_id, kind=kind, state=state, created=1.0, log=_log(tmp_path, job_id, *lines), **common))
    jobs = {j["id"]: j for j in client.get("/api/studio/jobs").get_json()["jobs"]}
    p = jobs["t1"]["progress"]
    record = [p[k] for k in ("stage", "done", "total", "unit", "rate", "rate_unit", "eta_s", "line")]
    assert record == ["training", 16, 40, "steps", 1840.0, "tok/s", 785.0, report]
    assert (p["step"], p["iters"], p["loss"], p["tokens_per_sec"], p["peak_memory_gb"]) == (16, 40, 2.5, 1840.0, 0.4)
    p = jobs["t2"]["progress"]
    assert p["step"] == p["done"] == 17 and p["iters"] == p["total"] == 40 and p["line"] == stopped
    assert p["eta_s"] is None and p["loss"] == 2.5
    p = jobs["e1"]["progress"]
    assert [p[k] for k in ("stage", "done", "unit", "eta_s", "line", "step")] == [
        "scoring tuned",
        12,
        "answers",
        185.0,
        answers,
        None,
    ]
    assert set(jobs["x1"]["progress"].values()) == {None}
    # Resumed at step 17: 200 tokens a step at 1840 tok/s leaves 23 steps, 2.5 s.
    assert job_runner.resume_line(run, 17) == "mlx_ft serve: resuming training: 17/40 steps  1,840 tok/s  eta 0m02s"


def test_a_resumed_train_shows_its_eta_at_once_and_a_finished_one_stays_done(studio, qwen2_dir):
    """Stop, resume, finish, for real; then the states a stopping server used to leave (interrupted) are read again
    from the run folder: a run that trained all its iters is done, and Resume says so in words, no flags."""
    client = studio.test_client()
    runner = of(studio).jobs
    job = _submit_train(client, qwen2_dir, "eta", iters=40)
    _wait(client, job["id"], lambda j: (j["progress"]["step"] or 0) >= 2)
    client.post(f"/api/studio/jobs/{job['id']}/stop")
    job = _wait(client, job["id"], lambda j: j["state"] == "stopped")
    stopped_at = int(checkpoints.latest(Path(runner.job(job["id"]).run_dir)).name.removeprefix("step-"))
    p = job["progress"]
    assert p["step"] == p["done"] == stopped_at and p["eta_s"] is None, p
    assert p["line"].startswith(f"mlx_ft: interrupted after step {stopped_at};") and p["line"] in job["log_tail"]

    # A server stopping while the process ended: an unfinished run's job is interrupted, resumable.
    runner._closing = True
    try:
        runner._finish(runner.job(job["id"]), -signal.SIGINT)
    finally:
        runner._closing = False
    interrupted = client.get(f"/api/studio/jobs/{job['id']}").get_json()["job"]
    assert interrupted["state"] == "interrupted" and "resume continues from its last checkpoint" in interrupted["error"]

    resumed = client.post(f"/api/studio/jobs/{job['id']}/resume").get_json()["job"]
    p = resumed["progress"]
    assert resumed["state"] == "running" and p["stage"] == "resuming training" and p["done"] == stopped_at, p
    assert p["eta_s"] is not None and p["rate"] > 0 and p["line"] in resumed["log_tail"], resumed["log_tail"]
    first = _wait(client, job["id"], lambda j: j["progress"]["stage"] == "training" or j["state"] != "running")
    if first["state"] == "running":
        assert first["progress"]["eta_s"] is not None, "the resumed process's first report has an ETA"
    done = _wait(client, job["id"], lambda j: j["state"] == "done")
    assert done["progress"]["step"] == done["progress"]["done"] == 40 and done["progress"]["eta_s"] is None
    resp = client.post(f"/api/studio/jobs/{job['id']}/resume")
    assert resp.status_code == 409 and "has finished, so nothing is left to resume" in resp.get_json()["error"]

    # What a server stopping in its last step left: interrupted, a finished run. Resume refuses, in words for people.
    record = runner.job(job["id"])
    record.state, record.error = "interrupted", "the server stopped while this job ran; resume continues from …"
    runner.store.save(record)
    resp = client.post(f"/api/studio/jobs/{job['id']}/resume")
    error = resp.get_json()["error"]
    assert resp.status_code == 409 and "has finished (its run trained all 40 steps and wrote its adapter)" in error
    assert "--" not in error and runner.job(job["id"]).state == "done"
    # The next server reads it the same way, from the run folder; and so does a stop that lands on the last step.
    runner.store.save(record)
    assert job_runner.JobRunner(runner.store, runner.runs_dir).job(job["id"]).state == "done"
    runner._closing = True
    try:
        runner._finish(runner.job(job["id"]), -signal.SIGINT)
    finally:
        runner._closing = False
    assert runner.job(job["id"]).state == "done" and runner.job(job["id"]).error is None


def test_an_eval_is_estimated_then_run_and_its_results_listed(studio, qwen2_dir, data_dir, tmp_path):
    """Cost before, progress during, results after: the estimate's speed comes from what this server measured
    (nothing: the default; a finished train; then a finished eval's generation)."""
    from mlx_ft.data.stats import load_tokenizer
    from mlx_ft.inference.evaluate import plan_for_run

    client = studio.test_client()
    runs = Path(of(studio).config.runs_dir)
    cfg = dict(model=str(qwen2_dir), data=str(data_dir / "fish"), adapter_path=str(runs / "ev"), num_layers=2)
    run = train(config.build({**cfg, "batch_size": 2, "iters": 2, "max_seq_length": 64, "steps_per_eval": 2}))
    tokenizer = load_tokenizer(str(qwen2_dir))
    tests = data.load_split(data_dir / "fish", "test")
    refs = [len(tokenizer.encode(ex.messages[-1]["content"], add_special_tokens=False)) for ex in tests]
    budget = sum(2 * n + 16 for n in refs)
    assert plan_for_run(run).budget_tokens == budget

    est = client.post("/api/studio/jobs/estimate", json={"kind": "eval", "run": "ev"}).get_json()
    assert est["examples"] == len(tests) and est["budget_tokens"] == budget and est["passes"] == 2, est
    assert est["seconds"] == round(2 * budget / 5.0, 1) and est["basis"].startswith("nothing has been measured")
    capped = client.post("/api/studio/jobs/estimate", json={"kind": "eval", "run": "ev", "limit": 1, "max_tokens": 3})
    assert capped.get_json()["budget_tokens"] == 3 and capped.get_json()["examples"] == 1
    for body, words in [
        ({"kind": "train", "run": "ev"}, "only an eval's cost is estimated"),
        ({"kind": "eval", "run": "ev", "max_tokens": 0}, "field 'max_tokens' must be an integer from 1"),
        ({"kind": "eval", "run": "ev", "max_tokens": 2.5}, "field 'max_tokens'"),
        ({"kind": "eval", "run": "ev", "split": "nope"}, "no nope.jsonl to evaluate on"),
        ({"kind": "eval", "run": "ev", "colour": 1}, "unknown field(s)"),
    ]:
        resp = client.post("/api/studio/jobs/estimate", json=body)
        assert resp.status_code == 400 and words in resp.get_json()["error"], (body, resp.get_json())
        assert "--" not in resp.get_json()["error"], "no flags on the page"
    resp = client.post("/api/studio/jobs", json={"kind": "eval", "run": "ev", "max_tokens": 2.5})
    assert resp.status_code == 400 and "field 'max_tokens'" in resp.get_json()["error"]
    resp = client.post("/api/studio/jobs", json={"kind": "eval", "run": "ev", "split": "nope"})
    error = resp.get_json()["error"]
    assert resp.status_code == 400 and "has no nope split to evaluate on" in error and "--" not in error, error
    assert client.get("/api/studio/jobs").get_json() == {"jobs": []}, "refused before it became a job"

    store = of(studio).jobs.store
    trained = "step 2/2  loss 2.000  lr 1.00e-03  800 tok/s  peak 0.10 GB  eta 0m00s"
    common = dict(run="ev", run_dir=str(run), argv=[], command="", state="done")
    store.save(Job(id="trained1", kind="train", created=1.0, log=_log(tmp_path, "trained1", trained), **common))
    est = client.post("/api/studio/jobs/estimate", json={"kind": "eval", "run": "ev"}).get_json()
    assert est["seconds"] == round(2 * budget / 80.0, 1) and "train job trained1 trained 800 tok/s" in est["basis"]

    job = client.post("/api/studio/jobs", json={"kind": "eval", "run": "ev", "limit": 2, "max_tokens": 8}).get_json()
    assert job["job"]["command"].endswith(f"--limit=2 --max-tokens=8 --out {run / ('eval-job-' + job['job']['id'])}")
    job = _events(client.get(f"/api/studio/jobs/{job['job']['id']}/events"))[-1]
    assert job["state"] == "done", job
    p = job["progress"]
    assert (p["stage"], p["done"], p["total"], p["unit"], p["rate_unit"]) == ("scoring tuned", 2, 2, "answers", "tok/s")
    records = [r for x in Path(of(studio).jobs.job(job["id"]).log).read_text().splitlines() if (r := progress.parse(x))]
    assert p["rate"] > 0 and p["line"] == records[-1].line, "the record is the log's last progress line"
    assert {r.stage for r in records} == {"scoring base loss", "scoring base", "scoring tuned loss", "scoring tuned"}
    est = client.post("/api/studio/jobs/estimate", json={"kind": "eval", "run": "ev"}).get_json()
    assert est["basis"].startswith(f"eval job {job['id']} generated {p['rate']:.1f} tok/s on this server")
    assert est["seconds"] == round(2 * budget / p["rate"], 1)

    # Results stay with the run: listed newest first, labelled from the one table.
    older = run / "eval-job-older"
    older.mkdir()
    (older / "metrics.json").write_text(json.dumps({"split": "valid", "metrics": {"tuned": {"pairs": 3}}}))
    os.utime(older / "metrics.json", (1.0, 1.0))
    (run / "eval-job-unfinished").mkdir()
    listed = client.get("/api/studio/runs/ev/evals").get_json()
    assert listed["run"] == "ev" and [e["job"] for e in listed["evals"]] == [job["id"], "older"]
    first = listed["evals"][0]
    assert (first["split"], first["limit"], first["columns"]) == ("test", 2, ["base", "tuned"])
    assert first["generation_budget"] == "per example: 2 x reference + 16 tokens (cap 8)"
    assert first["budget_tokens"] == sum(min(8, 2 * n + 16) for n in refs[:2]) and first["time"] > 1.0
    rows = {r["key"]: r for r in first["metrics"]}
    assert rows["exact_match"]["label"] == "Exact match" and rows["exact_match"]["shown"]["tuned"].endswith("%")
    assert rows["loss"]["label"] == "Loss" and set(rows["loss"]["values"]) == {"base", "tuned"}
    assert listed["evals"][1]["metrics"] == [
        {"key": "pairs", "label": "Pairs", "kind": "integer", "values": {"tuned": 3}, "shown": {"tuned": "3"}}
    ]
    assert client.get("/api/studio/runs/nope/evals").status_code == 404
    resp = client.get("/api/studio/runs/.hidden/evals")
    assert resp.status_code == 400 and "run name must be a name" in resp.get_json()["error"]
    assert client.get("/api/studio/runs/..%2Fev/evals").status_code in (400, 404)
