"""Cross-validation of ``benchmarks/rlhf.py``'s reward model inside the training split (issue 10).

The 110 test pairs decide nothing here. Fold k of 4 holds the training pairs i with
i % 4 == k; a run trains on the other ~701 pairs and is scored on the fold's ~234 pairs plus
the 55 validation pairs, which it never saw. Each fold gets its own start model
(``rlhf_start.build_start(skip=fold)``: pretraining and instruction tuning without the fold's
texts), so nothing of a scored pair reaches the model before its reward model is trained.

Variants: start models (``STARTS``: corpus, steps, context) and reward-model recipes
(``CONFIGS``: the benchmark's, plus weight EMA, SWA, frozen embeddings, a faster head,
label smoothing, a margin; the non-library ones are patched in here, around one run each).
Ensembles are scored afterwards from the single runs' normalised score differences.
Every run writes one JSON line (``OUT/cv.jsonl``); ``summarise`` reads them back.

Run: ``python benchmarks/rlhf_cv.py --out DIR [--device cuda --workers 14]``; on 2 CPU cores
a full plan takes hours, on one GPU a few minutes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

FOLDS = 4
BASE = dict(epochs=3, lr=1e-3, batch_size=8, weight_decay=0.01, grad_clip=1.0,
            pooling="mean", train_mode="full")  # rlhf_reward.rm_settings' defaults
START = dict(model=dict(n_layers=4, emb_dim=128, n_heads=4, drop_rate=0.0), context=256,
             steps=600, batch=4, lr=2e-3, sft_epochs=1, sft_lr=5e-4)  # rlhf.py's defaults
STARTS = {
    "s600": {},                                       # the benchmark's start model
    "books": {"books": ("the-verdict.txt", "tinyshakespeare.txt"), "steps": 1200},
    "wide": {"context": 512},                         # same steps, twice the tokens per step
    "long": {"steps": 1200, "context": 512},
}
CONFIGS = {
    "base": {},
    "ema98": {"average": ("ema", 0.98)},
    "swa6": {"epochs": 6, "average": ("swa", 0.5)},   # mean of the last half's weights
    "freeze_emb": {"freeze_emb": True},
    "head_lr10": {"head_lr": 10.0},
    "smooth10": {"smooth": 0.1},
    "margin1": {"margin": 1.0},
}


@contextlib.contextmanager
def patched(config: dict):
    """Apply a recipe's non-library parts (module-level names in scratchllm) for one run."""
    import scratchllm.finetune.loop as loop_mod
    import scratchllm.finetune.reward as reward_mod
    import scratchllm.finetune.reward_task as task_mod

    saved = []

    def put(owner, name, value):
        saved.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    if config.get("freeze_emb"):
        original_trainable = reward_mod.set_trainable

        def set_trainable(model, *args, **kwargs):
            original_trainable(model, *args, **kwargs)
            for part in (model.tok_emb, model.pos_emb):
                part.weight.requires_grad_(False)
            return model
        put(reward_mod, "set_trainable", set_trainable)
    if config.get("head_lr"):
        scale = config["head_lr"]

        def build_optimizer(model, *, lr, weight_decay, betas, decay_all):
            head = {id(p) for p in model.out_head.parameters()}
            params = [p for p in model.parameters() if p.requires_grad]
            groups = [{"params": [p for p in params if id(p) not in head]},
                      {"params": [p for p in params if id(p) in head], "lr": lr * scale}]
            return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)
        put(loop_mod, "build_optimizer", build_optimizer)
    if config.get("smooth"):
        eps = config["smooth"]

        def reward_losses(chosen, rejected, *, margin=0.0, center_coef=0.0):
            gap = chosen - rejected - margin
            return -(1 - eps) * F.logsigmoid(gap) - eps * F.logsigmoid(-gap)
        put(task_mod, "reward_losses", reward_losses)
    if config.get("average"):
        kind, value = config["average"]
        state: dict = {"avg": None, "n": 0, "seen": 0}

        def absorb(model, updates_done, total):
            weights = {k: v.detach() for k, v in model.state_dict().items()
                       if v.is_floating_point()}
            if kind == "swa" and updates_done < value * total:
                return
            if state["avg"] is None:
                state["avg"] = {k: v.clone() for k, v in weights.items()}
            elif kind == "ema":
                for k, v in weights.items():
                    state["avg"][k].mul_(value).add_(v, alpha=1 - value)
            else:
                for k, v in weights.items():
                    state["avg"][k].mul_(state["n"] / (state["n"] + 1)).add_(v / (state["n"] + 1))
            state["n"] += 1

        original_loss = task_mod.RewardTask.loss_sum

        def loss_sum(self, batch):  # one call per step, before its update
            total = config_total_steps(self.size, config)
            with torch.no_grad():
                absorb(self.model, state["seen"], total)
            state["seen"] += 1
            return original_loss(self, batch)
        original_lora = reward_mod.lora_layers

        def lora_layers(model):  # finetune_reward's first call after the last step
            if state["seen"]:
                with torch.no_grad():
                    absorb(model, state["seen"], state["seen"])
                    current = model.state_dict()
                    for k, v in state["avg"].items():
                        current[k].copy_(v)
                state["seen"] = 0
            return original_lora(model)
        put(task_mod.RewardTask, "loss_sum", loss_sum)
        put(reward_mod, "lora_layers", lora_layers)
    try:
        yield
    finally:
        for owner, name, value in reversed(saved):
            setattr(owner, name, value)


