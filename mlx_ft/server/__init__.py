"""`serve`: the web chat, its JSON APIs (the seed's, the page's, OpenAI's) and the runs dashboard."""

# Here, not in state.py, so that the CLI can show it in `serve --help` without importing Flask and MLX.
MAX_UPLOAD_MB = 64  # the largest data set upload the studio takes by default (`serve --max-upload-mb`)
