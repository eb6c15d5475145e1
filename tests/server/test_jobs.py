"""The studio's jobs: every route and error through Flask's test client, real short train / eval / export jobs on the
tiny Qwen2 fixture (each a real `python -m mlx_ft` process), and a restart test with real server processes: a
server killed while its job trains, the next one showing it interrupted, resume ending with the adapter an
uninterrupted run writes."""

import json
import signal
import sqlite3
import subprocess
import time
from pathlib import Path

import mlx.core as mx
import numpy as np
import pytest

from mlx_ft import config, data
from mlx_ft.models import loader
from mlx_ft.server.app import create_app
from mlx_ft.server.engine import Engine
from mlx_ft.server.jobs import Job, JobStore
from mlx_ft.server.state import ServeConfig, of
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
