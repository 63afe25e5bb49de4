"""Sampling and scoring ONE pool of n completions per problem, and the estimates from it (`evaluate`).

The only evaluation path of the project: the evaluate CLI, the trainer's end-of-run evaluation
(`jax_cat.training.run.evaluate_model`), the default run and the reproduction scripts all call `evaluate`, so their
numbers come from the same sampler (`jax_cat.sampling.generate`: row (i, j) draws from `row_keys_for(seed, i, j)`,
whatever the batching), the same prompt formatting (`jax_cat.data.format_prompt`; whether the chat template and a
system prompt apply is the explicit `use_chat_template` / `system` setting, recorded in the result) and the same
estimators (`jax_cat.evaluate.estimates`).
"""
from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from jax_cat.evaluate.estimates import METRICS, scaling_metrics
from jax_cat.rewards.answers import answer_key

BON_SCORERS = ("logprob", "verifier")


def _problem_fields(problem: Any, index: int) -> tuple[Mapping[str, Any], str]:
    """(record, gold answer) from a problem: a mapping (or object) with a string `prompt` and an `answer`."""
    record = problem if isinstance(problem, Mapping) else vars(problem)
    prompt, answer = record.get("prompt"), record.get("answer")
    if not isinstance(prompt, str) or answer is None:
        raise ValueError(f"problem {index} needs a string 'prompt' and an 'answer'; got {dict(record)!r:.300}")
    return record, str(answer)


def evaluate(
    model: Any,
    tokenizer: Any,
    problems: Sequence[Any],
    *,
    n: int,
    ks: Sequence[int],
    max_new_tokens: int = 256,
    sampling_params: Any = None,
    temperature: float | None = None,
    top_p: float | None = None,
    top_k: int | None = None,
    seed: int = 0,
    stop: Sequence[str] | None = None,
    bon_scorer: str = "logprob",
    use_chat_template: bool = True,
    system: str | None = None,
    batch_size: int = 128,
    reward_fn: Callable[[Sequence[str], Sequence[str]], Sequence[float]] | None = None,
    num_resamples: int = 1000,
    confidence: float = 0.95,
    progress: bool | None = None,
    keep_samples: bool = False,
    metrics: Sequence[str] = METRICS,
    eos_token_ids: Sequence[int] | None = None,
) -> dict[str, Any]:
    """Sample n completions per problem once and report pass@k / maj@k / bon@k for each k (see module docstring).

    `problems`: records with a `prompt` and a gold `answer` (what `jax_cat.data.load_prompt_dataset` returns); each
    prompt is formatted like the training pipeline does (`jax_cat.data.format_prompt`: the tokenizer's chat template
    when it has one and `use_chat_template`, with BOS/special tokens added only to untemplated prompts).
    Sampling settings: a `jax_cat.sampling.SamplingParams` as `sampling_params`, or the `temperature` / `top_p` /
    `top_k` keywords (defaults 1.0, 1.0, 0; not both). `reward_fn(completions, golds) -> 0/1 rewards` defaults to
    `jax_cat.rewards.compute_rewards`. `metrics`: which of pass@k, maj@k, bon@k to estimate (maj@k over k-subsets is
    the costly one). `eos_token_ids`: the ids a completion stops at (default `jax_cat.data.stop_token_ids`: the EOS
    ids of tokenizer, config and generation_config.json, plus the chat template's end-of-turn token for templated
    prompts, e.g. <|im_end|> where a base model's EOS is <|endoftext|>). Returns a JSON-ready dict: "config" (every setting, the prompt format included), "metrics",
    "num_correct" (correct samples per problem, for paired comparisons: `paired_difference`), "summary", "timing_s",
    "notes"; with `keep_samples`, also "samples": one list per problem of {text, answer, reward, ...}.
    """
    from jax_cat.sampling.engine import _sampling_params

    params = _sampling_params(sampling_params, temperature, top_p, top_k, "evaluate")
    ks = _check_evaluate_args(problems, n, ks, bon_scorer)
    if not metrics or any(m not in METRICS for m in metrics):
        raise ValueError(f"metrics must be a non-empty subset of {METRICS}, got {list(metrics)}")
    fields, golds, prompts, templated = _format_problems(problems, tokenizer, system, use_chat_template)
    if eos_token_ids is None:
        from jax_cat.data import stop_token_ids

        eos_token_ids = stop_token_ids(model, tokenizer, templated)
    eos_token_ids = tuple(int(i) for i in eos_token_ids)
    timing: dict[str, float] = {}
    with _timed(timing, "sampling"):
        completions = _sample(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, params=params, seed=seed,
                              stop=stop, batch_size=batch_size, progress=progress, add_special_tokens=not templated,
                              eos_token_ids=eos_token_ids)
    with _timed(timing, "scoring"):
        rewards, answers = _score(completions, golds, reward_fn, progress=progress)
    mean_logprob = np.array([[c.mean_logprob for c in row] for row in completions])
    scores = rewards if bon_scorer == "verifier" else mean_logprob
    with _timed(timing, "estimates"):
        estimates = scaling_metrics(rewards, answers, scores, ks, num_resamples=num_resamples,
                                    confidence=confidence, seed=seed, metrics=metrics)
    config = {
        "n": n, "ks": ks, "max_new_tokens": max_new_tokens, "temperature": params.temperature, "top_p": params.top_p,
        "top_k": params.top_k, "seed": seed, "stop": list(stop or []), "eos_token_ids": list(eos_token_ids),
        "bon_scorer": bon_scorer,
        "num_resamples": num_resamples, "confidence": confidence, "metrics": [m for m in METRICS if m in metrics],
        "use_chat_template": use_chat_template, "system": system, "chat_template_applied": templated,
        "reward_fn": _name(reward_fn),
    }
    result: dict[str, Any] = {
        "config": config,
        "num_problems": len(problems),
        "problem_ids": [str(f[0].get("id", i)) for i, f in enumerate(fields)],
        "metrics": estimates,
        "num_correct": [int(c) for c in np.count_nonzero(rewards > 0, axis=1)],
        "summary": _summary(completions, rewards, answers, mean_logprob),
        "timing_s": timing,
        "notes": _notes(bon_scorer, confidence, num_resamples, seed, templated),
    }
    if keep_samples:
        result["samples"] = [
            [
                {"text": c.text, "answer": a, "reward": float(r), "length": c.length,
                 "finish_reason": c.finish_reason, "mean_logprob": c.mean_logprob}
                for c, a, r in zip(row, ans_row, rew_row)
            ]
            for row, ans_row, rew_row in zip(completions, answers, rewards)
        ]
        result["prompts"], result["golds"] = prompts, golds
    return result


