"""Training data as token ids, cut into batches.

- `TokenizedChats`: conversations tokenized once through `chat_template`, with the loss mask on every assistant turn;
  `TokenizedPairs`: preference pairs as two such rows, the mask on the final answer only (`pair_batches`);
  `TokenizedPrompts`: GRPO's prompts, whose answers are sampled each step (`prompt_batches`);
- batches of similar *token* length (mlx_lm sorts chat records by `len()` of the JSON object, i.e. not at all), or
  packed rows (`pack: true`) of several examples each, with segment numbers so attention stays inside each example;
- the k-th training batch depends only on (seed, k), so a resumed run continues the same data order;
- each batch carries what `loss.masked_loss` needs: the global-batch normaliser (data-parallel workers compute what
  one worker would) and the learned positions (the output layer runs only there).
"""

from __future__ import annotations

import bisect
import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import mlx.core as mx
import numpy as np
from tqdm import tqdm

from mlx_ft import chat_template, data
from mlx_ft.data import stats as data_stats
from mlx_ft.data.prepare import Split
from mlx_ft.errors import UserError
from mlx_ft.training.loss import learned_positions

PAD_TO = 32  # pad batch lengths to a multiple of this: few distinct shapes, so mx.compile retraces rarely


def _fit_of(examples: Sequence[data.Example]) -> data_stats.Fit | None:
    """How the examples' set was fitted to max_seq_length when prepared (`load_split` knows; a plain list: unknown)."""
    return examples.fit if isinstance(examples, Split) else None


def _stored_note(fit: data_stats.Fit | None, max_seq_length: int) -> str:
    """Where the set was prepared for another max_seq_length, say so: the counts then differ from the upload's."""
    if fit is None or fit.max_seq_length == max_seq_length:
        return ""
    return f" (the set was checked at max_seq_length {fit.max_seq_length} when prepared)"


class TokenizedChats:
    """Conversations as (ids, mask) pairs, tokenized once up front.

    Ids are cut to max_seq_length + 1 (the model reads max_seq_length of them and predicts the next): at the end, or
    with truncate "prompt" first at the prompt's start (`data_stats.fit_rows`; by default, as the set was prepared:
    prepare.json's fit). An example whose answer lies wholly past that cut would teach nothing, so it is left out
    and counted.
    """

    def __init__(
        self,
        examples: Sequence[data.Example],
        tokenizer: Any,
        mask_prompt: bool,
        max_seq_length: int,
        desc: str,
        truncate: str | None = None,
    ) -> None:
        self.items: list[tuple[list[int], list[int]]] = []
        self.truncated = 0
        self.dropped = 0
        self.prompt_cut = 0
        self.fit = _fit_of(examples)
        self.truncate = truncate or (self.fit.truncate if self.fit else "none")
        problems = []
        for ex in tqdm(examples, desc=f"tokenizing {desc}", unit="ex", leave=False, disable=None):
            try:
                if ex.text is not None:
                    sequences = [chat_template.text_tokens(tokenizer, ex.text)]
                else:
                    sequences = chat_template.training_sequences(tokenizer, ex.messages, mask_prompt, tools=ex.tools)
            except ValueError as e:
                problems.append(f"{ex.where}: {e}")
                continue
            for ids, mask in sequences:  # one, or more when a turn is learned apart (chat_template.assistant_turns)
                if data_stats.is_truncated(len(ids), max_seq_length):
                    self.truncated += 1
                    [(ids, mask)], start = data_stats.fit_rows([(ids, mask)], max_seq_length, self.truncate)
                    self.prompt_cut += start > 0
                if not any(mask[1:]):
                    self.dropped += 1
                    continue
                self.items.append((ids, mask))
        if problems:
            raise data.DataError(problems)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, idx: int) -> tuple[list[int], list[int]]:
        return self.items[idx]

    def report(self, name: str, max_seq_length: int) -> str | None:
        if not (self.truncated or self.dropped):
            return None
        cut = f" ({self.prompt_cut} at their prompt's start, answers kept)" if self.prompt_cut else ""
        return (
            f"{name}: {self.truncated} examples longer than max_seq_length {max_seq_length} are truncated{cut}; "
            f"{self.dropped} of them keep no answer token and are left out{_stored_note(self.fit, max_seq_length)}"
        )


