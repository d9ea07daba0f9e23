"""The peer of ``benchmarks/rlhf.py`` part 1: TRL's ``RewardTrainer`` on the same weights and pairs.

The instruction-tuned starting model is exported with ``scratchllm export --to hf`` and
opened as ``GPT2ForSequenceClassification`` (TRL's own ``num_labels=1`` path). It trains on
exactly the token sequences scratchllm's reward model trains on (``prompt + response + <end>``,
pre-tokenised, so both read the same ids), with the same epochs, batch size, learning rate
(constant), weight decay and gradient clipping.

One setting differs from a naive run, on purpose: the pad token. GPT-2 has none and TRL falls
back to the end token, but Hugging Face's sequence classifier reads the score at the last
token that is *not* the pad, which would then be the last answer token rather than the end
token after it. The peer pads with another token so it reads the score where scratchllm does.

Needs ``pip install trl`` (benchmark only; not a scratchllm dependency).
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

PAD_TOKEN = "!"  # id 0 in GPT-2's vocabulary: any token but the end token will do


def trl_available() -> str | None:
    """The installed trl version, or None when it is missing or does not import."""
    try:
        import trl
        from trl import RewardConfig, RewardTrainer  # noqa: F401
    except Exception:  # an incompatible transformers raises all sorts of errors
        return None
    return trl.__version__


def train_trl_reward(hf_dir: Path, out: Path, chosen: list[list[int]], rejected: list[list[int]],
                     *, epochs: int, batch_size: int, lr: float, weight_decay: float,
                     grad_clip: float, seed: int) -> tuple[Any, list[dict], float]:
    """(trained sequence classifier in eval mode, TRL's log history, seconds)."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, PrinterCallback
    from transformers.utils import logging as hf_logging
    from trl import RewardConfig, RewardTrainer

    hf_logging.set_verbosity_error()
    logging.getLogger("trl").setLevel(logging.ERROR)
    start = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(hf_dir)
    tokenizer.pad_token = PAD_TOKEN
    config = RewardConfig(
        output_dir=str(out), num_train_epochs=epochs, per_device_train_batch_size=batch_size,
        learning_rate=lr, lr_scheduler_type="constant", warmup_steps=0,
        weight_decay=weight_decay, max_grad_norm=grad_clip, seed=seed, data_seed=seed,
        logging_steps=5, save_strategy="no", eval_strategy="no", report_to=[],
        use_cpu=True, bf16=False, fp16=False, disable_dropout=True,
        max_length=None, dataloader_num_workers=0, disable_tqdm=True)
    model = AutoModelForSequenceClassification.from_pretrained(hf_dir, num_labels=1,
                                                               dtype=torch.float32)
    data = Dataset.from_dict({"chosen_ids": chosen, "rejected_ids": rejected})
    trainer = RewardTrainer(model=model, args=config, train_dataset=data,
                            processing_class=tokenizer)
    trainer.remove_callback(PrinterCallback)  # its log dicts stay in state.log_history
    trainer.train()
    seconds = time.perf_counter() - start
    model = trainer.model.eval()
    return model, [dict(r) for r in trainer.state.log_history], seconds


@torch.no_grad()
def hf_scores(model: Any, sequences: list[list[int]], pad_id: int, batch_size: int = 16
              ) -> torch.Tensor:
    """(N,) scores of complete sequences, right-padded with ``pad_id`` (as TRL trained them)."""
    out = []
    for start in range(0, len(sequences), batch_size):
        rows = sequences[start:start + batch_size]
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        out.append(model(input_ids=ids, attention_mask=mask).logits[:, 0].float())
    return torch.cat(out)
