"""The run spec: a composed config checked once, key by key, into typed dataclasses that the run then reads.

Each dataclass mirrors a config group (`arch`, `size`, `data`, ...) and each field carries what it accepts, so a
value is checked where it is declared and a key the suite does not read (`+data.foo=1`) is refused. Values that
depend on each other are checked in the dataclass's `__post_init__`. `RunSpec.to_dict()` is the config as the run
record stores it; `RunSpec.from_dict` reads a record's config back.

What the spec cannot see by itself (a scheme's own ratio range, the data's files, the machine) is checked by
`sharebench.run.validation.validate`, which builds the spec and resolves what the model shares into `RunSpec.shares`.
"""

from __future__ import annotations

import enum
import functools
import math
from collections.abc import Callable, Mapping
from dataclasses import MISSING, dataclass, field, fields, replace
from typing import Any, Self

from sharebench.errors import ConfigError
from sharebench.model.convert import CONVERSIONS, HeadwiseRatio
from sharebench.model.shares import SharingSpec
from sharebench.model.transformer import ACTIVATIONS
from sharebench.sharing.base import checked_ratio

# ---- what a value accepts -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """The values a field accepts (`check`) and how an error message names them; `a | b` accepts either."""

    check: Callable[[Any], bool]
    description: str

    def __or__(self, other: Allowed) -> Allowed:
        return Allowed(lambda v: self.check(v) or other.check(v), f"{self.description} or {other.description}")


NULL = Allowed(lambda v: v is None, "null")


def _or_null(allowed: Allowed, nullable: bool) -> Allowed:
    return allowed | NULL if nullable else allowed


def _number(value: float) -> str:
    return f"{value:g}" if abs(value) < 1e6 else f"{value:,.0f}"


def _in_range(noun: str, kind: type | tuple[type, ...], low: float, high: float, open_low: bool, open_high: bool,
              nullable: bool) -> Allowed:  # fmt: skip
    def check(v: Any) -> bool:
        if isinstance(v, bool) or not isinstance(v, kind) or not math.isfinite(v):
            return False
        return (v > low if open_low else v >= low) and (v < high if open_high else v <= high)

    description = noun
    if low > -math.inf and high < math.inf:
        description += f" in {'(' if open_low else '['}{_number(low)}, {_number(high)}{')' if open_high else ']'}"
    elif low > -math.inf:
        description += f" {'>' if open_low else '≥'} {_number(low)}"
    return _or_null(Allowed(check, description), nullable)


def integer(low: float = -math.inf, high: float = math.inf, nullable: bool = False) -> Allowed:
    return _in_range("an integer", int, low, high, False, False, nullable)


def number(low: float = -math.inf, high: float = math.inf, open_low: bool = False, open_high: bool = False,
           nullable: bool = False) -> Allowed:  # fmt: skip
    return _in_range("a number", (int, float), low, high, open_low, open_high, nullable)


def one_of(*choices: Any) -> Allowed:
    types = {type(c) for c in choices}  # True == 1 and 64.0 == 64: a value must also have a choice's type
    return Allowed(lambda v: v in choices and type(v) in types, "one of " + ", ".join(map(str, choices)))


def list_of(item: Allowed, length: int | None = None, nullable: bool = False) -> Allowed:
    def check(v: Any) -> bool:
        return isinstance(v, list) and len(v) == (length or len(v) or -1) and all(map(item.check, v))

    return _or_null(Allowed(check, f"a list of {length or 'one or more'} items, each {item.description}"), nullable)


