"""Book ch. 7 recipe on a model directory: train/val loss beside the book's published numbers.

Recipe (book 7.6): Alpaca prompts, 85/5/10 split in file order, 2 epochs, batch 8, AdamW
lr 5e-5, weight decay 0.1, seed 123. The book fine-tunes GPT-2 medium (355M, OpenAI weights)
and reports train loss 0.299, val loss 0.657 after 2 epochs.

``--model DIR`` runs the recipe on your model (e.g. GPT-2 medium converted to a scratchllm
directory); this takes hours on a CPU. Without it (offline default) a small GPT is first
pretrained for a few minutes on the *training split's* texts only and then fine-tuned: that
shows the pipeline works end to end, but its losses are NOT comparable to the book's.
Run: ``python benchmarks/instruct.py [--model DIR] [--data FILE] [--pretrain-steps N]``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from scratchllm.data.instruction import format_example, load_instruction_data, split_entries
from scratchllm.finetune.instruct import finetune_instruct
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import save_model_dir
from scratchllm.train.optim import build_optimizer

BOOK_TRAIN, BOOK_VAL = 0.299, 0.657
DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "instruction" / "instruction-data.json"


def pretrain_small(data_file: Path, out: Path, steps: int) -> Path:
    """A small GPT trained on the train split's formatted examples (no val/test text seen)."""
    torch.manual_seed(123)
    tok = GPT2Tokenizer()
    train, _, _ = split_entries(load_instruction_data(data_file))
    ids = []
    for entry in train:
        ids += tok.encode_ordinary(format_example(entry)) + [tok.eot_id]
    config = GPTConfig.preset("tiny", context_length=256)
    model = GPTModel(config)
    optimizer = build_optimizer(model, lr=1e-3, weight_decay=0.1)
    data = torch.tensor(ids)
    length, batch = 128, 8
    start = time.perf_counter()
    for step in range(steps):
        starts = torch.randint(0, len(data) - length - 1, (batch,))
        x = torch.stack([data[s:s + length] for s in starts])
        y = torch.stack([data[s + 1:s + length + 1] for s in starts])
        loss = torch.nn.functional.cross_entropy(model(x).flatten(0, 1), y.flatten())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            print(f"pretrain step {step + 1}/{steps}: loss {loss.item():.3f} "
                  f"({time.perf_counter() - start:.0f} s)", flush=True)
    return save_model_dir(out, model, tok, {"pretrained_on": "instruction train split"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model directory (default: pretrain a small one)")
    parser.add_argument("--data", default=str(DATA), help="instruction JSON (book's 1,100 entries)")
    parser.add_argument("--pretrain-steps", type=int, default=150)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = args.model
        if model_dir is None:
            print("No --model: pretraining a tiny GPT (2 layers, 64 dims) on the train split. "
                  "Its losses are NOT comparable to the book's GPT-2 medium.", flush=True)
            model_dir = pretrain_small(Path(args.data), Path(tmp) / "small", args.pretrain_steps)
        start = time.perf_counter()
        result = finetune_instruct(model_dir, args.data, Path(tmp) / "run", epochs=args.epochs,
                                   batch_size=8, lr=5e-5, weight_decay=0.1, seed=123,
                                   prompt_style="alpaca", device=args.device, eval_every=50,
                                   generate_test=False)
        seconds = time.perf_counter() - start
    ratio = result.val_loss / BOOK_VAL
    print(f"fine-tuning: {seconds:.0f} s, {result.n_train} train / {result.n_val} val examples")
    print(f"{'':12}{'ours':>8}{'book gpt2-medium':>18}")
    print(f"{'train loss':12}{result.train_loss:8.3f}{BOOK_TRAIN:18.3f}")
    print(f"{'val loss':12}{result.val_loss:8.3f}{BOOK_VAL:18.3f}")
    print(f"instruct_val_loss: {result.val_loss:.3f} (book gpt2-medium: {BOOK_VAL}, ratio {ratio:.2f})")


if __name__ == "__main__":
    main()