class TokenizedPairs:
    """Preference pairs as two (ids, mask) rows each, the prompt with the chosen answer and with the rejected one,
    tokenized once up front. Only the final answer is learned (`last_only`): the turns both sides share cancel out
    of a preference loss. Each side is cut to max_seq_length + 1 ids, as `data_stats.fit_rows` says (at the end, or
    with truncate "prompt" first at the shared prompt's start; by default as the set was prepared); a pair whose cut
    leaves either answer without a token is left out and counted, so `report` can say so at the run's start."""

    def __init__(
        self,
        examples: Sequence[data.Example],
        tokenizer: Any,
        max_seq_length: int,
        desc: str,
        truncate: str | None = None,
    ) -> None:
        self.items: list[tuple[tuple[list[int], list[int]], tuple[list[int], list[int]]]] = []
        self.truncated = 0
        self.dropped = 0
        self.prompt_cut = 0
        self.fit = _fit_of(examples)
        self.truncate = truncate or (self.fit.truncate if self.fit else "none")
        problems = []
        for ex in tqdm(examples, desc=f"tokenizing {desc}", unit="pair", leave=False, disable=None):
            if ex.rejected is None:
                problems.append(
                    f"{ex.where}: not a preference pair (no 'rejected' answer); preference training needs data "
                    "prepared from chosen/rejected pairs"
                )
                continue
            try:
                sides = data_stats.pair_rows(tokenizer, ex)
            except ValueError as e:
                problems.append(f"{ex.where}: {e}")
                continue
            if any(data_stats.is_truncated(len(ids), max_seq_length) for ids, _ in sides):
                self.truncated += 1
                sides, start = data_stats.fit_rows(sides, max_seq_length, self.truncate)
                self.prompt_cut += start > 0
            if not data_stats.keeps_answers(sides):
                self.dropped += 1
                continue
            self.items.append((sides[0], sides[1]))
        if problems:
            raise data.DataError(problems)

    def __len__(self) -> int:
        return len(self.items)

    def report(self, name: str, max_seq_length: int) -> str | None:
        if not (self.truncated or self.dropped):
            return None
        cut = f" ({self.prompt_cut} at their prompt's start, answers kept)" if self.prompt_cut else ""
        note = (
            f"{name}: {self.truncated} pairs longer than max_seq_length {max_seq_length} are truncated{cut}; "
            f"{self.dropped} of them keep no token of an answer and are left out"
        )
        if self.dropped:  # never quietly: say why, and what would keep them
            note += (
                f", as their prompts fill max_seq_length{_stored_note(self.fit, max_seq_length)}; to keep them, raise "
                "max_seq_length or prepare the set with its prompts cut at the start"
                " (prepare --truncate prompt; in the studio, the cut-the-prompt fix)"
            )
        return note


def _worker(comm_group: Any, batch_size: int) -> tuple[int, int]:
    """This worker's rank and the number of workers, which must divide the batch (each takes an equal share)."""
    rank, world = (comm_group.rank(), comm_group.size()) if comm_group is not None else (0, 1)
    if batch_size % world:
        raise UserError(f"batch_size {batch_size} must be divisible by the number of workers ({world})")
    return rank, world


