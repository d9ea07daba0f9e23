"""finetune_classifier and the two commands, end to end on a tiny model (book 6.7-6.8)."""

from __future__ import annotations

import json
import random

import pytest
import safetensors.torch
import torch

from scratchllm.cli.main import main
from scratchllm.data.classification import load_labelled_file
from scratchllm.finetune import finetune_classifier, load_classifier
from scratchllm.finetune.classifier_model import classify_texts
from scratchllm.model import GPTConfig, GPTModel
from scratchllm.tokenizers import GPT2Tokenizer
from scratchllm.weights.model_dir import save_model_dir


@pytest.fixture(scope="module")
def base_dir(tmp_path_factory, shared_data):
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("base") / "model"
    save_model_dir(path, GPTModel(GPTConfig.preset("tiny")), GPT2Tokenizer(shared_data / "gpt2"))
    return path


@pytest.fixture(scope="module")
def toy_file(tmp_path_factory):
    """A separable task: the label is decided by the text's last word."""
    rng = random.Random(0)
    words = ["red", "blue", "green", "table", "river", "stone", "cloud", "paper"]
    lines = []
    for i in range(80):
        label = "pos" if i % 2 else "neg"
        body = " ".join(rng.choice(words) for _ in range(rng.randint(1, 8)))
        lines.append(f"{label}\t{body} {'great' if label == 'pos' else 'awful'}")
    path = tmp_path_factory.mktemp("data") / "toy.tsv"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def spam_subset(tmp_path_factory, shared_data):
    lines = (shared_data / "sms_spam_collection.tsv").read_text(encoding="utf-8").splitlines()
    path = tmp_path_factory.mktemp("spam") / "spam.tsv"
    path.write_text("\n".join(lines[:200]) + "\n", encoding="utf-8")
    return path


