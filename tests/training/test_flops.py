"""The FLOPs a training step needs (progress line's TFLOP/s and MFU), against counts worked out by hand."""

import mlx.core as mx
import mlx.nn as nn
import pytest
from mlx_lm.models import llama
from mlx_lm.tuner.utils import linear_to_lora_layers

from mlx_ft.training.flops import StepWork


def _tiny_llama() -> llama.Model:
    # Per layer: q 64x64, k and v 64x32 (2 of 4 heads' width), o 64x64, MLP 3 x 64x128 = 36864 weights.
    args = llama.ModelArgs(
        model_type="llama",
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=128,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-5,
        vocab_size=1000,
        tie_word_embeddings=True,
    )
    model = llama.Model(args)
    mx.eval(model.parameters())
    model.freeze()
    return model


def test_lora_on_the_last_layer():
    model = _tiny_llama()
    linear_to_lora_layers(
        model, 1, {"rank": 4, "scale": 10.0, "dropout": 0.0, "keys": ["self_attn.q_proj", "self_attn.v_proj"]}
    )
    work = StepWork(model)
    assert [w.adapters for w in work.layers] == [0, 4 * (64 + 64) + 4 * (64 + 32)]
    assert [w.matrices for w in work.layers] == [36864, 36864]
    # Two examples of 3 and 5 tokens (8 tokens, 3*4/2 + 5*6/2 = 21 causal pairs), 4 learned targets.
    head = 2 * 64 * 1000 * 4 * 2  # output layer forward + activation gradient, on learned positions only
    layer0 = 2 * 36864 * 8 + 4 * 64 * 21  # below the adapters: forward only
    layer1 = (
        2 * (36864 + 896) * 8
        + 4 * 64 * 21  # forward
        + 2 * 36864 * 8  # activation gradient through the frozen matrices
        + 2 * (2 * 896 * 8 + 4 * 64 * 21)
    )  # adapters and attention: twice their forward
    assert work.batch([3, 5], learned=4) == head + layer0 + layer1 == 2_857_984


def test_full_fine_tune_of_the_last_layer_adds_weight_gradients():
    model = _tiny_llama()
    model.layers[1].unfreeze()
    work = StepWork(model)
    assert [w.weights_train for w in work.layers] == [False, True] and not work.head_trains
    head = 2 * 64 * 1000 * 4 * 2
    layer0 = 2 * 36864 * 8 + 4 * 64 * 21
    layer1 = 2 * 36864 * 8 + 4 * 64 * 21 + 2 * 36864 * 8 * 2 + 2 * 4 * 64 * 21
    assert work.batch([3, 5], learned=4) == head + layer0 + layer1


def test_whole_model_full_fine_tune_is_about_six_flops_per_weight_and_token():
    model = _tiny_llama()
    model.unfreeze()
    work = StepWork(model)
    assert work.head_trains
    n = 2 * 36864 + 64 * 1000
    # One long example with every target learned: attention adds 12 x width x (n+1)/2 per token on top of 6N.
    length = 256
    per_token = work.batch([length], learned=length) / length
    assert per_token == pytest.approx(6 * n + 2 * 12 * 64 * (length + 1) / 2, rel=1e-9)


def test_a_model_without_llama_style_shapes_trains_without_a_flop_count():
    class Other(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.args = type("Args", (), {"n_head": 4, "n_embd": 64})()

    assert StepWork.of(Other()) is None
    assert StepWork.of(_tiny_llama()) is not None
