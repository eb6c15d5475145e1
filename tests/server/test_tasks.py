"""Task endpoints (`serve --task RECIPE`): every route and error through Flask's test client on the tiny Qwen2
fixture, then a real server process answering the seed's GET route with a (shortly) trained miner recipe."""

import json
import urllib.parse
import urllib.request

import pytest

from mlx_ft import cli
from mlx_ft.data import recipes
from mlx_ft.errors import UserError
from mlx_ft.inference import constrain
from mlx_ft.inference.engine import Engine
from mlx_ft.models import loader
from mlx_ft.server import state
from mlx_ft.server.app import create_app
from mlx_ft.server.state import ServeConfig
from mlx_ft.services.tasks import TaskService
from tests.serving import call, free_port, start_server

LISTINGS = ["m50s 26w 124t gtd 1020u $1020.0", "蚂蚁 s19jpro 104t 现货 1300u", "avalon a1246 90T 330usdt"]
SEED_ROUTE = "/model_generate/get-model-name"


@pytest.fixture(scope="module")
def engine(qwen2_dir) -> Engine:
    return Engine(loader.load(str(qwen2_dir)))


@pytest.fixture
def app(engine, tmp_path):
    return create_app(
        ServeConfig(str(engine.loaded.source), tmp_path / "chat.db", tmp_path / "runs", tasks=["miners", "router"]),
        engine,
    )


def test_tasks_are_listed_with_their_routes(app):
    tasks = {t["name"]: t for t in app.test_client().get("/api/tasks").get_json()["tasks"]}
    assert set(tasks) == {"miner-name", "scene", "type", "answer", "extract"}
    assert tasks["miner-name"]["get_route"] == {"path": SEED_ROUTE, "param": "simple_name", "result": "model_name"}
    assert tasks["miner-name"]["fields"] == ["brand", "series", "model", "hashrate", "unit", "price"]
    assert tasks["answer"]["fields"] is None and tasks["scene"]["recipe"] == "router"


def test_one_input_is_answered_greedily_and_repeats_come_from_the_cache(app, engine, monkeypatch):
    client = app.test_client()
    first = client.post("/api/tasks/miner-name", json={"input": LISTINGS[0]}).get_json()
    assert first["task"] == "miner-name" and isinstance(first["output"], str) and first["cached"] is False
    assert first["parsed"] is (first["fields"] is not None)  # the random fixture's noise does not parse
    calls = []
    monkeypatch.setattr(engine, "answer_many", lambda *a: calls.append(a) or ["never used"])
    again = client.post("/api/tasks/miner-name", json={"input": LISTINGS[0]}).get_json()
    assert again == {**first, "cached": True} and calls == []
    # The prompt is the recipe's template round the raw input, nothing else.
    task = recipes.load("miners").task("miner-name")
    assert (
        engine.tokenizer.decode(engine.prompt([{"role": "user", "content": task.render(LISTINGS[0])}], 4)).count(
            task.render(LISTINGS[0])
        )
        == 1
    )


def test_a_list_is_one_batched_generation_and_matches_single_answers(app, engine, monkeypatch):
    client = app.test_client()
    singles = [client.post("/api/tasks/scene", json={"input": x}).get_json()["output"] for x in LISTINGS[:2]]
    state.of(app).tasks._cache.clear()
    real, batches = engine.answer_many, []

    def counting(prompts, sampling):
        batches.append(len(prompts))
        return real(prompts, sampling)

    monkeypatch.setattr(engine, "answer_many", counting)
    body = client.post("/api/tasks/scene", json={"inputs": [LISTINGS[0], LISTINGS[1], LISTINGS[0]]}).get_json()
    assert batches == [2], "one generation for the batch; the repeated input is made once"
    assert body["outputs"][0] == body["outputs"][2] and len(body["results"]) == 3
    assert body["outputs"][:2] == singles, "greedy: batched answers are the single answers"


