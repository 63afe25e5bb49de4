"""Are the DoTS fine-tunes linearly connected? Held-out loss and pass@1 along the straight lines between models.

Task-vector merging assumes the SFT and RL fine-tunes stay in the base's basin: on the straight line
base -> fine-tune, and on the line theta_sft + t (theta_rl - theta_sft) between the two fine-tunes, the loss shows
no barrier (no point worse than the straight chord between the two ends). This script trains the base, the SFT
and the RL model exactly as `scripts/reproduce_dots.py` does (same settings, same trainer), then evaluates each
skill's held-out SFT loss (teacher-forced token-mean cross-entropy of the answer, `jax_cat.training.steps.sft_loss`
with plain pass@1 CE, all --eval-problems) and pass@1 (`jax_cat.evaluate.evaluate`, 100 problems x 4 samples)
at `--points` evenly spaced t on the three lines, every point built by `merging.task_vectors.combine` from the
base and the two task vectors.

    python scripts/linear_connectivity.py --out runs/lmc                      # reproduce_dots' default setting
    python scripts/linear_connectivity.py --out runs/lmc_mix --base-tasks add2,sub2 --base-steps 1500 \\
        --sft-lr 3e-4 --rl-warmup 10                                         # a base that knows both skills

Barrier of a loss curve L(t) (Frankle et al. 2020): max over t of L(t) - ((1 - t) L(0) + t L(1)), >= 0; for
pass@1, the same with the sign flipped (a dip below the chord). The mean of the two skills' losses is the curve a
merge of both skills cares about. Writes `<out>/connectivity.json` (curves, barriers, settings, commit, CPU) and
`<out>/connectivity.md`; every flag of `reproduce_dots.py` is accepted (`--help`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
for _p in (ROOT, ROOT / "scripts"):
    if str(_p) not in sys.path:  # run as a file from a checkout
        sys.path.insert(0, str(_p))

import reproduce_dots as rd  # noqa: E402 - after the checkout is on the path

PATHS = {"base_sft": ("base", "sft"), "base_rl": ("base", "rl"), "sft_rl": ("sft", "rl")}


def chord_barrier(ts: Sequence[float], values: Sequence[float], *, higher_is_better: bool = False) -> float:
    """Largest excess of a curve over the straight chord between its ends: max_t v(t) - ((1 - t) v(0) + t v(1))
    for a loss (a reward: the largest dip below the chord). 0 when the curve never crosses its chord."""
    ts, v = np.asarray(ts, float), np.asarray(values, float)
    if ts.shape != v.shape or ts.size < 2:
        raise ValueError(f"need matching ts and values of length >= 2, got {ts.shape} and {v.shape}")
    t = (ts - ts[0]) / (ts[-1] - ts[0])
    chord = (1 - t) * v[0] + t * v[-1]
    excess = (chord - v) if higher_is_better else (v - chord)
    return float(max(0.0, excess.max()))


class HeldoutLoss:
    """Each skill's held-out token-mean answer cross-entropy, through the trainer's own SFT loss and batches
    (`SFTCollator`, `steps.sft_loss` with PassAtN(1)); one jitted function reused for every point."""

    def __init__(self, tokenizer: Any, data_cfg: Any, problems: dict[str, list[dict]], graphdef: Any) -> None:
        import functools

        import jax
        import jax.numpy as jnp

        from jax_cat import losses
        from jax_cat.training.data import SFTCollator
        from jax_cat.training.steps import sft_loss

        collate = SFTCollator(tokenizer, data_cfg)
        self.batches = {n: {k: jnp.asarray(v) for k, v in collate(p).items()} for n, p in problems.items()}

        def loss(params, batch):
            den = losses.loss_denominator(batch["loss_mask"][:, 1:], "token_mean")
            return sft_loss(params, batch, graphdef=graphdef, strategy=losses.PassAtN(1), reduction="token_mean",
                            denominator=den, logprob_chunk=None)[0]

        self._loss = jax.jit(functools.partial(loss))

    def __call__(self, params: Any) -> dict[str, float]:
        return {n: float(self._loss(params, b)) for n, b in self.batches.items()}


def measure_paths(s: rd.Settings, st: rd.Setup, base: Any, sft: Any, rl: Any, *, points: int,
                  reward: bool = True, reward_problems: int = 100, reward_samples: int = 4,
                  say=rd._say) -> dict[str, Any]:
    """Loss (all held-out problems) and pass@1 (the first `reward_problems` x `reward_samples`, the same draws at
    every point) of every skill at `points` evenly spaced t on base->sft, base->rl and sft->rl, with the barriers;
    the points are `combine(base, [tau_sft, tau_rl], coefficients)`."""
    import jax.numpy as jnp
    from flax import nnx

    from merging import task_vector
    from merging.task_vectors import combine

    graphdef, b_state = nnx.split(base)
    sft_state, rl_state = nnx.split(sft)[1], nnx.split(rl)[1]
    taus = [task_vector(sft_state, b_state, dtype=jnp.float32), task_vector(rl_state, b_state, dtype=jnp.float32)]
    ends = {"base": (0.0, 0.0), "sft": (1.0, 0.0), "rl": (0.0, 1.0)}
    data_cfg = st.cfg("sft", 1, 1e-3, s.seed, st.datasets[s.sft_task]).data
    loss_fn = HeldoutLoss(st.tokenizer, data_cfg, st.problems, graphdef)
    ts = np.linspace(0.0, 1.0, points).tolist()
    reward_set = {n: p[:reward_problems] for n, p in st.problems.items()}
    s_reward = dataclasses.replace(s, eval_samples=reward_samples)
    out: dict[str, Any] = {"t": ts, "skills": list(st.problems), "paths": {}, "loss_problems": len(
        next(iter(st.problems.values()))), "reward_problems": reward_problems, "reward_samples": reward_samples}
    for name, (a, b) in PATHS.items():
        t0 = time.perf_counter()
        rows = []
        for t in ts:
            coeffs = [(1 - t) * x + t * y for x, y in zip(ends[a], ends[b])]
            state = combine(b_state, taus, coeffs)
            row = {"t": t, "coefficients": coeffs, "loss": loss_fn(state)}
            row["loss"]["mean"] = float(np.mean([row["loss"][k] for k in st.problems]))
            if reward:
                ev = rd.evaluate(nnx.merge(graphdef, state), st.tokenizer, reward_set, s_reward, st.max_new)
                row["pass@1"] = {k: v["pass@1"] for k, v in ev.items()}
                row["pass@1"]["mean"] = float(np.mean([row["pass@1"][k] for k in st.problems]))
            rows.append(row)
        keys = [*st.problems, "mean"]
        barrier = {f"loss/{k}": chord_barrier(ts, [r["loss"][k] for r in rows]) for k in keys}
        if reward:
            barrier |= {f"pass@1/{k}": chord_barrier(ts, [r["pass@1"][k] for r in rows], higher_is_better=True)
                        for k in keys}
        out["paths"][name] = {"rows": rows, "barrier": barrier, "seconds": time.perf_counter() - t0}
        say(f"    {a} -> {b}: loss barrier " + ", ".join(f"{k} {barrier[f'loss/{k}']:.3f}" for k in keys)
            + ("; pass@1 dip " + ", ".join(f"{k} {barrier[f'pass@1/{k}']:.3f}" for k in keys) if reward else ""))
    return out


def connectivity_table(conn: dict[str, Any]) -> str:
    """Markdown: per path, each skill's loss (and pass@1) at every t, then the barriers."""
    skills, lines = conn["skills"], []
    for name, path in conn["paths"].items():
        a, b = PATHS[name]
        lines += [f"**{a} -> {b}** (t = 0 is {a}, t = 1 is {b})", "",
                  "| t | " + " | ".join(f"{k} loss" for k in skills) + " | mean loss | "
                  + " | ".join(f"{k} pass@1" for k in skills if "pass@1" in path["rows"][0]) + " |",
                  "|---" * (2 + len(skills) + (len(skills) if "pass@1" in path["rows"][0] else 0)) + "|"]
        for r in path["rows"]:
            cells = [f"{r['loss'][k]:.3f}" for k in skills] + [f"{r['loss']['mean']:.3f}"]
            cells += [f"{r['pass@1'][k]:.3f}" for k in skills] if "pass@1" in r else []
            lines.append(f"| {r['t']:.1f} | " + " | ".join(cells) + " |")
        lines += ["", "barrier: " + ", ".join(f"{k} {v:.3f}" for k, v in path["barrier"].items()), ""]
    return "\n".join(lines).rstrip()


