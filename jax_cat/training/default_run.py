"""The embedded default run: `python -m jax_cat.train` with no arguments, CAT's test-time-scaling effect on a CPU.

One tiny model, one shipped task, one warm start, two RL objectives, one picture:

1. build (once) a 108k-parameter decoder (`jax_cat.models.tiny.build_arithmetic_checkpoint`: RoPE, 2 layers, d=64,
   an 18-token character vocabulary) for the arithmetic preset "sum2_2d" (`12+05=` -> `017`);
2. SFT-warm it with plain cross-entropy (constant learning rate after the warm-up, so the warm start is not left
   in a sharp spot that RL steps overshoot: docs/results.md, issue 21) (the trainer's SFT loop, `run_sft`), cached in `<out>/warm_start/` with a
   fingerprint of everything that made it, so a second run skips straight to RL;
3. from that SAME warm start, train plain GRPO (strategy pass@1) and CAT GRPO (strategy pass@N: advantages
   weighted by N(1-p)^(N-1) at the Laplace estimate p of each prompt's success) with the trainer's GRPO loop
   (`run_grpo`), the same code paths as `python -m jax_cat.train --config ...`;
4. evaluate pass@k for k = 1..64 on held-out problems (n samples each, the unbiased estimator, bootstrap CIs) for
   the warm start and both RL models; print a table, write `<out>/results.json` and `<out>/passk.png`.

The paper's claim to see: plain GRPO sharpens the policy (pass@1 up, pass@k at large k down from the warm start),
CAT pass@N keeps the coverage: a little lower pass@1, clearly higher pass@64. Everything lands under `<out>`
(`metrics.jsonl` of every stage, Orbax checkpoints under `checkpoints/<stage>/`, each RL model's HF checkpoint in
`<stage>/final/`).
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jax_cat.atomic import atomic_write, atomic_write_text
from jax_cat.extras import pyplot

DEFAULT_OUT = Path("runs") / "default"
KS = (1, 2, 4, 8, 16, 32, 64)


@dataclasses.dataclass(frozen=True)
class DefaultRun:
    """The default run's settings (what `python -m jax_cat.train` with no arguments uses).

    Attributes:
      preset: the shipped arithmetic preset (`jax_cat.data.arithmetic.PRESETS`).
      data_seed: the arithmetic generator's seed (fixes the held-out set).
      test_size: held-out problems evaluated.
      seed: parameter init, data order and sampling seed.
      sft_steps, sft_batch_size, sft_learning_rate, sft_warmup_steps: the plain-CE warm-up.
      sft_end_lr_ratio: the SFT cosine schedule ends at this fraction of sft_learning_rate (1.0 = constant after the
        warm-up). Training at a small final learning rate lets the warm start settle where the loss is sharp (about
        2/lr along the gradient), so RL steps larger than that final rate undo it (docs/results.md, issue 21).
      grpo_steps, grpo_prompts, group_size, grpo_learning_rate: each RL variant (prompts x group_size rollouts/step).
      grpo_warmup_steps: linear LR warm-up of each RL stage (without it Adam's first updates move every weight by
        about +-lr and undo the warm start; docs/results.md).
      cat_strategy: the CAT variant's strategy spec (the plain variant is always "pass@1").
      eval_samples: samples per held-out problem (the largest k reported).
      log_every: metrics / progress bar refresh interval (steps).
    """

    preset: str = "sum2_2d"
    data_seed: int = 0
    test_size: int = 200
    seed: int = 0
    sft_steps: int = 1000
    sft_batch_size: int = 128
    sft_learning_rate: float = 1e-3
    sft_warmup_steps: int = 100
    sft_end_lr_ratio: float = 1.0
    grpo_steps: int = 200
    grpo_prompts: int = 64
    group_size: int = 8
    grpo_learning_rate: float = 3e-4
    grpo_warmup_steps: int = 20
    cat_strategy: str = "pass@8"
    eval_samples: int = 64
    log_every: int = 25

    def __post_init__(self) -> None:
        from jax_cat.data.arithmetic import get_spec
        from jax_cat.losses import strategy_from_spec

        spec = get_spec(self.preset)
        if not spec.pad_operands or not spec.answer_width:
            raise ValueError(f"DefaultRun: preset {self.preset!r} needs fixed-width prompts and answers (like sum3)")
        strategy_from_spec(self.cat_strategy)
        for name in ("test_size", "sft_batch_size", "grpo_prompts", "group_size", "eval_samples", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"DefaultRun: {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 < self.sft_end_lr_ratio <= 1.0:
            raise ValueError(f"DefaultRun: sft_end_lr_ratio must be in (0, 1], got {self.sft_end_lr_ratio}")
        for name in ("sft_steps", "grpo_steps", "sft_warmup_steps", "grpo_warmup_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"DefaultRun: {name} must be >= 0, got {getattr(self, name)}")

    @property
    def ks(self) -> tuple[int, ...]:
        """1, 2, 4, ... up to eval_samples (and eval_samples itself)."""
        ks = [k for k in KS if k <= self.eval_samples] or [1]
        return tuple(sorted(set(ks) | {self.eval_samples}))

    @property
    def prompt_len(self) -> int:
        from jax_cat.data.arithmetic import prompt_length

        return prompt_length(self.preset) + 1  # + <bos>

    @property
    def answer_len(self) -> int:
        from jax_cat.data.arithmetic import get_spec

        return int(get_spec(self.preset).answer_width) + 1  # + <eos>


VARIANTS = (("grpo", "plain GRPO"), ("grpo_cat", "CAT GRPO"))


def trainer_config(run: DefaultRun, *, method: str, model_path: str | os.PathLike, strategy: str = "pass@1"):
    """The trainer Config (`jax_cat.training.config.Config`) of one stage of the default run."""
    from jax_cat.training.config import (
        CheckpointConfig, Config, DataConfig, EvalConfig, LoggingConfig, MeshConfig, ModelSource, OptimizerConfig,
        RolloutConfig, TrainConfig, validate,
    )

    sft = method == "sft"
    cfg = Config(
        train=TrainConfig(method=method, steps=run.sft_steps if sft else run.grpo_steps, seed=run.seed,
                          log_every=run.log_every, eval_at_end=False, save_final=not sft),
        model=ModelSource(path=str(model_path)),
        data=DataConfig(dataset=f"arithmetic:{run.preset}", data_seed=run.data_seed, style="plain",
                        batch_size=run.sft_batch_size if sft else run.grpo_prompts, max_prompt_len=run.prompt_len,
                        max_target_len=run.answer_len, use_chat_template=False),
        optimizer=(OptimizerConfig(learning_rate=run.sft_learning_rate, warmup_steps=run.sft_warmup_steps,
                                   schedule="cosine", end_lr_ratio=run.sft_end_lr_ratio, weight_decay=0.01) if sft else
                   OptimizerConfig(learning_rate=run.grpo_learning_rate, warmup_steps=run.grpo_warmup_steps,
                                   schedule="constant",
                                   weight_decay=0.0)),
        rollout=RolloutConfig(group_size=run.group_size, max_new_tokens=run.answer_len, temperature=1.0),
        strategy=strategy,
        mesh=MeshConfig(data=-1, fsdp=1, tensor=1),
        checkpoint=CheckpointConfig(keep=1, async_save=True),
        logging=LoggingConfig(progress=None, tensorboard=False),
        eval=EvalConfig(num_problems=run.test_size, n=run.eval_samples, ks=run.ks, max_new_tokens=run.answer_len),
    )
    validate(cfg)
    return cfg


# ------------------------------------------------------------------------------------------------ small helpers
def _fingerprint(payload: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def default_mesh(cfg: Any):
    """Data parallel over the accelerators; on CPU one device (forced host devices share the same cores)."""
    import jax

    from jax_cat.training.runtime import build_mesh

    devices = jax.devices()
    return build_mesh(cfg, devices[:1] if devices[0].platform == "cpu" else devices)


def provenance() -> dict[str, Any]:
    """Where and with what a result was measured: git commit (+dirty), CPU model, cores, JAX/jaxlib versions, UTC time.

    XLA:CPU compiles differently per CPU, so the same seed gives different draws on different machines: a number in
    the docs is only rerunnable with these next to it."""
    import platform
    import subprocess

    import jax

    def git(*args: str) -> str | None:
        try:
            return subprocess.run(["git", *args], capture_output=True, text=True, timeout=10,
                                  cwd=Path(__file__).resolve().parent).stdout.strip() or None
        except (OSError, subprocess.SubprocessError):
            return None

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    status = git("status", "--porcelain", "--untracked-files=no")
    return {"commit": git("rev-parse", "--short=12", "HEAD"), "dirty": bool(status), "cpu": cpu,
            "cores": os.cpu_count(), "platform": jax.devices()[0].platform, "jax": jax.__version__,
            "python": platform.python_version(), "utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime())}


def _say(text: str) -> None:
    print(text, flush=True)


# ------------------------------------------------------------------------------------------------ stages
def base_checkpoint(run: DefaultRun, out: Path) -> Path:
    """`<out>/base/`: the randomly initialised arithmetic model + tokenizer (built once, then reused)."""
    from jax_cat.models.tiny import arithmetic_model_config, build_arithmetic_checkpoint

    path = out / "base"
    stamp = _fingerprint({"config": dataclasses.asdict(arithmetic_model_config()), "seed": run.seed})
    marker = path / "jax_cat_default.json"
    if marker.is_file() and json.loads(marker.read_text()).get("fingerprint") == stamp:
        return path
    build_arithmetic_checkpoint(path, seed=run.seed)
    atomic_write_text(marker, json.dumps({"fingerprint": stamp}) + "\n")
    return path


def warm_start(run: DefaultRun, out: Path, base: Path) -> tuple[Path, dict[str, Any]]:
    """`<out>/warm_start/`: the SFT warm start (HF checkpoint), trained with the trainer's SFT loop once and reused
    while nothing that made it changed. Returns (path, info: fingerprint, reused, seconds, first/last loss)."""
    from jax_cat.models import save_hf
    from jax_cat.training.runtime import load_model
    from jax_cat.training.sft import run_sft

    cfg = trainer_config(run, method="sft", model_path=base)
    what = {k: v for k, v in cfg.to_dict().items() if k not in ("model", "eval", "logging", "checkpoint", "mesh")}
    stamp = _fingerprint({"sft": what, "base": (base / "jax_cat_default.json").read_text(), "format": 1})
    path = out / "warm_start"
    marker = path / "jax_cat_default.json"
    if marker.is_file():
        info = json.loads(marker.read_text())
        if info.get("fingerprint") == stamp:
            return path, dict(info, reused=True)
    t0 = time.perf_counter()
    mesh = default_mesh(cfg)
    model, tokenizer = load_model(cfg, mesh)
    result = run_sft(cfg, model=model, tokenizer=tokenizer, mesh=mesh, out=out, stage="sft")
    losses = [row["loss"] for row in result.history if "loss" in row]
    save_hf(result.model, path, tokenizer=tokenizer)
    info = {"fingerprint": stamp, "seconds": time.perf_counter() - t0, "steps": run.sft_steps,
            "first_loss": losses[0] if losses else None, "last_loss": losses[-1] if losses else None}
    atomic_write_text(marker, json.dumps(info) + "\n")
    return path, dict(info, reused=False)


def train_variant(run: DefaultRun, out: Path, warm: Path, stage: str, strategy: str) -> tuple[Any, Any, dict]:
    """GRPO from the warm start with `strategy` via the trainer's loop -> (model, tokenizer, info)."""
    from jax_cat.training.grpo import run_grpo
    from jax_cat.training.runtime import load_model, save_final

    cfg = trainer_config(run, method="grpo", model_path=warm, strategy=strategy)
    import shutil

    shutil.rmtree(out / "checkpoints" / stage, ignore_errors=True)  # an RL stage always starts from the warm start
    t0 = time.perf_counter()
    mesh = default_mesh(cfg)
    model, tokenizer = load_model(cfg, mesh)
    result = run_grpo(cfg, model=model, tokenizer=tokenizer, mesh=mesh, out=out, stage=stage)
    save_final(result.model, tokenizer, out / stage)
    rewards = [row["reward"] for row in result.history if "reward" in row]
    info = {"seconds": time.perf_counter() - t0, "strategy": strategy, "steps": run.grpo_steps,
            "first_reward": rewards[0] if rewards else None, "last_reward": rewards[-1] if rewards else None}
    return result.model, tokenizer, info


