"""Offline test fixtures: tiny random-weight Qwen2 / Qwen3 chat models.

The weights are random, but the tokenizer is the *real* Qwen BPE (151,643
ranks), rebuilt from ``qwen.tiktoken`` as shipped inside the ``dashscope``
wheel on PyPI.  PyPI is the only network the test machines can reach, so this
is the one way to get the genuine Qwen vocabulary without the Hugging Face hub.
Chat-template, special-token and tokenisation bugs therefore show up exactly as
they would with a real Qwen checkpoint, while the model stays a few MB of
compute.

Everything is cached on disk (see ``fixture_home``) so only the first run on a
machine pays for the download and the BPE merge derivation.
"""

from __future__ import annotations

import base64
import functools
import json
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from mlx_ft.atomic import atomic_dir, atomic_path, write_json
from mlx_ft.models import cache_home, fetch_from_wheel
from mlx_ft.models.gguf_tokenizer import QWEN2_PATTERN

Flavor = Literal["qwen2", "qwen3"]

DASHSCOPE_VERSION = "2.0.2"
_WHEEL_MEMBER = "dashscope/resources/qwen.tiktoken"
# Pinned so a republished or corrupted wheel cannot silently change the
# vocabulary every test is written against.
QWEN_TIKTOKEN_SHA256 = "b2b1b8dfb5cc5f024bafc373121c6aba3f66f9a5a0269e243470a1de16a33186"
QWEN_NUM_RANKS = 151_643

# Qwen2/2.5/3 pre-tokenisation regex, as the package's GGUF importer uses it.
QWEN_PAT_STR = QWEN2_PATTERN

# The embedding matrix is padded past the tokenizer's 151,669 entries, as in
# every released Qwen2/2.5/3 model below 32B.
QWEN_VOCAB_SIZE = 151_936

ENDOFTEXT_ID = 151_643
IM_START_ID = 151_644
IM_END_ID = 151_645

# (content, id, special) exactly as listed in the official tokenizer.json files.
# Qwen2.5 introduced 151646..151664; Qwen3 appended 151665..151668.  ``special``
# is False for the tool/FIM/think markers on purpose: the official files mark
# them non-special so they survive ``decode(skip_special_tokens=True)``.
_QWEN25_ADDED_TOKENS: tuple[tuple[str, int, bool], ...] = (
    ("<|endoftext|>", 151643, True),
    ("<|im_start|>", 151644, True),
    ("<|im_end|>", 151645, True),
    ("<|object_ref_start|>", 151646, True),
    ("<|object_ref_end|>", 151647, True),
    ("<|box_start|>", 151648, True),
    ("<|box_end|>", 151649, True),
    ("<|quad_start|>", 151650, True),
    ("<|quad_end|>", 151651, True),
    ("<|vision_start|>", 151652, True),
    ("<|vision_end|>", 151653, True),
    ("<|vision_pad|>", 151654, True),
    ("<|image_pad|>", 151655, True),
    ("<|video_pad|>", 151656, True),
    ("<tool_call>", 151657, False),
    ("</tool_call>", 151658, False),
    ("<|fim_prefix|>", 151659, False),
    ("<|fim_middle|>", 151660, False),
    ("<|fim_suffix|>", 151661, False),
    ("<|fim_pad|>", 151662, False),
    ("<|repo_name|>", 151663, False),
    ("<|file_sep|>", 151664, False),
)
_QWEN3_EXTRA_ADDED_TOKENS: tuple[tuple[str, int, bool], ...] = (
    ("<tool_response>", 151665, False),
    ("</tool_response>", 151666, False),
    ("<think>", 151667, False),
    ("</think>", 151668, False),
)

# Official Qwen2-Instruct template (Qwen2-0.5B/1.5B/7B-Instruct): plain ChatML
# with a default system turn injected when the conversation has none.
QWEN2_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

# Official Qwen3 hybrid-thinking template (Qwen3-0.6B ... -32B, revision with
# the ``message.content is string`` guards).  Behaviours tests may rely on:
#  * no default system prompt;
#  * historical assistant turns before the last user query lose their
#    <think> block, the ones after it keep/gain ``<think>\n...\n</think>\n\n``;
#  * ``enable_thinking=False`` only appends an empty think block to the
#    generation prompt.
QWEN3_CHAT_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

# Bumped whenever the on-disk layout or contents change, so stale caches from
# an older version of this file are rebuilt instead of silently reused.
FIXTURE_FORMAT_VERSION = 2
_MARKER = ".fixture-complete.json"

