"""What every value a user can set accepts: one table, checked before any data is read.

A key missing from the table is a test failure (tests/test_errors.py walks the composed config), so a new key
cannot be forgotten. Values that depend on each other (dropout against 1, MLM shares, memory) are checked after.
"""

from __future__ import annotations

import importlib.util
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from sharebench import tuning
from sharebench.errors import ConfigError
from sharebench.paths import resolve_path


@dataclass(frozen=True)
class Allowed:
    """The values a key accepts: integers or numbers in a range, booleans, one of some choices, text, or a
    predicate for the odd key; `null` when `nullable`. Several `Allowed` joined with | accept either."""

    kind: str  # "int" | "number" | "bool" | "text" | "choice" | "list"
    low: float = -math.inf
    high: float = math.inf
    open_low: bool = False
    open_high: bool = False
    choices: tuple[Any, ...] = ()
    nullable: bool = False
    item: Allowed | None = None  # for lists: what each item accepts
    length: int | None = None  # for lists: the exact length, else any but 0
    others: tuple[Allowed, ...] = ()

    def __or__(self, other: Allowed) -> Allowed:
        return Allowed(**{**self.__dict__, "others": (*self.others, other)})

    def accepts(self, value: Any) -> bool:
        if value is None:
            return self.nullable or any(o.accepts(value) for o in self.others)
        return self._accepts(value) or any(o.accepts(value) for o in self.others)

    def _accepts(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, bool)
        if self.kind == "text":
            return isinstance(value, str) and bool(value)
        if self.kind == "choice":
            return value in self.choices and type(value) in {type(c) for c in self.choices}
        if self.kind == "list":
            return (
                isinstance(value, list)
                and len(value) == (self.length or len(value) or -1)
                and all(self.item is None or self.item.accepts(i) for i in value)
            )
        return self._in_range(value, integer=self.kind == "int")

    def _in_range(self, value: Any, integer: bool) -> bool:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or (integer and not isinstance(value, int)):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return above and below

    def describe(self) -> str:
        text = self._describe()
        alternatives = [text, *(o.describe() for o in self.others)]
        if self.nullable:
            alternatives.append("null")
        return " or ".join(alternatives)

    def _describe(self) -> str:
        if self.kind == "bool":
            return "true or false"
        if self.kind == "text":
            return "a non-empty string"
        if self.kind == "choice":
            return "one of " + ", ".join(map(str, self.choices))
        if self.kind == "list":
            items = f", each {self.item.describe()}" if self.item else ""
            return f"a list of {self.length or 'one or more'} items{items}"
        noun = {"int": "an integer", "number": "a number"}[self.kind]
        if self.low > -math.inf and self.high < math.inf:
            left, right = "(" if self.open_low else "[", ")" if self.open_high else "]"
            return f"{noun} in {left}{_number(self.low)}, {_number(self.high)}{right}"
        if self.low > -math.inf:
            return f"{noun} {'>' if self.open_low else '≥'} {_number(self.low)}"
        return noun


def _number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:,.0f}"


def integer(low: float = -math.inf, high: float = math.inf, nullable: bool = False) -> Allowed:
    return Allowed("int", low, high, nullable=nullable)


def number(low: float = -math.inf, high: float = math.inf, open_low: bool = False, open_high: bool = False,
           nullable: bool = False) -> Allowed:  # fmt: skip
    return Allowed("number", low, high, open_low, open_high, nullable=nullable)


def one_of(*choices: Any, nullable: bool = False) -> Allowed:
    return Allowed("choice", choices=choices, nullable=nullable)


def list_of(item: Allowed, length: int | None = None) -> Allowed:
    return Allowed("list", item=item, length=length)


BOOL = Allowed("bool")
TEXT = Allowed("text")
POSITIVE = integer(1)
COUNT = integer(0)
SHARE = number(0, 1)  # a fraction, both ends included
DROPOUT = number(0, 1, open_high=True)  # 1 would zero every activation (and 1/(1-p) divide by zero)
FRACTION_OF_BATCHES = POSITIVE | number(0, 1, open_low=True)  # Lightning: a count, or a share of the batches
PRECISIONS = ("64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", 64, 32, 16)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")

GLUE_RECIPE = {
    "lr": number(0, open_low=True),
    "batch_size": POSITIVE,
    "epochs": POSITIVE,
    "warmup_ratio": SHARE,
    "weight_decay": number(0),
    "dropout": DROPOUT,
    "max_length": integer(8, 512),
    "select": one_of("last", "best"),
    "max_train_examples": integer(1, nullable=True),
    "max_eval_examples": integer(1, nullable=True),
}