def run(s: rd.Settings, *, points: int, reward: bool = True, say=rd._say) -> dict[str, Any]:
    """Train base, SFT and RL as reproduce_dots does, measure the three lines, write connectivity.json/.md."""
    out = Path(s.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start, clock = time.perf_counter(), rd.Clock()
    say(f"linear_connectivity -> {out}; loadavg {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    provenance = rd._provenance()  # at the start: the commit whose code runs
    st = rd.prepare(s)
    base, base_info = rd.train_base(s, st, clock, say)
    sft, sft_info = clock.run("sft", rd.train_sft, s, st, base)
    rl, rl_info = clock.run("rl", rd.train_rl, s, st, base)
    say(f"  trained base / SFT / RL in {sum(clock.seconds.values()):.0f}s; measuring {points} points x 3 lines")
    conn = clock.run("paths", measure_paths, s, st, base, sft, rl, points=points, reward=reward, say=say)
    res = {"settings": dataclasses.asdict(s), "points": points,
           "command": "python scripts/linear_connectivity.py " + " ".join(sys.argv[1:]),
           "train": {"base": base_info, "sft": sft_info, "rl": rl_info}, "connectivity": conn,
           "stage_seconds": clock.seconds, "wall_seconds": time.perf_counter() - t_start,
           "loadavg_end": os.getloadavg(), "provenance": provenance}
    rd._atomic_write_text(out / "connectivity.json", json.dumps(res, indent=1, default=float) + "\n")
    rd._atomic_write_text(out / "connectivity.md", connectivity_table(conn) + "\n")
    say(connectivity_table(conn))
    say(f"wrote {out / 'connectivity.json'} in {res['wall_seconds']:.0f}s")
    return res


def main(argv: list[str] | None = None) -> int:
    p = rd.build_parser()
    p.prog, p.description = "python scripts/linear_connectivity.py", __doc__.splitlines()[0]
    p.add_argument("--points", type=int, default=11, help="points per line, t = 0 .. 1 (default 11)")
    p.add_argument("--no-reward", action="store_true", help="held-out loss only (no sampling: faster)")
    args = p.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in dataclasses.fields(rd.Settings)
                 if getattr(args, f.name) is not None}
    overrides.setdefault("out", "runs/linear_connectivity")
    try:
        s = rd.Settings(**overrides)
        if args.points < 2:
            raise ValueError(f"--points must be >= 2, got {args.points}")
    except ValueError as err:
        print(f"linear_connectivity.py: error: {err}", file=sys.stderr)
        return 2
    run(s, points=args.points, reward=not args.no_reward)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
