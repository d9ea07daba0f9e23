"""Setting up and finishing a fine-tuning run (instruction tuning and DPO; classification too).

A fine-tuning run directory ``OUT`` ends up holding ``metrics.jsonl`` and ``loss.png`` (as a
pretraining run does), ``latest/`` (the fine-tuned model directory, with LoRA merged, so
``scratchllm generate --model OUT`` works), ``best/`` (the model with the best validation
score), ``checkpoints/step-N/`` when checkpoints were saved (``--save-every``, Ctrl-C),
``adapter/`` (PEFT layout) when LoRA was used, and the method's own results files. The training
loop itself is ``finetune.loop``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from scratchllm.errors import ConfigError
from scratchllm.train.metrics import METRICS_FILE, MetricsLog, read_metrics
from scratchllm.train.plots import PLOT_FILE, plot_losses
from scratchllm.train.run_control import seed_everything
from scratchllm.train.run_dir import remove_stale_temps
from scratchllm.train.state import latest_checkpoint
from scratchllm.train.steps import master_weights_config, resolve_precision
from scratchllm.utils.device import resolve_device
from scratchllm.utils.outputs import FINETUNE_RUN, check_output_dir, prepare_output_dir
from scratchllm.weights.auto import generation_header, open_model
from scratchllm.weights.model_dir import save_model_dir

if TYPE_CHECKING:
    from scratchllm.finetune.loop import LoopResult

MODEL_SUBDIR = "latest"
ADAPTER_SUBDIR = "adapter"  # LoRA runs: the adapters in PEFT's layout (generate --adapter)


@dataclass
class RunSetup:
    """What every fine-tuning run starts from."""

    model: nn.Module
    tokenizer: Any
    device: torch.device
    precision: str
    out_dir: Path
    log: MetricsLog
    eos_ids: tuple[int, ...] = ()   # every end id of the source model (kept in saved copies)
    checkpoint: Path | None = None  # the checkpoint a --resume continues from
    source: str | None = None       # the base model as given (recorded in LoRA adapters)
    resume_requested: bool = False  # --resume was given (with no checkpoint: say it starts anew)
    # What every model the run saves records (latest/, best/, checkpoints): e.g. the
    # prompt_style that chat and export read.
    model_metadata: dict[str, Any] = field(default_factory=dict)


def source_name(path: str | Path) -> str:
    """How a run's recipe names its model or data: the absolute path of an existing file or
    folder (so a resume may spell it differently), else as given (a Hub name)."""
    candidate = Path(path).expanduser()
    return str(candidate.resolve()) if candidate.exists() else str(path)


def tuned_prompt_style(model_dir: str | Path) -> str | None:
    """The instruction format a local scratchllm model (or run) was fine-tuned with, read from
    its config.json alone, before anything is loaded: DPO and PPO go on in the format the
    model learned (as chat and the reward model do) instead of silently switching it to
    Alpaca. None for any other model (Hugging Face ones remember no such format)."""
    from scratchllm.data.chat_templates import prompt_style_of
    from scratchllm.errors import ScratchLLMError
    from scratchllm.weights.auto import directory_kind
    from scratchllm.weights.model_dir import read_header, resolve_model_dir

    path = Path(model_dir).expanduser()
    try:
        if not path.is_dir() or directory_kind(path) == "hf":
            return None
        return prompt_style_of(read_header(resolve_model_dir(path)).get("metadata"))
    except (ScratchLLMError, OSError):
        return None  # opening the model says what is wrong with it


def check_out(model_dir: str | Path, out_dir: str | Path, *, overwrite: bool = False,
              resume: bool = False) -> tuple[Path, Path | None]:
    """(out folder, checkpoint to resume or None): the output rules, before any slow work.

    ``resume`` continues the newest checkpoint of an earlier run at ``out_dir``; with none
    there, a new or empty folder starts a new run, and an earlier run is replaced only with
    ``overwrite`` (``scratchllm.utils.outputs``).
    """
    out = Path(out_dir).expanduser()
    if out.exists() and out.resolve() == Path(model_dir).expanduser().resolve():
        raise ConfigError(f"--out {out} is the input model directory; choose a new folder")
    checkpoint = latest_checkpoint(out) if out.is_dir() else None
    decision = check_output_dir(out, FINETUNE_RUN, overwrite=overwrite, resume=resume,
                                can_resume=checkpoint is not None)
    if not resume or decision != "resume":
        return out, None
    if checkpoint is None and not overwrite:
        raise ConfigError(f"{out} holds an earlier fine-tuning run but no checkpoint to resume "
                          "from (save them with --save-every); nothing was deleted. Pass "
                          "--overwrite to start over, or choose another --out")
    return out, checkpoint


def claim_out(out: Path, *, overwrite: bool, checkpoint: Path | None) -> Path:
    """Create/clear and mark the folder ``check_out`` approved (kept as is when resuming, but
    for the temp files of a save the earlier run was killed in: a resume with no step left to
    run saves no checkpoint, the only other place they are removed)."""
    if checkpoint is not None:
        remove_stale_temps(out)
        return prepare_output_dir(out, FINETUNE_RUN, resume=True)[0]
    return prepare_output_dir(out, FINETUNE_RUN, overwrite=overwrite)[0]


def fresh_start_notice(setup: RunSetup) -> str | None:
    """What a run asked to ``--resume`` says when there was nothing to resume: it starts anew
    (as pretraining says), so a mistyped ``--out`` is not a silent retraining from scratch."""
    if setup.resume_requested and setup.checkpoint is None:
        return f"no checkpoint in {setup.out_dir} yet; starting a new run"
    return None


def master_weights(model: nn.Module) -> nn.Module:
    """Train in fp32 what a config stores in bf16/fp16 (Llama 3 / Qwen3 checkpoints).

    AdamW on bf16 weights loses every update below the weights' bf16 spacing, which is most
    fine-tuning updates at fine-tuning learning rates; as in pretraining
    (``train.steps.master_weights_config``) the weights and optimizer state stay fp32 and
    ``--precision`` autocasts the matmuls. The saved fine-tuned model says ``float32``.
    """
    config = getattr(model, "config", None)
    if config is not None and getattr(config, "dtype", "float32") != "float32":
        model.config = master_weights_config(config)
        model.float()
    return model


def start_run(model_dir: str | Path, out_dir: str | Path, *, device: str | None = "auto",
              precision: str = "auto", seed: int = 123, overwrite: bool = False,
              resume: bool = False) -> RunSetup:
    """Load the model (train mode) and its tokenizer; claim ``out_dir`` and start its log.

    The output folder is checked (``check_out``) before the model is loaded.
    """
    out, checkpoint = check_out(model_dir, out_dir, overwrite=overwrite, resume=resume)
    torch_device = resolve_device(device)
    loaded = open_model(model_dir, device=torch_device, require_tokenizer=True)
    out = claim_out(out, overwrite=overwrite, checkpoint=checkpoint)
    seed_everything(seed)
    master_weights(loaded.model).train()
    return RunSetup(loaded.model, loaded.tokenizer, torch_device,
                    resolve_precision(precision, torch_device), out, MetricsLog(out / METRICS_FILE),
                    loaded.eos_ids, checkpoint, source_name(model_dir), resume_requested=resume)


def start_prompted_run(model_dir: str | Path, out_dir: str | Path, *, prompt_style: str,
                       max_length: int | None, **start: Any) -> tuple[RunSetup, int]:
    """``start_run`` for a method that trains on prompt-formatted text (instruct, DPO):
    (setup, max_length). Every model the run saves records ``prompt_style`` (chat and export
    read it), and ``max_length`` is capped at the model's context (None: the context)."""
    setup = start_run(model_dir, out_dir, **start)
    setup.model_metadata["prompt_style"] = prompt_style
    context = setup.model.config.context_length
    return setup, min(max_length or context, context)