# Architecture of the tiny models.  Hidden/intermediate sizes are multiples of
# 256 so GGUF K-quant block sizes fit every matrix.
TINY_SHAPE: dict[str, int] = {
    "num_hidden_layers": 2,
    "hidden_size": 256,
    "intermediate_size": 512,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 64,
}
ROPE_THETA = 1_000_000.0


def fixture_home() -> Path:
    """Per-machine fixture cache: ``$MLX_FT_HOME/fixtures`` (default ``~/.cache/mlx_ft``)."""
    return cache_home() / "fixtures"


# --------------------------------------------------------------------------
# qwen.tiktoken
# --------------------------------------------------------------------------


def qwen_tiktoken_path(cache: Path) -> Path:
    """Return ``qwen.tiktoken``, fetching the dashscope wheel from PyPI once.

    Only the one resource file is kept; the wheel is never installed because
    dashscope drags in an SDK's worth of dependencies we do not need.
    """
    return fetch_from_wheel(
        f"dashscope=={DASHSCOPE_VERSION}", _WHEEL_MEMBER, QWEN_TIKTOKEN_SHA256, Path(cache) / "qwen.tiktoken"
    )


@functools.lru_cache(maxsize=4)
def _load_ranks_cached(path: str) -> dict[bytes, int]:
    ranks: dict[bytes, int] = {}
    for line in Path(path).read_bytes().splitlines():
        if not line:
            continue
        token_b64, rank = line.split()
        ranks[base64.b64decode(token_b64)] = int(rank)
    return ranks


def load_qwen_ranks(cache: Path) -> dict[bytes, int]:
    """``{token_bytes: rank}`` from qwen.tiktoken (also what tiktoken wants)."""
    ranks = _load_ranks_cached(str(qwen_tiktoken_path(cache)))
    if len(ranks) != QWEN_NUM_RANKS or set(ranks.values()) != set(range(QWEN_NUM_RANKS)):
        raise ValueError("qwen.tiktoken ranks are not a dense 0..151642 range")
    return dict(ranks)


def qwen_added_tokens(flavor: Flavor) -> list[tuple[str, int, bool]]:
    """(content, id, special) for the flavor's added tokens, in id order."""
    if flavor == "qwen2":
        return list(_QWEN25_ADDED_TOKENS)
    if flavor == "qwen3":
        return list(_QWEN25_ADDED_TOKENS + _QWEN3_EXTRA_ADDED_TOKENS)
    raise ValueError(f"unknown flavor {flavor!r}")


# --------------------------------------------------------------------------
# tiktoken ranks -> HF byte-level BPE
# --------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    # GPT-2's reversible byte->printable-char map; HF ByteLevel pre-tokenizer
    # and decoder assume exactly this table.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _to_unicode(token: bytes) -> str:
    table = _bytes_to_unicode()
    return "".join(table[b] for b in token)