BOOL = Allowed(lambda v: isinstance(v, bool), "true or false")
TEXT = Allowed(lambda v: isinstance(v, str) and bool(v), "a non-empty string")
OPTIONAL_TEXT = TEXT | NULL
MAPPING = Allowed(lambda v: isinstance(v, Mapping), "a mapping")
POSITIVE = integer(1)
COUNT = integer(0)
RATE = number(0, open_low=True)
SHARE = number(0, 1)  # a fraction, both ends included
DROPOUT = number(0, 1, open_high=True)  # 1 would zero every activation (and 1/(1-p) divide by zero)
SEED = integer(0, 2**32 - 1)  # numpy's seeds
FRACTION_OF_BATCHES = POSITIVE | number(0, 1, open_low=True)  # Lightning: a count, or a share of the batches
# Lightning's, and `auto`: bf16-mixed where the hardware computes bf16, 32-true elsewhere (sharebench.run.cpu).
PRECISIONS = ("auto", "64-true", "64", "32-true", "32", "16-mixed", "bf16-mixed", "16-true", "bf16-true", 64, 32, 16)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
TASKS = ("pretrain", "glue", "pretrain_glue", "sts_zero_shot", "evaluate")
TOKENIZER_KINDS = ("wordpiece", "vocab_file", "char", "pretrained")
ROW_KINDS = ("document", "wikitext_line")
PRETRAINING = ("pretrain", "pretrain_glue")
CHECKPOINT_POLICIES = ("keep", "until_completed", "none")  # conf/config.yaml's `checkpoints` says what each does


class Role(enum.Enum):
    """What a config key is part of, declared once at its field: the run's folder name, the configuration results
    compare and the record's check that a folder holds one configuration all follow from it."""

    RESULT = "changes what the run computes"
    SCHEME = "chooses a sharing scheme or its ratio, which the record's `sharing` states as used"
    REPLICATE = "repeats the configuration (the seed: a folder level of its own)"
    LOCATION = "says where the run reads and writes"
    REPORT = "says how the run reports, or carries notes"


NAMED = (Role.RESULT, Role.SCHEME)  # in a run's folder name


@dataclass(frozen=True)
class Declared:
    """A field's declaration beside what it accepts: its role; whether its value is a path (quoted for Hydra where
    needed); the tasks that read it (None: every task; set for another, it is refused); whether it selects which
    runs a command makes rather than what one computes (a pretraining folder holds its GLUE runs whatever the GLUE
    tasks and recipe); whether it fixes which batches a seed trains and is evaluated on, in what order (runs that
    agree on these keys are compared seed by seed); whether it chooses what the model shares or whose twin it is
    (sharing=, layers=, their ratios, iso_baseline=: the configurations of one budget differ in these alone); and
    the roles of a mapping's own keys (a scheme's `_target_`)."""

    role: Role = Role.RESULT
    path: bool = False
    read_by: tuple[str, ...] | None = None
    selects_runs: bool = False
    orders_data: bool = False
    chooses_sharing: bool = False
    inner_roles: Mapping[str, Role] = field(default_factory=dict)


def accepts(allowed: Allowed, default: Any = MISSING, **declared: Any) -> Any:
    """A field that holds a value `allowed` accepts, declared as `Declared(**declared)` says."""
    return field(default=default, metadata={"allowed": allowed, "declared": Declared(**declared)})


def group(spec: type[Spec], default: Any = MISSING, **declared: Any) -> Any:
    """A field that holds a nested group, built from its mapping; its keys take its declaration's role where
    theirs is RESULT."""
    return field(default=default, metadata={"group": spec, "declared": Declared(**declared)})


# ---- building and checking ----------------------------------------------------------------------------------