def _check_evaluate_args(problems: Sequence[Any], n: int, ks: Sequence[int], bon_scorer: str) -> list[int]:
    """Step 1 of `evaluate`: the ks, sorted and deduplicated, after checking them against n."""
    if bon_scorer not in BON_SCORERS:
        raise ValueError(f"bon_scorer must be one of {BON_SCORERS}, got {bon_scorer!r}")
    if n < 1:
        raise ValueError(f"n (samples per problem) must be >= 1, got {n}")
    ks = sorted({int(k) for k in ks})
    if not ks or ks[0] < 1 or ks[-1] > n:
        raise ValueError(f"ks must be non-empty integers in [1, n={n}], got {ks}")
    if len(problems) == 0:
        raise ValueError("evaluate: no problems given")
    return ks


def _format_problems(problems: Sequence[Any], tokenizer: Any, system: str | None, use_chat_template: bool):
    """Step 2: (records, golds, prompt strings, whether the chat template applies) from the problems."""
    from jax_cat.data import format_prompt

    fields = [_problem_fields(p, i) for i, p in enumerate(problems)]
    golds = [f[1] for f in fields]
    prompts = [format_prompt(f[0], tokenizer, system=system, use_chat_template=use_chat_template) for f in fields]
    templated = use_chat_template and bool(getattr(tokenizer, "chat_template", None))
    return fields, golds, prompts, templated


class _timed:
    """`with _timed(timing, "name"):` stores the block's wall time in timing["name"] (seconds)."""

    def __init__(self, timing: dict[str, float], name: str) -> None:
        self.timing, self.name = timing, name

    def __enter__(self) -> None:
        self.start = time.perf_counter()

    def __exit__(self, *exc: Any) -> None:
        self.timing[self.name] = time.perf_counter() - self.start


