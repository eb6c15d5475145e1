"""prepare: raw datasets → the one internal format, OpenAI-style chat JSONL (`{"messages": [...]}`, or `{"text": ...}`
lines for continued pre-training), split into train/valid/test.

- `readers`: files → records with their line (.json, .jsonl, .csv, .txt, LLaMA-Factory's dataset_info.json)
- `formats`: records → examples (qa, io, alpaca, sharegpt, messages, text), validated, no files
- `prepare`: ties them together: file:line problems, de-duplication, the hash split, prepare.json
- `stats`: token lengths under a model's chat template
- `recipes`: task templates declared in recipes/<name>/recipe.yaml

The names below are the package's face: what the rest of mlx_ft uses.
"""

from mlx_ft.data.formats import FORMATS, ROLES, Example, Options, check_conversation, format_needs, last_user_text
from mlx_ft.data.prepare import SPLITS, Report, common_system, load_split, prepare, split_of
from mlx_ft.data.readers import DataError, read_records

__all__ = [
    "FORMATS",
    "ROLES",
    "SPLITS",
    "DataError",
    "Example",
    "Options",
    "Report",
    "check_conversation",
    "common_system",
    "format_needs",
    "last_user_text",
    "load_split",
    "prepare",
    "read_records",
    "split_of",
]