class Spec:
    """A config group as a frozen dataclass: `build` makes one from its mapping, refusing unknown keys and values
    its fields do not accept, in one line naming the key and what is valid."""

    @classmethod
    def build(cls, values: Mapping[str, Any], prefix: str = "") -> Self:
        known = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
        if unknown := sorted(set(values) - set(known)):
            where = f" of {prefix.rstrip('.')}" if prefix else ""
            raise ConfigError(f"{prefix}{unknown[0]}: no such setting; the settings{where}: {', '.join(known)}")
        given = {}
        for name, value in values.items():
            spec, allowed = known[name].metadata.get("group"), known[name].metadata.get("allowed")
            if spec is not None and value is not None:
                if not isinstance(value, Mapping):
                    raise ConfigError(f"{prefix}{name}={value!r} is not valid; it must be a group of settings")
                value = spec.build(value, f"{prefix}{name}.")
            elif allowed is not None and not allowed.check(value):
                raise ConfigError(f"{prefix}{name}={value!r} is not valid; it must be {allowed.description}")
            given[name] = value
        if missing := [f.name for f in known.values() if f.name not in given and f.default is MISSING]:
            raise ConfigError(f"{prefix}{missing[0]}: missing; the config must set it")
        return cls(**given)

    def to_dict(self) -> dict[str, Any]:
        """The mapping `build` reads: a field left at its null default (a recipe's `experiment` where none is
        chosen, `arch.mlm` of a decoder) is absent, as from the composed config; resolved fields are left out."""
        return {
            f.name: value.to_dict() if isinstance(value, Spec) else value
            for f in fields(self)  # type: ignore[arg-type]
            if not f.metadata.get("resolved") and not ((value := getattr(self, f.name)) is None and f.default is None)
        }


@dataclass(frozen=True)
class Masking(Spec):
    """Masked-LM corruption: the share of tokens predicted, and of those the shares masked and randomised."""

    probability: float = accepts(number(0, 1, open_low=True, open_high=True))
    mask: float = accepts(SHARE)
    random: float = accepts(SHARE)

    def __post_init__(self) -> None:
        if self.mask + self.random > 1:
            raise ConfigError(f"arch.mlm.mask={self.mask} + arch.mlm.random={self.random} exceed 1: they are shares "
                              f"of the predicted tokens")  # fmt: skip


@dataclass(frozen=True)
class Arch(Spec):
    name: str = accepts(TEXT)
    objective: str = accepts(one_of("mlm", "causal"))
    norm_position: str = accepts(one_of("post", "pre"))
    norm: str = accepts(one_of("layer", "rms"))
    positions: str = accepts(one_of("learned", "rotary"))
    rope_theta: float = accepts(RATE)
    ffn: str = accepts(one_of("mlp", "gated"))
    activation: str = accepts(one_of(*ACTIVATIONS))
    dropout: float = accepts(DROPOUT)
    attention_dropout: float = accepts(DROPOUT)
    bias: bool = accepts(BOOL)
    qkv_bias: bool = accepts(BOOL)
    type_vocab_size: int = accepts(COUNT)
    layer_norm_eps: float = accepts(RATE)
    max_positions: int = accepts(POSITIVE)
    pooler: bool = accepts(BOOL)
    mlm: Masking | None = group(Masking, None)

    def __post_init__(self) -> None:
        if self.objective == "mlm" and self.mlm is None:
            raise ConfigError("arch.objective=mlm needs arch.mlm (probability, mask, random)")


@dataclass(frozen=True)
class Size(Spec):
    name: str = accepts(TEXT)
    n_layers: int = accepts(POSITIVE)
    dim: int = accepts(POSITIVE)
    n_heads: int = accepts(POSITIVE)
    ffn_dim: int = accepts(POSITIVE)

    def __post_init__(self) -> None:
        if self.dim % self.n_heads:
            divisors = [h for h in range(1, self.dim + 1) if self.dim % h == 0]
            raise ConfigError(f"size: hidden size {self.dim} is not divisible by {self.n_heads} heads; valid "
                              f"size.n_heads for dim={self.dim}: {', '.join(map(str, divisors))}")  # fmt: skip


@dataclass(frozen=True)
class Tokenizer(Spec):
    kind: str = accepts(one_of(*TOKENIZER_KINDS))
    vocab_size: int | None = accepts(integer(16, 2**31 - 1, nullable=True))  # null: a character vocabulary
    train_chars: int | None = accepts(integer(1, nullable=True))
    lowercase: bool = accepts(BOOL)
    path: str | None = accepts(OPTIONAL_TEXT, path=True)


