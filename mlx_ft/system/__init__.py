"""The machine: `blas` (binding MLX's CPU build to a fast BLAS, done at `import mlx_ft`), `devices` (what MLX runs on,
peak FLOP/s, which backend wheel is installed) and `doctor` (the report that says what will run and how to fix it)."""
