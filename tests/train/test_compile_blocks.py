"""compile: blocks — one compiled transformer block serves every layer; training stays exact.

Inductor compiles take seconds even for a tiny model, so the whole module shares one
compiled function (train.compiling compiles it once per process) and runs few steps.
"""

from __future__ import annotations

import copy
import io

import pytest
import torch
import torch._dynamo

from scratchllm.errors import ConfigError
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.train import steps
from scratchllm.train.compiling import compile_blocks
from scratchllm.train.config import TrainConfig
from scratchllm.train.loop import Trainer

SMALL_MODEL = {"emb_dim": 32, "n_layers": 3, "n_heads": 2, "drop_rate": 0.1}


def _config(tmp_path, name: str, **overrides) -> TrainConfig:
    values = dict(preset="tiny", model=SMALL_MODEL, context_length=16, max_steps=4,
                  micro_batch_size=2, batch_size=2, lr=3e-3, warmup_steps=1, log_every=1,
                  eval_every=2, eval_batches=1, sample_tokens=3, device="cpu", precision="fp32",
                  seed=5, compile="blocks", out_dir=str(tmp_path / name))
    values.update(overrides)
    return TrainConfig(**values)


def _run(config: TrainConfig, **kwargs):
    trainer = Trainer(config, stream=io.StringIO())
    return trainer, trainer.run(**kwargs)


def test_compiled_blocks_match_eager_loss_and_gradients():
    config = GPTConfig.preset("tiny", **{**SMALL_MODEL, "drop_rate": 0.0}, context_length=16)
    torch.manual_seed(0)
    eager = GPTModel(config).train()
    compiled = copy.deepcopy(eager)
    assert compile_blocks(compiled) == 3
    ids = torch.randint(0, config.vocab_size, (2, 17))
    losses, grads = [], []
    with torch._dynamo.config.patch(error_on_recompile=True):  # one graph for all 3 blocks
        for model in (eager, compiled):
            loss = steps.batch_loss(model, ids[:, :-1], ids[:, 1:])
            loss.backward()
            losses.append(loss.item())
            grads.append({n: p.grad for n, p in model.named_parameters()})
    assert losses[1] == pytest.approx(losses[0], abs=1e-5)
    assert grads[0].keys() == grads[1].keys()
    for name in grads[0]:
        torch.testing.assert_close(grads[1][name], grads[0][name], rtol=1e-4, atol=1e-5,
                                   msg=name)
    # a deep copy routes its own blocks, not the original's
    twin = copy.deepcopy(compiled)
    with torch.no_grad():
        for p in twin.parameters():
            p.mul_(0.5)
    twin_loss = steps.batch_loss(twin, ids[:, :-1], ids[:, 1:]).item()
    assert twin_loss != pytest.approx(losses[1], abs=1e-3)
    assert compiled.state_dict().keys() == eager.state_dict().keys()


def test_blocks_run_resumes_exactly_and_samples_eagerly(tmp_path):
    straight, result = _run(_config(tmp_path, "straight"))
    assert result.step == 4 and result.samples and result.val_loss == result.val_loss
    _, first = _run(_config(tmp_path, "split"), stop_at=2)
    assert first.step == 2
    resumed, again = _run(_config(tmp_path, "split", resume=True))
    assert again.val_loss == result.val_loss
    for (name, a), b in zip(straight.model.state_dict().items(),
                            resumed.model.state_dict().values()):
        assert torch.equal(a, b), name


@pytest.mark.parametrize("value, message", [
    ("layers", "must be true, false, 'model' or 'blocks'"),
    (1, "must be true, false, 'model' or 'blocks'"),
])
def test_bad_compile_values(tmp_path, value, message):
    with pytest.raises(ConfigError, match=message):
        _config(tmp_path, "x", compile=value)


def test_blocks_refused_with_fsdp(tmp_path):
    with pytest.raises(ConfigError, match="not supported with distributed: fsdp"):
        _config(tmp_path, "x", distributed="fsdp")


@pytest.mark.parametrize("flags, expected", [
    (["--compile", "blocks"], "blocks"), (["--compile"], True), (["--compile", "model"], "model"),
    ([], False)])
def test_cli_compile_flag(tmp_path, monkeypatch, flags, expected):
    from scratchllm.cli import main as cli_main
    from scratchllm.cli.pretrain import build_config

    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.pretrain"])
    args = cli_main.build_parser().parse_args(["pretrain", "--out", str(tmp_path / "r"), *flags])
    assert build_config(args).compile == expected


def test_cli_refuses_an_unknown_compile_mode(tmp_path, monkeypatch, capsys):
    from scratchllm.cli import main as cli_main

    monkeypatch.setattr(cli_main, "COMMAND_MODULES", ["scratchllm.cli.pretrain"])
    assert cli_main.main(["pretrain", "--out", str(tmp_path / "r"), "--compile", "layers"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'compile' must be true, false, 'model' or 'blocks'" in err[0]