@dataclass(frozen=True)
class Data(Spec):
    name: str = accepts(TEXT)
    source: str = accepts(TEXT, path=True)
    hub_config: str | None = accepts(OPTIONAL_TEXT)
    text_column: str = accepts(TEXT)
    rows: str = accepts(one_of(*ROW_KINDS))  # what a row of the source is: a document, or a line of WikiText
    train_split: str = accepts(TEXT)
    validation_split: str | None = accepts(OPTIONAL_TEXT)
    test_split: str | None = accepts(OPTIONAL_TEXT)  # null: the test documents are test_fraction of the held-out
    validation_fraction: float | None = accepts(number(0, 1, open_low=True, open_high=True, nullable=True))
    test_fraction: float = accepts(number(0, 1, open_low=True, open_high=True))  # of the held-out documents
    max_train_chars: int | None = accepts(integer(1, nullable=True))
    max_validation_chars: int | None = accepts(integer(1, nullable=True))
    seq_len: int = accepts(integer(3))
    batch_size: int = accepts(POSITIVE)
    num_workers: int = accepts(COUNT)
    tokenizer: Tokenizer = group(Tokenizer)

    def __post_init__(self) -> None:
        if self.validation_split is None and self.validation_fraction is None:
            raise ConfigError("data: without a validation_split, validation_fraction must lie in (0, 1); got null")
        if self.test_split is not None and self.validation_split is None:
            raise ConfigError(f"data: test_split={self.test_split} needs a validation_split beside it; got null")


@dataclass(frozen=True)
class Trainer(Spec):
    """Lightning's `Trainer` arguments the suite passes on (`lightning.Trainer(**asdict(trainer))`)."""

    accelerator: str = accepts(one_of(*ACCELERATORS))
    devices: int | str | list[int] = accepts(POSITIVE | one_of("auto", -1) | list_of(COUNT))
    num_nodes: int = accepts(POSITIVE)
    strategy: str = accepts(TEXT)
    precision: str | int = accepts(one_of(*PRECISIONS))
    max_steps: int = accepts(POSITIVE)
    val_check_interval: int | float = accepts(FRACTION_OF_BATCHES)
    check_val_every_n_epoch: int | None = accepts(integer(1, nullable=True))
    limit_val_batches: int | float = accepts(FRACTION_OF_BATCHES)
    gradient_clip_val: float | None = accepts(number(0, nullable=True))
    accumulate_grad_batches: int = accepts(POSITIVE, orders_data=True)
    log_every_n_steps: int = accepts(POSITIVE)
    num_sanity_val_steps: int = accepts(integer(-1))
    deterministic: bool | str = accepts(BOOL | one_of("warn"))
    use_distributed_sampler: bool = accepts(BOOL)
    enable_progress_bar: bool = accepts(BOOL, role=Role.REPORT)
    enable_model_summary: bool = accepts(BOOL, role=Role.REPORT)


@dataclass(frozen=True)
class Optim(Spec):
    lr: float = accepts(RATE)
    weight_decay: float = accepts(number(0))
    betas: list[float] = accepts(list_of(number(0, 1, open_high=True), length=2))
    eps: float = accepts(RATE)
    warmup_steps: int = accepts(COUNT)
    schedule: str = accepts(one_of("linear", "cosine", "constant"))
    min_lr_ratio: float = accepts(SHARE)


@dataclass(frozen=True)
class GlueRecipe(Spec):
    """How one GLUE task is fine-tuned (`glue.recipe`, and per task `glue.per_task.<task>`)."""

    lr: float = accepts(RATE)
    batch_size: int = accepts(POSITIVE)
    epochs: int = accepts(POSITIVE)
    warmup_ratio: float = accepts(SHARE)
    weight_decay: float = accepts(number(0))
    dropout: float = accepts(DROPOUT)
    max_length: int = accepts(integer(8, 512))
    select: str = accepts(one_of("last", "best"))
    max_train_examples: int | None = accepts(integer(1, nullable=True))
    max_eval_examples: int | None = accepts(integer(1, nullable=True))