def config_total_steps(pairs: int, config: dict) -> int:
    settings = {**BASE, **config}
    return settings["epochs"] * (pairs // settings["batch_size"])


def fold_entries(train: list, fold: int) -> tuple[list, list]:
    return ([e for i, e in enumerate(train) if i % FOLDS != fold],
            [e for i, e in enumerate(train) if i % FOLDS == fold])


def start_job(job: dict) -> tuple[str, int, str]:
    from rlhf_start import build_start

    variant, fold, data, work = job["start"], job["fold"], Path(job["data"]), Path(job["work"])
    spec = job["spec"]
    n = len(json.loads((data / "instruction-data.json").read_text(encoding="utf-8")))
    skip = {i for i in range(int(n * 0.85)) if i % FOLDS == fold}
    sft, seconds, _ = build_start(
        work / "starts", instructions=str(data / "instruction-data.json"),
        preferences=str(data / "instruction-data-with-preference.json"), shakespeare=None,
        books=[str(data / b) for b in spec.get("books", ())], skip=skip, model=spec["model"],
        context=spec["context"], steps=spec["steps"], batch=spec["batch"], lr=spec["lr"],
        sft_epochs=spec["sft_epochs"], sft_lr=spec["sft_lr"], device=job["device"])
    print(f"start {variant} fold {fold}: {seconds:.0f} s", flush=True)
    return variant, fold, str(sft)


def rm_job(job: dict) -> dict:
    from rlhf_start import train_split_file
    from scratchllm.data.instruction import split_entries
    from scratchllm.data.preference import load_preference_data
    from scratchllm.finetune.reward import finetune_reward
    from scratchllm.finetune.reward_model import open_reward_model
    from scratchllm.finetune.reward_task import RewardPairs

    data, work = Path(job["data"]), Path(job["work"])
    pref = data / "instruction-data-with-preference.json"
    train, val, _ = split_entries(load_preference_data(pref))
    rest, held = fold_entries(train, job["fold"])
    name = f"{job['start']}-{job['config']}-f{job['fold']}-s{job['seed']}"
    folder = work / "runs" / name
    folder.mkdir(parents=True, exist_ok=True)
    pairs_file = train_split_file(rest, held, folder / "pairs.json")
    config = CONFIGS[job["config"]]
    settings = {**BASE, **{k: v for k, v in config.items() if k in ("epochs", "margin")}}
    begin = time.perf_counter()
    with patched(config):
        run = finetune_reward(job["sft"], pairs_file, folder / "rm", seed=job["seed"],
                              eval_every=50, device=job["device"], precision="fp32",
                              progress=False, overwrite=True, **settings)
    seconds = time.perf_counter() - begin
    scorer = open_reward_model(run.model_dir, device=job["device"])
    tok = scorer.tokenizer
    row = {k: job[k] for k in ("start", "config", "fold", "seed")}
    for split, entries in (("fold", held), ("val", val)):
        pairs = RewardPairs(entries, tok, scorer.prompt_style, end_id=tok.eot_id,
                            end_ids=(tok.eot_id,), limit=scorer.limit)
        gap = (scorer.raw_scores(pairs.chosen, 32, pairs.chosen_starts)
               - scorer.raw_scores(pairs.rejected, 32, pairs.rejected_starts))
        row[f"{split}_acc"] = float((gap > 0).float().mean())
        row[f"{split}_gap"] = [round(float(g), 5) for g in gap]
    row.update(ref_std=scorer.std, train_acc=run.metrics["train"]["accuracy"], steps=run.steps,
               seconds=round(seconds, 1))
    shutil.rmtree(folder, ignore_errors=True)
    return row


def init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def plan(seeds: int, ens_seeds: int, starts: list[str], configs: list[str],
         folds: list[int]) -> list[tuple[str, str, int, int]]:
    """(start, config, fold, seed) in rounds of seeds, so an early stop leaves every variant
    with its first seeds."""
    jobs = []
    for seed in range(1, max(seeds, ens_seeds) + 1):
        for fold in folds:
            if seed <= ens_seeds:
                jobs.append(("s600", "base", fold, seed))
            if seed <= seeds:
                jobs += [("s600", c, fold, seed) for c in configs if c != "base"]
                jobs += [(s, "base", fold, seed) for s in starts if s != "s600"]
    return jobs


def main() -> None:
    import multiprocessing as mp

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path)
    parser.add_argument("--data", type=Path, default=Path(__file__).resolve().parents[2]
                        / "shared" / "data", help="folder with instruction/ and the books")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of every variant")
    parser.add_argument("--ens-seeds", type=int, default=8, help="seeds of the base recipe "
                        "(ensembles are formed from disjoint groups of them)")
    parser.add_argument("--starts", default=",".join(STARTS))
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--folds", default=",".join(str(f) for f in range(FOLDS)))
    parser.add_argument("--log", type=Path, help="where the JSON lines go (OUT/cv.jsonl)")
    parser.add_argument("--deadline", type=float, default=float("inf"),
                        help="seconds after which no further run is waited for")
    parser.add_argument("--sft", help="one start model for every fold (no per-fold builds: "
                        "cheaper on a CPU, but its pretraining saw the folds' texts)")
    parser.add_argument("--start-steps", type=int, help="override every start's steps (smoke)")
    parser.add_argument("--start-model", help="override the start model, e.g. 1,32,2 (smoke)")
    parser.add_argument("--summarise", type=Path, metavar="JSONL", help="only print the "
                        "summary table of an earlier run's cv.jsonl")
    args = parser.parse_args()
    if args.summarise:
        summarise(args.summarise)
        return
    specs = {name: {**START, **extra} for name, extra in STARTS.items()}  # workers get copies
    for spec in specs.values():
        if args.start_steps:
            spec["steps"] = args.start_steps
        if args.start_model:
            layers, width, heads = (int(x) for x in args.start_model.split(","))
            spec["model"] = dict(n_layers=layers, emb_dim=width, n_heads=heads, drop_rate=0.0)
    data = args.data
    if (data / "instruction").is_dir():
        data = data / "instruction"
    if not (data / "tinyshakespeare.txt").is_file():  # start_job wants one folder
        data = _with_books(data, args.data, args.out)
    starts, configs = args.starts.split(","), args.configs.split(",")
    folds = [int(f) for f in args.folds.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    common = {"data": str(data), "work": str(args.out), "device": args.device}
    context = mp.get_context("spawn")
    begin = time.perf_counter()
    (args.log or args.out / "cv.jsonl").touch()
    with context.Pool(args.workers, init_worker, (args.threads,)) as pool, \
            open(args.log or args.out / "cv.jsonl", "a", encoding="utf-8") as log:
        needed = sorted({(s, f) for s, _, f, _ in plan(args.seeds, args.ens_seeds, starts,
                                                       configs, folds)})
        if args.sft:
            sfts = {key: args.sft for key in needed}
        else:
            sfts = {(v, f): p for v, f, p in pool.map(start_job, [
                {**common, "start": v, "fold": f, "spec": specs[v]} for v, f in needed],
                chunksize=1)}
        print(f"start models ready: {time.perf_counter() - begin:.0f} s", flush=True)
        log_path = args.log or args.out / "cv.jsonl"
        done_before = {(r["start"], r["config"], r["fold"], r["seed"]) for r in map(
            json.loads, log_path.read_text(encoding="utf-8").splitlines()) if r}
        jobs = [{**common, "start": s, "config": c, "fold": f, "seed": seed, "sft": sfts[s, f]}
                for s, c, f, seed in plan(args.seeds, args.ens_seeds, starts, configs, folds)
                if (s, c, f, seed) not in done_before]  # a rerun continues an earlier one
        done = 0
        for row in pool.imap_unordered(rm_job, jobs, chunksize=1):
            done += 1
            log.write(json.dumps(row) + "\n")
            log.flush()
            print(f"{time.perf_counter() - begin:5.0f} s {row['start']} {row['config']} "
                  f"f{row['fold']} s{row['seed']}: fold {row['fold_acc']:.3f} val "
                  f"{row['val_acc']:.3f} ({row['seconds']:.0f} s)", flush=True)
            if time.perf_counter() - begin > args.deadline:
                break  # leaving the with block terminates the workers
    print(f"{done} of {len(jobs)} runs: {time.perf_counter() - begin:.0f} s", flush=True)


def cv_accuracy(rows: list[dict], key: str = "fold_gap") -> float:
    """Share of pairs won, pooled over the folds (each training pair scored once)."""
    gaps = [g for r in rows for g in r[key]]
    return sum(g > 0 for g in gaps) / len(gaps)


def ensemble_rows(rows: list[dict]) -> dict:
    """One pseudo-run: per fold, the mean of the members' normalised score gaps."""
    out = {"fold_gap": [], "val_gap": []}
    for fold in sorted({r["fold"] for r in rows}):
        members = [r for r in rows if r["fold"] == fold]
        for key in out:
            stacked = torch.tensor([r[key] for r in members]) / torch.tensor(
                [[r["ref_std"]] for r in members])
            out[key] += stacked.mean(0).tolist()
    return out


def summarise(path: Path) -> None:
    """Markdown: every variant's CV accuracy per seed, mean, spread, paired gain over base."""
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line]
    groups: dict = {}
    for row in rows:
        groups.setdefault((row["start"], row["config"]), {}).setdefault(row["seed"], []).append(row)
    folds = max(len({r["fold"] for r in rows}), 1)
    complete = {k: {s: rs for s, rs in v.items() if len(rs) == folds} for k, v in groups.items()}
    base = complete.get(("s600", "base"), {})
    print(f"| start | recipe | seeds | CV accuracy per seed ({folds} folds pooled) | mean | "
          "spread (sd) | paired gain over s600/base | val (55) mean |")
    print("|---|---|---|---|---|---|---|---|")
    for (start, config), seeds in sorted(complete.items()):
        if not seeds:
            continue
        accs = {s: cv_accuracy(rs) for s, rs in sorted(seeds.items())}
        values = torch.tensor(list(accs.values()))
        gains = [accs[s] - cv_accuracy(base[s]) for s in accs if s in base]
        gain = (f"{sum(gains) / len(gains):+.4f} (n={len(gains)}, sd "
                f"{torch.tensor(gains).std().item() if len(gains) > 1 else 0:.4f})"
                if gains and (start, config) != ("s600", "base") else "-")
        val = sum(cv_accuracy(rs, "val_gap") for rs in seeds.values()) / len(seeds)
        print(f"| {start} | {config} | {len(seeds)} | "
              f"{' / '.join(f'{a:.3f}' for a in accs.values())} | {values.mean():.4f} | "
              f"{values.std().item() if len(values) > 1 else 0:.4f} | {gain} | {val:.3f} |")
    seeds = sorted(base)
    for k in (2, 3, 4):
        teams = [seeds[i:i + k] for i in range(0, len(seeds) - k + 1, k)]
        if len(teams) < 2:
            continue
        accs = [cv_accuracy([ensemble_rows([r for s in team for r in base[s]])]) for team in teams]
        singles = [sum(cv_accuracy(base[s]) for s in team) / k for team in teams]
        print(f"| s600 | ensemble of {k} | {len(teams)} teams {teams} | "
              f"{' / '.join(f'{a:.3f}' for a in accs)} | {sum(accs) / len(accs):.4f} | "
              f"{torch.tensor(accs).std().item():.4f} | "
              f"{sum(a - b for a, b in zip(accs, singles)) / len(accs):+.4f} over its members' "
              f"mean | - |")


def _with_books(data: Path, books: Path, out: Path) -> Path:
    """A folder holding the instruction files and the books side by side (symlinks)."""
    both = out / "data"
    both.mkdir(parents=True, exist_ok=True)
    for source in [*data.glob("*.json"), *books.glob("*.txt")]:
        target = both / source.name
        if not target.exists():
            os.symlink(source.resolve(), target)
    return both


if __name__ == "__main__":
    main()
