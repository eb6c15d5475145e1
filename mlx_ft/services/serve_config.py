"""What `serve` was asked to do: its folders, limits, tasks and who may reach it (`ServeConfig`). Light on purpose:
the CLI reads `MAX_UPLOAD_MB` while it builds its parser, before Flask and MLX load."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

MAX_UPLOAD_MB = 64  # the largest data set upload the studio takes by default (`serve --max-upload-mb`)
MAX_BODY_BYTES = 1 << 20  # a chat message, not an upload
MAX_UPLOAD_BYTES = MAX_UPLOAD_MB << 20  # a data set upload, allowed on the upload route only


@dataclass
class ServeConfig:
    source: str  # what the model was loaded from
    db: Path = Path("chat_history.db")
    runs_dir: Path = Path("runs")
    data_dir: Path = Path("data")  # uploaded data sets go to data/<name>/ (`--data-dir`)
    exports_dir: Path = Path("exports")  # export jobs write here (`--exports-dir`)
    models_dir: Path = Path("models")  # local models the new-run form offers (`--models`)
    max_body_bytes: int = MAX_BODY_BYTES
    max_upload_bytes: int = MAX_UPLOAD_BYTES
    tasks: list[str] = field(default_factory=list)  # recipes whose tasks get endpoints (`--task`)
    extra: dict[str, Any] = field(default_factory=dict)
    host: str = "127.0.0.1"  # the address it listens on (`--host`): a Host header it may be reached by
    allowed_hosts: list[str] = field(default_factory=list)  # more Host names to accept (`--allow-host`; "*": any)
    more_runs: list[str] = field(default_factory=list)  # more runs to answer with (`serve RUN RUN ...`)
    home: str = "chat"  # the page at /: "studio" when serve was started without a RUN (the chat is also at /chat)
    token: str | None = None  # asked of every request when set (`--token`, MLX_FT_TOKEN; generated off loopback)
    token_generated: bool = False  # made up at start (so printed whole), not given by the user
    prompt_cache_size: int | None = None  # conversations the prompt cache keeps (`--prompt-cache-size`; None: default)
    prompt_cache_bytes: int | None = None  # its bound in bytes (`--prompt-cache-bytes`; None: from the memory; 0: off)