@dataclass(frozen=True)
class Glue(Spec):
    source: str = accepts(TEXT, path=True)
    tasks: list[str] = accepts(list_of(TEXT))  # which names: glue.check
    seeds: list[int] = accepts(list_of(SEED))
    lrs: list[float] | None = accepts(list_of(RATE, nullable=True))
    predict_test: bool = accepts(BOOL)
    recipe: GlueRecipe = group(GlueRecipe)
    per_task: dict[str, dict[str, Any]] = accepts(MAPPING)

    def __post_init__(self) -> None:
        if self.lrs is not None and len({float(lr) for lr in self.lrs}) < 2:
            raise ConfigError(f"glue.lrs={list(self.lrs)}: a grid needs two or more distinct learning rates (null: "
                              f"glue.recipe.lr alone)")  # fmt: skip
        for task, settings in self.per_task.items():
            if not isinstance(settings, Mapping):
                raise ConfigError(
                    f"glue.per_task.{task}={settings!r} is not valid; it must be a mapping of recipe keys"
                )
            GlueRecipe.build({**self.recipe.to_dict(), **settings}, f"glue.per_task.{task}.")

    def recipe_for(self, task: str, lr: float | None = None) -> GlueRecipe:
        """The recipe of one task: `recipe`, then its `per_task` settings, then the learning rate of a grid."""
        return replace(self.recipe, **(self.per_task.get(task) or {}), **({"lr": lr} if lr is not None else {}))


@dataclass(frozen=True)
class LrGrid(Spec):
    """A learning-rate search per configuration of a sweep (sharebench.tuning)."""

    factors: list[float] | None = accepts(list_of(RATE, nullable=True))
    extend: int = accepts(COUNT)
    metric: str = accepts(one_of("val_loss_full", "val_loss"))  # pretraining metrics, lower is better
    seeds: int = accepts(POSITIVE)  # the first seeds of a configuration, which all train at every rate
    plateau: float | None = accepts(number(0, nullable=True))  # nats below the unigram loss a rate must reach

    def __post_init__(self) -> None:
        if self.factors is not None and len({float(f) for f in self.factors}) < 2:
            raise ConfigError(f"lr_grid.factors={list(self.factors)} needs two or more distinct multiples of optim.lr")


@dataclass(frozen=True)
class Convert(Spec):
    """Sharing applied to `pretrained` before task=sts_zero_shot or task=evaluate scores it, or task=pretrain
    trains it further (healing): one of the conversions of sharebench.model.convert (or none) at a ratio it takes."""

    to: str | None = accepts(one_of(*CONVERSIONS) | NULL, read_by=("sts_zero_shot", "evaluate", "pretrain"))
    ratio: float = accepts(number())
    rank: int = accepts(POSITIVE)

    def __post_init__(self) -> None:
        if self.to == "headwise":
            checked_ratio("convert.to=headwise", "convert.ratio", self.ratio, HeadwiseRatio)
        elif self.to and not 0 <= self.ratio <= 1:
            raise ConfigError(f"convert.to={self.to}: convert.ratio={self.ratio} must be a number in [0, 1]")


@dataclass(frozen=True)
class Scale(Spec):
    name: str = accepts(TEXT)


SCHEME_CHOICE = {"_target_": Role.SCHEME, "_partial_": Role.SCHEME}  # Hydra's keys of a scheme's constructor


