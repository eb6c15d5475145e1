"""Uploads that try to read outside their folder or to crash the readers, straight through `datasets.take`: each is
one 400 refusal with `file:line: what`, the same whether an outside file exists or not, and leaves nothing in the
data folder. Scratch folders a killed upload left behind are removed by `remove_scratch`, which follows no link.

A refusal comes before any token is counted, so these tests need no model: the tokenizer is None."""

from __future__ import annotations

import io
import json
import sys
import tempfile
from pathlib import Path

import pytest

from mlx_ft.services import datasets
from mlx_ft.services.datasets import UPLOAD_PREFIX, Refused, remove_scratch

DEEP = 100_000


def _take(data_dir: Path, files: list[tuple[str, str]]) -> Refused:
    """The refusal of uploading `files` (name, text); fails the test if they are taken."""
    streams = [(name, io.BytesIO(text.encode())) for name, text in files]
    with pytest.raises(Refused) as err:
        datasets.take(data_dir, None, streams, tokenizer=None, model_label="none", max_seq_length=16)
    assert err.value.status == 400
    return err.value


def _info(entries: dict) -> str:
    """A dataset_info.json with one entry a line: entry n is on line n + 1."""
    return "{\n" + ",\n".join(f"  {json.dumps(k)}: {json.dumps(v)}" for k, v in entries.items()) + "\n}\n"


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    return folder


@pytest.mark.parametrize("where", ["absolute", "relative"])
def test_a_dataset_info_reaching_outside_is_refused_alike_whether_the_file_exists(data_dir, tmp_path, where):
    outside = tmp_path / "home" / "notes.txt"
    outside.parent.mkdir()
    # The upload sits in data/.upload-*/raw/: three levels up is tmp_path.
    file_name = str(outside) if where == "absolute" else "../../../home/notes.txt"
    upload = [
        ("dataset_info.json", _info({"ok": {"file_name": "ok.json"}, "notes": {"file_name": file_name}})),
        ("ok.json", json.dumps([{"instruction": "q", "output": "a"}])),
    ]
    said = (
        f"dataset_info.json:3: dataset 'notes': file_name {file_name!r} points outside the folder of "
        "dataset_info.json; put the file beside it"
    )
    outside.write_text("instruction,output\nsecret,stuff\n")
    there = _take(data_dir, upload)
    outside.unlink()
    missing = _take(data_dir, upload)
    assert str(there) == str(missing) == said and there.problems == missing.problems == [said]
    assert list(data_dir.iterdir()) == []  # no set stored, no scratch folder left


@pytest.mark.parametrize(
    ("name", "text", "said"),
    [
        ("deep.jsonl", "[" * DEEP + "]" * DEEP, "deep.jsonl:1: JSON nested too deeply to read"),
        ("deep.jsonl", '{"a":' * DEEP + "1" + "}" * DEEP, "deep.jsonl:1: JSON nested too deeply to read"),
        ("deep.json", "[\n" + "[" * DEEP + "]" * DEEP + "\n]", "deep.json:2: JSON nested too deeply to read"),
        ("deep.json", "[\n" + '{"a":' * DEEP + "1" + "}" * DEEP + "]", "deep.json:2: JSON nested too deeply to read"),
        (
            "long.jsonl",
            '{"question": "q", "answer": "a"}\n{"question": "q", "answer": ' + "9" * 5000 + "}\n",
            f"long.jsonl:2: a number longer than {sys.get_int_max_str_digits()} digits",
        ),
        (
            "long.json",
            '[{"question": "q", "answer": ' + "9" * 5000 + "}]",
            f"long.json:1: a number longer than {sys.get_int_max_str_digits()} digits",
        ),
        ("dataset_info.json", '{"a":' * DEEP + "1" + "}" * DEEP, "dataset_info.json:1: JSON nested too deeply to read"),
    ],
)
def test_json_past_pythons_limits_is_a_file_line_refusal(data_dir, name, text, said):
    refused = _take(data_dir, [(name, text)])
    assert str(refused) == said and refused.problems == [said]
    assert list(data_dir.iterdir()) == []


def test_remove_scratch_removes_only_upload_folders_and_follows_no_link(data_dir, tmp_path):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("not the server's")
    killed = Path(tempfile.mkdtemp(prefix=UPLOAD_PREFIX, dir=data_dir))  # as `_scratch` makes them
    (killed / "raw").mkdir()
    (killed / "raw" / "fish.jsonl").write_text("{}\n")
    (killed / "raw" / "link").symlink_to(elsewhere, target_is_directory=True)
    (data_dir / f"{UPLOAD_PREFIX}planted").symlink_to(elsewhere, target_is_directory=True)
    (data_dir / f"{UPLOAD_PREFIX}dangling").symlink_to(tmp_path / "nowhere")
    (data_dir / f"{UPLOAD_PREFIX}file").write_text("a file, not an upload's folder")
    (data_dir / "fish").mkdir()
    (data_dir / ".hidden").mkdir()
    (data_dir / f"x{UPLOAD_PREFIX}y").mkdir()

    assert remove_scratch(data_dir) == 3
    assert sorted(p.name for p in data_dir.iterdir()) == sorted(
        [".hidden", f"{UPLOAD_PREFIX}file", "fish", f"x{UPLOAD_PREFIX}y"]
    )
    assert (elsewhere / "keep.txt").read_text() == "not the server's"
    assert remove_scratch(data_dir) == 0
    assert remove_scratch(tmp_path / "no-data-yet") == 0