LIMITS: dict[str, Allowed] = {
    "task": one_of("pretrain", "glue", "pretrain_glue", "sts_zero_shot"),
    "seed": integer(0, 2**32 - 1),  # numpy's seeds
    "tie_embeddings": BOOL,
    "iso_baseline": BOOL,
    "iso_compute": BOOL,
    "tokens_per_parameter": number(0, open_low=True, nullable=True),
    "eval_train_loss": BOOL,
    "lr_grid.factors": Allowed("list", item=number(0, open_low=True), nullable=True),
    "lr_grid.extend": COUNT,
    "lr_grid.metric": one_of(*tuning.METRICS),
    "compile": BOOL,
    "pretrained": Allowed("text", nullable=True),
    "convert.rank": POSITIVE,
    "output_root": TEXT,
    "data_root": Allowed("text", nullable=True),
    "cache_dir": TEXT,
    "optim.lr": number(0, open_low=True),
    "optim.weight_decay": number(0),
    "optim.betas": list_of(number(0, 1, open_high=True), length=2),
    "optim.eps": number(0, open_low=True),
    "optim.warmup_steps": COUNT,
    "optim.schedule": one_of("linear", "cosine", "constant"),
    "optim.min_lr_ratio": SHARE,
    "trainer.accelerator": one_of(*ACCELERATORS),
    "trainer.devices": POSITIVE | one_of("auto", -1) | list_of(COUNT),
    "trainer.num_nodes": POSITIVE,
    "trainer.strategy": TEXT,
    "trainer.precision": one_of(*PRECISIONS),
    "trainer.max_steps": POSITIVE,
    "trainer.val_check_interval": FRACTION_OF_BATCHES,
    "trainer.check_val_every_n_epoch": integer(1, nullable=True),
    "trainer.limit_val_batches": FRACTION_OF_BATCHES,
    "trainer.gradient_clip_val": number(0, nullable=True),
    "trainer.accumulate_grad_batches": POSITIVE,
    "trainer.log_every_n_steps": POSITIVE,
    "trainer.num_sanity_val_steps": integer(-1),
    "trainer.deterministic": BOOL | one_of("warn"),
    "trainer.use_distributed_sampler": BOOL,
    "trainer.enable_progress_bar": BOOL,
    "trainer.enable_model_summary": BOOL,
    "data.name": TEXT,
    "data.source": TEXT,
    "data.hub_config": Allowed("text", nullable=True),
    "data.text_column": TEXT,
    "data.train_split": TEXT,
    "data.validation_split": Allowed("text", nullable=True),
    "data.validation_fraction": number(0, 1, open_low=True, open_high=True, nullable=True),
    "data.max_train_chars": integer(1, nullable=True),
    "data.max_validation_chars": integer(1, nullable=True),
    "data.seq_len": integer(3),
    "data.batch_size": POSITIVE,
    "data.num_workers": COUNT,
    "data.tokenizer.kind": one_of("wordpiece", "vocab_file", "char"),
    "data.tokenizer.vocab_size": integer(16, 2**31 - 1, nullable=True),  # null: a character vocabulary
    "data.tokenizer.train_chars": integer(1, nullable=True),
    "data.tokenizer.lowercase": BOOL,
    "data.tokenizer.path": Allowed("text", nullable=True),
    "arch.name": TEXT,
    "arch.objective": one_of("mlm", "causal"),
    "arch.norm_position": one_of("post", "pre"),
    "arch.activation": TEXT,  # the model's table names the valid ones
    "arch.dropout": DROPOUT,
    "arch.attention_dropout": DROPOUT,
    "arch.bias": BOOL,
    "arch.qkv_bias": BOOL,
    "arch.type_vocab_size": COUNT,
    "arch.layer_norm_eps": number(0, open_low=True),
    "arch.max_positions": POSITIVE,
    "arch.pooler": BOOL,
    "arch.mlm.probability": number(0, 1, open_low=True, open_high=True),
    "arch.mlm.mask": SHARE,
    "arch.mlm.random": SHARE,
    "size.name": TEXT,
    "scale.name": TEXT,
    "size.n_layers": POSITIVE,
    "size.dim": POSITIVE,
    "size.n_heads": POSITIVE,
    "size.ffn_dim": POSITIVE,
    "glue.source": TEXT,
    "glue.tasks": list_of(TEXT),  # which names: glue.check
    "glue.seeds": list_of(integer(0, 2**32 - 1)),
    "glue.lrs": Allowed("list", item=number(0, open_low=True), nullable=True),
    "glue.predict_test": BOOL,
    **{f"glue.recipe.{key}": allowed for key, allowed in GLUE_RECIPE.items()},
}
# Keys checked where they are used, with the valid values of that use: the share ratios by their scheme, the
# scheme groups' own settings, the logger's keyword arguments, an experiment's notes, GLUE's per-task recipes.
FREE_FORM = ("ratio", "postshare_ratio", "convert.to", "convert.ratio", "sharing", "layers", "logger", "experiment",
             "glue.per_task", "hydra")  # fmt: skip


