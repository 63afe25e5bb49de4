"""The trainer's settings: small frozen dataclasses, one per concern, read from a recipe file plus `--set` overrides.

A recipe is a TOML or JSON file of nested tables whose keys are the fields below (`[optimizer] learning_rate = 1e-3`);
`--set optimizer.learning_rate=3e-4` overrides one field. Every key and value is checked before JAX compiles
anything: an unknown key fails with a did-you-mean, a value of the wrong type names the key and the type wanted
(the `--set` parser, coercion and hints: `jax_cat.training.overrides`); the cross-field checks are here.

Recipes by name (`--config grpo_cat`) are the files of the top-level `configs/` folder (`recipes_dir()`; shipped
as package data when the project is installed).
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import os
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from jax_cat.losses.config import CATLossConfig
from jax_cat.training.overrides import ConfigError, all_keys, parse_set, set_key


_FROZEN = dict(frozen=True, kw_only=True)


@dataclasses.dataclass(**_FROZEN)
class TrainConfig:
    """The run itself.

    Attributes:
      method: "sft" (supervised on the data's `solution` field) or "grpo" (RL from verifier rewards).
      steps: optimizer updates of the main stage (GRPO: rollout batches x updates_per_batch).
      seed: seeds parameter-independent randomness: data order, rollout sampling keys.
      checkpoint_every: save an Orbax checkpoint every this many steps (0 = only at the end).
      micro_batches: split each batch into this many micro-batches and accumulate gradients (same update).
      updates_per_batch: GRPO optimizer updates per rollout batch (old log-probs from the rollout policy).
      log_every: host sync + metrics line every this many steps (the only per-step host traffic).
      eval_at_end: run the pass@k / maj@k evaluation on held-out prompts after training.
      save_final: write `<out>/final/` (HF checkpoint + tokenizer + the source's generation_config.json) at the end.
      export_dtype: dtype of the tensors in `final/`: "source" (the dtype the model.path checkpoint stores, e.g.
        bfloat16), "float32", "bfloat16" or "float16" (rounded to nearest even from the float32 masters).
      stop_after: end this invocation (with a checkpoint) after this many steps of the stage, keeping the schedule
        of `steps`; continue later with --resume (for jobs with a time limit). None = run to the end.
    """

    method: Literal["sft", "grpo"] = "sft"
    steps: int = 100
    seed: int = 0
    checkpoint_every: int = 0
    micro_batches: int = 1
    updates_per_batch: int = 1
    log_every: int = 10
    eval_at_end: bool = True
    save_final: bool = True
    export_dtype: Literal["source", "float32", "bfloat16", "float16"] = "source"
    stop_after: int | None = None


@dataclasses.dataclass(**_FROZEN)
class ModelSource:
    """Which checkpoint to train and how to hold it (the architecture comes from the checkpoint's config.json).

    Attributes:
      path: HF-format checkpoint folder or hub id; "tiny" is the embedded default (built offline once).
      param_dtype: dtype of the master weights and optimizer state ("float32").
      compute_dtype: dtype of the forward/backward pass ("float32", or "bfloat16" on accelerators); parameters
        are cast inside the step, gradients come back in param_dtype.
      remat: rematerialise decoder layers in the backward pass: false, true (= "full"), "dots" or "dots_no_batch"
        (`jax_cat.models.decoder.REMAT_POLICIES`; saves memory with scan_layers).
      scan_layers: run the layers as one `lax.scan` over stacked parameters (one layer compiled, not L).
      logprob_chunk: token log-probs (SFT loss, GRPO loss, old-policy / reference log-probs) take the vocabulary
        projection this many sequence positions at a time (default 128): a device holds its rows x 128 x vocab
        float32 logits at once instead of the whole [B, T, vocab]. None (JSON null; `--set model.logprob_chunk=none`)
        = all positions at once.
    """

    path: str = "tiny"
    param_dtype: Literal["float32", "bfloat16"] = "float32"
    compute_dtype: Literal["float32", "bfloat16"] = "float32"
    remat: bool | Literal["full", "dots", "dots_no_batch"] = False
    scan_layers: bool = False
    logprob_chunk: int | None = 128


@dataclasses.dataclass(**_FROZEN)
class DataConfig:
    """Where prompts (and SFT targets) come from and how they are shaped.

    Attributes:
      dataset: "arithmetic[:preset]" (the shipped generator, e.g. "arithmetic:sum3"), "gsm8k", "math", a hub id or
        a local json/jsonl/parquet file of {prompt, answer[, solution]} records.
      split: the training split of a hub/local dataset ("train").
      eval_split: the held-out split for the end-of-run evaluation ("test").
      data_seed: seed of the arithmetic generator (fixes its held-out set).
      style: arithmetic prompt style: "plain" (char-level) or "natural" (chat models, \\boxed{} answers).
      batch_size: prompts per step, global over all processes (SFT: sequences per step).
      max_prompt_len: prompt tokens after formatting (left-padded to this).
      max_target_len: SFT target tokens including EOS (right-padded to this).
      use_chat_template: format prompts with the tokenizer's chat template when it has one.
      system: optional system prompt.
      limit: use only the first `limit` training records (None = all).
      max_truncated_fraction: SFT refuses to start when more than this fraction of the targets is longer than
        max_target_len (they would be cut in silence); the count is always reported. 1.0 = allow any.
    """

    dataset: str = "arithmetic:sum3"
    split: str = "train"
    eval_split: str = "test"
    data_seed: int = 0
    style: Literal["plain", "natural"] = "plain"
    batch_size: int = 64
    max_prompt_len: int = 32
    max_target_len: int = 8
    use_chat_template: bool = True
    system: str | None = None
    limit: int | None = None
    max_truncated_fraction: float = 0.01


@dataclasses.dataclass(**_FROZEN)
class OptimizerConfig:
    """Optax AdamW with linear warm-up then cosine (or constant) decay, after global-norm clipping.

    Attributes:
      learning_rate: peak learning rate.
      warmup_steps: linear warm-up to the peak over this many updates, starting at peak / warmup_steps (not 0,
        which would make the first update a no-op).
      schedule: "cosine" (decay to end_lr_ratio x peak at the last step) or "constant".
      end_lr_ratio: final learning rate as a fraction of the peak (cosine).
      weight_decay: decoupled weight decay (AdamW).
      b1, b2, eps: Adam moments.
      clip_norm: global gradient-norm clip (0 = off).
    """

    learning_rate: float = 1e-3
    warmup_steps: int = 0
    schedule: Literal["cosine", "constant"] = "cosine"
    end_lr_ratio: float = 0.1
    weight_decay: float = 0.01
    b1: float = 0.9
    b2: float = 0.999
    eps: float = 1e-8
    clip_norm: float = 1.0


@dataclasses.dataclass(**_FROZEN)
class RolloutConfig:
    """How GRPO samples (`jax_cat.sampling.sample_tokens`: one prefill per prompt, group_size samples each).

    Attributes:
      group_size: samples per prompt (the group the advantages are computed in).
      max_new_tokens: tokens sampled per completion (EOS included).
      temperature, top_p, top_k: sampling settings (log-probs for the loss are at temperature 1).
    """

    group_size: int = 8
    max_new_tokens: int = 8
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0


@dataclasses.dataclass(**_FROZEN)
class WarmupConfig:
    """An SFT warm-up stage before GRPO (the paper's two-stage recipe); steps 0 = none.

    Attributes:
      steps: SFT steps before the GRPO stage.
      learning_rate: the SFT stage's peak learning rate (its own optimizer; GRPO starts a fresh one).
      batch_size: SFT sequences per step (0 = data.batch_size).
      strategy: the SFT stage's strategy spec ("pass@1" = plain cross-entropy).
      lr_warmup_steps, schedule, end_lr_ratio, weight_decay: the SFT stage's own optimizer.warmup_steps /
        schedule / end_lr_ratio / weight_decay; None (the default) = the optimizer section's.
    """

    steps: int = 0
    learning_rate: float = 1e-3
    batch_size: int = 0
    strategy: str = "pass@1"
    lr_warmup_steps: int | None = None
    schedule: Literal["cosine", "constant"] | None = None
    end_lr_ratio: float | None = None
    weight_decay: float | None = None


@dataclasses.dataclass(**_FROZEN)
class MeshConfig:
    """Device mesh (jax_cat.sharding.make_mesh): data x fsdp x tensor must equal the device count; -1 = the rest.

    Attributes:
      data: data-parallel replicas (batch split, params replicated).
      fsdp: fully-sharded data parallel (batch split, params + optimizer state split on the embed axis).
      tensor: tensor parallel (heads / mlp / vocab split).
    """

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


@dataclasses.dataclass(**_FROZEN)
class CheckpointConfig:
    """Orbax checkpoints under `<out>/checkpoints/` (params, optimizer state, step, data iterator state, PRNG).

    Attributes:
      keep: keep the last `keep` checkpoints.
      async_save: write in a background thread while training continues.
    """

    keep: int = 2
    async_save: bool = True


@dataclasses.dataclass(**_FROZEN)
class LoggingConfig:
    """What the run shows and where its metrics go (TRL's `report_to`; `jax_cat.training.writers`).

    Attributes:
      report_to: metric backends: "jsonl" (`<out>/metrics.jsonl`, always written), "tensorboard" (`<out>/tb/`, the
        'tensorboard' extra), "wandb" (Weights & Biases, the 'wandb' extra; offline without an API key or network),
        "none" (metrics.jsonl only), a name given to `writers.register_writer`, or "package.module:factory".
      tensorboard: the older switch for TensorBoard, kept for recipes and run folders that set it: true adds
        "tensorboard" to report_to, false removes it; None (the default) = as report_to says.
      progress: a tqdm progress bar (loss, reward, pass@1, tokens/s); None = when stderr is a terminal.
      project: the W&B project; None = $WANDB_PROJECT, else "jax-cat".
      run_name: the W&B run's name; None = the run folder's name.
    """

    report_to: tuple[str, ...] = ("jsonl", "tensorboard")
    tensorboard: bool | None = None
    progress: bool | None = None
    project: str | None = None
    run_name: str | None = None

    def __post_init__(self) -> None:
        from jax_cat.training.writers import check_report_to

        check_report_to(self.report_to, key="")  # the parser puts the key in front

    def backends(self) -> tuple[str, ...]:
        """The writers to make: report_to without "jsonl"/"none" (the logger's own), adjusted by `tensorboard`."""
        names = [n for n in self.report_to if n not in ("jsonl", "none")]
        if self.tensorboard is False:
            names = [n for n in names if n != "tensorboard"]
        elif self.tensorboard is True and "tensorboard" not in names:
            names.append("tensorboard")
        return tuple(dict.fromkeys(names))


@dataclasses.dataclass(**_FROZEN)
class EvalConfig:
    """The end-of-run scaling evaluation (`jax_cat.evaluate`) on held-out prompts.

    Attributes:
      dataset: where the evaluation problems come from: a local json/jsonl/parquet file or a hub id (its
        data.eval_split); None = data.dataset. A local file is one table (no splits): when it is also the training
        file, its last num_problems rows are held out of training and evaluated (the run says so).
      num_problems: held-out problems evaluated.
      n: samples per problem; ks: the k values reported (each <= n).
      max_new_tokens: 0 = rollout.max_new_tokens.
      temperature: sampling temperature.
      metrics: which estimates to report, from one pool of samples: "pass@k", "maj@k" (plurality vote over
        k-subsets; the costly one with many problems and a large n), "bon@k" (best of k by mean log-prob).
      batch_size: rows (problems x samples) decoded together (`jax_cat.sampling.generate`); the samples do not
        depend on it (row (i, j) draws from its own key), only speed and memory do.
    The prompts are formatted as training formats them (data.use_chat_template, data.system); the results record it.
    """

    dataset: str | None = None
    num_problems: int = 100
    n: int = 16
    ks: tuple[int, ...] = (1, 2, 4, 8, 16)
    max_new_tokens: int = 0
    temperature: float = 1.0
    metrics: tuple[Literal["pass@k", "maj@k", "bon@k"], ...] = ("pass@k", "maj@k", "bon@k")
    batch_size: int = 128


@dataclasses.dataclass(**_FROZEN)
class LoRASection:
    """LoRA: train low-rank adapters on a frozen base (docs/lora.md); rank 0 = full fine-tuning.

    Attributes:
      rank: adapter rank r (0 = off). alpha: scale alpha / r (PEFT's rule). dropout: on the adapters' inputs, in
        training steps only. targets: HF module names adapted in every layer.
      export: what `final/` holds: "merged" (an HF checkpoint with W + B.A.alpha/r) or "peft" (a PEFT adapter folder,
        adapter_config.json + adapter_model.safetensors, for `peft.PeftModel.from_pretrained` on the base).
      quantize: how the frozen base's projection kernels are stored (QLoRA, `jax_cat.models.quant`): "none",
        "int8" (per-output-channel absmax) or "nf4" (4-bit NormalFloat, blocks of 64, as bitsandbytes); needs
        rank > 0. A merged export dequantizes the base; the PEFT export holds the adapters only.
      rollout: how GRPO rollouts apply the adapters: "adapters" (the low-rank path in every decode step) or
        "merged" (W + B.A.alpha/r materialised once per rollout batch; the base plus one copy of the adapted
        kernels while sampling). Same samples up to float rounding; the default is the faster on CPU
        (benchmarks/lora_rollout.py, docs/lora.md).
    """

    rank: int = 0
    alpha: float = 16.0
    dropout: float = 0.0
    targets: tuple[str, ...] = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    export: Literal["merged", "peft"] = "merged"
    quantize: Literal["none", "int8", "nf4"] = "none"
    rollout: Literal["adapters", "merged"] = "adapters"


@dataclasses.dataclass(**_FROZEN)
class Config:
    """One training run. `strategy` is a spec string: "pass@1" is plain SFT/GRPO; "pass@8", "maj@16", "bon@4" CAT.

    `loss` is `jax_cat.losses.CATLossConfig` itself (its docstring gives each field's meaning and the authors'
    reference value); `loss_preset` starts it from REFERENCE_PASS_AT_N or REFERENCE_MAJORITY, the loss fields set
    in the recipe or with --set then override the preset's (see `Config.loss_config`).
    """

    train: TrainConfig = TrainConfig()
    model: ModelSource = ModelSource()
    data: DataConfig = DataConfig()
    optimizer: OptimizerConfig = OptimizerConfig()
    rollout: RolloutConfig = RolloutConfig()
    strategy: str = "pass@1"
    loss_preset: Literal["reference_pass_at_n", "reference_majority"] | None = None
    loss: CATLossConfig = CATLossConfig()
    warmup: WarmupConfig = WarmupConfig()
    mesh: MeshConfig = MeshConfig()
    checkpoint: CheckpointConfig = CheckpointConfig()
    logging: LoggingConfig = LoggingConfig()
    eval: EvalConfig = EvalConfig()
    lora: LoRASection = LoRASection()

    def replace(self, **changes: Any) -> "Config":
        """A copy with dotted-key changes: cfg.replace(**{"train.steps": 4})."""
        return apply_overrides(self, changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as plain nested dicts, for config.json in the run folder and the loggers' config panels."""
        return dataclasses.asdict(self)

    def lora_config(self) -> Any:
        """The run's `jax_cat.models.lora.LoRAConfig` (A seeded by train.seed), or None when lora.rank is 0."""
        if self.lora.rank == 0:
            return None
        from jax_cat.models.lora import LoRAConfig

        return LoRAConfig(rank=self.lora.rank, alpha=self.lora.alpha, dropout=self.lora.dropout,
                          targets=self.lora.targets, seed=self.train.seed)

    def loss_config(self) -> CATLossConfig:
        """The CATLossConfig of the run: the preset (if any) with every field that differs from the default applied."""
        from jax_cat import losses

        if self.loss_preset is None:
            return self.loss
        base = {"reference_pass_at_n": losses.REFERENCE_PASS_AT_N,
                "reference_majority": losses.REFERENCE_MAJORITY}[self.loss_preset]
        default = CATLossConfig()
        changes = {f.name: getattr(self.loss, f.name) for f in dataclasses.fields(CATLossConfig)
                   if getattr(self.loss, f.name) != getattr(default, f.name)}
        return dataclasses.replace(base, **changes)


# ----------------------------------------------------------------------------------------------------- parsing
# (the --set parser itself, generic over dataclass trees, is jax_cat.training.overrides)
def _all_keys() -> list[str]:
    """Every dotted key of `Config` (what recipes and --set accept)."""
    return all_keys(Config)


def apply_overrides(cfg: Config, overrides: Mapping[str, Any]) -> Config:
    """cfg with each dotted key set (values: strings from --set, or typed values); validates the result."""
    for key, value in overrides.items():
        cfg = set_key(cfg, key, value)
    validate(cfg)
    return cfg


def recipes_dir() -> Path:
    """The folder of named recipes: jax_cat/training/recipes, a link to the top-level configs/ in a source
    checkout and a copy of it (package data) in an installed package."""
    return Path(__file__).resolve().with_name("recipes")


def recipe_names() -> list[str]:
    """Names accepted by `--config NAME`."""
    return sorted(p.stem for p in recipes_dir().glob("*") if p.suffix in (".toml", ".json"))


def read_recipe(path_or_name: str | os.PathLike) -> dict[str, Any]:
    """The nested dict of a recipe file (.toml or .json), by path or by name from `recipes_dir()`."""
    path = Path(path_or_name).expanduser()
    if not path.is_file():
        matches = [p for p in (recipes_dir() / f"{path_or_name}.toml", recipes_dir() / f"{path_or_name}.json") if p.is_file()]
        if not matches:
            names = recipe_names()
            close = difflib.get_close_matches(str(path_or_name), names, n=1)
            hint = f"; did you mean {close[0]!r}?" if close else f"; recipes: {', '.join(names)}"
            raise ConfigError(f"--config {path_or_name!r}: no such file or recipe{hint}")
        path = matches[0]
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as err:
        raise ConfigError(f"--config {path}: not UTF-8 text (byte {err.start}); save the recipe as UTF-8") from None
    except OSError as err:
        raise ConfigError(f"--config {path}: cannot read: {err.strerror or err}") from None
    try:
        tree = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
        raise ConfigError(f"--config {path}: cannot parse: {err}") from None
    if not isinstance(tree, Mapping):
        raise ConfigError(f"--config {path}: expected a table of sections (e.g. {{\"train\": {{\"steps\": 100}}}}), "
                          f"got a {type(tree).__name__}")
    return tree


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"steps": 5}} -> {"train.steps": 5}: the dotted names that recipes, overrides and a run folder's
    saved settings (`run_folder`) are compared by."""
    out: dict[str, Any] = {}
    for key, value in tree.items():
        if isinstance(value, Mapping):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value
    return out


def load_config(path_or_name: str | os.PathLike | None = None, overrides: Mapping[str, Any] | Sequence[str] = ()) -> Config:
    """Config from a recipe (path or name; None = defaults) plus overrides ({"k": v} or ["k=v", ...])."""
    cfg = Config()
    values: dict[str, Any] = {}
    if path_or_name is not None:
        values.update(_flatten(read_recipe(path_or_name)))
    if not isinstance(overrides, Mapping):
        overrides = parse_set(list(overrides))
    values.update(overrides)
    return apply_overrides(cfg, values)


# -------------------------------------------------------------------------------------------------- validation
def _positive(key: str, value: int | float, minimum: float = 1) -> None:
    if not value >= minimum:  # NaN fails too
        raise ConfigError(f"{key} must be >= {minimum}, got {value}")


def _in_range(key: str, value: float, low: float, high: float, *, low_open: bool = False,
              high_open: bool = False) -> None:
    """ConfigError naming `key` unless low <(=) value <(=) high (NaN and infinities never pass a finite bound)."""
    ok = (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open else ']'}"
        raise ConfigError(f"{key} must be in {interval}, got {value}")


def _not_empty(key: str, value: str) -> None:
    if not str(value).strip():
        raise ConfigError(f"{key} must not be empty")


def check_ranges(cfg: Config) -> None:
    """A range check for every key of every section (the keys `validate` relates to each other come after)."""
    t, d, o, r, w, e = cfg.train, cfg.data, cfg.optimizer, cfg.rollout, cfg.warmup, cfg.eval
    inf = float("inf")
    for key, value, minimum in (
        ("train.steps", t.steps, 0), ("train.seed", t.seed, 0), ("train.checkpoint_every", t.checkpoint_every, 0),
        ("train.micro_batches", t.micro_batches, 1), ("train.updates_per_batch", t.updates_per_batch, 1),
        ("train.log_every", t.log_every, 1), ("data.data_seed", d.data_seed, 0), ("data.batch_size", d.batch_size, 1),
        ("data.max_prompt_len", d.max_prompt_len, 1), ("data.max_target_len", d.max_target_len, 1),
        ("optimizer.warmup_steps", o.warmup_steps, 0), ("rollout.group_size", r.group_size, 1),
        ("rollout.max_new_tokens", r.max_new_tokens, 1), ("rollout.top_k", r.top_k, 0),
        ("warmup.steps", w.steps, 0), ("warmup.batch_size", w.batch_size, 0), ("checkpoint.keep", cfg.checkpoint.keep, 1),
        ("eval.num_problems", e.num_problems, 0), ("eval.n", e.n, 1), ("eval.max_new_tokens", e.max_new_tokens, 0),
        ("eval.batch_size", e.batch_size, 1),
    ):
        _positive(key, value, minimum)
    if t.stop_after is not None:
        _positive("train.stop_after", t.stop_after, 1)
    if w.lr_warmup_steps is not None:
        _positive("warmup.lr_warmup_steps", w.lr_warmup_steps, 0)
    if w.end_lr_ratio is not None:
        _in_range("warmup.end_lr_ratio", w.end_lr_ratio, 0, 1)
    if w.weight_decay is not None:
        _in_range("warmup.weight_decay", w.weight_decay, 0, inf, high_open=True)
    if d.limit is not None:
        _positive("data.limit", d.limit, 1)
    if cfg.model.logprob_chunk is not None:
        _positive("model.logprob_chunk", cfg.model.logprob_chunk, 1)
    _in_range("data.max_truncated_fraction", d.max_truncated_fraction, 0, 1)
    for key, value in (("model.path", cfg.model.path), ("data.dataset", d.dataset), ("data.split", d.split),
                       ("data.eval_split", d.eval_split)):
        _not_empty(key, value)
    _in_range("optimizer.learning_rate", o.learning_rate, 0, inf, low_open=True, high_open=True)
    _in_range("warmup.learning_rate", w.learning_rate, 0, inf, low_open=True, high_open=True)
    _in_range("optimizer.end_lr_ratio", o.end_lr_ratio, 0, 1)
    _in_range("optimizer.weight_decay", o.weight_decay, 0, inf, high_open=True)
    _in_range("optimizer.b1", o.b1, 0, 1, high_open=True)
    _in_range("optimizer.b2", o.b2, 0, 1, high_open=True)
    _in_range("optimizer.eps", o.eps, 0, inf, low_open=True, high_open=True)
    _in_range("optimizer.clip_norm", o.clip_norm, 0, inf, high_open=True)
    _in_range("rollout.temperature", r.temperature, 0, inf, high_open=True)
    _in_range("rollout.top_p", r.top_p, 0, 1, low_open=True)
    _in_range("eval.temperature", e.temperature, 0, inf, high_open=True)
    _positive("lora.rank", cfg.lora.rank, 0)
    _in_range("lora.alpha", cfg.lora.alpha, 0, inf, low_open=True, high_open=True)
    _in_range("lora.dropout", cfg.lora.dropout, 0, 1, high_open=True)
    for k in e.ks:
        _positive("eval.ks", k, 1)
    if not e.metrics and t.eval_at_end and e.num_problems > 0:
        raise ConfigError("eval.metrics is empty: name the estimates to report (e.g. eval.metrics=pass@k,maj@k), or "
                          "set train.eval_at_end=false")
    if not e.ks and t.eval_at_end and e.num_problems > 0:
        raise ConfigError("eval.ks is empty: name the k values to report (e.g. eval.ks=1,2,4), or set "
                          "train.eval_at_end=false")


def check_objective(cfg: Config) -> None:
    """Refuse GRPO settings whose objective is degenerate (every advantage 0: the run would never move)."""
    from jax_cat.losses import MajorityAtN, strategy_from_spec

    if cfg.train.method != "grpo":
        return
    if cfg.rollout.group_size < 2:
        raise ConfigError(
            f"rollout.group_size={cfg.rollout.group_size}: GRPO's advantage is a sample's reward minus the mean of "
            "its prompt's group, so with one sample per prompt every advantage is 0 and the run never moves; "
            "use rollout.group_size >= 2"
        )
    strategy = strategy_from_spec(cfg.strategy)
    min_k = cfg.loss_config().min_k
    if isinstance(strategy, MajorityAtN) and not 1 <= min_k <= strategy.n // 2 + 1:
        raise ConfigError(f"strategy={cfg.strategy} with loss.min_k={min_k}: the majority threshold must be in "
                          f"[1, {strategy.n // 2 + 1}] for n={strategy.n}; lower loss.min_k or raise the n of maj@n")


def validate(cfg: Config) -> None:
    """Cross-field checks that need no devices (the mesh is checked against devices by `check_mesh`)."""
    from jax_cat.losses import strategy_from_spec

    for key, spec in (("strategy", cfg.strategy), ("warmup.strategy", cfg.warmup.strategy)):
        try:
            strategy_from_spec(spec)
        except ValueError as err:
            raise ConfigError(f"{key}: {err}") from None
    t = cfg.train
    check_ranges(cfg)
    try:
        cfg.loss_config()
    except (ValueError, TypeError) as err:
        raise ConfigError(f"loss: {err}") from None
    check_objective(cfg)
    try:
        cfg.lora_config()
    except ValueError as err:
        raise ConfigError(f"lora: {err}") from None
    if cfg.lora.quantize != "none" and cfg.lora.rank == 0:
        raise ConfigError(f"lora.quantize={cfg.lora.quantize!r} needs lora.rank > 0: a quantized base is frozen, so "
                          "only LoRA adapters can be trained on it (QLoRA)")
    if cfg.lora.quantize != "none" and cfg.lora.rollout == "merged":
        raise ConfigError(f"lora.rollout='merged' with lora.quantize={cfg.lora.quantize!r}: merging would materialise "
                          "the dequantized base once per rollout batch; use lora.rollout='adapters' (the default) "
                          "for a quantized base")
    if t.method == "sft" and cfg.data.batch_size % t.micro_batches:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} does not split into train.micro_batches={t.micro_batches}")
    if t.method == "grpo" and (cfg.data.batch_size * cfg.rollout.group_size) % t.micro_batches:
        raise ConfigError(
            f"the rollout batch (data.batch_size x rollout.group_size = {cfg.data.batch_size * cfg.rollout.group_size}) "
            f"does not split into train.micro_batches={t.micro_batches}"
        )
    if t.method == "grpo" and t.micro_batches > 1 and cfg.data.batch_size % t.micro_batches:
        raise ConfigError(f"data.batch_size={cfg.data.batch_size} prompts must split into train.micro_batches="
                          f"{t.micro_batches} (a prompt's group stays in one micro-batch)")
    if cfg.eval.ks and max(cfg.eval.ks) > cfg.eval.n:
        raise ConfigError(f"eval.ks {list(cfg.eval.ks)} must all be <= eval.n={cfg.eval.n}")
    for name in ("data", "fsdp", "tensor"):
        size = getattr(cfg.mesh, name)
        if size != -1 and size < 1:
            raise ConfigError(f"mesh.{name} must be a positive size or -1 (the rest of the devices), got {size}")
    if [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor].count(-1) > 1:
        raise ConfigError("at most one of mesh.data, mesh.fsdp, mesh.tensor may be -1")


def check_mesh(cfg: Config, num_devices: int) -> tuple[int, int, int]:
    """The (data, fsdp, tensor) sizes for `num_devices`, or ConfigError; also checks the batch splits over data x fsdp."""
    sizes = [cfg.mesh.data, cfg.mesh.fsdp, cfg.mesh.tensor]
    known = 1
    for s in sizes:
        if s != -1:
            known *= s
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh fsdp x tensor x data = {sizes} does not divide the {num_devices} devices")
        sizes[sizes.index(-1)] = num_devices // known
    if sizes[0] * sizes[1] * sizes[2] != num_devices:
        need = sizes[0] * sizes[1] * sizes[2]
        raise ConfigError(
            f"mesh data={sizes[0]} x fsdp={sizes[1]} x tensor={sizes[2]} needs {need} devices; this run has "
            f"{num_devices}: change mesh.* (-1 = the rest), or for a CPU dry run start with "
            f"XLA_FLAGS=--xla_force_host_platform_device_count={need}"
        )
    dp = sizes[0] * sizes[1]
    if cfg.train.method == "grpo" and cfg.data.batch_size % dp:  # the prompt batch is split over data x fsdp too
        raise ConfigError(
            f"data.batch_size={cfg.data.batch_size} prompts do not split over data x fsdp = {dp} devices; set "
            f"data.batch_size to a multiple of {dp} (or make mesh.data x mesh.fsdp divide it)"
        )
    if cfg.train.method == "grpo" and cfg.warmup.steps > 0 and (cfg.warmup.batch_size or cfg.data.batch_size) % dp:
        raise ConfigError(
            f"warmup.batch_size={cfg.warmup.batch_size or cfg.data.batch_size} sequences do not split over data x "
            f"fsdp = {dp} devices; set warmup.batch_size to a multiple of {dp}"
        )
    rows = cfg.data.batch_size * (cfg.rollout.group_size if cfg.train.method == "grpo" else 1)
    if (rows // cfg.train.micro_batches) % dp:
        raise ConfigError(
            f"a micro-batch of {rows // cfg.train.micro_batches} rows does not split over data x fsdp = {dp} devices; "
            "change data.batch_size, train.micro_batches or the mesh"
        )
    return sizes[0], sizes[1], sizes[2]