def test_learns_a_separable_task_and_reports_consistently(base_dir, toy_file, tmp_path):
    out = tmp_path / "run"
    result = finetune_classifier(base_dir, toy_file, out, epochs=3, lr=1e-3, trainable="all",
                                 batch_size=8, eval_every=5, progress=False)
    assert result.split_sizes == {"train": 56, "val": 8, "test": 16}  # int(80*.7), int(80*.1)
    assert result.labels == ["neg", "pos"]
    assert result.accuracy("test") == 1.0 and result.accuracy("train") == 1.0
    assert result.steps == 3 * (56 // 8)
    for name in ("metrics.jsonl", "loss.png", "accuracy.png", "results.json",
                 "model/config.json", "model/model.safetensors"):
        assert (out / name).is_file(), name
    saved = json.loads((out / "results.json").read_text())
    matrix = saved["metrics"]["test"]["confusion_matrix"]
    assert matrix[0][1] == matrix[1][0] == 0 and matrix[0][0] + matrix[1][1] == 16
    assert matrix[0][0] == saved["metrics"]["test"]["per_class"]["neg"]["support"]
    events = [json.loads(line)["event"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert events.count("epoch") == 3 and "eval" in events

    # the saved classifier reproduces the reported test accuracy on the same test texts
    model, tokenizer, info = load_classifier(out)
    assert info["labels"] == ["neg", "pos"] and info["max_length"] == result.max_length
    data = load_labelled_file(toy_file)
    texts = {e.text: e.label for e in data.examples}
    preds = classify_texts(model, tokenizer, list(texts), info["labels"])
    assert all(info["labels"][texts[t]] == p for t, (p, _) in zip(texts, preds))

    # `scratchllm evaluate classification` on the whole file agrees with those predictions
    report_file = tmp_path / "report.json"
    assert main(["evaluate", "classification", "--model", str(out), "--data", str(toy_file),
                 "--out", str(report_file)]) == 0
    report = json.loads(report_file.read_text())
    correct = sum(info["labels"][texts[t]] == p for t, (p, _) in zip(texts, preds))
    assert report["n"] == len(data.examples)
    assert report["accuracy"] == pytest.approx(correct / len(texts))
    assert sum(report["confusion_matrix"][c][c] for c in range(2)) == round(report["accuracy"] * report["n"])


def test_head_only_keeps_the_backbone(base_dir, spam_subset, tmp_path):
    result = finetune_classifier(base_dir, spam_subset, tmp_path / "head", epochs=1,
                                 trainable="head", lr=1e-3, progress=False)
    base = safetensors.torch.load_file(str(base_dir / "model.safetensors"))
    tuned = safetensors.torch.load_file(str(result.model_dir / "model.safetensors"))
    assert set(tuned) == set(base) | {"out_head.bias"}
    for name, tensor in base.items():
        if not name.startswith("out_head"):
            assert torch.equal(tuned[name], tensor), name
    assert result.trainable_params == 64 * 2 + 2


def test_lora_run_saves_merged_model_and_adapters(base_dir, spam_subset, tmp_path):
    out = tmp_path / "lora"
    result = finetune_classifier(base_dir, spam_subset, out, epochs=1, trainable="lora",
                                 lora_rank=2, lora_alpha=4.0, lr=1e-3, progress=False)
    assert (out / "adapter.safetensors").is_file() and (out / "adapter.json").is_file()
    d, layers = 64, 2
    per_block = 2 * ((d + 3 * d) + 2 * d + 5 * d + 5 * d)  # r * (in + out) per linear layer
    assert result.trainable_params == layers * per_block + (d * 2 + 2)
    tuned = safetensors.torch.load_file(str(result.model_dir / "model.safetensors"))
    assert not any("lora" in name for name in tuned)  # merged: a plain model directory
    base = safetensors.torch.load_file(str(base_dir / "model.safetensors"))
    assert not torch.equal(tuned["trf_blocks.0.att.qkv.weight"], base["trf_blocks.0.att.qkv.weight"])
    assert torch.equal(tuned["tok_emb.weight"], base["tok_emb.weight"])


def test_cli_end_to_end(base_dir, spam_subset, tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["finetune", "classify", "--model", str(base_dir), "--data", str(spam_subset),
                 "--out", str(out), "--epochs", "1", "--trainable", "head", "--max-length", "100",
                 "--truncate", "--lr", "1e-3", "--seed", "7"])
    assert code == 0
    assert "accuracy: train" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text())["settings"]["seed"] == 7
    code = main(["classify", str(out), "WINNER! claim your free prize", "see you soon"])
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 2
    for line in lines:
        label, prob = line.split("\t")
        assert label in ("ham", "spam") and 0.5 <= float(prob) <= 1.0


def test_cli_errors_are_one_line(base_dir, spam_subset, tmp_path, capsys):
    bad = tmp_path / "bad.tsv"
    bad.write_text("ham\thello\nspam no tab\n", encoding="utf-8")
    code = main(["finetune", "classify", "--model", str(base_dir), "--data", str(bad),
                 "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "bad.tsv, row 2" in err and "Traceback" not in err
    code = main(["finetune", "classify", "--model", str(base_dir), "--data", str(spam_subset),
                 "--out", str(tmp_path / "o"), "--max-length", "5"])
    err = capsys.readouterr().err
    assert code == 2 and "longer than max_length 5" in err and "--truncate" in err
    code = main(["classify", str(base_dir), "hello"])
    assert code == 2 and "not a classifier" in capsys.readouterr().err


def test_too_long_for_context_suggests_truncate(base_dir, tmp_path):
    long_file = tmp_path / "long.tsv"
    long_file.write_text("a\tshort one\nb\t" + "word " * 300 + "\na\tx\nb\ty\n", encoding="utf-8")
    with pytest.raises(Exception, match=r"long.tsv, row 2: text is \d+ tokens, more than the "
                                        r"model's context length 128"):
        finetune_classifier(base_dir, long_file, tmp_path / "o", balance=False, batch_size=1,
                            train_frac=0.75, val_frac=0.0, progress=False)


def test_generate_refuses_a_classifier_directory_clearly(tmp_path):
    """A classifier's head predicts labels, not tokens: say so instead of a shape error."""
    from scratchllm.errors import CheckpointError
    from scratchllm.finetune.classifier_model import attach_classifier_head, classifier_metadata, save_classifier
    from scratchllm.model import GPTConfig, GPTModel
    from scratchllm.weights.model_dir import load_model_dir

    model = attach_classifier_head(GPTModel(GPTConfig.preset("tiny", n_layers=1)), 2)
    out = save_classifier(tmp_path / "clf", model, None, classifier_metadata(["ham", "spam"], 50256, None))
    with pytest.raises(CheckpointError, match="classifier"):
        load_model_dir(out)


def test_keep_best_restores_the_best_validation_epoch(base_dir, spam_subset, tmp_path):
    """keep_best's saved model is exactly the model of a run stopped after the best epoch."""
    best = finetune_classifier(base_dir, spam_subset, tmp_path / "best", epochs=4, lr=3e-3,
                               trainable="all", keep_best=True, progress=False)
    epochs = [json.loads(line) for line in (tmp_path / "best" / "metrics.jsonl").read_text()
              .splitlines() if json.loads(line)["event"] == "epoch"]
    chosen = best.settings["best_epoch"]
    assert chosen < 4  # this seed's last epoch is worse, so restoring is really exercised
    assert epochs[chosen - 1]["val_accuracy"] == max(e["val_accuracy"] for e in epochs)
    assert best.accuracy("val") == epochs[chosen - 1]["val_accuracy"]
    stopped = finetune_classifier(base_dir, spam_subset, tmp_path / "stop", epochs=chosen,
                                  lr=3e-3, trainable="all", progress=False)
    kept = safetensors.torch.load_file(str(best.model_dir / "model.safetensors"))
    plain = safetensors.torch.load_file(str(stopped.model_dir / "model.safetensors"))
    assert kept.keys() == plain.keys()
    assert all(torch.equal(kept[k], plain[k]) for k in kept)
    assert best.metrics["test"] == stopped.metrics["test"]


def test_a_run_stopped_early_leaves_a_classifier_that_loads(base_dir, toy_file, tmp_path):
    """Stopped before the end (stop_at here; Ctrl-C, SIGTERM or a kill mid-save alike) there
    is no OUT/model yet: OUT/latest/, the last checkpoint, must be a classifier that
    ``classify OUT`` loads with its labels (it was saved as a plain language model, which
    load_classifier refused and open_model failed on with an unexpected out_head.bias)."""
    out = tmp_path / "run"
    result = finetune_classifier(base_dir, toy_file, out, epochs=1, lr=1e-3, trainable="all",
                                 batch_size=8, save_every=2, stop_at=3, progress=False)
    assert result.interrupted and not (out / "model").exists()
    model, _, info = load_classifier(out)
    assert info["labels"] == ["neg", "pos"] and info["num_classes"] == 2
    saved = safetensors.torch.load_file(str(out / "latest" / "model.safetensors"))
    assert json.loads((out / "latest" / "config.json").read_text())["metadata"]["step"] == 3
    assert all(torch.equal(saved[k], v) for k, v in model.state_dict().items() if k in saved)
    assert model.out_head.weight.shape[0] == 2
