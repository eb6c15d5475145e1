"""The training loss: output layer on learned positions only, chunked, and packed rows with per-example attention."""

import mlx.core as mx
import mlx.nn as nn
import numpy as np
import pytest
from mlx.utils import tree_flatten
from mlx_lm import load
from mlx_lm.models import llama, qwen3, rope_utils

from mlx_ft import data
from mlx_ft.errors import UserError
from mlx_ft.training import loss
from mlx_ft.training.batches import TokenizedChats, batch_rows, iterate_batches, pack_rows
from mlx_ft.training.loss import learned_positions, masked_loss


def _random_batch(rows: int, width: int, vocab: int, seed: int = 0) -> tuple[mx.array, mx.array]:
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, vocab, (rows, width)).astype(np.int32)
    weights = np.zeros((rows, width), np.int8)
    for r in range(rows):  # a prompt, an answer, then padding, of different lengths per row
        start, end = 3 + 5 * r, width - 7 * r
        weights[r, start:end] = 1
    return mx.array(ids), mx.array(weights)


def _untied_qwen3() -> nn.Module:
    args = qwen3.ModelArgs(
        model_type="qwen3",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        vocab_size=3000,
        max_position_embeddings=512,
        rope_theta=10000.0,
        head_dim=16,
        tie_word_embeddings=False,
    )
    mx.random.seed(0)
    model = qwen3.Model(args)
    mx.eval(model.parameters())
    return model


def _loss_and_grads(model: nn.Module, *arrays: mx.array) -> tuple[float, dict]:
    value, grads = nn.value_and_grad(model, lambda m, *a: masked_loss(m, *a)[0])(model, *arrays)
    mx.eval(value, grads)
    return float(value), dict(tree_flatten(grads))


@pytest.mark.parametrize("which", ["qwen2", "qwen3", "untied"])
def test_learned_positions_and_chunks_give_the_plain_loss_and_gradients(which, qwen2_dir, qwen3_dir, monkeypatch):
    model = _untied_qwen3() if which == "untied" else load(str(qwen2_dir if which == "qwen2" else qwen3_dir))[0]
    model.unfreeze()  # every weight trains, the output layer's too: its gradient must survive the chunking
    ids, weights = _random_batch(4, 97, model.args.vocab_size)
    plain, plain_grads = _loss_and_grads(model, ids, weights)
    norm = mx.array(float(np.asarray(weights)[:, 1:].sum()))
    positions = mx.array(learned_positions(np.asarray(weights)))
    assert positions.size > int(norm.item()), "the test needs padding entries in positions"
    monkeypatch.setattr(loss, "CHUNK_ELEMENTS", 1)  # 64 rows a chunk: several chunks, each recomputed
    chunked, grads = _loss_and_grads(model, ids, weights, norm, positions)
    assert chunked == pytest.approx(plain, rel=1e-5)
    assert grads.keys() == plain_grads.keys()
    for name, g in plain_grads.items():
        scale = float(mx.abs(g).max()) or 1.0
        assert float(mx.abs(grads[name] - g).max()) <= 1e-4 * scale, name


def test_learned_positions_are_bucketed_and_padded_past_the_end():
    weights = np.zeros((2, 10), np.int8)
    weights[0, 3:6] = 1
    weights[1, 8:] = 1
    pos = learned_positions(weights)
    assert pos[:5].tolist() == [2, 3, 4, 16, 17]  # flat indices into (2, 9): target t sits at t - 1
    assert len(pos) == 32 and set(pos[5:].tolist()) == {18}
    half = np.zeros((4, 1001), np.int8)
    half[:, 400:900] = 1  # 2000 of 4000 positions: padded to a multiple of 4000 / 16 = 250
    assert len(learned_positions(half)) == 2000
    assert len(learned_positions(half[:, :-10])) == 9 * 248  # 3960 positions: steps of 248


def test_pack_rows_fill_first_fit_longest_first():
    # Longest first: 12 fills a row, 9 opens one (3 left), 7 opens one (5 left) that 5 then fills, 3 fills the
    # second, and 2 fits nowhere.
    assert pack_rows([5, 9, 3, 7, 2, 12], capacity=12) == [[5], [1, 2], [3, 0], [4]]
    assert pack_rows([20, 4], capacity=12) == [[0], [1]]  # an example longer than a row fills one alone


def _chats(n: int) -> list[data.Example]:
    chats = [
        [
            {"role": "user", "content": f"第{i}个问题：" + "鱼" * (3 * i)},
            {"role": "assistant", "content": "答" * (2 + 5 * (i % 4)) + f"{i}"},
        ]
        for i in range(n)
    ]
    return [data.Example(f"x:{i + 1}", c) for i, c in enumerate(chats)]


def _example_sums(
    model: nn.Module,
    ids: mx.array,
    weights: mx.array,
    segments: mx.array | None,
    owners: list[list[int]],
    masked: bool = True,
) -> dict[int, float]:
    """Summed cross-entropy of each example (by dataset index), read from one batch; with `masked` false, packed
    rows are read with plain causal attention over the whole row."""
    sums = {}
    w = np.asarray(weights)
    seg = np.asarray(segments) if segments is not None else np.ones_like(w, dtype=np.int32)
    for r, members in enumerate(owners):
        for k, j in enumerate(members, start=1):
            only = np.zeros_like(w)
            only[r] = w[r] * (seg[r] == k)
            arrays = [ids, mx.array(only), mx.array(1.0), mx.array(learned_positions(only))]
            if segments is not None and masked:
                arrays.append(segments)
            sums[j] = float(masked_loss(model, *arrays)[0])
    return sums


