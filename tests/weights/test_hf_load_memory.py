"""Loading streams tensors into an uninitialised model, so nothing is held twice.

Peak RSS turned out too noisy to assert on this shared machine (memory-mapped file pages count
while a shard is open: 0.4x-3.5x of the model between runs), so these tests check the
mechanism instead: parameters are never initialised, and each loaded tensor is installed as
it was read, without a second copy (only GPT-2's transposed Conv1D weights are copied once).
"""

from __future__ import annotations

import torch

from scratchllm.model import GPTConfig, GPTModel
from scratchllm.weights import hf
from scratchllm.weights.hf_export import export_hf_dir
from scratchllm.weights.meta import empty_weights


def test_empty_weights_allocates_no_parameters_but_keeps_buffers():
    class WithBuffer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(1000, 1000)
            self.register_buffer("table", torch.arange(4.0), persistent=False)

    with empty_weights():
        module = WithBuffer()
    assert all(p.device.type == "meta" for p in module.parameters())
    assert torch.equal(module.table, torch.arange(4.0))
    assert torch.nn.Linear(2, 2).weight.device.type == "cpu"  # patch undone afterwards


def test_loaded_tensors_are_installed_without_a_second_copy(tmp_path, monkeypatch):
    config = GPTConfig(vocab_size=300, context_length=32, emb_dim=32, n_heads=2, n_layers=2,
                       qkv_bias=True)
    export_hf_dir(GPTModel(config), tmp_path)
    read: dict[str, torch.Tensor] = {}
    real_open = hf.open_safetensors

    class Recording:
        def __init__(self, handle):
            self.handle = handle

        def __enter__(self):
            self.handle.__enter__()
            return self

        def __exit__(self, *exc):
            return self.handle.__exit__(*exc)

        def keys(self):
            return self.handle.keys()

        def get_slice(self, name):
            return self.handle.get_slice(name)

        def get_tensor(self, name):
            read[name] = self.handle.get_tensor(name)
            return read[name]

    monkeypatch.setattr(hf, "open_safetensors", lambda path: Recording(real_open(path)))
    model, _ = hf.load_hf_dir(tmp_path)
    state = model.state_dict()
    assert len(read) == len(state)  # every tensor read exactly once (the head is untied)
    for hf_name, tensor in read.items():
        ours = hf.GPT2_ADAPTER.hf_to_ours(hf_name)
        shared = state[ours].untyped_storage().data_ptr() == tensor.untyped_storage().data_ptr()
        transposed = hf_name.endswith(("c_attn.weight", "c_proj.weight", "c_fc.weight"))
        assert shared != transposed, hf_name  # copied once if transposed, else not at all
