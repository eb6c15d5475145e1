"""A preference set in the shape of LLaMA-Factory's `data/dpo_en_demo.json` (300 ShareGPT pairs, one human turn
each, a `chosen` and a `rejected` gpt answer) and its `dataset_info.json` entry, generated: the real file is not on
this machine. Like the real one, about a third of its prompts carry a long passage (an article to summarise, a
report to review), so at max_seq_length 512 those pairs' prompts fill the length."""

from __future__ import annotations

import json
import random
from pathlib import Path

ENTRY = {
    "dpo_en_demo": {
        "file_name": "dpo_en_demo.json",
        "ranking": True,
        "formatting": "sharegpt",
        "columns": {"messages": "conversations", "chosen": "chosen", "rejected": "rejected"},
    }
}

SUBJECTS = [
    "the city council",
    "a small bakery",
    "the research team",
    "our supplier",
    "the school board",
    "a local hospital",
    "the river authority",
    "an open-source project",
    "the museum",
    "a rail operator",
]
VERBS = [
    "announced",
    "reviewed",
    "postponed",
    "expanded",
    "questioned",
    "funded",
    "replaced",
    "measured",
    "published",
    "reorganised",
]
OBJECTS = [
    "its annual budget",
    "the new bus routes",
    "a plan for cleaner water",
    "the staff rota",
    "a study of sleep and memory",
    "the release schedule",
    "three late deliveries",
    "the heating contract",
    "a survey of visitors",
    "the safety rules",
]
TAILS = [
    "after a long public meeting.",
    "despite several objections.",
    "to the surprise of most observers.",
    "with little explanation.",
    "following complaints from residents.",
    "ahead of the winter season.",
    "in a short statement on Tuesday.",
    "after two years of delays.",
]
QUESTIONS = [
    "What is the capital of Australia?",
    "How do I reverse a list in Python?",
    "Give me three tips for sleeping better.",
    "Why is the sky blue?",
    "Write a haiku about autumn.",
    "Explain what a hash table is.",
    "How many minutes are in a week?",
    "Translate 'good morning' to French.",
    "What causes tides?",
    "Suggest a name for a grey cat.",
]
TASKS = [
    "Summarise the following article in two sentences.",
    "List the three main points of this report.",
    "Rewrite this passage for a ten-year-old reader.",
    "What is the tone of the text below? Explain briefly.",
]


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}"


def _prompt(rng: random.Random, i: int) -> str:
    if i % 3:  # two in three: a plain question, sometimes with some context
        context = " ".join(_sentence(rng) for _ in range(rng.randint(0, 6)))
        return f"{context}\n\n{rng.choice(QUESTIONS)}".strip()
    passage = "\n\n".join(" ".join(_sentence(rng) for _ in range(rng.randint(4, 8))) for _ in range(rng.randint(5, 12)))
    return f"{rng.choice(TASKS)}\n\n{passage}"


def records(n: int = 300, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        chosen = " ".join(_sentence(rng) for _ in range(rng.randint(2, 6)))
        rejected = " ".join(_sentence(rng) for _ in range(rng.randint(1, 2)))
        out.append(
            {
                "conversations": [{"from": "human", "value": _prompt(rng, i)}],
                "chosen": {"from": "gpt", "value": f"Here is my answer. {chosen}"},
                "rejected": {"from": "gpt", "value": f"I am not sure. {rejected}"},
            }
        )
    return out


def dump(rows: list[dict]) -> str:
    """As LLaMA-Factory writes its data files: indented by two, so the first record starts on line 2."""
    return json.dumps(rows, ensure_ascii=False, indent=2) + "\n"


def write(folder: Path, n: int = 300) -> Path:
    """The set and its dataset_info.json in `folder`; returns the dataset_info.json."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "dpo_en_demo.json").write_text(dump(records(n)), encoding="utf-8")
    info = folder / "dataset_info.json"
    info.write_text(json.dumps(ENTRY, indent=2) + "\n", encoding="utf-8")
    return info
