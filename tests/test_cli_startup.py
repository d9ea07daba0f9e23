"""``scratchllm --help`` builds every subcommand's parser without importing torch (it costs
seconds), and the packages whose exports became lazy still hand out every name."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("torch", "numpy", "matplotlib", "transformers", "tiktoken", "safetensors")

PROBE = """
import contextlib, io, json, sys
from scratchllm.cli.main import build_parser, main
build_parser()
for argv in (["--help"], ["finetune", "--help"], ["finetune", "ppo", "--help"],
             ["finetune", "classify", "--help"], ["info", "--help"]):
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main(argv)
print(json.dumps(sorted(m for m in %r if m in sys.modules)))
""" % (HEAVY,)


def test_building_the_parser_and_printing_help_import_nothing_heavy():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         timeout=120, check=True)
    assert json.loads(out.stdout) == []


def test_lazy_package_exports_still_resolve():
    import scratchllm.finetune
    import scratchllm.model
    from scratchllm.finetune import LoopSettings, finetune_dpo, set_trainable
    from scratchllm.model import GPTConfig, GPTModel, LlamaModel

    from scratchllm.finetune.dpo import finetune_dpo as dpo
    from scratchllm.model.gpt import GPTModel as gpt

    assert GPTModel is gpt and finetune_dpo is dpo and callable(set_trainable)
    assert GPTConfig.preset("tiny").n_layers > 0 and LlamaModel and LoopSettings
    assert set(scratchllm.model.__all__) <= set(dir(scratchllm.model))
    for package in (scratchllm.model, scratchllm.finetune):
        assert all(getattr(package, name) is not None for name in package.__all__)
        with pytest.raises(AttributeError, match="no attribute 'nothing'"):
            package.nothing  # noqa: B018