def _split_by_rank(token: bytes, rank: int, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    # Replays tiktoken's own algorithm on the token's bytes, only allowing
    # merges that rank below the token itself.  The two pieces left at the end
    # are the pair whose merge *creates* this token, i.e. its merges.txt line.
    parts = [token[i : i + 1] for i in range(len(token))]
    while len(parts) > 2:
        best_rank = rank
        best_i = -1
        for i in range(len(parts) - 1):
            r = ranks.get(parts[i] + parts[i + 1])
            if r is not None and r < best_rank:
                best_rank = r
                best_i = i
        if best_i < 0:
            raise ValueError(f"token {token!r} (rank {rank}) is unreachable by BPE merges")
        parts[best_i : best_i + 2] = [parts[best_i] + parts[best_i + 1]]
    return parts[0], parts[1]


@functools.lru_cache(maxsize=2)
def _bpe_vocab_and_merges(tiktoken_path: str) -> tuple[dict[str, int], list[tuple[str, str]]]:
    # One merge per multi-byte token, ordered by the merged token's rank: HF's
    # BPE then applies merges in exactly the priority tiktoken uses (lowest
    # merged rank first).  This yields 151,387 merges, the same count as the
    # official Qwen merges.txt; transformers' generic TikTokenConverter instead
    # emits every valid split, which is larger and not what Qwen ships.
    ranks = _load_ranks_cached(tiktoken_path)
    vocab = {_to_unicode(tok): rank for tok, rank in ranks.items()}
    merges: list[tuple[int, str, str]] = []
    for tok, rank in ranks.items():
        if len(tok) == 1:
            continue
        left, right = _split_by_rank(tok, rank, ranks)
        merges.append((rank, _to_unicode(left), _to_unicode(right)))
    merges.sort(key=lambda m: m[0])
    return vocab, [(left, right) for _, left, right in merges]


def build_qwen_tokenizer(out_dir: Path, flavor: Flavor, cache: Path) -> None:
    """Write ``tokenizer.json`` + ``tokenizer_config.json`` for a Qwen chat model.

    The result loads offline with ``transformers.AutoTokenizer`` and with
    ``mlx_lm``'s tokenizer loader, and tokenises exactly like tiktoken with
    the official Qwen ranks and regex.
    """
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import BPE

    if flavor not in ("qwen2", "qwen3"):
        raise ValueError(f"unknown flavor {flavor!r}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    vocab, merges = _bpe_vocab_and_merges(str(qwen_tiktoken_path(cache)))
    tok = Tokenizer(
        BPE(
            vocab=dict(vocab),
            merges=list(merges),
            dropout=None,
            unk_token=None,
            continuing_subword_prefix="",
            end_of_word_suffix="",
            fuse_unk=False,
            byte_fallback=False,
            # Official Qwen files use False; exactness holds either way because
            # every vocab entry is reachable through its own merge chain.
            ignore_merges=False,
        )
    )
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False),
        ]
    )
    # ByteLevel post-processor only fixes offsets; it adds no BOS/EOS, which
    # matters because Qwen has no BOS and SFT masking counts on that.
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)
    tok.decoder = decoders.ByteLevel(add_prefix_space=False, trim_offsets=False, use_regex=False)

    added = qwen_added_tokens(flavor)
    # Added tokens take ids sequentially after the base vocab, so adding them in
    # id order reproduces the official ids; checked right after.
    for content, token_id, special in added:
        at = AddedToken(content, single_word=False, lstrip=False, rstrip=False, normalized=False, special=special)
        if special:
            tok.add_special_tokens([at])
        else:
            tok.add_tokens([at])
        got = tok.token_to_id(content)
        if got != token_id:
            raise AssertionError(f"{content} got id {got}, expected {token_id}")

    with atomic_path(out_dir / "tokenizer.json") as tmp_json:
        tok.save(str(tmp_json))

    added_tokens_decoder = {
        str(token_id): {
            "content": content,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": special,
        }
        for content, token_id, special in added
    }
    additional_special = [c for c, _, special in added if special and c != "<|endoftext|>"]
    config: dict[str, Any] = {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": added_tokens_decoder,
        "additional_special_tokens": additional_special,
        "bos_token": None,
        "chat_template": QWEN2_CHAT_TEMPLATE if flavor == "qwen2" else QWEN3_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        # Chat checkpoints stop on <|im_end|>; <|endoftext|> is the pad token.
        "eos_token": "<|im_end|>",
        "errors": "replace",
        "model_max_length": 32768 if flavor == "qwen2" else 40960,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }
    write_json(out_dir / "tokenizer_config.json", config)


# --------------------------------------------------------------------------
# tiny random model
# --------------------------------------------------------------------------


def _model_config(flavor: Flavor) -> dict[str, Any]:
    shape = TINY_SHAPE
    cfg: dict[str, Any] = {
        "architectures": ["Qwen2ForCausalLM" if flavor == "qwen2" else "Qwen3ForCausalLM"],
        "model_type": flavor,
        "attention_dropout": 0.0,
        "bos_token_id": ENDOFTEXT_ID,
        "eos_token_id": IM_END_ID,
        "pad_token_id": ENDOFTEXT_ID,
        "hidden_act": "silu",
        "initializer_range": 0.02,
        "max_position_embeddings": 32768 if flavor == "qwen2" else 40960,
        "max_window_layers": shape["num_hidden_layers"],
        "rms_norm_eps": 1e-6,
        # transformers 5 reads rope_parameters, mlx-lm 0.32's qwen2 reads only
        # the top-level key; keep both so neither falls back to a default.
        "rope_theta": ROPE_THETA,
        "rope_parameters": {"rope_type": "default", "rope_theta": ROPE_THETA},
        "rope_scaling": None,
        "sliding_window": None,
        "use_sliding_window": False,
        "tie_word_embeddings": True,
        "use_cache": True,
        "vocab_size": QWEN_VOCAB_SIZE,
        "torch_dtype": "float32",
        "dtype": "float32",
        "transformers_version": "5.0.0",
        **shape,
    }
    if flavor == "qwen3":
        cfg["attention_bias"] = False
    return cfg