def test_fields_are_parsed_with_numbers_or_marked_unparsed(app, engine, monkeypatch):
    answers = iter([["MicroBT Whatsminer M50S - 124.0th/t $1020.0", "no idea"]])
    monkeypatch.setattr(engine, "answer_many", lambda prompts, sampling: next(answers))
    body = app.test_client().post("/api/tasks/miner-name", json={"inputs": ["x1", "x2"]}).get_json()
    assert body["results"][0]["fields"] == {
        "brand": "MicroBT",
        "series": "Whatsminer",
        "model": "M50S",
        "hashrate": 124.0,
        "unit": "th",
        "price": 1020.0,
    }
    assert body["results"][0]["parsed"] is True
    # held to the pattern, an answer still fails to parse when max_tokens cuts it short
    assert body["results"][1] == {
        "output": "no idea",
        "fields": None,
        "parsed": False,
        "constrained": True,
        "cached": False,
    }


def test_seed_get_route_answers_the_standard_name(app):
    client = app.test_client()
    resp = client.get(SEED_ROUTE, query_string={"simple_name": LISTINGS[1]})
    assert resp.status_code == 200
    body = resp.get_json()
    posted = client.post("/api/tasks/miner-name", json={"input": LISTINGS[1]}).get_json()
    assert body == {"simple_name": LISTINGS[1], "model_name": posted["output"]}


@pytest.mark.parametrize(
    "path, body, status, message",
    [
        ("/api/tasks/nope", {"input": "x"}, 404, "unknown task 'nope'"),
        ("/api/tasks/scene", {}, 400, "exactly one of 'input'"),
        ("/api/tasks/scene", {"input": "x", "inputs": ["y"]}, 400, "exactly one of 'input'"),
        ("/api/tasks/scene", {"input": "  "}, 400, "non-empty string"),
        ("/api/tasks/scene", {"input": 5}, 400, "non-empty string"),
        ("/api/tasks/scene", {"inputs": "x"}, 400, "must be a list"),
        ("/api/tasks/scene", {"inputs": []}, 400, "empty"),
        ("/api/tasks/scene", {"inputs": ["a"] * 257}, 400, "at most 256"),
        ("/api/tasks/scene", {"input": "长" * 4001}, 400, "at most 4000"),
        ("/api/tasks/scene", "{not json", 400, "invalid JSON"),
    ],
)
def test_bad_task_requests_are_4xx_json_and_the_server_keeps_serving(app, path, body, status, message):
    client = app.test_client()
    if isinstance(body, str):
        resp = client.post(path, data=body, content_type="application/json")
    else:
        resp = client.post(path, json=body)
    assert resp.status_code == status and message in resp.get_json()["error"]
    assert client.post("/api/tasks/type", json={"input": "发服务怎么做"}).status_code == 200


def test_seed_route_without_its_parameter_and_a_too_long_prompt(app, engine, monkeypatch):
    client = app.test_client()
    resp = client.get(SEED_ROUTE)
    assert resp.status_code == 400 and "simple_name" in resp.get_json()["error"]
    monkeypatch.setattr(engine, "context", 40)
    resp = client.post("/api/tasks/miner-name", json={"input": "a long listing " * 5})
    assert resp.status_code == 400 and "context window" in resp.get_json()["error"]


def test_cache_is_bounded(engine):
    service = TaskService(engine, ["router"], cache_size=2)
    held = service.constraint("type")
    for text in ("a", "b", "c"):
        service.run("type", [text], held)
    assert list(service._cache) == [("type", "b", held), ("type", "c", held)]


