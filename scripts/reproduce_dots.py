"""Reproduce DoTS (Yuan et al. 2026, "Decouple before Integration") at small scale on the arithmetic task family.

From ONE base model, train an SFT model and an RL model (GRPO, verifiable 0/1 reward) that learn DIFFERENT skills,
then compare on held-out problems of both skills:

  base, SFT, RL, sequential SFT->RL, joint SFT+RL (interleaved: the trainer has no mixed SFT+RL objective),
  task arithmetic (1, 1), TIES, DARE, DoTS (sparsify + rescale + Vizier search on unlabeled queries),
  the plain average of the two models (= base + 1/2 tau_sft + 1/2 tau_rl), base + 1/2 tau_sft, base + 1/2 tau_rl,
  and the reviewers' ablation: the same search over the full (dense) vectors, and over sparsified vectors without
  the rescale. Every method's wall time is recorded, and the three task-vector properties (magnitude ratio, sign
  interference, per-module spread: `merging.analysis.compare`) are measured on these very models.

Default skills (char-level "plain" prompts, the shipped 18-token arithmetic tokenizer):
  * "add2" (RL skill; the base already half knows it): ``07+45=`` -> ``052`` (operands and answer zero-padded);
  * "sub2" (SFT skill; new to the base, a new operation): ``07-45=`` -> ``-38``.
The base is a fresh tiny model (`jax_cat.models.tiny.build_arithmetic_checkpoint`) SFT-trained on add2 only.

    python scripts/reproduce_dots.py --out runs/dots_repro                 # the documented CPU default
    python scripts/reproduce_dots.py --out runs/dots_seeds --seeds 0,1,2 --designer GAUSSIAN_PROCESS_BANDIT \
        --query-pool 64                                                   # mean +- std over seeds, GP bandit,
                                                                          # the authors' easy/hard query draw
    python scripts/reproduce_dots.py --out runs/x --base-model PATH --rl-task add2 --sft-task sub2 --mesh 1,4,1
    python scripts/reproduce_dots.py --seeds 0,1,2 --base-steps 1000 --sft-lr 0.0003 --rl-lr 0.0003 --query-pool 64 \
        --base-tasks add2,sub2 --rl-warmup 10 --path-points 11 --out runs/dots   # issue 21's connected setting
    python scripts/reproduce_dots.py --tables docs/results_data/dots_mix.json --doc docs/results_dots.md \
        --section mix                                                     # rewrite a doc section from results

Everything goes through the library: the trainer (`jax_cat.training.run_sft/run_grpo`), the merges
(`merging.merge` with `TaskArithmeticMerge/TiesMerge/DareMerge`), the DoTS pieces (`merging.dots_sparsify`,
`merging.objectives.Candidates/evaluate_candidate`, `merging.search.run_search/pick`), the evaluation
(`jax_cat.evaluate.evaluate`, the project's one evaluation path: raw prompts, unbiased pass@k, bootstrap CIs). Writes `<out>/results.json`,
`<out>/results.md` (the tables) and `<out>/dots_*.png`; with --seeds, one such folder per seed (`<out>/seed<N>`) and
`<out>/seeds.md` / `seeds.json` (mean +- std over the seeds done so far).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:  # run as a file from a checkout (scripts/: linear_connectivity)
        sys.path.insert(0, str(_p))

from jax_cat.io.atomic import atomic_write_text, save_figure  # noqa: E402 - after the checkout is on the path


def _task_specs() -> dict[str, Any]:
    from jax_cat.data.arithmetic import ArithmeticSpec

    return {
        "add2": ArithmeticSpec(2, 1, 2, ("+",), pad_operands=True, answer_width=3, name="add2"),
        "sub2": ArithmeticSpec(2, 1, 2, ("-",), pad_operands=True, name="sub2"),
        "mul1": ArithmeticSpec(2, 1, 1, ("*",), pad_operands=True, name="mul1"),
    }


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything one reproduction run depends on (the CLI flags are these fields).

    base_model: "tiny-arithmetic" (build a fresh 108k-parameter model and SFT it on the RL task for base_steps) or
      an HF checkpoint folder used as the base as is (base_steps ignored).
    rl_task / sft_task: a name of `_task_specs()` ("add2", "sub2", "mul1") or an arithmetic preset ("sum3",
      "level2", ...); the RL model learns rl_task, the SFT model sft_task.
    style: arithmetic prompt style ("plain" for the char model; "natural" for chat models).
    query_pool: 0 = the search queries are the first queries_per_task prompts of each skill's query split; N > 0 =
      the authors' difficulty-based draw: N prompts per skill scored by base + S(tau_sft) and base + S(tau_rl)
      (5 votes), then `merging.objectives.select_queries` keeps queries_per_task easy + queries_per_task hard ones.
    mesh: "data,fsdp,tensor" device mesh of every training stage (-1 = the remaining devices; batch sizes must
      divide over data x fsdp). Without a -1 the first data*fsdp*tensor devices are used.
    base_tasks: "" = the base is pre-trained on rl_task only (so sft_task is new to it); "add2,sub2" = on an equal
      mixture of those skills' training problems (each skill's own train split, never a test prompt), so both
      fine-tunes start inside the base's competence (the regime where task vectors can add).
    rl_warmup: linear learning-rate warm-up steps of every GRPO stage (0 = none, the historical default).
    model_size: "" = the 108k-parameter arithmetic model; "hidden_size=128,intermediate_size=384,..." = its
      config with these `jax_cat.models.tiny.arithmetic_model_config` overrides (integers).
    path_points: > 1 = also measure the held-out loss and pass@1 at this many evenly spaced points of the straight
      lines base -> SFT, base -> RL and SFT -> RL (`scripts/linear_connectivity.py`), into results.json.
    """

    out: str = "runs/dots_repro"
    base_model: str = "tiny-arithmetic"
    rl_task: str = "add2"
    sft_task: str = "sub2"
    style: str = "plain"
    data_seed: int = 0
    seed: int = 0
    mesh: str = "1,1,1"
    train_records: int = 60000
    base_steps: int = 500
    base_lr: float = 3e-3
    batch_size: int = 128
    sft_steps: int = 300
    sft_lr: float = 2e-3
    rl_steps: int = 60
    rl_prompts: int = 32
    group_size: int = 8
    rl_lr: float = 2e-4
    joint_rounds: int = 4
    eval_problems: int = 200
    eval_samples: int = 8
    density: float = 0.3
    ties_density: float = 0.3
    dare_density: float = 0.3
    trials: int = 12
    designer: str = "QUASI_RANDOM_SEARCH"
    coeff_low: float = 0.25
    coeff_high: float = 1.5
    queries_per_task: int = 16
    query_pool: int = 0
    base_tasks: str = ""
    rl_warmup: int = 0
    model_size: str = ""
    path_points: int = 0
    votes: int = 7
    search_temperature: float = 0.6
    perplexity: str = "answer"
    ppl_budget: float = 0.1

    def __post_init__(self) -> None:
        for name in ("base_steps", "sft_steps", "rl_steps", "joint_rounds", "query_pool", "rl_warmup",
                     "path_points"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("batch_size", "rl_prompts", "group_size", "eval_problems", "eval_samples", "train_records"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if len(self.mesh.split(",")) != 3:
            raise ValueError(f"mesh must be 'data,fsdp,tensor', got {self.mesh!r}")
        model_overrides(self.model_size)  # a bad spelling fails here, before anything trains
        self.dots_config()  # the search's settings are checked where merging.dots checks them

    def dots_config(self):
        """The DoTS search settings of this run as a `merging.DotsConfig` (whose checks they pass): trials,
        designer, density, coefficient range, perplexity objective and budget, votes, temperature, queries, seed."""
        from merging.dots_config import DotsConfig

        pool = {"query_pool": self.query_pool} if self.query_pool else {}  # 0 here: no difficulty draw
        try:
            return DotsConfig(trials=self.trials, designer=self.designer, density=self.density,
                              coeff_range=(self.coeff_low, self.coeff_high), perplexity=self.perplexity,
                              ppl_budget=self.ppl_budget, votes=self.votes, temperature=self.search_temperature,
                              n_easy=self.queries_per_task, n_hard=self.queries_per_task, seed=self.seed, **pool)
        except ValueError as err:  # it names merging.dots' flags: say which settings they are here
            raise ValueError(f"DoTS setting ({err}; here --trials, --designer, --density, --coeff-low/--coeff-high, "
                             "--perplexity, --ppl-budget, --votes, --search-temperature, --queries-per-task)") from None


def model_overrides(text: str) -> dict[str, int]:
    """ "hidden_size=128,num_hidden_layers=4" -> {"hidden_size": 128, "num_hidden_layers": 4} ("" -> {})."""
    out = {}
    for item in filter(None, (x.strip() for x in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise ValueError(f"model_size: {item!r} is not key=integer (e.g. hidden_size=128)")
        out[key.strip()] = int(value)
    return out


def base_task_names(s: Settings) -> list[str]:
    """The skills the base is pre-trained on (rl_task alone unless base_tasks names a mixture)."""
    return [x.strip() for x in s.base_tasks.split(",") if x.strip()] or [s.rl_task]


# ------------------------------------------------------------------------------------------------ small helpers
def _atomic_write_text(path: Path, text: str) -> None:
    atomic_write_text(path, text)  # jax_cat.io.atomic: the temporary is removed on any failure (a full disk too)


def _say(text: str) -> None:
    print(text, flush=True)


class Clock:
    """Wall seconds per named piece of work (what each method cost)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    def run(self, name: str, fn, *args, **kwargs):
        t0 = time.perf_counter()
        out = fn(*args, **kwargs)
        self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return out


# ------------------------------------------------------------------------------------------------ data
def task(name: str, s: Settings):
    """The ArithmeticTask of a skill (held-out test set of s.eval_problems prompts, seeded by s.data_seed)."""
    from jax_cat.data.arithmetic import ArithmeticTask, get_spec

    spec = _task_specs().get(name) or get_spec(name)
    return ArithmeticTask(specs=(spec,), seed=s.data_seed, test_size=s.eval_problems, style=s.style)


def write_dataset(name: str, s: Settings, folder: Path) -> Path:
    """`<folder>/<name>_train.jsonl`: s.train_records training problems of the skill (never a test prompt)."""
    path = folder / f"{name}_train.jsonl"
    if path.is_file():
        return path
    t = task(name, s)
    rows = []
    for block in range(math.ceil(s.train_records / 4096)):
        rows += t.batch(block, 4096)
    text = "".join(json.dumps({k: r[k] for k in ("prompt", "answer", "solution")}) + "\n"
                   for r in rows[: s.train_records])
    _atomic_write_text(path, text)
    return path


def write_mixture(names: list[str], s: Settings, folder: Path) -> Path:
    """`<folder>/<a+b>_train.jsonl`: the skills' own training files interleaved row by row (s.train_records rows),
    so the mixture holds no test prompt of any skill."""
    if len(names) == 1:
        return write_dataset(names[0], s, folder)
    path = folder / f"{'+'.join(names)}_train.jsonl"
    if path.is_file():
        return path
    parts = [write_dataset(n, s, folder).read_text().splitlines(keepends=True) for n in names]
    rows = [row for group in zip(*parts) for row in group][: s.train_records]
    _atomic_write_text(path, "".join(rows))
    return path


def _lengths(tokenizer: Any, names: list[str], s: Settings, chat: bool) -> tuple[int, int]:
    """(max prompt tokens, max target tokens + EOS) over the skills' train and test problems, plus slack."""
    probe = []
    for n in names:
        t = task(n, s)
        probe += t.batch(0, 512) + t.test_set()
    if chat:
        from jax_cat.data import format_prompt

        prompts = [format_prompt(p["prompt"], tokenizer) for p in probe]
        p_len = max(len(x) for x in tokenizer(prompts, add_special_tokens=False)["input_ids"])
    else:
        p_len = max(len(x) for x in tokenizer([p["prompt"] for p in probe])["input_ids"])
    a_len = max(len(x) for x in tokenizer([p["solution"] for p in probe], add_special_tokens=False)["input_ids"])
    return p_len, a_len + 1


# ------------------------------------------------------------------------------------------------ training
def trainer_config(s: Settings, *, method: str, model_path: Path, dataset: Path, steps: int, lr: float,
                   seed: int, lens: tuple[int, int], chat: bool):
    """One trainer stage (`jax_cat.training.config.Config`): plain CE SFT or plain GRPO (strategy pass@1)."""
    from jax_cat.training.config import (
        CheckpointConfig, Config, DataConfig, EvalConfig, LoggingConfig, MeshConfig, ModelSource, OptimizerConfig,
        RolloutConfig, TrainConfig, validate,
    )

    data, fsdp, tensor = (int(x) for x in s.mesh.split(","))
    sft = method == "sft"
    cfg = Config(
        train=TrainConfig(method=method, steps=max(steps, 1), seed=seed, log_every=max(1, min(25, steps)),
                          eval_at_end=False, save_final=False),
        model=ModelSource(path=str(model_path)),
        data=DataConfig(dataset=str(dataset), data_seed=s.data_seed, style=s.style,
                        batch_size=s.batch_size if sft else s.rl_prompts, max_prompt_len=lens[0],
                        max_target_len=lens[1], use_chat_template=chat),
        optimizer=(OptimizerConfig(learning_rate=lr, warmup_steps=min(20, steps // 10), schedule="cosine",
                                   end_lr_ratio=0.1, weight_decay=0.0) if sft else
                   OptimizerConfig(learning_rate=lr, warmup_steps=min(s.rl_warmup, max(steps - 1, 0)),
                                   schedule="constant", weight_decay=0.0)),
        rollout=RolloutConfig(group_size=s.group_size, max_new_tokens=lens[1], temperature=1.0),
        strategy="pass@1",
        mesh=MeshConfig(data=data, fsdp=fsdp, tensor=tensor),
        checkpoint=CheckpointConfig(keep=1, async_save=False),
        logging=LoggingConfig(progress=None, tensorboard=False),
        eval=EvalConfig(num_problems=8, n=1, ks=(1,), max_new_tokens=lens[1]),
    )
    validate(cfg)
    return cfg


def train(method: str, model: Any, tokenizer: Any, cfg: Any, mesh: Any) -> tuple[Any, dict]:
    """Runs one trainer stage in memory (nothing written); returns (model, {first/last loss or reward})."""
    from jax_cat.training import run_grpo, run_sft

    fn = run_sft if method == "sft" else run_grpo
    result = fn(cfg, model=model, tokenizer=tokenizer, mesh=mesh, out=None, stage=method)
    key = "loss" if method == "sft" else "reward"
    vals = [row[key] for row in result.history if key in row]
    return result.model, {f"first_{key}": vals[0] if vals else None, f"last_{key}": vals[-1] if vals else None}


@dataclasses.dataclass
class Setup:
    """What every stage of a run shares: tokenizer, held-out problems per skill, lengths, mesh, the initial model,
    the training files, and `cfg(method, steps, lr, seed, dataset)` -> one trainer stage's Config."""

    init_path: Path
    tokenizer: Any
    problems: dict[str, list[dict]]
    lens: tuple[int, int]
    chat: bool
    mesh: Any
    init_model: Any
    datasets: dict[str, Path]
    cfg: Any

    @property
    def max_new(self) -> int:
        return self.lens[1]


def prepare(s: Settings) -> Setup:
    """Data files (each skill's, and the base's mixture), the held-out sets, the initial checkpoint under
    `<out>/init` (or s.base_model), the mesh and the loaded initial model."""
    import jax

    from jax_cat.training.runtime import build_mesh, load_model

    out = Path(s.out)
    data_dir = out / "data"
    ds = {n: write_dataset(n, s, data_dir) for n in (s.rl_task, s.sft_task)}
    ds["base"] = write_mixture(base_task_names(s), s, data_dir)
    problems = {n: task(n, s).test_set() for n in (s.sft_task, s.rl_task)}
    chat = s.base_model != "tiny-arithmetic"
    if chat:
        init_path = Path(s.base_model)
    else:
        from jax_cat.models.tiny import build_arithmetic_checkpoint

        init_path = out / "init"
        if not (init_path / "config.json").is_file():
            build_arithmetic_checkpoint(init_path, seed=s.seed, **model_overrides(s.model_size))
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(init_path)
    chat = chat and bool(getattr(tokenizer, "chat_template", None))
    lens = _lengths(tokenizer, sorted({s.rl_task, s.sft_task, *base_task_names(s)}), s, chat)
    cfg = lambda method, steps, lr, seed, dataset: trainer_config(  # noqa: E731
        s, method=method, model_path=init_path, dataset=dataset, steps=steps, lr=lr, seed=seed, lens=lens, chat=chat)
    sizes = [int(x) for x in s.mesh.split(",")]
    devices = None if -1 in sizes else jax.devices()[: math.prod(sizes)]
    mesh = build_mesh(cfg("sft", 1, 1e-3, s.seed, ds[s.rl_task]), devices)
    init_model, tokenizer = load_model(cfg("sft", 1, 1e-3, s.seed, ds[s.rl_task]), mesh)
    return Setup(init_path, tokenizer, problems, lens, chat, mesh, init_model, ds, cfg)


def train_base(s: Settings, st: Setup, clock: Clock, say=_say) -> tuple[Any, dict]:
    """The base: s.base_model as is, or the fresh model after s.base_steps CE steps on base_task_names(s)."""
    if st.chat or s.base_steps == 0:
        return st.init_model, {}
    say(f"[1/6] base: {s.base_steps} SFT steps on {'+'.join(base_task_names(s))}")
    return clock.run("base", train, "sft", st.init_model, st.tokenizer,
                     st.cfg("sft", s.base_steps, s.base_lr, s.seed, st.datasets["base"]), st.mesh)


def train_sft(s: Settings, st: Setup, start: Any) -> tuple[Any, dict]:
    """The SFT fine-tune: s.sft_steps CE steps on sft_task from `start`."""
    return train("sft", start, st.tokenizer, st.cfg("sft", s.sft_steps, s.sft_lr, s.seed, st.datasets[s.sft_task]),
                 st.mesh)


def train_rl(s: Settings, st: Setup, start: Any) -> tuple[Any, dict]:
    """The RL fine-tune: s.rl_steps plain GRPO steps (0/1 exact reward) on rl_task from `start`."""
    return train("grpo", start, st.tokenizer, st.cfg("grpo", s.rl_steps, s.rl_lr, s.seed, st.datasets[s.rl_task]),
                 st.mesh)



# ------------------------------------------------------------------------------------------------ evaluation
def evaluate(model: Any, tokenizer: Any, problems: dict[str, list[dict]], s: Settings, max_new: int) -> dict:
    """pass@1 and pass@{eval_samples} (unbiased, bootstrap 95% CI) on each skill's held-out problems."""
    from jax_cat.evaluate import evaluate as score_pool  # the project's one evaluation path

    out = {}
    ks = tuple(sorted({1, s.eval_samples}))
    for name, probs in problems.items():
        r = score_pool(model, tokenizer, probs, n=s.eval_samples, ks=ks, max_new_tokens=max_new, seed=s.seed + 1,
                       use_chat_template=False, metrics=("pass@k",), batch_size=4096, progress=False)
        rows = r["metrics"]["pass@k"]
        out[name] = {f"pass@{k}": m for k, m in zip(rows["k"], rows["mean"])}
        out[name]["pass@1_ci"] = [rows["ci_low"][0], rows["ci_high"][0]]
    return out


def _provenance() -> dict:
    from jax_cat.evaluate import provenance

    return provenance()


# ------------------------------------------------------------------------------------------------ merging
def _state(model: Any) -> Any:
    from flax import nnx

    return nnx.split(model)[1]


def _with_state(model: Any, state: Any) -> Any:
    from flax import nnx

    return nnx.merge(nnx.split(model)[0], state)


def dots_search(name: str, base_model: Any, vectors: list[Any], tokenizer: Any, query_ids: list[list[int]],
                s: Settings, out: Path, max_new: int, say) -> dict:
    """One Vizier study over base + a*v_sft + b*v_rl (a, b in [coeff_low, coeff_high]) scored on unlabeled queries
    (consistency max, perplexity min); the automatic pick within ppl_budget of the base. Returns the pick + trials."""
    from merging.objectives import Candidates, ObjectiveConfig, evaluate_candidate
    from merging.search import Metric, SearchSpace, pick, run_search

    ocfg = ObjectiveConfig(votes=s.votes, temperature=s.search_temperature, max_new_tokens=max_new, seed=s.seed)
    key = f"{s.perplexity}_perplexity"
    ref = evaluate_candidate(base_model, tokenizer, query_ids, ocfg).metrics()
    cands = Candidates(base_model, vectors)

    def objective(p: dict[str, float]) -> dict[str, float]:
        m = evaluate_candidate(cands.model([p["sft"], p["rl"]]), tokenizer, query_ids, ocfg).metrics()
        return {**m, "perplexity": m[key]}

    db = out / f"vizier_{name}.db"
    for f in out.glob(f"vizier_{name}.db*"):
        f.unlink()  # a fresh study each run (the comparison is per run)
    space = SearchSpace({"sft": (s.coeff_low, s.coeff_high), "rl": (s.coeff_low, s.coeff_high)})
    records = run_search(objective, space, [Metric("consistency", "max"), Metric("perplexity", "min")],
                         num_trials=s.trials, db_path=db, study_id=f"repro_{name}", designer=s.designer)
    best = pick(records, reference_perplexity=ref[key], budget=s.ppl_budget)
    if best is None:
        raise RuntimeError(f"search {name}: no trial with finite metrics (all {len(records)} infeasible)")
    say(f"    {name}: {len(records)} trials, pick sft={best.parameters['sft']:.3f} rl={best.parameters['rl']:.3f} "
        f"(consistency {best.metrics['consistency']:.3f}, {s.perplexity} ppl {best.metrics['perplexity']:.3f}; "
        f"base {ref['consistency']:.3f} / {ref[key]:.3f})")
    return {"pick": dict(best.parameters), "pick_metrics": dict(best.metrics), "reference": ref,
            "trials": [r.row() for r in records], "model": cands.model([best.parameters["sft"], best.parameters["rl"]])}


def vector_properties(tau_sft: Any, tau_rl: Any, density: float) -> dict:
    """The DoTS paper's three properties on our vectors: magnitude ratio, sign interference, per-module spread."""
    from merging.analysis import compare

    cmp = compare(tau_sft, tau_rl, top_fraction=density, labels=("sft", "rl"))
    total = cmp.total()
    per_tensor = [st.ratio_l2 for st in cmp.per_tensor.values() if st.b2 > 0 and st.a2 > 0]
    mods = {}
    for mod, st in cmp.by_module().items():
        mods[str(mod)] = {"n": st.n, "l2_sft": st.l2_a, "l2_rl": st.l2_b, "ratio_l2": st.ratio_l2,
                          "share_sft": st.a2 / total.a2 if total.a2 else math.nan,
                          "share_rl": st.b2 / total.b2 if total.b2 else math.nan,
                          "conflict_rate": st.conflict_rate}
    return {"total": total.metrics(), "per_tensor_ratio_min": float(np.min(per_tensor)) if per_tensor else math.nan,
            "per_tensor_ratio_max": float(np.max(per_tensor)) if per_tensor else math.nan, "by_module": mods, "table": cmp.table()}


# ------------------------------------------------------------------------------------------------ report
LABELS = {
    "base": "base", "sft": "SFT (sft task)", "rl": "RL (rl task, GRPO)", "seq": "sequential SFT->RL",
    "joint": "joint SFT+RL (interleaved)", "avg": "plain average of SFT and RL", "half_sft": "base + 1/2 tau_sft",
    "half_rl": "base + 1/2 tau_rl", "ta": "task arithmetic (1, 1)", "ties": "TIES", "dare": "DARE",
    "dots": "DoTS (sparse + rescale + search)", "dots_dense": "ablation: search over dense vectors",
    "dots_norescale": "ablation: sparse, no rescale, search",
}


def results_table(res: dict) -> str:
    """Markdown table: one row per method, pass@1 / pass@k per skill, their mean, wall seconds."""
    s = res["settings"]
    rl, sft, k = s["rl_task"], s["sft_task"], s["eval_samples"]
    head = (f"| method | {sft} pass@1 | {sft} pass@{k} | {rl} pass@1 | {rl} pass@{k} | mean pass@1 | coefficients "
            f"| wall s |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for name, m in res["models"].items():
        e = m["eval"]
        mean = (e[sft]["pass@1"] + e[rl]["pass@1"]) / 2
        coeffs = m.get("coefficients")
        c = "" if coeffs is None else ", ".join(f"{x:.2f}" for x in coeffs)
        lines.append(f"| {LABELS.get(name, name)} | {e[sft]['pass@1']:.3f} | {e[sft][f'pass@{k}']:.3f} | "
                     f"{e[rl]['pass@1']:.3f} | {e[rl][f'pass@{k}']:.3f} | {mean:.3f} | {c} | {m['seconds']:.0f} |")
    return "\n".join(lines)


def properties_table(p: dict) -> str:
    t = p["total"]
    return "\n".join([
        "| property | here | DoTS paper |", "|---|---|---|",
        f"| magnitude ratio \\|\\|tau_sft\\|\\| / \\|\\|tau_rl\\|\\| (global L2) | {t['ratio_l2']:.2f} "
        f"(per tensor {p['per_tensor_ratio_min']:.2f} to {p['per_tensor_ratio_max']:.2f}) | ~30x |",
        f"| sign interference (opposite signs among entries both change) | {t['conflict_rate']:.1%} | ~45% |",
        f"| sign interference among both vectors' top {p['top_fraction']:.0%} | {t['conflict_rate_significant']:.1%} | - |",
        f"| cosine(tau_sft, tau_rl) | {t['cosine']:.3f} | - |",
    ])


def plot_results(res: dict, path: Path) -> Path:
    """Bar chart: pass@1 on each skill per method (written atomically)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = res["settings"]
    names = list(res["models"])
    a = [res["models"][n]["eval"][s["sft_task"]]["pass@1"] for n in names]
    b = [res["models"][n]["eval"][s["rl_task"]]["pass@1"] for n in names]
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(9, 4.2), dpi=120)
    ax.bar(x - 0.2, a, 0.4, label=f"{s['sft_task']} (SFT skill)", color="C1")
    ax.bar(x + 0.2, b, 0.4, label=f"{s['rl_task']} (RL skill)", color="C0")
    ax.set_xticks(x, [LABELS.get(n, n).replace(" (", "\n(") for n in names], rotation=60, ha="right", fontsize=7)
    ax.set_ylabel("pass@1 (held-out)")
    ax.set_ylim(0, 1)
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(f"{s['eval_problems']} held-out problems per skill, n={s['eval_samples']} samples each", fontsize=9)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_search(res: dict, path: Path) -> Path:
    """Each study's trials in (consistency, perplexity), the pick circled."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
    for i, name in enumerate(("dots", "dots_dense", "dots_norescale")):
        st = res["searches"].get(name)
        if not st:
            continue
        xs = [t["consistency"] for t in st["trials"]]
        ys = [t["perplexity"] for t in st["trials"]]
        ax.scatter(xs, ys, s=14, color=f"C{i}", label=LABELS[name], alpha=0.7)
        ax.scatter([st["pick_metrics"]["consistency"]], [st["pick_metrics"]["perplexity"]], s=90,
                   facecolors="none", edgecolors=f"C{i}")
    ref = res["searches"]["dots"]["reference"]
    ax.axhline(ref[f"{res['settings']['perplexity']}_perplexity"], color="0.5", ls="--", lw=1, label="base perplexity")
    ax.set_xlabel("consistency on unlabeled queries (max)")
    ax.set_ylabel(f"{res['settings']['perplexity']} perplexity (min)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return save_figure(fig, path)


# ------------------------------------------------------------------------------------------------ the run
def reproduce(s: Settings, *, say=_say) -> dict:
    """Runs the whole comparison into s.out; returns the results dict (also `<out>/results.json`)."""
    import jax
    import jax.numpy as jnp

    from merging import dots_sparsify, task_vector
    from merging.methods import DareMerge, TaskArithmeticMerge, TiesMerge, merge
    from merging.task_vectors import combine

    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    clock = Clock()
    say(f"reproduce_dots -> {out}: RL skill {s.rl_task}, SFT skill {s.sft_task}; loadavg {os.getloadavg()[0]:.1f} "
        f"on {os.cpu_count()} CPUs, JAX devices {jax.devices()}")
    provenance = _provenance()  # at the start: the commit whose code runs (HEAD may move while it runs)
    st = prepare(s)
    tokenizer, problems, max_new, mesh, ds = st.tokenizer, st.problems, st.max_new, st.mesh, st.datasets
    cfg = st.cfg

    models: dict[str, dict] = {}

    def record(name: str, model: Any, seconds: float, **extra) -> None:
        t0 = time.perf_counter()
        ev = evaluate(model, tokenizer, problems, s, max_new)
        e = ", ".join(f"{k} pass@1 {v['pass@1']:.3f}" for k, v in ev.items())
        say(f"  {LABELS.get(name, name)}: {e}  ({seconds:.0f}s; eval {time.perf_counter() - t0:.0f}s)")
        models[name] = {"eval": ev, "seconds": seconds, **extra}

    # 1. base
    base, info = train_base(s, st, clock, say)
    record("base", base, clock.seconds.get("base", 0.0), train=info)

    # 2. SFT, RL, sequential, joint
    say(f"[2/6] SFT on {s.sft_task} ({s.sft_steps} steps), RL GRPO on {s.rl_task} ({s.rl_steps} steps), "
        f"sequential, joint")
    sft, info = clock.run("sft", train_sft, s, st, base)
    record("sft", sft, clock.seconds["sft"], train=info)
    rl, info = clock.run("rl", train_rl, s, st, base)
    record("rl", rl, clock.seconds["rl"], train=info)
    seq, info = clock.run("seq_rl", train, "grpo", sft, tokenizer, cfg("grpo", s.rl_steps, s.rl_lr, s.seed,
                                                                         ds[s.rl_task]), mesh)
    record("seq", seq, clock.seconds["sft"] + clock.seconds["seq_rl"], train=info)
    joint, rounds = base, max(1, s.joint_rounds)
    for r in range(rounds):  # interleave chunks of the same budgets; a new data order each round
        sft_chunk, rl_chunk = max(1, s.sft_steps // rounds), max(1, s.rl_steps // rounds)
        joint, _ = clock.run("joint", train, "sft", joint, tokenizer,
                             cfg("sft", sft_chunk, s.sft_lr, s.seed + 100 + r, ds[s.sft_task]), mesh)
        joint, _ = clock.run("joint", train, "grpo", joint, tokenizer,
                             cfg("grpo", rl_chunk, s.rl_lr, s.seed + 100 + r, ds[s.rl_task]), mesh)
    record("joint", joint, clock.seconds["joint"], rounds=rounds)

    # 3. task vectors and their properties
    say("[3/6] task vectors, properties, fixed merges")
    b_state, sft_state, rl_state = _state(base), _state(sft), _state(rl)
    tau_sft = clock.run("vectors", task_vector, sft_state, b_state, dtype=jnp.float32)
    tau_rl = clock.run("vectors", task_vector, rl_state, b_state, dtype=jnp.float32)
    props = vector_properties(tau_sft, tau_rl, s.density)
    props["top_fraction"] = s.density
    say(props["table"])

    def fixed(name: str, fn, coeffs=None) -> None:
        t0 = time.perf_counter()
        merged = jax.block_until_ready(fn())
        record(name, _with_state(base, merged), time.perf_counter() - t0, coefficients=coeffs)

    fixed("avg", lambda: combine(b_state, [tau_sft, tau_rl], [0.5, 0.5]), [0.5, 0.5])
    fixed("half_sft", lambda: combine(b_state, [tau_sft, tau_rl], [0.5, 0.0]), [0.5, 0.0])
    fixed("half_rl", lambda: combine(b_state, [tau_sft, tau_rl], [0.0, 0.5]), [0.0, 0.5])
    fixed("ta", lambda: merge(b_state, [sft_state, rl_state], TaskArithmeticMerge(coefficients=(1.0, 1.0))), [1, 1])
    fixed("ties", lambda: merge(b_state, [sft_state, rl_state],
                                TiesMerge(coefficients=(1.0, 1.0), density=s.ties_density)), [1, 1])
    fixed("dare", lambda: merge(b_state, [sft_state, rl_state],
                                DareMerge(coefficients=(1.0, 1.0), density=s.dare_density, seed=s.seed)), [1, 1])
    # the plain average of the two models, computed as such, equals base + 1/2 tau_sft + 1/2 tau_rl
    avg_direct = jax.tree.map(lambda a, b: (a + b) / 2, sft_state, rl_state)
    avg_gap = max(float(jnp.max(jnp.abs(x - y))) for x, y in zip(
        jax.tree.leaves(avg_direct), jax.tree.leaves(combine(b_state, [tau_sft, tau_rl], [0.5, 0.5]))))

    connectivity = None
    if s.path_points > 1:  # the straight lines base->SFT, base->RL, SFT->RL: is there a loss barrier?
        from linear_connectivity import measure_paths  # scripts/ is on sys.path (top of this file)

        say(f"    linear connectivity: {s.path_points} points on each of 3 lines")
        connectivity = clock.run("paths", measure_paths, s, st, base, sft, rl, points=s.path_points, say=say)

    # 4. queries: unlabeled prompts of both skills (answers never used)
    qprompts = []
    for n in (s.sft_task, s.rl_task):
        qprompts += [p["prompt"] for p in task(n, s).batch(0, s.query_pool or s.queries_per_task,
                                                           split="dots-queries")]
    from merging.objectives import chat_prompt_ids

    query_ids = chat_prompt_ids(tokenizer, qprompts)
    query_selection = None
    if s.query_pool:  # the authors' draw: easy and hard queries by the two sparse models' consistency (no labels)
        from merging.objectives import (Candidates, ObjectiveConfig, evaluate_candidate, query_difficulty,
                                        select_queries)

        t0 = time.perf_counter()
        cands = Candidates(base, [dots_sparsify(tau_sft, s.density), dots_sparsify(tau_rl, s.density)])
        qcfg = ObjectiveConfig(votes=5, temperature=s.search_temperature, max_new_tokens=max_new, seed=s.seed)
        cons = [evaluate_candidate(cands.model(c), tokenizer, query_ids, qcfg).per_query for c in ([1, 0], [0, 1])]
        diff = query_difficulty(cons)
        keep = select_queries(diff, n_easy=s.queries_per_task, n_hard=s.queries_per_task, seed=s.seed)
        qprompts, query_ids = [qprompts[i] for i in keep], [query_ids[i] for i in keep]
        query_selection = {"pool": len(diff), "kept": keep, "difficulty": diff.tolist(),
                           "seconds": time.perf_counter() - t0}
        say(f"    query draw: {len(keep)} of {len(diff)} pool queries (difficulty <= 0.8, easy/hard halves)")

    # 5. the three searches
    say(f"[4/6] DoTS searches: {s.trials} trials each ({s.designer}), {len(qprompts)} unlabeled queries x "
        f"{s.votes} votes")
    variants = {
        "dots": lambda: [dots_sparsify(tau_sft, s.density), dots_sparsify(tau_rl, s.density)],
        "dots_dense": lambda: [tau_sft, tau_rl],
        "dots_norescale": lambda: [dots_sparsify(tau_sft, s.density, rescale=False),
                                   dots_sparsify(tau_rl, s.density, rescale=False)],
    }
    searches = {}
    for name, make in variants.items():
        t0 = time.perf_counter()
        vecs = jax.block_until_ready(make())
        st = dots_search(name, base, vecs, tokenizer, query_ids, s, out, max_new, say)
        seconds = time.perf_counter() - t0
        model = st.pop("model")
        searches[name] = dict(st, seconds=seconds)
        record(name, model, seconds, coefficients=[st["pick"]["sft"], st["pick"]["rl"]])

    # 6. report
    say("[5/6] report")
    res = {
        "settings": dataclasses.asdict(s),
        "command": "python scripts/reproduce_dots.py " + " ".join(sys.argv[1:]),
        "models": models,
        "searches": searches,
        "query_selection": query_selection,
        "properties": {k: v for k, v in props.items() if k != "table"},
        "properties_table": props["table"],
        "average_equals_half_vectors_max_abs_diff": avg_gap,
        "stage_seconds": clock.seconds,
        "wall_seconds": time.perf_counter() - t_start,
        "loadavg_end": os.getloadavg(),
        "cpu_count": os.cpu_count(),
        "devices": [str(d) for d in jax.devices()],
        "provenance": provenance,  # commit, CPU model, device kind, versions
        "connectivity": connectivity,
    }
    _atomic_write_text(out / "results.json", json.dumps(res, indent=1, default=float) + "\n")
    md = "\n\n".join([results_table(res), properties_table(res["properties"] | {"top_fraction": s.density}),
                      "```\n" + props["table"] + "\n```"])
    _atomic_write_text(out / "results.md", md + "\n")
    plot_results(res, out / "dots_methods.png")
    plot_search(res, out / "dots_search.png")
    say(md)
    say(f"[6/6] wrote {out / 'results.json'}, results.md, dots_methods.png, dots_search.png in "
        f"{res['wall_seconds']:.0f}s")
    return res


def seeds_table(runs: dict[int, dict]) -> str:
    """Markdown table over seeds: mean +- sample std (ddof 1) of each method's pass@1 per skill and their mean,
    plus the searched coefficients and wall seconds."""
    first = next(iter(runs.values()))
    s = first["settings"]
    rl, sft = s["rl_task"], s["sft_task"]
    ms = lambda xs: (f"{np.mean(xs):.3f} +- {np.std(xs, ddof=1):.3f}" if len(xs) > 1  # noqa: E731
                     else f"{xs[0]:.3f}")
    lines = [f"| method | {sft} pass@1 | {rl} pass@1 | mean pass@1 | coefficients (sft, rl) per seed | wall s |",
             "|---|---|---|---|---|---|"]
    for name in first["models"]:
        rows = [r["models"][name] for r in runs.values()]
        a = [m["eval"][sft]["pass@1"] for m in rows]
        b = [m["eval"][rl]["pass@1"] for m in rows]
        c = "; ".join(", ".join(f"{x:.2f}" for x in m["coefficients"]) for m in rows
                      if name.startswith("dots") and m.get("coefficients"))
        lines.append(f"| {LABELS.get(name, name)} | {ms(a)} | {ms(b)} | {ms([(x + y) / 2 for x, y in zip(a, b)])} "
                     f"| {c} | {np.mean([m['seconds'] for m in rows]):.0f} |")
    ratio = [r["properties"]["total"]["ratio_l2"] for r in runs.values()]
    conf = [r["properties"]["total"]["conflict_rate"] for r in runs.values()]
    lines += ["", f"seeds {list(runs)}; magnitude ratio {ms(ratio)}, sign conflict {ms(conf)}; wall s per seed "
              + ", ".join(f"{r['wall_seconds']:.0f}" for r in runs.values())]
    return "\n".join(lines)


def reproduce_seeds(s: Settings, seeds: list[int], *, say=_say) -> dict[int, dict]:
    """The whole pipeline once per seed (model init, training, sampling, search) into <out>/seed<N>; after each seed
    <out>/seeds.md and <out>/seeds.json hold the mean +- std table of the seeds done so far, and <out>/results.json
    the seeds' compact results (what `doc_section` writes the docs from)."""
    out, runs = Path(s.out), {}
    for seed in seeds:
        runs[seed] = reproduce(dataclasses.replace(s, seed=seed, out=str(out / f"seed{seed}")), say=say)
        table = seeds_table(runs)
        _atomic_write_text(out / "seeds.md", table + "\n")
        _atomic_write_text(out / "seeds.json", json.dumps({str(k): {"models": v["models"], "properties": v["properties"],
                                                                    "wall_seconds": v["wall_seconds"]}
                                                           for k, v in runs.items()}, indent=1, default=float) + "\n")
        _atomic_write_text(out / "results.json", json.dumps(
            {"command": "python scripts/reproduce_dots.py " + " ".join(sys.argv[1:]),
             "runs": {str(k): compact(v) for k, v in runs.items()}}, indent=1, default=float) + "\n")
        say(table)
    return runs


# ------------------------------------------------------------------------------------------------ docs from results
def compact(res: dict) -> dict:
    """What the docs' tables need from one seed's results.json (no trial lists, no per-module stats): small enough
    to ship in docs/results_data/."""
    keep_eval = lambda e: {k: v for k, v in e.items() if k.startswith("pass@")}  # noqa: E731
    models = {n: {"eval": {sk: keep_eval(e) for sk, e in m["eval"].items()}, "seconds": m["seconds"],
                  **({"coefficients": m["coefficients"]} if m.get("coefficients") is not None else {})}
              for n, m in res["models"].items()}
    conn = res.get("connectivity")
    if conn:
        conn = {"t": conn["t"], "skills": conn["skills"],
                "paths": {n: {"barrier": p["barrier"],
                              "rows": [{k: r[k] for k in ("t", "loss", "pass@1") if k in r} for r in p["rows"]]}
                          for n, p in conn["paths"].items()}}
    total = res["properties"]["total"]
    return {"settings": res["settings"], "models": models, "connectivity": conn,
            "properties": {"total": {k: total[k] for k in ("ratio_l2", "conflict_rate", "cosine") if k in total}},
            "wall_seconds": res["wall_seconds"], "loadavg_end": list(res.get("loadavg_end") or []),
            "provenance": res.get("provenance") or {}}


def as_runs(results: dict) -> dict[int, dict]:
    """{seed: compact run} from a --seeds results.json ({"runs": ...}) or a single run's results.json."""
    if "runs" in results:
        return {int(k): v for k, v in results["runs"].items()}
    run = compact(results) if "models" in results else {
        k: results.get(k) for k in ("settings", "connectivity", "wall_seconds", "loadavg_end", "provenance")}
    return {int(run["settings"]["seed"]): run}


def rerun_command(settings: dict, seeds: list[int]) -> str:
    """The one command that reruns these seeds: every setting that differs from `Settings()` as a flag."""
    defaults = dataclasses.asdict(Settings())
    flags = [f"--{k.replace('_', '-')} {v}" for k, v in settings.items()
             if k not in ("out", "seed") and k in defaults and v != defaults[k]]
    seed = f"--seeds {','.join(map(str, seeds))}" if len(seeds) > 1 else f"--seed {seeds[0]}"
    return " ".join(["python scripts/reproduce_dots.py", seed, *flags, "--out runs/dots"])


def _ms(xs: list[float], digits: int = 3) -> str:
    return f"{np.mean(xs):.{digits}f} +- {np.std(xs, ddof=1):.{digits}f}" if len(xs) > 1 else f"{xs[0]:.{digits}f}"


def connectivity_summary(runs: dict[int, dict]) -> str:
    """Markdown: each line's barriers (mean +- std over seeds), then the SFT -> RL curve (mean over seeds)."""
    conns = [r["connectivity"] for r in runs.values() if r.get("connectivity")]
    if not conns:
        return ""
    skills, names = conns[0]["skills"], {"base_sft": "base -> SFT", "base_rl": "base -> RL", "sft_rl": "SFT -> RL"}
    keys = [*skills, "mean"]
    lines = ["| line | " + " | ".join(f"loss barrier {k}" for k in keys) + " | "
             + " | ".join(f"pass@1 dip {k}" for k in keys) + " |", "|---" * (1 + 2 * len(keys)) + "|"]
    for name, label in names.items():
        cells = [_ms([c["paths"][name]["barrier"][f"loss/{k}"] for c in conns]) for k in keys]
        cells += [_ms([c["paths"][name]["barrier"].get(f"pass@1/{k}", math.nan) for c in conns]) for k in keys]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    short = {"base_sft": "base->SFT", "base_rl": "base->RL", "sft_rl": "SFT->RL"}
    cols = [(n, "loss", k) for n in short for k in skills]
    cols += [("sft_rl", "pass@1", k) for k in skills if "pass@1" in conns[0]["paths"]["sft_rl"]["rows"][0]]
    lines += ["", f"Along each line, mean over {len(conns)} seed(s) (t = 0 is the line's first model; SFT->RL is "
              "theta_sft + t (theta_rl - theta_sft)):", "",
              "| t | " + " | ".join(f"{short[n]} {k} {m}" for n, m, k in cols) + " |", "|---" * (1 + len(cols)) + "|"]
    for i, t in enumerate(conns[0]["t"]):
        cells = [f"{np.mean([c['paths'][n]['rows'][i][m][k] for c in conns]):.3f}" for n, m, k in cols]
        lines.append(f"| {t:.1f} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def doc_section(results: dict, source: str) -> str:
    """The docs' markdown for one results.json: the rerun command, the mean +- std table over seeds, the task-vector
    properties, the linear-connectivity barriers, and where/when it was measured (commit, CPU, load)."""
    runs = as_runs(results)
    first = next(iter(runs.values()))
    if "models" in first:
        body = [f"```bash\n{rerun_command(first['settings'], list(runs))}\n```", "", seeds_table(runs)]
    else:  # a scripts/linear_connectivity.py connectivity.json: the lines only
        cmd = rerun_command(first["settings"], list(runs)).replace("reproduce_dots.py", "linear_connectivity.py")
        body = [f"```bash\n{cmd.replace(' --out runs/dots', '')} --points {len(first['connectivity']['t'])} "
                f"--out runs/lmc\n```"]
    conn = connectivity_summary(runs)
    if conn:
        body += ["", "Linear connectivity (held-out token-mean loss; barrier = the largest excess over the chord "
                 "between the line's ends, `scripts/linear_connectivity.py`):", "", conn]
    prov = []
    for seed, r in runs.items():
        p = r.get("provenance") or {}
        dirty = " + uncommitted changes" if p.get("dirty") else ""
        load = r.get("loadavg_end") or [math.nan]
        prov.append(f"seed {seed}: commit {p.get('commit', '?')}{dirty}, {p.get('cpu', '?')} ({p.get('cores', '?')} "
                    f"cores), jax {p.get('jax', '?')}, {p.get('utc', '?')} UTC, {r['wall_seconds']:.0f} s wall, "
                    f"load {load[0]:.1f} at the end")
    body += ["", "Measured on: " + "; ".join(prov) + f". Source: `{source}` (this section is written from it by "
             f"`python scripts/reproduce_dots.py --tables {source} --doc docs/results_dots.md --section <name>`; "
             "after a rerun, pass the rerun's results.json instead)."]
    return "\n".join(body)


def replace_section(doc: str, name: str, body: str) -> str:
    """`doc` with the text between `<!-- dots:NAME:begin -->` and `<!-- dots:NAME:end -->` replaced by body."""
    begin, end = f"<!-- dots:{name}:begin -->", f"<!-- dots:{name}:end -->"
    if doc.count(begin) != 1 or doc.count(end) != 1 or doc.index(begin) > doc.index(end):
        raise ValueError(f"the doc needs exactly one `{begin}` ... `{end}` pair (where the {name} tables go)")
    head, rest = doc.split(begin, 1)
    return head + begin + "\n" + body.rstrip() + "\n" + end + rest.split(end, 1)[1]


def write_doc_section(results_paths: list[str], doc: str, section: str, ship: str | None = None) -> None:
    """Rewrites one section of `doc` (atomically) from one or more results.json (a --seeds run's, or single runs'
    of different seeds); with `ship`, first writes their runs as one compact results.json there, and the section
    names that file as its source. ValueError names a bad input."""
    runs: dict[int, dict] = {}
    try:
        text = Path(doc).read_text()
        for path in results_paths:
            loaded = as_runs(json.loads(Path(path).read_text()))
            if set(loaded) & set(runs):
                raise ValueError(f"{path}: seed(s) {sorted(set(loaded) & set(runs))} given twice")
            runs |= loaded
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"cannot read {getattr(err, 'filename', None) or 'a results file'}: {err}") from None
    except (KeyError, TypeError) as err:
        raise ValueError(f"{path}: not a reproduce_dots results.json ({err.__class__.__name__}: {err})") from None
    results = {"runs": {str(k): runs[k] for k in sorted(runs)}}
    source = ", ".join(results_paths)
    if ship:
        _atomic_write_text(Path(ship), json.dumps(results, indent=1, default=float) + "\n")
        source = ship
    new = replace_section(text, section, doc_section(results, source))
    _atomic_write_text(Path(doc), new)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python scripts/reproduce_dots.py", description=__doc__.splitlines()[0])
    for f in dataclasses.fields(Settings):
        p.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None,
                       help=f"default {f.default}")
    p.add_argument("--seeds", default=None, help="comma-separated seeds, e.g. 0,1,2: the whole run per seed into "
                   "<out>/seed<N>, then mean +- std over seeds in <out>/seeds.md (overrides --seed)")
    p.add_argument("--tables", nargs="+", default=None, metavar="RESULTS_JSON",
                   help="run nothing: write the section --section of --doc from these results.json (one per seed, "
                   "or a --seeds run's; a scripts/linear_connectivity.py connectivity.json gives the lines only)")
    p.add_argument("--ship", default=None, help="with --tables: also write the runs as one compact results.json "
                   "here (e.g. docs/results_data/dots_NAME.json), the source the section names")
    p.add_argument("--doc", default=None, help="the doc whose section is (re)written (with --tables, or after a run)")
    p.add_argument("--section", default=None, help="the section's name: the text between <!-- dots:NAME:begin --> "
                   "and <!-- dots:NAME:end --> in --doc")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (args.doc is None) != (args.section is None) or (args.tables and not args.doc):
        print("reproduce_dots.py: error: --doc and --section go together (and --tables needs both)", file=sys.stderr)
        return 2
    if args.tables:
        try:
            write_doc_section(args.tables, args.doc, args.section, args.ship)
        except ValueError as err:
            print(f"reproduce_dots.py: error: {err}", file=sys.stderr)
            return 2
        print(f"wrote section {args.section} of {args.doc} from {args.tables}")
        return 0
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(Settings)
                 if getattr(args, f.name) is not None}
    try:
        s = Settings(**overrides)
        seeds = None if args.seeds is None else [int(x) for x in args.seeds.split(",") if x.strip()]
        if seeds is not None and (not seeds or len(set(seeds)) != len(seeds)):
            raise ValueError(f"--seeds must be distinct integers, got {args.seeds!r}")
    except ValueError as err:
        print(f"reproduce_dots.py: error: {err}", file=sys.stderr)
        return 2
    if args.doc:  # fail on a doc without the section's markers now, not after the run
        try:
            replace_section(Path(args.doc).read_text(), args.section, "")
        except (OSError, ValueError) as err:
            print(f"reproduce_dots.py: error: {err}", file=sys.stderr)
            return 2
    if seeds is None:
        reproduce(s)
    else:
        reproduce_seeds(s, seeds)
    if args.doc:
        write_doc_section([str(Path(s.out) / "results.json")], args.doc, args.section)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