def pair_batches(
    pairs: TokenizedPairs,
    batch_size: int,
    max_seq_length: int,
    loop: bool = False,
    seed: int | None = None,
    comm_group: Any = None,
    skip: int = 0,
    on_batch: Callable[[list[int], int], None] | None = None,
) -> Iterator[tuple[mx.array, mx.array, mx.array, mx.array]]:
    """Batches of `batch_size` pairs of similar length, in `iterate_batches`' order (the k-th training batch depends
    only on (seed, k); `skip`, `on_batch` and the split over workers as there). Each batch is (ids, loss mask,
    learned positions) of 2 x this worker's pairs rows, the chosen sides first, then the rejected ones in the same
    order, and a weight per pair (1; 0 for a pair a worker only borrowed to have one)."""
    rank, world = _worker(comm_group, batch_size)
    batches = length_batches([max(len(c[0]), len(r[0])) for c, r in pairs.items], batch_size, loop)
    if not batches:
        raise UserError(f"the dataset holds {len(pairs)} usable pairs, fewer than batch_size={batch_size}")
    for k, b in enumerate(_batch_order(len(batches), loop, seed)):
        if k < skip:
            continue
        mine = batches[b][rank::world]
        # A validation batch with fewer pairs than workers: this worker scores its first pair with weight 0, so
        # every worker still counts the same batches and no pair counts twice.
        weight = np.ones(len(mine) or 1, np.float32) * bool(mine)
        mine = mine or batches[b][:1]
        rows = [pairs.items[i][0] for i in mine] + [pairs.items[i][1] for i in mine]
        ids_arr, mask_arr = padded(rows, max_seq_length, (np.int32, np.int8))
        if on_batch is not None:
            on_batch([len(ids) for ids, _ in rows], int(mask_arr[:, 1:].sum()))
        yield mx.array(ids_arr), mx.array(mask_arr), mx.array(learned_positions(mask_arr)), mx.array(weight)


def _batch_order(n_batches: int, loop: bool, seed: int | None) -> Iterator[int]:
    """Training (loop): a fresh seeded permutation every epoch, so the k-th batch depends only on (seed, k) and a
    resumed run can skip straight to it. Evaluation: one fixed shuffled pass, so a limited number of validation
    batches scores a fair sample rather than only the shortest examples."""
    if not loop:
        yield from np.random.default_rng(0).permutation(n_batches).tolist()
        return
    rng = np.random.default_rng(seed)
    while True:
        yield from rng.permutation(n_batches).tolist()


@dataclass(frozen=True)
class Prompt:
    """One prompt of the data: its ids as inference gives them, the user's message (what rewards read) and the
    data's answer (the reference; None when the example ends with the user)."""

    ids: list[int]
    text: str
    reference: str | None


class TokenizedPrompts:
    """A split's prompts, tokenized once up front. A prompt that leaves no room for an answer of
    `max_completion_tokens` within max_seq_length is left out and counted."""

    def __init__(
        self, examples: Sequence[data.Example], tokenizer: Any, max_seq_length: int, answer_room: int, desc: str
    ) -> None:
        self.items: list[Prompt] = []
        self.dropped = 0
        self.room = max_seq_length - answer_room
        problems = []
        for ex in tqdm(examples, desc=f"tokenizing {desc}", unit="prompt", leave=False, disable=None):
            if ex.text is not None:
                problems.append(f"{ex.where}: plain text; grpo samples answers to conversations")
                continue
            messages = list(ex.messages)
            reference = None
            if messages and messages[-1].get("role") == "assistant":
                reference = str(messages.pop().get("content") or "")
            asked = any(m.get("role") == "user" for m in messages)
            if not messages or messages[-1].get("role") not in ("user", "tool") or not asked:
                problems.append(f"{ex.where}: no user message for the model to answer")
                continue
            ids = chat_template.prompt_ids(tokenizer, messages, tools=ex.tools)
            if len(ids) > self.room:
                self.dropped += 1
                continue
            self.items.append(Prompt(ids, data.last_user_text(messages), reference))
        if problems:
            raise data.DataError(problems)

    def __len__(self) -> int:
        return len(self.items)

    def report(self, name: str, max_seq_length: int) -> str | None:
        if not self.dropped:
            return None
        return (
            f"{name}: {self.dropped} prompts longer than {self.room} tokens leave no room for an answer within "
            f"max_seq_length {max_seq_length} and are left out"
        )