def test_answers_are_held_to_the_tasks_pattern_unless_a_request_says_otherwise(app, engine):
    """Even the random fixture's answers follow the pattern once held to it (whole, or cut short by max_tokens: its
    `\\S+` brand is unbounded and the random model never ends it); a request may turn that off, or hold them to its
    own regex or choice; each way has its own cache entries."""
    client = app.test_client()
    held = client.post("/api/tasks/miner-name", json={"inputs": LISTINGS}).get_json()["results"]
    pattern = constrain.regex(recipes.load("miners").task("miner-name").pattern.pattern)
    for r in held:
        ids = engine.tokenizer.encode(r["output"], add_special_tokens=False)
        assert r["constrained"] and constrain.allows(pattern, engine.tokenizer, ids, complete=r["parsed"]), r
    free = client.post("/api/tasks/miner-name", json={"inputs": LISTINGS, "constrain": False}).get_json()["results"]
    assert not any(r["cached"] or r["constrained"] for r in free)
    assert [r["output"] for r in free] != [r["output"] for r in held]
    labels = ["问题回答", "任务处理", "其他"]
    chosen = client.post("/api/tasks/answer", json={"input": "发服务怎么做", "choice": labels}).get_json()
    assert chosen["output"] in labels and chosen["constrained"] and chosen["parsed"] is None
    digits = client.post("/api/tasks/answer", json={"input": "几点了", "regex": "[0-9]{2}:[0-9]{2}"}).get_json()
    assert len(digits["output"]) == 5 and digits["output"][2] == ":" and digits["output"].replace(":", "").isdigit()
    types = {t["name"]: t["constrained"] for t in client.get("/api/tasks").get_json()["tasks"]}
    assert types == {"miner-name": True, "scene": True, "type": True, "answer": False, "extract": False}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"input": "x", "regex": "(?=a)b"}, "look-around"),
        ({"input": "x", "regex": "(a"}, "unclosed group"),
        ({"input": "x", "regex": ""}, "non-empty string"),
        ({"input": "x", "choice": []}, "list of 1 to 256"),
        ({"input": "x", "choice": ["a", 3]}, "list of 1 to 256"),
        ({"input": "x", "choice": ["a"], "regex": "a"}, "at most one"),
        ({"input": "x", "constrain": False, "regex": "a"}, "which one"),
        ({"input": "x", "constrain": "yes"}, "'constrain'"),
        ({"input": "x", "grammar": "a"}, "unknown field(s) grammar"),
    ],
)
def test_bad_constraints_are_400s(app, body, message):
    resp = app.test_client().post("/api/tasks/answer", json=body)
    assert resp.status_code == 400 and message in resp.get_json()["error"], resp.get_json()
    resp = app.test_client().post("/api/tasks/answer", json={"input": "x", "constrain": True})
    assert resp.status_code == 400 and "no pattern" in resp.get_json()["error"]


def test_a_recipe_cannot_hold_answers_to_what_it_lacks_or_what_cannot_compile(engine, tmp_path):
    (tmp_path / "recipe.yaml").write_text("tasks:\n  t:\n    template: '{input}'\n    constrain: true\n")
    with pytest.raises(UserError, match="constrain needs a pattern"):
        TaskService(engine, [str(tmp_path)])
    (tmp_path / "recipe.yaml").write_text("tasks:\n  t:\n    template: '{input}'\n    pattern: '(?=a)a'\n")
    with pytest.raises(UserError, match="look-around"):
        TaskService(engine, [str(tmp_path)])
    (tmp_path / "recipe.yaml").write_text(
        "tasks:\n  t:\n    template: '{input}'\n    pattern: '(?=a)a'\n    constrain: false\n"
    )
    assert TaskService(engine, [str(tmp_path)]).tasks["t"].task.constrain is False


def test_clashing_recipes_are_refused(engine, tmp_path):
    with pytest.raises(UserError, match="task 'scene' is in both"):
        TaskService(engine, ["router", "router"])
    (tmp_path / "recipe.yaml").write_text(
        f"tasks:\n  other:\n    template: '{{input}}'\n    get_route:\n"
        f"      path: {SEED_ROUTE}\n      param: q\n      result: r\n"
    )
    with pytest.raises(UserError, match="same get_route path"):
        TaskService(engine, ["miners", str(tmp_path)])


@pytest.fixture(scope="module")
def miner_run(tmp_path_factory):
    """The miner recipe prepared and trained for a few steps on the built-in SmolLM2."""
    root = tmp_path_factory.mktemp("miners")
    from tests.conftest import REPO

    assert (
        cli.main(
            [
                "prepare",
                str(REPO / "data/miners/listings.jsonl"),
                "--recipe",
                "miners",
                "--group-field",
                "group",
                "--out",
                str(root / "data"),
                "--no-stats",
            ]
        )
        == 0
    )
    assert (
        cli.main(
            [
                "train",
                "-c",
                str(REPO / "recipes/miners/lora_config.yaml"),
                "--data",
                str(root / "data"),
                "--adapter-path",
                str(root / "run"),
                "--iters",
                "4",
                "--steps-per-eval",
                "4",
                "--val-batches",
                "1",
                "--save-every",
                "4",
            ]
        )
        == 0
    )
    return root / "run"


