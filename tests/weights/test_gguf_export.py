"""GGUF export read back with ``gguf``'s own reader: llama.cpp's tensor names and shapes (as its
model loaders declare them), the metadata keys it requires, the tokenizer, and the weights."""

from __future__ import annotations

import numpy as np
import pytest
import torch

gguf = pytest.importorskip("gguf")

from gguf_support import (LLAMA3_TEMPLATE, LLAMA_SPECIALS, hf_tokenizer,  # noqa: E402
                          loaded_model, read_gguf, tensor_array, tiny_gpt, tiny_llama)

from scratchllm.export.gguf import export_gguf  # noqa: E402
from scratchllm.weights.gguf_export import write_gguf  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")
N = gguf.TENSOR_NAMES
T = gguf.MODEL_TENSOR


@pytest.fixture(scope="module")
def gpt_tok():
    return hf_tokenizer()


@pytest.fixture(scope="module")
def llama_tok():
    return hf_tokenizer(LLAMA_SPECIALS, bos="<|begin_of_text|>", eos="<|end_of_text|>",
                        template=LLAMA3_TEMPLATE)


def blk(tensor, i: int, kind: str = "weight") -> str:
    return N[tensor].format(bid=i) + "." + kind


def test_gpt2_f32_names_shapes_and_weights(tmp_path, gpt_tok):
    model = tiny_gpt(gpt_tok.vocab_size)
    path = write_gguf(model, gpt_tok, tmp_path / "gpt.gguf", type_name="f32")
    fields, tensors = read_gguf(path)
    V, E = gpt_tok.vocab_size, 64
    # The dimensions llama.cpp's gpt2 loader declares (ggml order: innermost first).
    expected = {N[T.TOKEN_EMBD] + ".weight": [E, V], N[T.POS_EMBD] + ".weight": [E, 64],
                N[T.OUTPUT_NORM] + ".weight": [E], N[T.OUTPUT_NORM] + ".bias": [E],
                N[T.OUTPUT] + ".weight": [E, V]}
    for i in range(2):
        for tensor, w, b in [(T.ATTN_NORM, [E], [E]), (T.ATTN_QKV, [E, 3 * E], [3 * E]),
                             (T.ATTN_OUT, [E, E], [E]), (T.FFN_NORM, [E], [E]),
                             (T.FFN_UP, [E, 4 * E], [4 * E]), (T.FFN_DOWN, [4 * E, E], [E])]:
            expected[blk(tensor, i)] = w
            expected[blk(tensor, i, "bias")] = b
    assert {n: t.shape.tolist() for n, t in tensors.items()} == expected
    assert all(t.tensor_type == gguf.GGMLQuantizationType.F32 for t in tensors.values())
    block = model.trf_blocks[1]
    for name, ours in [(N[T.TOKEN_EMBD] + ".weight", model.tok_emb.weight),
                       (N[T.POS_EMBD] + ".weight", model.pos_emb.weight),
                       (N[T.OUTPUT] + ".weight", model.out_head.weight),
                       (N[T.OUTPUT_NORM] + ".bias", model.final_norm.bias),
                       (blk(T.ATTN_QKV, 1), block.att.qkv.weight),
                       (blk(T.ATTN_OUT, 1, "bias"), block.att.out_proj.bias),
                       (blk(T.FFN_UP, 1), block.ff.fc1.weight),
                       (blk(T.FFN_DOWN, 1), block.ff.fc2.weight),
                       (blk(T.FFN_NORM, 1), block.norm2.weight)]:
        np.testing.assert_array_equal(tensor_array(tensors[name]), ours.detach().numpy(), name)
    assert not tensor_array(tensors[blk(T.ATTN_QKV, 0, "bias")]).any()  # no qkv bias: zeros
    assert fields["general.architecture"] == "gpt2"
    assert fields["general.file_type"] == int(gguf.LlamaFileType.ALL_F32)
    for key, value in {"context_length": 64, "embedding_length": E, "block_count": 2,
                       "feed_forward_length": 4 * E, "attention.head_count": 4}.items():
        assert fields[f"gpt2.{key}"] == value, key
    assert fields["gpt2.attention.layer_norm_epsilon"] == pytest.approx(1e-5)


