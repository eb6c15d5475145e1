"""What the server serves, without HTTP: the chat history (`history`), the studio's jobs as records (`job_store`)
and as processes (`job_runner`), its data sets (`datasets`), the new-run form (`run_form`), a recipe's task answers
(`tasks`) and `serve`'s settings (`serve_config`). They raise `mlx_ft.errors` (`Invalid`, `NotFound`, `Conflict`),
never HTTP errors; the server's one error handler turns those into status codes."""
