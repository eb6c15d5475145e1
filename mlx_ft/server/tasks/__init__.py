"""A recipe's tasks as endpoints (`serve --task RECIPE`); the answers come from `mlx_ft.services.tasks`."""
