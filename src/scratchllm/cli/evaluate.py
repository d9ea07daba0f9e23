"""``scratchllm evaluate {perplexity,classification,judge}``: score a model or its answers (book 5.1.2, 6.6, 7.8)."""

from __future__ import annotations

import argparse
import json


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("evaluate", help="perplexity, classification metrics, LLM-as-judge or reward-model scores",
                              description="Evaluate a model (perplexity) or its instruction "
                              "answers (LLM-as-judge, book 7.8).")
    kinds = p.add_subparsers(dest="kind", metavar="KIND")

    ppl = kinds.add_parser("perplexity", help="perplexity on a text file or instruction data")
    ppl.add_argument("--model", required=True, metavar="DIR",
                     help="model: scratchllm model/run dir, Hugging Face dir or Hub name")
    source = ppl.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", metavar="FILE", help="plain text file")
    source.add_argument("--instructions", metavar="FILE",
                        help="instruction JSON: score the responses given the prompts")
    ppl.add_argument("--prompt-style", choices=["alpaca", "phi3"],
                     help="--instructions' prompt template (default: the one --model was "
                     "instruction-tuned with, else alpaca)")
    ppl.add_argument("--response-key", default="output", help="field holding the response")
    ppl.add_argument("--window", type=int, help="tokens per window (default: context length)")
    ppl.add_argument("--stride", type=int, help="window step (default: the window)")
    ppl.add_argument("--batch-size", type=int, default=8)
    ppl.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    ppl.add_argument("--json", action="store_true",
                     help="print only the JSON report: loss, perplexity, tokens, characters, "
                     "loss_per_char (nats per character: comparable across tokenizers)")
    ppl.set_defaults(func=run_perplexity)

    clf = kinds.add_parser("classification",
                           help="accuracy, precision, recall, F1 of a classifier on labelled data")
    clf.add_argument("--model", required=True, metavar="DIR",
                     help="classifier from `scratchllm finetune classify` (its OUT or OUT/model)")
    clf.add_argument("--data", required=True, metavar="FILE", help="labelled TSV/CSV/JSONL")
    clf.add_argument("--batch-size", type=int, default=16)
    clf.add_argument("--max-length", type=int, help="pad/truncate length (default: the training one)")
    clf.add_argument("--truncate", action="store_true", help="cut texts longer than --max-length")
    clf.add_argument("--out", metavar="FILE", help="also write the report as JSON")
    clf.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    clf.set_defaults(func=run_classification)

    judge = kinds.add_parser("judge", help="score answers 0-100 with a judge LLM (Ollama/OpenAI API)")
    judge.add_argument("--responses", required=True, metavar="FILE",
                       help="JSON from `scratchllm finetune instruct` (test_responses.json)")
    judge.add_argument("--endpoint", help="server URL (default: Ollama's http://localhost:11434)")
    judge.add_argument("--api", choices=["ollama", "openai"], default="ollama")
    judge.add_argument("--model-name", default="llama3", help="judge model (default llama3)")
    judge.add_argument("--response-key", default="model_response")
    judge.add_argument("--out", metavar="FILE",
                       help="scores JSON (default: RESPONSES.scores.json); each item is also "
                       "appended to OUT with .jsonl as it finishes")
    judge.add_argument("--resume", action="store_true",
                       help="keep the items OUT's .jsonl already holds; judge only the rest")
    judge.add_argument("--workers", type=int, default=1, metavar="N",
                       help="requests in flight at once (default 1)")
    judge.add_argument("--api-key", metavar="KEY",
                       help="sent as a Bearer token (default for --api openai: $OPENAI_API_KEY)")
    judge.add_argument("--max-tokens", type=int, default=16, metavar="N",
                       help="longest judge reply in tokens (max_tokens / num_predict; default 16)")
    judge.add_argument("--timeout", type=float, default=120.0,
                       help="total seconds one request may take, reply included (default 120)")
    judge.add_argument("--retries", type=int, default=3, help="retries of a failed request")
    judge.set_defaults(func=run_judge)

    reward = kinds.add_parser("reward", help="score answers with a reward model; win rates "
                              "between files (ch. 8)")
    reward.add_argument("--reward-model", required=True, metavar="DIR",
                        help="reward model from `scratchllm finetune reward` (its OUT or OUT/model)")
    reward.add_argument("--responses", required=True, nargs="+", metavar="FILE",
                        help="JSON answer files: records with instruction, input and the answer "
                        "(test_responses.json of `finetune instruct`)")
    reward.add_argument("--response-key", default="model_response",
                        help="field holding the answer (model_response)")
    reward.add_argument("--batch-size", type=int, default=8)
    reward.add_argument("--json", action="store_true", help="print the report as JSON")
    reward.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps")
    reward.set_defaults(func=run_reward)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def run_perplexity(args: argparse.Namespace) -> int:
    from scratchllm.data.text_files import read_text_file
    from scratchllm.data.chat_templates import prompt_style_of
    from scratchllm.evaluate.perplexity import instruction_perplexity, text_perplexity
    from scratchllm.model.cpu_matmul import onednn_linears
    from scratchllm.utils.device import resolve_device
    from scratchllm.weights.auto import open_model

    loaded = open_model(args.model, device=resolve_device(args.device), require_tokenizer=True)
    model, tokenizer = loaded.model, loaded.tokenizer
    if args.text:
        text = read_text_file(args.text)
        with onednn_linears():
            result = text_perplexity(model, text, tokenizer=tokenizer, window=args.window,
                                     stride=args.stride, batch_size=args.batch_size)
    else:
        from scratchllm.data.instruction import load_json_entries

        entries = load_json_entries(args.instructions, ("instruction", "input", args.response_key))
        style = args.prompt_style or prompt_style_of(loaded.metadata) or "alpaca"
        with onednn_linears():
            result = instruction_perplexity(model, tokenizer, entries, style=style,
                                            response_key=args.response_key,
                                            batch_size=args.batch_size)
    print(json.dumps(result.to_dict()))
    if not args.json:
        per_char = (f", {result.loss_per_char:.4f} nats per character"
                    if result.loss_per_char is not None else "")
        print(f"perplexity: {result.perplexity:.3f} (loss {result.loss:.4f} over "
              f"{result.tokens} tokens{per_char})")
    return 0