@pytest.mark.parametrize("fixture", ["qwen2_dir", "qwen3_dir"])
def test_each_packed_example_keeps_its_unpacked_loss(fixture, request):
    model, tok = load(str(request.getfixturevalue(fixture)))
    ds = TokenizedChats(_chats(9), tok, mask_prompt=True, max_seq_length=127, desc="test")
    rows = pack_rows([len(ids) for ids, _ in ds.items], 128)
    assert max(len(r) for r in rows) >= 3, "the test needs rows of several examples"
    packed = next(iterate_batches(ds, batch_size=len(rows), max_seq_length=127, pack=True))
    ids, weights, _, _, segments = packed
    owners = batch_rows(ds, len(rows), 127, loop=False, pack=True)[0]
    packed_sums = _example_sums(model, ids, weights, segments, owners)
    alone = {}
    for j in range(len(ds)):
        one = TokenizedChats([_chats(9)[j]], tok, mask_prompt=True, max_seq_length=127, desc="test")
        a_ids, a_w, *_ = next(iterate_batches(one, batch_size=1, max_seq_length=127))
        alone[j] = _example_sums(model, a_ids, a_w, None, [[0]])[0]
    assert packed_sums.keys() == alone.keys()
    for j in alone:
        assert packed_sums[j] == pytest.approx(alone[j], rel=1e-5), j
    # The plain path (no learned positions) keeps the examples apart too.
    plain = float(masked_loss(model, ids, weights, mx.array(1.0), None, segments)[0])
    assert plain == pytest.approx(sum(packed_sums.values()), rel=1e-5)
    # Without the per-example mask, every example after the first in its row attends to the ones before it.
    leaky = _example_sums(model, ids, weights, segments, owners, masked=False)
    later = [j for members in owners for j in members[1:]]
    assert all(leaky[j] != pytest.approx(alone[j], rel=1e-4) for j in later)


def test_packed_rows_unlearn_each_examples_first_token(qwen2_dir):
    _, tok = load(str(qwen2_dir))
    # Without prompt masking every token is learned, the first one included: packing must unlearn it.
    ds = TokenizedChats(_chats(6), tok, mask_prompt=False, max_seq_length=255, desc="test")
    assert all(mask[0] == 1 for _, mask in ds.items)
    ids, weights, norm, _, segments = next(
        iterate_batches(ds, batch_size=1, max_seq_length=255, loop=True, seed=0, pack=True)
    )
    seg, w = np.asarray(segments)[0], np.asarray(weights)[0]
    starts = [i for i in range(len(seg)) if seg[i] > 0 and (i == 0 or seg[i - 1] != seg[i])]
    assert len(starts) >= 2 and all(w[i] == 0 for i in starts)
    assert all(w[i] == 1 for i in range(len(seg)) if seg[i] > 0 and i not in starts)
    assert float(norm) == w[1:].sum()


def test_packing_is_refused_where_attention_could_leak(qwen3_dir, smollm2_dir):
    model, _ = load(str(qwen3_dir))
    loss.check_packable(model)
    layer = model.model.layers[0].self_attn
    layer.rope = rope_utils.SuScaledRoPE(
        16, max_position_embeddings=4096, original_max_position_embeddings=2048, short_factor=1.0, long_factor=2.0
    )
    with pytest.raises(UserError, match="SuScaledRoPE"):
        loss.check_packable(model)
    smol, _ = load(str(smollm2_dir))
    loss.check_packable(smol)
    smol.model_type = "gemma3_text"
    with pytest.raises(UserError, match="model type 'gemma3_text'"):
        loss.check_packable(smol)
    assert isinstance(smol, llama.Model)


def test_packing_a_hundred_thousand_examples_is_quick():
    import time

    lengths = np.random.default_rng(0).integers(20, 400, 100_000).tolist()
    t = time.perf_counter()
    rows = pack_rows(lengths, 513)
    assert time.perf_counter() - t < 5.0
    assert sorted(i for r in rows for i in r) == list(range(100_000))
    assert all(sum(lengths[i] for i in r) <= 513 for r in rows)
    assert len(rows) < 1.05 * sum(lengths) / 513 + 1, "best fit leaves under 5% of the rows' room unused"


def test_sliding_window_models_are_refused_packing(qwen3_dir):
    model, _ = load(str(qwen3_dir))
    model.model.layers[1].use_sliding = True
    with pytest.raises(UserError, match="sliding-window"):
        loss.check_packable(model)


class _Worker:
    """What iterate_batches asks of an mlx.distributed group."""

    def __init__(self, rank: int, size: int) -> None:
        self._rank, self._size = rank, size

    def rank(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._size


def test_a_short_last_validation_batch_splits_over_more_workers_than_it_has_rows(qwen2_dir):
    """5 validation examples, batch 4, 2 workers: the last batch has one row, so one worker gets none of it (this
    crashed with max() of an empty sequence); between them the workers still see every example once."""
    model, tok = load(str(qwen2_dir))
    ds = TokenizedChats(_chats(5), tok, mask_prompt=True, max_seq_length=127, desc="valid")
    shares = [list(iterate_batches(ds, 4, 127, comm_group=_Worker(r, 2))) for r in (0, 1)]
    assert [len(s) for s in shares] == [2, 2], "every worker counts the same batches"
    totals = [masked_loss(model, *b) for s in shares for b in s]  # (loss over its learned tokens, their count)
    assert sum(float(n) for _, n in totals) == sum(sum(mask[1:]) for _, mask in ds.items)
    assert (0.0, 0.0) in [(float(loss_), float(n)) for loss_, n in totals], "the empty share adds nothing"
    whole = list(iterate_batches(ds, 4, 127))
    one = sum(float(lo) * float(n) for lo, n in (masked_loss(model, *b) for b in whole))
    assert sum(float(lo) * float(n) for lo, n in totals) == pytest.approx(one, rel=1e-5)
