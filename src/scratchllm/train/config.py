"""Everything a pretraining run needs, as one validated dataclass read from YAML/TOML (book 5.2).

The defaults are the project's main job: a small GPT trained on the embedded short story
*The Verdict* in a few CPU minutes until its samples echo the text. ``configs/book_ch5.yaml``
holds the book's chapter-5 recipe and ``configs/tiny.yaml`` a seconds-long run for tests.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scratchllm.errors import ConfigError, MissingFileError
from scratchllm.model import GPTConfig
from scratchllm.model.llama_config import LlamaConfig

# The ``compile`` values besides true/false (train.compiling acts on them; named here so the
# torch-free config can check them without importing that module).
COMPILE_MODES = ("none", "model", "blocks")

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
DISTRIBUTED = ("auto", "ddp", "fsdp", "none")  # see scratchllm.train.distributed

# The main job's architecture: GPT-2's vocabulary and block design at 1/3 the width and 1/3 the
# depth of GPT-2 small, with an untied output head (29M parameters, most in the two
# embedding-sized matrices). Big enough to memorise a short story, small enough for a CPU.
DEFAULT_MODEL: dict[str, Any] = dict(emb_dim=256, n_layers=4, n_heads=4, drop_rate=0.0)


@dataclass
class TrainConfig:
    """Hyperparameters of one pretraining run; every field can be set from a config file or CLI."""

    # Data: a text file, a prepared token file (.bin) or folder, or None for the embedded story.
    data: str | None = None
    tokenizer: str = "gpt2"           # a name, a tokenizer file, or bpe:N = train an N-token
                                      # byte-level BPE on the training split (train/tokenizer.py)
    train_ratio: float = 0.9          # text split into train/val like the book (5.1.3)
    # Model: a GPTConfig preset (None = DEFAULT_MODEL) plus field overrides ({"n_layers": 6}).
    preset: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    context_length: int = 128         # training window; also the model's context length
    stride: int | None = None         # sliding-window step; None = context_length (no overlap)
    # Length of the run: max_steps wins when both are set.
    max_steps: int | None = None
    epochs: int | None = 15
    micro_batch_size: int = 4         # sequences per forward/backward pass (per process)
    batch_size: int = 4               # sequences per optimizer step, over all processes: a
                                      # multiple of micro_batch_size x number of processes
    # Optimizer and schedule (appendix D): warmup, then cosine from lr down to min_lr.
    lr: float = 2e-3
    min_lr: float | None = None       # None = lr / 10; equal to lr = constant rate (book ch. 5)
    warmup_steps: int = 10
    weight_decay: float = 0.1
    decay_all: bool = False           # True = decay every parameter, like the book's AdamW call
    betas: tuple[float, float] = (0.9, 0.95)
    grad_clip: float | None = 1.0     # max global gradient norm; None = no clipping
    # Observability.
    log_every: int = 5
    eval_every: int = 20
    eval_batches: int | None = 5      # batches per loss estimate; None = the whole split
    sample_every: int = 0             # 0 = only after training
    sample_prompt: str = "Every effort moves you"
    sample_tokens: int = 40           # 0 = no samples at all
    # Checkpoints.
    save_every: int = 0               # 0 = only at the end (and on Ctrl-C)
    keep_last: int = 3
    # Runtime.
    seed: int = 123
    device: str = "auto"
    precision: str = "auto"           # auto = bf16 on CUDA GPUs that support it, else fp32
    compile: bool | str = False       # true/"model" = torch.compile the model, "blocks" = one
                                      # compiled transformer block for all (train/compiling.py)
    # Multi-process training under torchrun: auto = DDP when WORLD_SIZE > 1, else one process.
    distributed: str = "auto"
    out_dir: str = "runs/verdict"
    resume: bool = False              # continue from out_dir's newest checkpoint
    overwrite: bool = False           # delete out_dir's old run first (else refuse to mix runs)

    def __post_init__(self) -> None:
        if isinstance(self.betas, list):
            self.betas = tuple(self.betas)
        for name in ("data", "out_dir"):  # Path objects are welcome but stored as JSON-able str
            if isinstance(getattr(self, name), os.PathLike):
                setattr(self, name, os.fspath(getattr(self, name)))
        self._validate()

    # ----------------------------------------------------------------------------- checks
    def _validate(self) -> None:
        def positive_int(name: str, allow_none: bool = False, allow_zero: bool = False) -> None:
            value = getattr(self, name)
            if value is None and allow_none:
                return
            low = 0 if allow_zero else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                kind = "a non-negative" if allow_zero else "a positive"
                raise ConfigError(f"train config field {name!r} must be {kind} integer, got {value!r}")

        for name, optional in (("data", True), ("tokenizer", False), ("preset", True),
                               ("sample_prompt", False), ("device", False), ("out_dir", False)):
            value = getattr(self, name)
            if not (isinstance(value, str) or (optional and value is None)):
                raise ConfigError(f"train config field {name!r} must be a string, got {value!r}")
        if not (isinstance(self.compile, bool) or self.compile in COMPILE_MODES):
            raise ConfigError(f"train config field 'compile' must be true, false, 'model' or "
                              f"'blocks', got {self.compile!r}")
        if self.compile == "blocks" and self.distributed == "fsdp":
            raise ConfigError("compile: blocks is not supported with distributed: fsdp (FSDP "
                              "wraps each block in its own hooks); use compile: true, or ddp")
        for name in ("decay_all", "resume", "overwrite"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"train config field {name!r} must be true or false, got "
                                  f"{getattr(self, name)!r}")
        for name in ("context_length", "micro_batch_size", "batch_size", "log_every",
                     "eval_every", "keep_last"):
            positive_int(name)
        for name in ("stride", "max_steps", "epochs", "eval_batches"):
            positive_int(name, allow_none=True)
        for name in ("warmup_steps", "sample_every", "sample_tokens", "save_every", "seed"):
            positive_int(name, allow_zero=True)
        if self.max_steps is None and self.epochs is None:
            raise ConfigError("train config needs 'max_steps' or 'epochs'; set one of them")
        if self.batch_size % self.micro_batch_size:
            raise ConfigError(
                f"train config field 'batch_size' ({self.batch_size}) must be a multiple of "
                f"'micro_batch_size' ({self.micro_batch_size}) for gradient accumulation")
        for name in ("lr", "weight_decay", "train_ratio"):
            if not _is_number(getattr(self, name)) or getattr(self, name) < 0:
                raise ConfigError(f"train config field {name!r} must be a non-negative number, "
                                  f"got {getattr(self, name)!r}")
        if not self.lr > 0:
            raise ConfigError(f"train config field 'lr' must be > 0, got {self.lr!r}")
        if self.min_lr is not None and not (_is_number(self.min_lr) and 0 <= self.min_lr <= self.lr):
            raise ConfigError(f"train config field 'min_lr' must be between 0 and lr ({self.lr}), "
                              f"got {self.min_lr!r}")
        if not 0 < self.train_ratio < 1:
            raise ConfigError(f"train config field 'train_ratio' must be in (0, 1), got {self.train_ratio!r}")
        if (len(self.betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in self.betas)):
            raise ConfigError(f"train config field 'betas' must be two numbers in [0, 1), got {self.betas!r}")
        if self.grad_clip is not None and not (_is_number(self.grad_clip) and self.grad_clip > 0):
            raise ConfigError(f"train config field 'grad_clip' must be > 0 or null, got {self.grad_clip!r}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"train config field 'precision' must be one of {', '.join(PRECISIONS)}, "
                              f"got {self.precision!r}")
        if self.distributed not in DISTRIBUTED:
            raise ConfigError(f"train config field 'distributed' must be one of "
                              f"{', '.join(DISTRIBUTED)}, got {self.distributed!r}")
        if not isinstance(self.model, dict):
            raise ConfigError(f"train config field 'model' must be a mapping of GPTConfig fields, "
                              f"got {self.model!r}")
        if "context_length" in self.model:
            raise ConfigError("set 'context_length' at the top level of the train config, not under 'model'")
        from scratchllm.train.tokenizer import trained_bpe_size
        trained_bpe_size(self.tokenizer)  # a malformed "bpe:N" fails before any data is read
        self.model_config()  # unknown preset or model fields fail now, not after loading data

    # ----------------------------------------------------------------------------- derived
    @property
    def accum_steps(self) -> int:
        """Micro batches per optimizer step (gradient accumulation) in a single process."""
        return self.batch_size // self.micro_batch_size

    def accum_steps_for(self, world_size: int) -> int:
        """Micro batches per optimizer step on each of ``world_size`` processes.

        ``batch_size`` is global, so adding processes divides the accumulation instead of
        growing the batch: the learning rate and schedule keep their meaning.
        """
        per_step = self.micro_batch_size * world_size
        if self.batch_size % per_step:
            raise ConfigError(
                f"batch_size ({self.batch_size}) must be a multiple of micro_batch_size "
                f"({self.micro_batch_size}) x {world_size} processes = {per_step}; change "
                "--batch-size, --micro-batch-size or --nproc_per_node")
        return self.batch_size // per_step

    @property
    def effective_min_lr(self) -> float:
        return self.lr / 10 if self.min_lr is None else float(self.min_lr)

    def model_config(self) -> GPTConfig | LlamaConfig:
        """The architecture: the preset, the overrides, and the training context length.

        GPT presets (gpt2-small ... tiny) give a GPTConfig; Llama 3 / Qwen3 presets
        (llama3.2-1b, qwen3-0.6b, tiny-llama, ...) a LlamaConfig, pretrained the same way.
        """
        values = {**self.model, "context_length": self.context_length}
        try:
            if self.preset is None:
                return GPTConfig.from_dict({**DEFAULT_MODEL, **values})
            if self.preset.lower() in LlamaConfig.preset_names():
                return LlamaConfig.preset(self.preset, **values)
            return GPTConfig.preset(self.preset, **values)
        except ConfigError as err:
            if str(err).startswith("unknown preset"):  # GPTConfig lists only its own
                names = [*GPTConfig.preset_names(), *LlamaConfig.preset_names()]
                err = ConfigError(f"unknown preset {self.preset!r}; choose one of: "
                                  f"{', '.join(names)}")
            raise ConfigError(f"train config 'preset'/'model': {err}") from None

    def to_dict(self) -> dict[str, Any]:
        values = dataclasses.asdict(self)
        values["betas"] = list(self.betas)
        return values

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "TrainConfig":
        """Build from a mapping, refusing unknown keys with the list of valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(valid), key=repr)  # YAML keys may be ints or None
        if unknown:
            raise ConfigError(f"unknown train config key(s) {unknown}; valid keys are: {', '.join(valid)}")
        try:
            return cls(**values)
        except TypeError as err:  # e.g. a list where a number belongs, deep in a comparison
            raise ConfigError(f"invalid train config value: {err}") from None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_yaml(text: str) -> Any:
    """``yaml.safe_load``, except that ``3e-4`` is the number YAML 1.2, TOML and JSON read.

    PyYAML follows YAML 1.1, whose floats need a dot (``3.0e-4``), so ``lr: 3e-4`` or
    ``--set lr=3e-4`` would reach the config as the string '3e-4' and be refused.
    """
    import yaml

    class Loader(yaml.SafeLoader):
        yaml_implicit_resolvers = {key: list(value) for key, value
                                   in yaml.SafeLoader.yaml_implicit_resolvers.items()}

    Loader.add_implicit_resolver("tag:yaml.org,2002:float",
                                 re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"),
                                 list("-+0123456789"))
    return yaml.load(text, Loader=Loader)  # noqa: S506 (a SafeLoader: plain values only)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Parse a .yaml/.yml, .toml or .json file into a plain dict (no Python objects)."""
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"config file {str(path)!r} not found; check the path "
                               "(examples live in the repository's configs/ folder)")
    suffix = path.suffix.lower()
    try:
        text = path.read_text(encoding="utf-8")
        if suffix in (".yaml", ".yml"):
            values = load_yaml(text)
        elif suffix == ".toml":
            if sys.version_info >= (3, 11):
                import tomllib
            else:  # pragma: no cover - Python 3.10
                import tomli as tomllib
            values = tomllib.loads(text)
        elif suffix == ".json":
            values = json.loads(text)
        else:
            raise ConfigError(f"config file {str(path)!r} must end in .yaml, .yml, .toml or .json")
    except ConfigError:
        raise
    except UnicodeDecodeError as err:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text ({err.reason} at byte "
                          f"{err.start}); save it as UTF-8") from None
    except Exception as err:  # each parser has its own error class
        reason = "nested too deeply" if isinstance(err, RecursionError) else err
        reason = " ".join(str(reason).split())  # YAML's messages span several lines
        raise ConfigError(f"cannot parse config file {str(path)!r}: {reason}") from None
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys to values, "
                          f"got {type(values).__name__}")
    return values


def load_train_config(path: str | Path | None = None, **overrides: Any) -> TrainConfig:
    """Defaults, then the file's values, then the non-None ``overrides`` (CLI flags)."""
    values = read_config_file(path) if path is not None else {}
    values.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig.from_dict(values)