def test_tokenizer_tokens_types_merges_and_special_ids(tmp_path, llama_tok):
    import json

    model = tiny_llama(llama_tok.vocab_size + 3)  # three unused padding rows
    path = export_gguf(loaded_model(model, llama_tok), tmp_path / "llama.gguf")
    fields, _ = read_gguf(path)
    backend = llama_tok.backend
    n = llama_tok.vocab_size
    tokens = fields["tokenizer.ggml.tokens"]
    assert tokens[:n] == [backend.id_to_token(i) for i in range(n)]
    assert tokens[n:] == [f"[PAD{i}]" for i in range(n, n + 3)]
    merges = json.loads(backend.to_str())["model"]["merges"]
    assert fields["tokenizer.ggml.merges"] == [m if isinstance(m, str) else " ".join(m)
                                               for m in merges]
    types = fields["tokenizer.ggml.token_type"]
    special = {backend.token_to_id(t) for t in LLAMA_SPECIALS}
    assert {i for i, t in enumerate(types) if t == gguf.TokenType.CONTROL} == special
    assert types[n:] == [gguf.TokenType.UNUSED] * 3
    assert fields["tokenizer.ggml.model"] == "gpt2"
    assert fields["tokenizer.ggml.pre"] == "gpt-2"
    assert fields["tokenizer.ggml.bos_token_id"] == backend.token_to_id("<|begin_of_text|>")
    assert fields["tokenizer.ggml.eos_token_id"] == backend.token_to_id("<|end_of_text|>")
    assert fields["tokenizer.ggml.eot_token_id"] == backend.token_to_id("<|eot_id|>")
    assert fields["tokenizer.ggml.add_bos_token"] is True
    assert fields["tokenizer.chat_template"] == LLAMA3_TEMPLATE


def test_gpt2_tokenizer_vocabulary_is_tiktokens():
    """OpenAI's GPT-2 BPE: every token's bytes as tiktoken decodes them (no file written:
    reading 50,257 strings back takes gguf's reader half a minute)."""
    from scratchllm.tokenizers import GPT2Tokenizer
    from scratchllm.tokenizers.byte_level import token_str_to_bytes
    from scratchllm.weights.gguf_tokenizer import CONTROL, gguf_vocab

    tok = GPT2Tokenizer()
    vocab = gguf_vocab(tok, 50257)
    enc = tok.encoding
    for i in [0, 1, 256, 262, 1000, 30000, 50255]:
        assert token_str_to_bytes(vocab.tokens[i]) == enc.decode_single_token_bytes(i)
    assert vocab.tokens[50256] == "<|endoftext|>" and vocab.token_types[50256] == CONTROL
    assert len(vocab.merges) == 50000 and vocab.merges[0] == "Ġ t"
    assert (vocab.pre, vocab.eos_id, vocab.bos_id, vocab.add_bos) == ("gpt-2", 50256, 50256, False)