@dataclass(frozen=True)
class RunSpec(Spec):
    """One run, as `python train.py <overrides>` composes it (conf/config.yaml says what each key means)."""

    arch: Arch = group(Arch)
    size: Size = group(Size)
    sharing: dict[str, Any] = accepts(MAPPING, chooses_sharing=True, inner_roles=SCHEME_CHOICE)  # constructor
    layers: dict[str, Any] = accepts(MAPPING, chooses_sharing=True, inner_roles={**SCHEME_CHOICE, "ratio": Role.SCHEME})
    data: Data = group(Data, orders_data=True)
    trainer: Trainer = group(Trainer)
    logger: dict[str, Any] = accepts(MAPPING, role=Role.REPORT)
    callbacks: dict[str, Any] = accepts(MAPPING)  # name: a Lightning callback's `_target_` and arguments
    glue: Glue = group(Glue, selects_runs=True, orders_data=True)
    lr_grid: LrGrid = group(LrGrid)
    scale: Scale = group(Scale)
    task: str = accepts(one_of(*TASKS), selects_runs=True)
    pretrained: str | None = accepts(OPTIONAL_TEXT, path=True)
    convert: Convert = group(Convert)
    postshare_ratio: float | None = accepts(number(nullable=True), read_by=PRETRAINING)  # range: the conversion's
    ratio: float | None = accepts(number(nullable=True), role=Role.SCHEME, chooses_sharing=True)  # range: validate
    seed: int = accepts(SEED, role=Role.REPLICATE)
    tie_embeddings: bool = accepts(BOOL)
    iso_baseline: bool = accepts(BOOL, chooses_sharing=True)
    iso_compute: bool = accepts(BOOL, chooses_sharing=True)
    tokens_per_parameter: float | None = accepts(number(0, open_low=True, nullable=True), read_by=PRETRAINING)
    diverged_above: float | None = accepts(number(0, open_low=True, nullable=True), read_by=PRETRAINING)  # × unigram
    eval_train_loss: bool = accepts(BOOL)
    compile: bool = accepts(BOOL)
    measure: bool = accepts(BOOL, role=Role.REPORT)
    optim: Optim = group(Optim)
    output_root: str = accepts(TEXT, role=Role.LOCATION, path=True)
    data_root: str | None = accepts(OPTIONAL_TEXT, role=Role.LOCATION, path=True)
    cache_dir: str = accepts(TEXT, role=Role.LOCATION, path=True)
    checkpoints: str = accepts(one_of(*CHECKPOINT_POLICIES), role=Role.LOCATION)  # what a run keeps on disk
    experiment: dict[str, Any] | None = accepts(MAPPING | NULL, None, role=Role.REPORT)  # a recipe's notes
    # Resolved by `validate`, not configured: what the model shares (None where a checkpoint decides).
    shares: SharingSpec | None = field(default=None, metadata={"resolved": True})

    def __post_init__(self) -> None:
        for key in declared_keys(lambda declared: declared.read_by is not None):
            value, tasks = self.select(key), declaration(key)[-1].read_by or ()
            if value is not None and self.task not in tasks:
                raise ConfigError(f"{key}={value} is read by task={' and task='.join(tasks)} only; task={self.task} "
                                  f"would ignore it: drop it or choose that task")  # fmt: skip
        if self.iso_compute and not self.iso_baseline:
            raise ConfigError(
                "iso_compute=true sets the training budget of an iso-parameter twin: add iso_baseline=true"
            )
        if self.iso_compute and self.tokens_per_parameter is not None:
            raise ConfigError(
                "iso_compute=true and tokens_per_parameter both set the training budget: give one of them"
            )
        if self.lr_grid.factors is not None and self.task != "pretrain":
            raise ConfigError(f"lr_grid searches pretraining's learning rate; task={self.task} fine-tunes at the rates "
                              f"of glue.lrs")  # fmt: skip
        if self.task == "pretrain_glue" and self.arch.objective != "mlm":
            raise ConfigError("task=pretrain_glue needs an encoder: arch=bert")
        if self.arch.positions == "rotary" and (self.size.dim // self.size.n_heads) % 2:
            raise ConfigError(f"arch.positions=rotary turns pairs of a head's dimensions: size.dim={self.size.dim} / "
                              f"size.n_heads={self.size.n_heads} is odd; choose an even head size")  # fmt: skip
        if self.data.seq_len > self.arch.max_positions:
            raise ConfigError(f"data.seq_len={self.data.seq_len} exceeds arch.max_positions={self.arch.max_positions}")

    def select(self, key: str) -> Any:
        """The value at a dotted key (`convert.to`)."""
        value: Any = self
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else getattr(value, part)
        return value

    @property
    def predicted_fraction(self) -> float:
        """The share of tokens the LM head runs on: the masked share for MLM, every token for causal LM."""
        return float(self.arch.mlm.probability) if self.arch.mlm and self.arch.objective == "mlm" else 1.0

    @classmethod
    def from_dict(cls, config: Mapping[str, Any]) -> RunSpec:
        """A composed config's container, or a run record's `config`."""
        return cls.build(config)


# ---- what the declarations say about a key ---------------------------------------------------------------------


def declaration(key: str) -> list[Declared]:
    """The declarations along a dotted key, outermost first: the groups it lies in, then its field (or, inside a
    mapping, the role the mapping declares for it). A key the spec does not declare (a scheme's own setting, a key
    of another version of the suite) ends where the declarations do."""
    declared: list[Declared] = []
    spec: type[Spec] | None = RunSpec
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if spec is None:  # inside a mapping, the field declared just before
            if inner := declared[-1].inner_roles.get(".".join(parts[depth:])):
                declared.append(Declared(role=inner))
            break
        known = {f.name: f for f in fields(spec)}  # type: ignore[arg-type]
        if part not in known:
            break
        declared.append(known[part].metadata["declared"])
        spec = known[part].metadata.get("group")
    return declared


@functools.cache  # asked for every key of every record a table reads
def role_of(key: str) -> Role:
    """A key's role: the innermost one declared other than RESULT along its path (a REPORT group's keys report);
    RESULT where none is (an undeclared key is taken to change the result)."""
    roles = [declared.role for declared in declaration(key) if declared.role is not Role.RESULT]
    return roles[-1] if roles else Role.RESULT


def declared_keys(test: Callable[[Declared], bool], spec: type[Spec] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key, groups included, whose declaration passes `test`, in declaration order."""
    keys = []
    for f in fields(spec or RunSpec):  # type: ignore[arg-type]
        if "declared" not in f.metadata:
            continue
        if test(f.metadata["declared"]):
            keys.append(prefix + f.name)
        if inner := f.metadata.get("group"):
            keys += declared_keys(test, inner, f"{prefix}{f.name}.")
    return keys


def key_declarations() -> dict[str, Any]:
    """What the declarations say about config keys, as a run record states it (`config_keys`), so that a reader of
    the record, of this version or a later one, sorts its keys as the run that wrote it did: their roles, the keys
    that fix a seed's batches, and those that choose what the model shares (each a key or a group)."""
    return {
        "roles": config_roles(),
        "data_order": declared_keys(lambda declared: declared.orders_data),
        "sharing": declared_keys(lambda declared: declared.chooses_sharing),
    }


def config_roles() -> dict[str, str]:
    """Every declared key, group or mapping key whose role is not RESULT, with its role's name."""
    roles = {key: role_of(key).name.lower() for key in declared_keys(lambda d: d.role is not Role.RESULT)}
    for key in declared_keys(lambda declared: bool(declared.inner_roles)):
        roles |= {f"{key}.{inner}": role.name.lower() for inner, role in declaration(key)[-1].inner_roles.items()}
    return roles


PATH_KEYS = frozenset(declared_keys(lambda declared: declared.path))  # values Hydra must be given quoted


def run_selecting_keys() -> tuple[str, ...]:
    """Keys, and prefixes of groups' keys, that select which runs a command makes (the task, GLUE's tasks and
    recipe) rather than what a run computes: a run's folder is reached under any of their values."""
    leaves = set(leaf_keys())
    return tuple(key if key in leaves else f"{key}." for key in declared_keys(lambda d: d.selects_runs))


def leaf_keys(spec: type[Spec] | None = None, prefix: str = "") -> list[str]:
    """Every dotted key that holds a value rather than a group."""
    keys = []
    for f in fields(spec or RunSpec):  # type: ignore[arg-type]
        inner = f.metadata.get("group")
        keys += leaf_keys(inner, f"{prefix}{f.name}.") if inner else [prefix + f.name]
    return keys
