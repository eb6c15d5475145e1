"""Task endpoints: a recipe's tasks served as plain functions of their input (`serve --task RECIPE`).

    POST /api/tasks/<name>  {"input": "..."}        → {"task", "output", "fields", "parsed", "constrained", "cached"}
                            {"inputs": ["...", …]}  → {"task", "outputs": [...], "results": [{…}, …]}
                            optional: "constrain": false (not held to the task's pattern), or "regex": "..." or
                            "choice": ["...", …] (held to these instead)
    GET  /api/tasks                                  → the tasks served, with their routes
    GET  <get_route.path>?<param>=...                → {param: input, result: output}  (an older service's route)

How inputs are answered (templates, greedy decoding, the cache, batching) is `task_service.py`.
"""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify, request

from mlx_ft import checks
from mlx_ft.data import recipes
from mlx_ft.server.http import ApiError, field, json_body
from mlx_ft.server.state import current
from mlx_ft.services.tasks import TaskService

bp = Blueprint("tasks", __name__, url_prefix="/api/tasks")


@bp.get("")
def list_tasks() -> Response:
    return jsonify(tasks=current().tasks.describe())


@bp.post("/<name>")
def run_task(name: str) -> Response:
    tasks = current().tasks
    tasks.served(name)  # an unknown task is a 404 before the body is looked at
    body = json_body()
    if ("input" in body) == ("inputs" in body):
        raise ApiError(400, "give exactly one of 'input' (a string) or 'inputs' (a list of strings)")
    unknown = sorted(set(body) - {"input", "inputs", "constrain", "regex", "choice"})
    if unknown:
        raise ApiError(400, f"unknown field(s) {', '.join(unknown)}; known: input, inputs, constrain, regex, choice")
    hold = field(body, "constrain", checks.boolean, None)
    held = tasks.constraint(name, hold, body.get("regex"), body.get("choice"))
    if "input" in body:
        result = tasks.run(name, [body["input"]], held)[0]
        return jsonify(task=name, **result)
    if not isinstance(body["inputs"], list):
        raise ApiError(400, "'inputs' must be a list of strings")
    results = tasks.run(name, body["inputs"], held)
    return jsonify(task=name, outputs=[r["output"] for r in results], results=results)


def add_get_routes(app: Flask, tasks: TaskService) -> None:
    """The GET routes recipes declare for clients of the services they replace."""
    for name, served in tasks.tasks.items():
        route = served.task.get_route
        if route is None:
            continue

        def view(name: str = name, route: recipes.GetRoute = route) -> Response:
            text = request.args.get(route.param)
            if text is None or not text.strip():
                raise ApiError(400, f"query parameter {route.param!r} is required")
            output = tasks.run(name, [text], tasks.constraint(name))[0]["output"]
            return jsonify({route.param: text, route.result: output})

        app.add_url_rule(route.path, endpoint=f"task_get_{name}", view_func=view, methods=["GET"])