def tensor_shapes(flavor: Flavor) -> dict[str, tuple[int, ...]]:
    """HF tensor name -> shape for the tiny model (no lm_head: embeddings are tied)."""
    s = TINY_SHAPE
    h, inter, hd = s["hidden_size"], s["intermediate_size"], s["head_dim"]
    q_dim, kv_dim = s["num_attention_heads"] * hd, s["num_key_value_heads"] * hd
    shapes: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (QWEN_VOCAB_SIZE, h)}
    for i in range(s["num_hidden_layers"]):
        p = f"model.layers.{i}."
        shapes[p + "input_layernorm.weight"] = (h,)
        shapes[p + "post_attention_layernorm.weight"] = (h,)
        shapes[p + "self_attn.q_proj.weight"] = (q_dim, h)
        shapes[p + "self_attn.k_proj.weight"] = (kv_dim, h)
        shapes[p + "self_attn.v_proj.weight"] = (kv_dim, h)
        shapes[p + "self_attn.o_proj.weight"] = (h, q_dim)
        if flavor == "qwen2":
            shapes[p + "self_attn.q_proj.bias"] = (q_dim,)
            shapes[p + "self_attn.k_proj.bias"] = (kv_dim,)
            shapes[p + "self_attn.v_proj.bias"] = (kv_dim,)
        else:
            shapes[p + "self_attn.q_norm.weight"] = (hd,)
            shapes[p + "self_attn.k_norm.weight"] = (hd,)
        shapes[p + "mlp.gate_proj.weight"] = (inter, h)
        shapes[p + "mlp.up_proj.weight"] = (inter, h)
        shapes[p + "mlp.down_proj.weight"] = (h, inter)
    shapes["model.norm.weight"] = (h,)
    return shapes


def random_tensor(name: str, shape: tuple[int, ...], seed: int) -> np.ndarray:
    """Deterministic init of one tensor: norms are 1, everything else N(0, 0.02).

    Each tensor has its own stream keyed on (seed, name), so a test can
    regenerate any single tensor cheaply and adding/removing tensors never
    shifts the values of the others.
    """
    if name.endswith("norm.weight"):
        return np.ones(shape, dtype=np.float32)
    stream = np.random.SeedSequence([seed, zlib.crc32(name.encode("utf-8"))])
    rng = np.random.default_rng(stream)
    return rng.standard_normal(shape, dtype=np.float32) * np.float32(0.02)


def _random_weights(flavor: Flavor, seed: int) -> dict[str, np.ndarray]:
    return {name: random_tensor(name, shape, seed) for name, shape in tensor_shapes(flavor).items()}


def _marker_payload(flavor: Flavor, seed: int) -> dict[str, Any]:
    return {"format": FIXTURE_FORMAT_VERSION, "flavor": flavor, "seed": seed}


def _is_complete(out_dir: Path, flavor: Flavor, seed: int) -> bool:
    marker = out_dir / _MARKER
    try:
        return json.loads(marker.read_text()) == _marker_payload(flavor, seed)
    except (OSError, ValueError):
        return False


def build_random_qwen(out_dir: Path, flavor: Flavor, cache: Path, seed: int = 0) -> Path:
    """Build (or reuse) a tiny random Qwen2/Qwen3 checkpoint at ``out_dir``.

    The folder loads with ``mlx_lm.load`` and, where torch is present, with
    ``transformers.AutoModelForCausalLM``.  Weights are float32 so later
    comparisons (quantisation, adapters, fusing) can be exact.  Reuse is keyed
    on a marker written last, which also records flavor/seed/format.
    """
    from safetensors.numpy import save

    if flavor not in ("qwen2", "qwen3"):
        raise ValueError(f"unknown flavor {flavor!r}")
    out_dir = Path(out_dir)
    if _is_complete(out_dir, flavor, seed):
        return out_dir

    # atomic_dir builds beside out_dir and swaps it in only once complete, so
    # readers never see a half-written model; the marker goes in last.
    with atomic_dir(out_dir) as tmp:
        build_qwen_tokenizer(tmp, flavor, cache)
        write_json(tmp / "config.json", _model_config(flavor))
        write_json(
            tmp / "generation_config.json",
            {
                "bos_token_id": ENDOFTEXT_ID,
                "pad_token_id": ENDOFTEXT_ID,
                # Like the official chat checkpoints: stop on either marker.
                "eos_token_id": [IM_END_ID, ENDOFTEXT_ID],
                "transformers_version": "5.0.0",
            },
        )
        # Serialised to bytes and written by atomic_path, which gives the file the
        # umask's mode; safetensors' save_file would leave it owner-only (0600).
        with atomic_path(tmp / "model.safetensors") as st:
            st.write_bytes(save(_random_weights(flavor, seed), metadata={"format": "pt"}))
        write_json(tmp / _MARKER, _marker_payload(flavor, seed))
    return out_dir