def check_limits(cfg: DictConfig) -> None:
    """Every key of LIMITS present in the config holds a value it accepts, and the values that depend on each
    other fit together; else one ConfigError naming the key, the value and what is valid."""
    for key, allowed in LIMITS.items():
        value = OmegaConf.select(cfg, key, default=_ABSENT)
        if value is _ABSENT:
            continue
        if isinstance(value, (DictConfig, ListConfig)):
            value = OmegaConf.to_container(value, resolve=True)
        if not allowed.accepts(value):
            raise ConfigError(f"{key}={value!r} is not valid; it must be {allowed.describe()}")
    for task, settings in (OmegaConf.select(cfg, "glue.per_task") or {}).items():
        for key, value in settings.items():
            if key not in GLUE_RECIPE:
                raise ConfigError(f"glue.per_task.{task}.{key}: unknown; valid keys: {', '.join(GLUE_RECIPE)}")
            if not GLUE_RECIPE[key].accepts(value):
                raise ConfigError(
                    f"glue.per_task.{task}.{key}={value!r} is not valid; it must be {GLUE_RECIPE[key].describe()}"
                )
    for check in CROSS_CHECKS:
        check(cfg)


_ABSENT = object()


def _masking_shares(cfg: DictConfig) -> None:
    mlm = OmegaConf.select(cfg, "arch.mlm")
    if mlm is not None and mlm.mask + mlm.random > 1:
        raise ConfigError(
            f"arch.mlm.mask={mlm.mask} + arch.mlm.random={mlm.random} exceed 1: they are shares of the predicted tokens"
        )


def _writable_output_root(cfg: DictConfig) -> None:
    root = resolve_path(str(cfg.output_root))
    existing = next(p for p in (root, *root.parents) if p.exists())
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"output_root={cfg.output_root}: {existing} is not a writable folder; choose another")


# Keys that only some tasks read, with the tasks that read them: set for another task, they would be ignored.
TASK_KEYS = {
    "convert.to": ("sts_zero_shot",),
    "postshare_ratio": ("pretrain", "pretrain_glue"),
    "tokens_per_parameter": ("pretrain", "pretrain_glue"),
}


def _keys_the_task_reads(cfg: DictConfig) -> None:
    for key, tasks in TASK_KEYS.items():
        value = OmegaConf.select(cfg, key)
        if value is not None and cfg.task not in tasks:
            raise ConfigError(f"{key}={value} is read by task={' and task='.join(tasks)} only; task={cfg.task} would "
                              f"ignore it: drop it or choose that task")  # fmt: skip


def check_trainer_here(cfg: DictConfig) -> None:
    """What Lightning would refuse in many lines once the data is read: an accelerator this machine lacks, more
    GPUs than it has. Checked where the run trains (`tasks.run_task`), not where a sweep is submitted from (a
    cluster's login node has no GPU)."""
    accelerator, devices = cfg.trainer.accelerator, cfg.trainer.devices
    present = {
        "gpu": torch.cuda.is_available(),
        "cuda": torch.cuda.is_available(),
        "mps": torch.backends.mps.is_available(),
        "tpu": importlib.util.find_spec("torch_xla") is not None,
    }
    if not present.get(accelerator, True):
        raise ConfigError(f"trainer.accelerator={accelerator}: this machine has none; use trainer.accelerator=auto "
                          f"(what is here) or cpu")  # fmt: skip
    gpus = torch.cuda.device_count()
    on_gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and gpus)
    if on_gpu and isinstance(devices, int) and devices > max(gpus, 1):
        raise ConfigError(f"trainer.devices={devices}: this machine has {gpus} GPU(s); use trainer.devices={gpus} "
                          f"or auto (every GPU)")  # fmt: skip


def _attention_fits_in_memory(cfg: DictConfig) -> None:
    """On CPU with attention dropout the model computes attention explicitly (torch's fused CPU attention has no
    dropout), so one layer's scores (batch × heads × seq_len² floats) must fit in memory: a seq_len of 100,000
    would otherwise fail minutes later, allocating a terabyte."""
    accelerator = cfg.trainer.accelerator
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if not on_cpu or not cfg.arch.attention_dropout:
        return
    scores = cfg.data.batch_size * cfg.size.n_heads * cfg.data.seq_len**2 * 4
    memory = _physical_memory()
    if memory and scores > memory:
        raise ConfigError(
            f"data.seq_len={cfg.data.seq_len} with data.batch_size={cfg.data.batch_size} and {cfg.size.n_heads} heads "
            f"needs {scores / 2**30:,.0f} GiB for one layer's attention scores; this machine has "
            f"{memory / 2**30:,.0f} GiB: lower data.seq_len or data.batch_size"
        )


def _physical_memory() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


CROSS_CHECKS: tuple[Callable[[DictConfig], None], ...] = (
    _masking_shares,
    _writable_output_root,
    _keys_the_task_reads,
    _attention_fits_in_memory,
)


def unchecked_keys(cfg: DictConfig) -> list[str]:
    """Keys of a composed config that LIMITS does not cover (tests keep this empty)."""
    container = OmegaConf.to_container(cfg, resolve=False)

    def walk(node: Any, prefix: str) -> list[str]:
        if not isinstance(node, dict) or prefix in LIMITS:
            return [] if prefix in LIMITS or prefix.startswith(FREE_FORM) else [prefix]
        return [k for key, child in node.items() for k in walk(child, f"{prefix}.{key}" if prefix else str(key))]

    return [key for key in walk(container, "") if not key.startswith(FREE_FORM)]