def run_classification(args: argparse.Namespace) -> int:
    from scratchllm.evaluate.classification import format_report, is_report_file
    from scratchllm.finetune.classify import evaluate_classifier
    from scratchllm.model.cpu_matmul import onednn_linears
    from scratchllm.utils.atomic import atomic_write_json
    from scratchllm.utils.outputs import check_output_file

    if args.out:  # before the model loads: a user's file of that name is never replaced
        check_output_file(args.out, is_report_file)
    with onednn_linears():  # plain nn.Linear forwards: oneDNN on AMD CPUs (model.cpu_matmul)
        report = evaluate_classifier(args.model, args.data, batch_size=args.batch_size,
                                     max_length=args.max_length, truncate=args.truncate,
                                     device=args.device)
    print(format_report(report))
    if args.out:
        atomic_write_json(args.out, report)
    return 0


def run_reward(args: argparse.Namespace) -> int:
    from scratchllm.evaluate.reward import evaluate_reward, format_reward_report
    from scratchllm.model.cpu_matmul import onednn_linears

    with onednn_linears():  # plain nn.Linear forwards: oneDNN on AMD CPUs (model.cpu_matmul)
        report = evaluate_reward(args.reward_model, args.responses,
                                 response_key=args.response_key, batch_size=args.batch_size,
                                 device=args.device)
    print(json.dumps(report) if args.json else format_reward_report(report))
    return 0


def run_judge(args: argparse.Namespace) -> int:
    import os
    import signal
    from pathlib import Path

    from scratchllm.cli.main import Terminated
    from scratchllm.data.instruction import load_json_entries
    from scratchllm.evaluate.judge import (
        JudgeClient, JudgeUnavailableError, check_judge_outputs, judge_responses, read_item_file,
        save_judgement,
    )
    from scratchllm.utils.progress import Progress

    entries = load_json_entries(args.responses, ("instruction", "output", args.response_key))
    api_key = args.api_key or (os.environ.get("OPENAI_API_KEY") if args.api == "openai" else None)
    client = JudgeClient(args.endpoint, model=args.model_name, api=args.api,
                         timeout=args.timeout, retries=args.retries, api_key=api_key,
                         max_tokens=args.max_tokens)
    out = Path(args.out) if args.out else Path(args.responses).with_suffix(".scores.json")
    items = out.with_suffix(".jsonl")
    check_judge_outputs(out, items)  # before any request: a user's file is never replaced
    progress = Progress(len(entries), every=max(1, len(entries) // 20), unit="item", desc="judge")
    done = [0]

    def report(index: int, score: int | None) -> None:
        done[0] += 1
        progress.advance(progress.start_step + done[0],
                         f"score {score if score is not None else 'unparsed'} (#{index + 1})")

    if args.resume and items.is_file():
        progress.start_step = len(read_item_file(items, entries, client, args.response_key))
        progress.message(f"resuming: {progress.start_step} of {len(entries)} items already "
                         f"judged in {items}")
    try:
        result = judge_responses(entries, client, response_key=args.response_key,
                                 workers=args.workers, items_path=items, resume=args.resume,
                                 on_item=report)
    except JudgeUnavailableError as err:
        kept = progress.start_step + done[0]
        if kept:
            raise JudgeUnavailableError(f"{err}; the {kept} items judged so far are kept in "
                                        f"{items}: add --resume to go on from there") from err
        raise
    except (KeyboardInterrupt, Terminated) as stop:
        # like a stopped training run: one line saying why, what is kept and how to go on
        # (a rerun without --resume starts the file over, judging everything again)
        kept = progress.start_step + done[0]
        if not kept:
            raise
        why, code = (("interrupted", 128 + signal.SIGINT) if isinstance(stop, KeyboardInterrupt)
                     else ("stopped by SIGTERM", 128 + signal.SIGTERM))
        progress.message(f"{why} after {kept} of {len(entries)} items; kept in {items}; "
                         "continue with --resume")
        return code
    finally:
        progress.close()
    save_judgement(out, result)
    average = result.average
    print(f"average score: {average:.2f} / 100 over {len(entries) - result.n_unparsed} responses"
          if average is not None else "no reply held a score")
    print(f"scores: {out} (per item, as judged: {items})")
    return 0