def _rope_pairs(x: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """llama.cpp's "llama" RoPE: rotate adjacent pairs (2i, 2i+1) by angles[i]."""
    out = x.copy()
    cos, sin = np.cos(angles), np.sin(angles)
    out[..., 0::2] = x[..., 0::2] * cos - x[..., 1::2] * sin
    out[..., 1::2] = x[..., 0::2] * sin + x[..., 1::2] * cos
    return out


def test_llama_attention_scores_match_llama_cpp_rope(tmp_path, llama_tok):
    """Query-key scores computed the way llama.cpp does (adjacent-pair RoPE, frequencies
    divided by the file's rope_freqs) from the GGUF equal our model's at the same positions:
    so the q/k row permutation and the Llama 3 scaling factors are right."""
    model = tiny_llama(llama_tok.vocab_size)
    path = export_gguf(loaded_model(model, llama_tok), tmp_path / "llama.gguf", type_name="f32")
    fields, tensors = read_gguf(path)
    wq, wk = (tensor_array(tensors[blk(t, 0)]) for t in (T.ATTN_Q, T.ATTN_K))
    factors = tensor_array(tensors[N[T.ROPE_FREQS] + ".weight"])
    base, dim = fields["llama.rope.freq_base"], fields["llama.rope.dimension_count"]
    assert factors.shape == (dim // 2,) and factors.max() > 1.0  # scaling is in play
    theta = base ** (-np.arange(0, dim, 2) / dim) / factors
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    p_q, p_k = 90, 7
    q = _rope_pairs((wq @ x[0]).reshape(4, dim)[0], p_q * theta)  # head 0
    k = _rope_pairs((wk @ x[1]).reshape(2, dim)[0], p_k * theta)  # its key head
    att = model.trf_blocks[0].att
    with torch.no_grad():
        xs = torch.from_numpy(x)
        ours_q = att.W_query(xs[0]).view(4, dim)[0]
        ours_k = att.W_key(xs[1]).view(2, dim)[0]
    from scratchllm.model.rope import apply_rope
    cos, sin = model.rope_cos, model.rope_sin
    rq = apply_rope(ours_q.view(1, 1, 1, dim), cos[p_q:p_q + 1], sin[p_q:p_q + 1]).flatten()
    rk = apply_rope(ours_k.view(1, 1, 1, dim), cos[p_k:p_k + 1], sin[p_k:p_k + 1]).flatten()
    assert float(q @ k) == pytest.approx(float(rq @ rk), rel=1e-4, abs=1e-4)
    for key, value in {"block_count": 2, "attention.head_count": 4,
                       "attention.head_count_kv": 2, "feed_forward_length": 96,
                       "context_length": 128, "vocab_size": llama_tok.vocab_size,
                       "embedding_length": 64}.items():
        assert fields[f"llama.{key}"] == value, key
    assert fields["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)


def test_qwen3_and_tied_llama_shapes(tmp_path, gpt_tok):
    qwen = tiny_llama(gpt_tok.vocab_size, qwen3=True, tie=True)
    fields, tensors = read_gguf(write_gguf(qwen, gpt_tok, tmp_path / "q.gguf"))
    assert fields["general.architecture"] == "qwen3"
    assert N[T.OUTPUT] + ".weight" not in tensors  # tied: llama.cpp reuses token_embd
    assert N[T.ROPE_FREQS] + ".weight" not in tensors
    shapes = {n: t.shape.tolist() for n, t in tensors.items() if n.startswith("blk.0.")}
    assert shapes == {blk(T.ATTN_NORM, 0): [64], blk(T.ATTN_Q, 0): [64, 128],
                      blk(T.ATTN_K, 0): [64, 64], blk(T.ATTN_V, 0): [64, 64],
                      blk(T.ATTN_OUT, 0): [128, 64], blk(T.ATTN_Q_NORM, 0): [32],
                      blk(T.ATTN_K_NORM, 0): [32], blk(T.FFN_NORM, 0): [64],
                      blk(T.FFN_GATE, 0): [64, 96], blk(T.FFN_UP, 0): [64, 96],
                      blk(T.FFN_DOWN, 0): [96, 64]}
    assert fields["qwen3.attention.key_length"] == 32 == fields["qwen3.attention.value_length"]
    # Qwen3 rotates halves in llama.cpp too: its q rows are written unpermuted.
    np.testing.assert_array_equal(tensor_array(tensors[blk(T.ATTN_Q, 1)]),
                                  qwen.trf_blocks[1].att.W_query.weight.detach().numpy())


@pytest.mark.parametrize("type_name, qtype, tolerance", [
    ("q8_0", "Q8_0", 1 / 127), ("f16", "F16", 1e-3), ("bf16", "BF16", 1 / 128)])
def test_quantized_types(tmp_path, gpt_tok, type_name, qtype, tolerance):
    model = tiny_gpt(gpt_tok.vocab_size, seed=4)
    fields, tensors = read_gguf(write_gguf(model, gpt_tok, tmp_path / "m.gguf",
                                           type_name=type_name))
    want = getattr(gguf.GGMLQuantizationType, qtype)
    for name, tensor in tensors.items():
        stays_f32 = tensor.shape.size == 1 or name.startswith(N[T.POS_EMBD])
        assert tensor.tensor_type == (gguf.GGMLQuantizationType.F32 if stays_f32 else want), name
    for name, ours in [(N[T.TOKEN_EMBD] + ".weight", model.tok_emb.weight),
                       (blk(T.FFN_DOWN, 0), model.trf_blocks[0].ff.fc2.weight)]:
        ours = ours.detach().numpy()
        error = np.abs(tensor_array(tensors[name]) - ours).max()
        assert error <= tolerance * np.abs(ours).max(), name
        assert error > 0  # really quantized
    assert fields["general.file_type"] == int(getattr(gguf.LlamaFileType, {
        "q8_0": "MOSTLY_Q8_0", "f16": "MOSTLY_F16", "bf16": "MOSTLY_BF16"}[type_name]))


def test_default_type_is_the_weights_dtype(tmp_path, gpt_tok):
    model = tiny_llama(gpt_tok.vocab_size).to(torch.bfloat16)
    _, tensors = read_gguf(write_gguf(model, gpt_tok, tmp_path / "b.gguf"))
    assert tensors[blk(T.ATTN_Q, 0)].tensor_type == gguf.GGMLQuantizationType.BF16
    assert tensors[blk(T.ATTN_NORM, 0)].tensor_type == gguf.GGMLQuantizationType.F32
