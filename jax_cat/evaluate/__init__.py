"""Test-time scaling curves: pass@k, maj@k and best-of-k from ONE pool of n samples per problem.

`evaluate(model, tokenizer, problems, *, n, ks, ...)` samples n completions per problem once, scores them with the
verifier (`jax_cat.rewards`), then, from the same samples, estimates for every k:

- pass@k: the unbiased estimator of Chen et al. (2021) (`PassAtN(k).estimate`);
- maj@k: plurality vote over the extracted final answers of a random k-subset, success when the winning answer is
  correct; samples with no answer never win; ties are split evenly (the expected value of a uniformly random
  tie-break); exact over all k-subsets when C(n, k) <= 20000, else a fixed-seed Monte Carlo (`MajorityAtN(k).estimate`).
  Answers are grouped by their exact rational value when they parse as numbers, else by their normalised string;
- bon@k: the top-scored sample of a random k-subset (`BestOfN(k).estimate`, exact order statistics; ties split
  evenly). The default scorer is the policy's mean token log-probability (reward-free). With the verifier as the
  scorer, best-of-k equals pass@k by construction (any correct sample scores 1), which the output says.

Each metric is averaged over problems, with a 95% bootstrap confidence interval over problems (seeded, 1000
resamples, percentile method). Results go to `results.json` and `scaling.png` (accuracy vs k, log2 axis), plus
`samples.jsonl` (every completion with its answer and reward) when `--save-samples` is on.

This is the project's one evaluation path: the evaluate CLI, the trainer's end-of-run evaluation, the default run
(`python -m jax_cat.train`) and the reproduction scripts all sample and score through `evaluate`, and every pass@k /
maj@k / bon@k with a CI, and every paired CAT - plain difference, comes from `scaling_metrics` / `paired_difference`.
The prompt format (chat template or raw text, system prompt) is the explicit `use_chat_template` / `system` setting
and is recorded in the result; results files record the commit, the settings and the machine (`provenance`).

One idea per module:
- `jax_cat.evaluate.estimates`: the estimators and bootstrap CIs (numpy only);
- `jax_cat.evaluate.pool`: `evaluate`, sampling and scoring one pool of completions;
- `jax_cat.evaluate.outputs`: results.json (+ provenance), scaling.png, samples.jsonl;
- `jax_cat.evaluate.loading`: model/tokenizer and problem records;
- `jax_cat.evaluate.cli`: `python -m jax_cat.evaluate --model PATH --dataset arithmetic --n 64 --k 1,2,4,8,16,32,64
  --out DIR`.
"""
from jax_cat.evaluate.cli import PROG, build_parser, main
from jax_cat.evaluate.estimates import METRICS, bootstrap_ci, curve, paired_difference, scaling_metrics
from jax_cat.evaluate.loading import load_model_and_tokenizer, load_problems
from jax_cat.evaluate.outputs import plot_scaling, provenance, to_json, write_results
from jax_cat.evaluate.pool import BON_SCORERS, default_reward_fn, evaluate
from jax_cat.rewards.answers import answer_key  # its home is jax_cat.rewards; kept here under its old name

__all__ = [
    "BON_SCORERS",
    "METRICS",
    "answer_key",
    "bootstrap_ci",
    "build_parser",
    "curve",
    "default_reward_fn",
    "evaluate",
    "load_model_and_tokenizer",
    "load_problems",
    "main",
    "paired_difference",
    "plot_scaling",
    "provenance",
    "scaling_metrics",
    "to_json",
    "write_results",
]