def sample_and_score(model: Any, tokenizer: Any, problems: Sequence[dict], *, n: int, max_new_tokens: int,
                     seed: int, batch_rows: int = 4096,
                     reward_fn: Callable[[Sequence[str], Sequence[str]], Any] | None = None,
                     ) -> tuple[np.ndarray, list[list[str]]]:
    """n sampled completions of every problem -> (correct [P, n] bool, completion texts P x n).

    The token-level path of `jax_cat.evaluate.evaluate`: `sample_tokens` with one prefill per prompt (temperature
    1), texts decoded with the tokenizer, 0/1 rewards from `reward_fn(texts, golds)` (default: the general verifier
    `jax_cat.rewards.compute_rewards`; the default run passes the exact-format check its RL stages train on,
    `jax_cat.rewards.exact_match_rewards`). Prompts are encoded as the trainer encodes them (no chat template,
    tokenizer specials).
    """
    import jax

    if reward_fn is None:
        from jax_cat.rewards import compute_rewards as reward_fn
    from jax_cat.sampling import sample_tokens
    from jax_cat.sampling.engine import resolve_eos_token_ids, resolve_pad_token_id

    eos = resolve_eos_token_ids(model, tokenizer)
    pad = resolve_pad_token_id(model, tokenizer, eos)
    encoded = tokenizer([p["prompt"] for p in problems])["input_ids"]
    width = max(len(e) for e in encoded)
    ids = np.full((len(encoded), width), pad, np.int32)
    mask = np.zeros((len(encoded), width), bool)
    for r, e in enumerate(encoded):
        ids[r, width - len(e):], mask[r, width - len(e):] = e, True
    per_chunk = max(1, batch_rows // n)
    correct = np.zeros((len(problems), n), bool)
    texts: list[list[str]] = []
    base_key = jax.random.key(seed)
    for start in range(0, len(problems), per_chunk):
        stop = min(len(problems), start + per_chunk)
        u = stop - start
        row_prompt = np.repeat(np.arange(u), n)
        out = sample_tokens(model, ids[start:stop], mask[start:stop], max_new_tokens=max_new_tokens,
                            key=jax.random.fold_in(base_key, start), eos_token_ids=eos, pad_token_id=pad,
                            row_prompt=row_prompt)
        tokens, lengths = np.asarray(out.tokens), np.asarray(out.lengths)
        flat = tokenizer.batch_decode([t[:m] for t, m in zip(tokens, lengths)], skip_special_tokens=True)
        golds = [problems[start + i]["answer"] for i in row_prompt]
        correct[start:stop] = np.asarray(reward_fn(flat, golds)).reshape(u, n) > 0
        texts.extend(flat[i * n:(i + 1) * n] for i in range(u))
    return correct, texts


def curve(per_k: Callable[[int], np.ndarray], ks: Sequence[int], seed: int) -> dict[str, list]:
    """{k, mean, ci_low, ci_high} from a per-problem estimate for each k (95% percentile bootstrap over problems)."""
    from jax_cat.evaluate import bootstrap_ci

    rows: dict[str, list] = {"k": [], "mean": [], "ci_low": [], "ci_high": []}
    for k in ks:
        per_problem = np.asarray(per_k(int(k)), np.float64)
        low, high = bootstrap_ci(per_problem, seed=seed)
        rows["k"].append(int(k))
        rows["mean"].append(float(per_problem.mean()))
        rows["ci_low"].append(low)
        rows["ci_high"].append(high)
    return rows


def pass_at_k_eval(model: Any, tokenizer: Any, problems: Sequence[dict], *, n: int, ks: Sequence[int],
                   max_new_tokens: int, seed: int, batch_rows: int = 4096,
                   reward_fn: Callable[[Sequence[str], Sequence[str]], Any] | None = None) -> dict[str, Any]:
    """pass@k (unbiased, Chen et al.; `jax_cat.losses.pass_at_k_many`) with 95% bootstrap CIs over problems.

    (maj@k by Monte Carlo over k-subsets costs more than the whole default run's training on 2 cores, so the
    default reports pass@k only; scripts/reproduce_cat.py adds maj@k.)
    """
    from jax_cat.losses import pass_at_k_many

    t0 = time.perf_counter()
    correct, _ = sample_and_score(model, tokenizer, problems, n=n, max_new_tokens=max_new_tokens, seed=seed,
                                  batch_rows=batch_rows, reward_fn=reward_fn)
    num_correct = correct.sum(axis=1)
    rows = curve(lambda k: pass_at_k_many(np.full(len(problems), n), num_correct, k), ks, seed)
    return {"pass@k": rows, "num_problems": len(problems), "n": n, "seconds": time.perf_counter() - t0,
            "solved_fraction": float(np.mean(num_correct > 0)), "num_correct": [int(c) for c in num_correct]}


def paired_difference(num_correct_a: Sequence[int], num_correct_b: Sequence[int], *, n: int, ks: Sequence[int],
                      seed: int = 0) -> dict[str, list]:
    """pass@k(a) - pass@k(b) on the same problems with a 95% paired bootstrap CI over problems, for each k.

    Both models answered the same held-out problems, so the per-problem differences of the unbiased estimates are
    resampled together (the CI of the difference, much tighter than comparing two separate CIs). This is the
    evaluation-sample noise only; the training seed's share is measured by scripts/reproduce_cat.py (--seeds).
    """
    from jax_cat.losses import pass_at_k_many

    a, b = np.asarray(num_correct_a), np.asarray(num_correct_b)
    if a.shape != b.shape:
        raise ValueError(f"paired_difference: {a.shape} vs {b.shape} problems; both must answer the same problems")
    total = np.full(a.shape, n)
    return curve(lambda k: np.asarray(pass_at_k_many(total, a, k), np.float64)
                 - np.asarray(pass_at_k_many(total, b, k), np.float64), ks, seed)


# ------------------------------------------------------------------------------------------------ report
def format_table(results: dict[str, Any]) -> str:
    """The printed pass@k table: one row per model, one column per k, plus CAT minus plain GRPO."""
    models = results["models"]
    ks = next(iter(models.values()))["pass@k"]["k"]
    name_w = max([len(m["label"]) for m in models.values()] + [len("  95% CI high")]) + 2
    lines = [" " * name_w + "".join(f"{'k=' + str(k):>8s}" for k in ks)]
    for m in models.values():
        lines.append(f"{m['label']:<{name_w}s}" + "".join(f"{v:8.3f}" for v in m["pass@k"]["mean"]))
    if "grpo" in models and "grpo_cat" in models:
        diff = np.asarray(models["grpo_cat"]["pass@k"]["mean"]) - np.asarray(models["grpo"]["pass@k"]["mean"])
        lines.append(f"{'CAT - plain':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in diff))
        paired = results.get("cat_minus_plain")
        if paired:
            lines.append(f"{'  95% CI low':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in paired["ci_low"]))
            lines.append(f"{'  95% CI high':<{name_w}s}" + "".join(f"{v:+8.3f}" for v in paired["ci_high"]))
    return "\n".join(lines)


def plot_passk(results: dict[str, Any], path: Path) -> Path | None:
    """pass@k vs k (log2 axis) for every model with its bootstrap band, written atomically as PNG (None: no matplotlib)."""
    plt = pyplot(feature="the pass@k plot")
    if plt is None:
        return None

    styles = {"sft": ("0.45", "--"), "grpo": ("C0", "-"), "grpo_cat": ("C3", "-")}
    fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
    for name, m in results["models"].items():
        rows = m["pass@k"]
        color, line = styles.get(name, (None, "-"))
        ax.plot(rows["k"], rows["mean"], line, marker="o", ms=4, color=color, label=m["label"])
        ax.fill_between(rows["k"], rows["ci_low"], rows["ci_high"], color=color, alpha=0.15, linewidth=0)
    ks = next(iter(results["models"].values()))["pass@k"]["k"]
    ax.set_xscale("log", base=2)
    ax.set_xticks(ks, [str(k) for k in ks])
    ax.set_xlabel("k (samples at test time)")
    ax.set_ylabel("pass@k")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    cfg = results["settings"]
    ax.set_title(f"{cfg['preset']}: {results['num_problems']} held-out problems, n={cfg['eval_samples']} each, "
                 f"95% bootstrap CI", fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda tmp: fig.savefig(tmp, format="png"))
    finally:
        plt.close(fig)
    return path


# ------------------------------------------------------------------------------------------------ the run
def run_default(run: DefaultRun = DefaultRun(), out: str | os.PathLike = DEFAULT_OUT, *,
                say: Callable[[str], None] = _say, overwrite: bool = False) -> dict[str, Any]:
    """Runs the whole default pipeline into `out` and returns the results dict (also in `<out>/results.json`).

    One run at a time owns `out` (a second gets one line). A folder that holds a finished default run
    (results.json) is refused unless `overwrite`; an unfinished one is continued (the SFT warm start is reused
    when its settings are unchanged, the RL stages start again from it).
    """
    from jax_cat.training.run_folder import RunFolderError, check_out_dir, owner_lock

    out = Path(out)
    check_out_dir(out)
    with owner_lock(out):
        if (out / "results.json").exists() and not overwrite:
            raise RunFolderError(
                f"{out} already holds a finished default run (results.json, passk.png): read them there, run it "
                "again with `python -m jax_cat.train --overwrite` (the SFT warm start is reused), or use --out "
                "with `python -m jax_cat.training.default_run`"
            )
        return _run_default(run, out, say)


def _run_default(run: DefaultRun, out: Path, say: Callable[[str], None]) -> dict[str, Any]:
    from jax_cat.data.arithmetic import ArithmeticTask
    from jax_cat.rewards import exact_match_rewards

    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cat_label = f"CAT GRPO {run.cat_strategy}"
    say(f"jax-cat default run -> {out}: tiny model on arithmetic '{run.preset}'; SFT warm start, then plain GRPO "
        f"and {cat_label} from it; pass@k on {run.test_size} held-out problems")
    base = base_checkpoint(run, out)
    warm, warm_info = warm_start(run, out, base)
    if warm_info["reused"]:
        say(f"[1/3] SFT warm start: reusing {warm} (same settings as before)")
    else:
        say(f"[1/3] SFT warm start: {run.sft_steps} steps in {warm_info['seconds']:.0f}s, "
            f"loss {warm_info['first_loss']:.3f} -> {warm_info['last_loss']:.3f}")

    problems = ArithmeticTask.from_preset(run.preset, seed=run.data_seed, test_size=run.test_size).test_set()
    evaluate = lambda model, tokenizer: pass_at_k_eval(  # noqa: E731
        model, tokenizer, problems, n=run.eval_samples, ks=run.ks, max_new_tokens=run.answer_len, seed=run.seed + 1,
        reward_fn=exact_match_rewards)  # the exact-format check the RL stages train on

    from jax_cat.training.runtime import load_model

    models: dict[str, Any] = {}
    warm_cfg = trainer_config(run, method="grpo", model_path=warm)
    model, tokenizer = load_model(warm_cfg, default_mesh(warm_cfg))
    models["sft"] = {"label": "SFT warm start", "strategy": "pass@1", "train": warm_info, **evaluate(model, tokenizer)}
    labels = {"grpo": "plain GRPO", "grpo_cat": cat_label}
    strategies = {"grpo": "pass@1", "grpo_cat": run.cat_strategy}
    for i, stage in enumerate(("grpo", "grpo_cat"), start=2):
        model, tokenizer, info = train_variant(run, out, warm, stage, strategies[stage])
        models[stage] = {"label": labels[stage], "strategy": strategies[stage], "train": info,
                         **evaluate(model, tokenizer)}
        p = models[stage]["pass@k"]
        say(f"[{i}/3] {labels[stage]}: {run.grpo_steps} steps in {info['seconds']:.0f}s; "
            f"pass@1 {p['mean'][0]:.3f}, pass@{p['k'][-1]} {p['mean'][-1]:.3f}")

    results = {
        "settings": dataclasses.asdict(run),
        "num_problems": len(problems),
        "models": {name: {k: v for k, v in m.items()} for name, m in models.items()},
        "cat_minus_plain": paired_difference(models["grpo_cat"]["num_correct"], models["grpo"]["num_correct"],
                                             n=run.eval_samples, ks=run.ks, seed=run.seed + 2),
        "wall_seconds": time.perf_counter() - t_start,
        "provenance": provenance(),
        "command": "python -m jax_cat.train",
    }
    atomic_write_text(out / "results.json", json.dumps(results, indent=1) + "\n")
    plot = plot_passk(results, out / "passk.png")
    say(f"\npass@k on {len(problems)} held-out '{run.preset}' problems ({run.eval_samples} samples each; CAT - plain "
        "with a 95% paired bootstrap CI over problems, one training seed: rerun with --seed to see the seed's share):")
    say(format_table(results))
    wrote = f"{out / 'results.json'}, {plot}" if plot is not None else f"{out / 'results.json'}"
    say(f"\nwrote {wrote} in {results['wall_seconds']:.0f}s")
    return results


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m jax_cat.training.default_run", description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(DEFAULT_OUT), help=f"run folder (default {DEFAULT_OUT})")
    p.add_argument("--overwrite", action="store_true", help="run again into a folder that holds a finished run")
    for field in dataclasses.fields(DefaultRun):
        p.add_argument(f"--{field.name.replace('_', '-')}", type=type(field.default), default=None,
                       help=f"default {field.default}")
    return p


def main(args: argparse.Namespace | Sequence[str] | None = None) -> int:
    """Entry point: `python -m jax_cat.train` (no arguments) calls main(namespace); the module CLI parses argv."""
    if args is None or not isinstance(args, argparse.Namespace):
        args = build_parser().parse_args(None if args is None else list(args))
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(DefaultRun)
                 if getattr(args, f.name, None) is not None}
    run_default(DefaultRun(**overrides), getattr(args, "out", None) or DEFAULT_OUT,
                overwrite=bool(getattr(args, "overwrite", False)))
    return 0


if __name__ == "__main__":
    from jax_cat.cli import quiet_third_party, run_cli

    quiet_third_party()
    raise SystemExit(run_cli(main, sys.argv[1:], prog="python -m jax_cat.training.default_run"))