def maybe_apply_lora(model: nn.Module, lora: dict | None) -> None:
    """Wrap the linear layers in LoRA adapters (appendix E) when ``lora`` settings are given."""
    if not lora:
        return
    from scratchllm.model.lora import apply_lora

    apply_lora(model, **lora)


def describe_trainable(model: nn.Module) -> str:
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    return f"trainable parameters: {trainable:,} of {sum(p.numel() for p in params):,}"


def eval_loader(dataset, batch_size: int, collate: Callable) -> torch.utils.data.DataLoader:
    """Evaluation batches in file order: the first ``eval_batches`` are the same every time."""
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False,
                                       drop_last=False, collate_fn=collate)


def model_saver(setup: RunSetup) -> Callable[[Path, nn.Module, dict], Path]:
    """Save a language model directory that keeps the source model's every end id and the
    run's ``model_metadata`` (so ``OUT/best/`` remembers its prompt format as ``latest/`` does)."""
    def save(directory: Path, model: nn.Module, metadata: dict) -> Path:
        return save_model_dir(directory, model, setup.tokenizer,
                              {**setup.model_metadata, **metadata},
                              generation_header(setup.eos_ids))
    return save


def plot_run(setup: RunSetup) -> None:
    """``loss.png`` from the eval records, as pretraining draws it (once there are some)."""
    records = read_metrics(setup.out_dir / METRICS_FILE)
    if any(r.get("event") == "eval" and r.get("train_loss") is not None for r in records):
        plot_losses(records, setup.out_dir / PLOT_FILE, title=setup.out_dir.name)


def finish_run(setup: RunSetup, result: "LoopResult", *, lora: dict | None,
               metadata: dict[str, Any]) -> Path:
    """Plot, write best/, save LoRA adapters (PEFT layout, ``OUT/adapter``), merge them and
    save ``OUT/latest``."""
    plot_run(setup)
    model = setup.model
    if result.best is not None:
        result.best.write(model)  # before merging: the best weights are in LoRA's layout
    if lora:
        from scratchllm.model.lora import merge_lora
        from scratchllm.weights.lora_adapter import save_lora_adapter

        save_lora_adapter(model, setup.out_dir / ADAPTER_SUBDIR, base_source=setup.source,
                          overwrite=True)
        merge_lora(model)
    return model_saver(setup)(setup.out_dir / MODEL_SUBDIR, model, metadata)
