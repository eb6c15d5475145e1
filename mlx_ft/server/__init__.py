"""`serve`: the web app. One blueprint package per product: `chat/` (the pages and the page's conversation API),
`openai/` (the OpenAI-compatible API), `studio/` (data, the new-run form, jobs, models and compare, runs), `tasks/`
(a recipe's task endpoints); `app.py` builds it, `guard.py` keeps other sites out, `http.py` reads requests and
writes answers, `state.py` is what every request reads. What they serve lives below, in `mlx_ft.services`."""