def test_real_server_answers_the_seed_client_unchanged(miner_run, tmp_path):
    port = free_port()
    proc = start_server(miner_run, port, tmp_path / "chat.db", "--task", "miners")
    try:
        # Exactly what the seed's clients send: a GET with the listing URL-encoded in `simple_name`.
        url = f"http://127.0.0.1:{port}{SEED_ROUTE}?" + urllib.parse.urlencode({"simple_name": LISTINGS[0]})
        with urllib.request.urlopen(url, timeout=300) as resp:
            body = json.loads(resp.read())
        assert body["simple_name"] == LISTINGS[0] and isinstance(body["model_name"], str) and body["model_name"]
        batch = call(port, "POST", "/api/tasks/miner-name", {"inputs": LISTINGS})
        assert batch["outputs"][0] == body["model_name"] and batch["results"][0]["cached"] is True
        assert [r["cached"] for r in batch["results"][1:]] == [False, False]
        assert call(port, "GET", "/api/info")["model"], "the chat API is still there beside the tasks"
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_infer_wraps_inputs_in_the_recipes_templates(write_jsonl, tmp_path, capsys):
    from mlx_ft.inference import infer

    router = recipes.load("router")
    ref = infer.TaskRef.parse("router:scene")
    assert ref.render("明天会下雨吗？") == router.task("scene").render("明天会下雨吗？")
    src = write_jsonl(
        "in.jsonl",
        [
            {"input": "把 a.shp 发布成服务", "task": "extract"},
            {"question": "今天星期几"},
            {"messages": [{"role": "user", "content": "as is"}]},
        ],
    )
    _, prompts = infer.read_batch(src, ref)
    assert [p[-1]["content"] for p in prompts] == [
        router.task("extract").render("把 a.shp 发布成服务"),
        router.task("scene").render("今天星期几"),
        "as is",
    ]
    (tmp_path / "in.txt").write_text("今天星期几\n\n把 b.shp 发布成服务\n", encoding="utf-8")
    rows, prompts = infer.read_batch(tmp_path / "in.txt", ref)  # a .txt file: one prompt a non-empty line
    assert rows == [{"text": "今天星期几"}, {"text": "把 b.shp 发布成服务"}]
    assert [p[-1]["content"] for p in prompts] == [router.task("scene").render(t["text"]) for t in rows]
    with pytest.raises(UserError, match="unknown task 'nope'"):
        infer.TaskRef.parse("router:nope")
    assert cli.main(["infer", "smollm2-135m-instruct", "hi", "--task", "router"]) == 2
    assert "name one: --task router:scene" in capsys.readouterr().err


def test_infer_holds_task_answers_to_their_patterns(qwen2_dir, write_jsonl, tmp_path, capsys):
    """As `serve --task` does: the random fixture answers a scene label when held, anything when not."""
    labels = {"数据平台相关问题", "通用问题", "无关问题"}
    src = write_jsonl(
        "in.jsonl",
        [
            {"input": "今天星期几"},
            {"input": "地图服务怎么发布", "task": "type"},
            {"messages": [{"role": "user", "content": "hi"}]},
        ],
    )
    out = tmp_path / "out.jsonl"
    assert cli.main(["infer", str(qwen2_dir), "--file", str(src), "--out", str(out), "--task", "router:scene"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert rows[0]["output"] in labels and rows[1]["output"] in {"问题回答", "任务处理"}
    assert rows[2]["output"] not in labels | {"问题回答", "任务处理"}, "a line's own messages are not a task's input"
    capsys.readouterr()
    assert cli.main(["infer", str(qwen2_dir), "今天星期几", "--task", "router:scene"]) == 0
    assert capsys.readouterr().out.strip() == rows[0]["output"]
    assert cli.main(["infer", str(qwen2_dir), "今天星期几", "--task", "router:scene", "--no-constrain"]) == 0
    assert capsys.readouterr().out.strip() not in labels
    assert cli.main(["infer", str(qwen2_dir), "hi", "--no-constrain"]) == 2


def test_serve_refuses_a_missing_recipe_before_loading_the_model(tmp_path, capsys):
    assert (
        cli.main(
            [
                "serve",
                "no-such-model",
                "--port",
                str(free_port()),
                "--db",
                str(tmp_path / "db"),
                "--task",
                "no-such-recipe",
            ]
        )
        == 2
    )
    assert "no recipe at no-such-recipe" in capsys.readouterr().err