def prompt_batches(
    prompts: TokenizedPrompts,
    batch_size: int,
    loop: bool = False,
    seed: int | None = None,
    comm_group: Any = None,
    skip: int = 0,
) -> Iterator[tuple[int, list[int]]]:
    """(k, this worker's prompt indices) for the k-th batch of `batch_size` prompts of similar length, in the order
    `iterate_batches` uses (the k-th training batch depends only on (seed, k))."""
    rank, world = _worker(comm_group, batch_size)
    batches = length_batches([len(p.ids) for p in prompts.items], batch_size, loop)
    if not batches:
        raise UserError(f"the dataset holds {len(prompts)} usable prompts, fewer than batch_size={batch_size}")
    for k, b in enumerate(_batch_order(len(batches), loop, seed)):
        if k >= skip:
            yield k, batches[b][rank::world]


def pack_rows(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Examples (by index) packed into rows of at most `capacity` tokens: longest first, each into the row with the
    least room that still fits it (best fit decreasing), which leaves little room unused. The free room of open rows
    is kept sorted, so 100k examples pack in well under a second. An example longer than a row (already cut to
    max_seq_length + 1) fills one."""
    rows: list[list[int]] = []
    room: list[tuple[int, int]] = []  # (free tokens, row), sorted
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        n = min(lengths[i], capacity)
        k = bisect.bisect_left(room, (n, -1))
        if k == len(room):
            rows.append([i])
            free, r = capacity - n, len(rows) - 1
        else:
            free, r = room.pop(k)
            rows[r].append(i)
            free -= n
        if free > 0:
            bisect.insort(room, (free, r))
    return rows


def _row(dataset: TokenizedChats, members: list[int], packed: bool) -> tuple[list[int], list[int], list[int]]:
    """One batch row: ids, loss mask and segment numbers (1, 2, ... per example). In a packed row each example's
    first token is unlearned: its "target" position would be predicted from the previous example."""
    ids: list[int] = []
    mask: list[int] = []
    segments: list[int] = []
    for k, j in enumerate(members, start=1):
        e_ids, e_mask = dataset[j]
        ids += e_ids
        mask += [0, *e_mask[1:]] if packed else e_mask
        segments += [k] * len(e_ids)
    return ids, mask, segments


def batch_rows(
    dataset: TokenizedChats, batch_size: int, max_seq_length: int, loop: bool, pack: bool = False
) -> list[list[list[int]]]:
    """The batches of one epoch, each a list of rows, each row a list of example indices (one unless packed).
    Rows are sorted by token length before they are cut into batches, so a batch pads little."""
    lengths = [len(dataset[i][0]) for i in range(len(dataset))]
    if pack:
        rows = pack_rows(lengths, max_seq_length + 1)
        row_len = [sum(lengths[i] for i in r) for r in rows]
    else:
        rows, row_len = [[i] for i in range(len(dataset))], lengths
    batches = [[rows[r] for r in b] for b in length_batches(row_len, batch_size, loop)]
    if not batches:
        unit = "packed rows" if pack else "examples"
        raise UserError(f"the dataset makes {len(rows)} {unit}, fewer than batch_size={batch_size}")
    return batches


def length_batches(lengths: Sequence[int], batch_size: int, loop: bool) -> list[list[int]]:
    """Item indices sorted by length and cut into batches of `batch_size`, so a batch pads little; in training
    (`loop`) only full batches, so every step sees batch_size items."""
    by_length = sorted(range(len(lengths)), key=lambda i: lengths[i])
    batches = [by_length[i : i + batch_size] for i in range(0, len(by_length), batch_size)]
    return [b for b in batches if len(b) == batch_size] if loop else batches


def padded(rows: Sequence[Sequence[list[int]]], max_seq_length: int, dtypes: Sequence[Any]) -> list[np.ndarray]:
    """Each field of `rows` (ids, mask, ...) as one zero-padded (rows, width) array, width from `padded_width`."""
    width = padded_width(max(len(row[0]) for row in rows), max_seq_length)
    out = [np.zeros((len(rows), width), dtype) for dtype in dtypes]
    for r, row in enumerate(rows):
        n = min(len(row[0]), width)
        for arr, values in zip(out, row):
            arr[r, :n] = values[:n]
    return out


def padded_width(longest: int, max_seq_length: int) -> int:
    """Batch width: the longest row rounded up to PAD_TO (+1 for the shifted targets), never past the limit."""
    return min(PAD_TO * -(-longest // PAD_TO) + 1, max_seq_length + 1)


def real_token_share(dataset: TokenizedChats, batch_size: int, max_seq_length: int, order: str) -> float:
    """Share of the padded positions of one training epoch that hold real tokens, with the batches cut in `order`:
    "file" (consecutive examples, which is what mlx_lm's length sort amounts to on chat data), "length" (ours) or
    "packed"."""
    lengths = [len(dataset[i][0]) for i in range(len(dataset))]
    if order == "file":
        rows = [[[i] for i in range(s, s + batch_size)] for s in range(0, len(dataset) - batch_size + 1, batch_size)]
    else:
        rows = batch_rows(dataset, batch_size, max_seq_length, loop=True, pack=order == "packed")
    batches = [[sum(lengths[i] for i in members) for members in b] for b in rows]
    real = sum(min(n, max_seq_length + 1) for b in batches for n in b)
    padded = sum(len(b) * padded_width(max(b), max_seq_length) for b in batches)
    return real / max(padded, 1)


def batching_note(dataset: TokenizedChats, batch_size: int, max_seq_length: int, pack: bool) -> str:
    """One line on how much of each training batch is padding, ours against file order (and packing)."""

    def share(order: str) -> str:
        return f"{real_token_share(dataset, batch_size, max_seq_length, order):.1%}"

    note = (
        f"training batches hold {share('packed' if pack else 'length')} real tokens "
        f"({'packed' if pack else 'sorted by length'}; {share('file')} in file order, as mlx_lm batches chat data"
    )
    if not pack:
        with contextlib.suppress(UserError):  # too few packed rows to fill one batch: nothing to offer
            note += f"; pack: true would give {share('packed')}"
    return note + ")"


def iterate_batches(
    dataset: TokenizedChats,
    batch_size: int,
    max_seq_length: int,
    loop: bool = False,
    seed: int | None = None,
    comm_group: Any = None,
    skip: int = 0,
    on_batch: Callable[[list[int], int], None] | None = None,
    pack: bool = False,
) -> Iterator[tuple[mx.array, ...]]:
    """Batches of similar token length (mlx_lm's iterate_batches signature, plus `skip` batches already trained on,
    `on_batch`, told the real length of each example in this worker's rows and their count of learned tokens, and
    `pack`). Each batch is (ids, loss mask, loss normaliser,
    learned positions), plus segment numbers when packed: the arguments of `loss.masked_loss` after the model.
    Training divides by the global batch's learned tokens over the workers (see masked_loss); evaluation by the
    batch's own."""
    rank, world = _worker(comm_group, batch_size)
    batches = batch_rows(dataset, batch_size, max_seq_length, loop, pack)
    limit = max_seq_length + 1
    for k, b in enumerate(_batch_order(len(batches), loop, seed)):
        if k < skip:
            continue
        everyone = [_row(dataset, members, pack) for members in batches[b]]
        rows = everyone[rank::world]
        if not rows:
            # A validation batch with fewer rows than workers (its short last one): this worker gets one row that
            # learns nothing, so its loss and token count add zero and every worker still counts the same batches
            # (val_batches stops them at the same one). Training batches are full, so never get here.
            rows = [([0, 0], [0, 0], [0, 0])]
        ids_arr, mask_arr, seg_arr = padded(rows, max_seq_length, (np.int32, np.int8, np.int32))
        if on_batch is not None:
            lengths = [len(dataset[j][0]) for members in batches[b][rank::world] for j in members]
            on_batch(lengths, int(mask_arr[:, 1:].sum()))
        if loop:
            learned = sum(sum(mask[1:limit]) for _, mask, _ in everyone) / world
        else:
            learned = max(int(mask_arr[:, 1:].sum()), 1)
        arrays = [
            mx.array(ids_arr),
            mx.array(mask_arr),
            mx.array(learned, mx.float32),
            mx.array(learned_positions(mask_arr)),
        ]
        if pack:
            arrays.append(mx.array(seg_arr))
        yield tuple(arrays)