def _sample(model: Any, tokenizer: Any, prompts: list[str], *, n: int, max_new_tokens: int, params: Any, seed: int,
            stop: Sequence[str] | None, batch_size: int, progress: bool | None, add_special_tokens: bool,
            eos_token_ids: Sequence[int] | None = None) -> list:
    """Step 3: n completions per prompt from `jax_cat.sampling.generate` (one pool for every k)."""
    from jax_cat.sampling import generate

    return generate(model, tokenizer, prompts, n=n, max_new_tokens=max_new_tokens, sampling_params=params, seed=seed,
                    stop=stop, batch_size=batch_size, progress=progress, add_special_tokens=add_special_tokens,
                    eos_token_ids=eos_token_ids)


def _score(completions: list, golds: list[str], reward_fn: Callable | None, *, progress: bool | None = None,
           chunk: int = 1024) -> tuple[np.ndarray, list[list[str | None]]]:
    """Step 4: rewards [P, n] from the verifier and the answer keys that majority voting compares.

    The verifier sees the completions in chunks of `chunk`, behind a progress bar when `progress` (default: when
    stderr is a terminal); rewards are per completion, so chunking does not change them.
    """
    flat_texts = [c.text for row in completions for c in row]
    flat_golds = [g for g, row in zip(golds, completions) for _ in row]
    reward_fn = default_reward_fn if reward_fn is None else reward_fn
    starts = range(0, len(flat_texts), chunk)
    if (sys.stderr.isatty() if progress is None else progress) and len(starts) > 1:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc="scoring", unit="chunk")
    flat_rewards = [r for s in starts for r in reward_fn(flat_texts[s: s + chunk], flat_golds[s: s + chunk])]
    rewards = np.asarray(flat_rewards, np.float64).reshape(len(completions), -1)
    answers = [[answer_key(c.text) for c in row] for row in completions]
    return rewards, answers


def _summary(completions: list, rewards: np.ndarray, answers: list, mean_logprob: np.ndarray) -> dict[str, Any]:
    """Step 5: pool-wide statistics (mean reward, answered fraction, lengths, finish reasons, mean log-prob)."""
    lengths = np.array([[c.length for c in row] for row in completions])
    finish = [c.finish_reason for row in completions for c in row]
    finite = np.isfinite(mean_logprob)
    return {
        "mean_reward": float(rewards.mean()),
        "answered_fraction": float(np.mean([a is not None for row in answers for a in row])),
        "mean_length": float(lengths.mean()),
        "finish_reasons": {r: finish.count(r) for r in ("eos", "stop", "length")},
        "mean_logprob": float(np.mean(mean_logprob[finite])) if finite.any() else None,
    }


def _name(fn: Callable | None) -> str:
    """A reward function's import path, for the record (None: the default verifier)."""
    fn = default_reward_fn if fn is None else fn
    return f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"


def _notes(bon_scorer: str, confidence: float, num_resamples: int, seed: int, templated: bool) -> list[str]:
    """How each number was computed, for the reader of results.json."""
    notes = [
        "pass@k: unbiased estimator (Chen et al. 2021) from the n samples of each problem.",
        "maj@k: plurality vote over extracted answers of k-subsets; no-answer samples never win; ties split evenly; "
        "exact when C(n,k) <= 20000, else a 20000-subset fixed-seed Monte Carlo.",
        f"bon@k: best-of-k under the '{bon_scorer}' scorer (ties split evenly).",
        f"CIs: {int(confidence * 100)}% percentile bootstrap over problems, {num_resamples} resamples, seed {seed}.",
    ]
    notes.append("prompts: the tokenizer's chat template" if templated else
                 "prompts: raw text with the tokenizer's special tokens (no chat template)")
    if bon_scorer == "verifier":
        notes.append("bon@k under the verifier equals pass@k by construction (any correct sample scores 1).")
    return notes


def default_reward_fn(completions: Sequence[str], golds: Sequence[str]) -> list[float]:
    """0/1 rewards from `jax_cat.rewards.compute_rewards` (extraction + math equivalence in a bounded process pool)."""
    from jax_cat.rewards import compute_rewards

    return [float(r) for r in compute_rewards(completions, golds)]
