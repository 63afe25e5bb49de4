"""What Bayesian search buys in the DoTS coefficient search: hypervolume against trial count for Vizier's GP-bandit,
random search and NSGA-II, on the same cheap two-objective problem, averaged over seeds.

The objective is SYNTHETIC (a real trial costs a full round of sampling): over the DoTS box (a, b) in [0.5, 2]^2,

    consistency(a, b) = 0.55 + 0.30 exp(-((a - 0.9)^2 / 0.18 + (b - 1.3)^2 / 0.5)) - 0.1 max(0, a + b - 3)^2
    perplexity(a, b)  = 2.0 + 0.6 ((a - 0.6)^2 + 0.5 (b - 0.7)^2)

(a consistency bump away from where perplexity is lowest, so the Pareto set is a curve between them), observed with
the noise of the real objectives: consistency + N(0, 0.045) (the binomial noise of 16 queries x 7 votes at p ~ 0.5),
perplexity x exp(N(0, 0.01)). The hypervolume is that of the TRUE values of the points each designer evaluated,
relative to the reference point (consistency 0.4, perplexity 3.5), as a fraction of the true front's hypervolume
(a 301 x 301 grid). Designers run through the Vizier designer API, seeded, exactly as the in-process service runs
them (GP-bandit: `VizierGPBandit.from_problem`, random: `RandomDesigner`, NSGA-II: `NSGA2Designer`, population 50
as Optuna's default).

    python benchmarks/dots_search.py                          # GP 30 trials, random and NSGA-II 100, 3 seeds
    python benchmarks/dots_search.py --seeds 1 --gp-trials 10 --trials 30
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from merging.search import hypervolume_2d, pareto_front  # noqa: E402

REFERENCE = (0.4, 3.5)
LOW, HIGH = 0.5, 2.0


def true_objectives(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    cons = 0.55 + 0.30 * np.exp(-((a - 0.9) ** 2 / 0.18 + (b - 1.3) ** 2 / 0.5)) - 0.1 * np.maximum(0, a + b - 3) ** 2
    ppl = 2.0 + 0.6 * ((a - 0.6) ** 2 + 0.5 * (b - 0.7) ** 2)
    return cons, ppl


def true_front_hypervolume(n: int = 301) -> float:
    g = np.linspace(LOW, HIGH, n)
    a, b = np.meshgrid(g, g)
    c, p = true_objectives(a.ravel(), b.ravel())
    pts = np.stack([c, p], 1)
    return hypervolume_2d(pts[pareto_front(pts, ("max", "min"))], REFERENCE)


def problem():
    from vizier import pyvizier as vz

    ps = vz.ProblemStatement()
    ps.search_space.root.add_float_param("a", LOW, HIGH)
    ps.search_space.root.add_float_param("b", LOW, HIGH)
    ps.metric_information.append(vz.MetricInformation("consistency", goal=vz.ObjectiveMetricGoal.MAXIMIZE))
    ps.metric_information.append(vz.MetricInformation("perplexity", goal=vz.ObjectiveMetricGoal.MINIMIZE))
    return ps


def make_designer(name: str, ps, seed: int):
    # the modules the service's policy factory imports (vizier.algorithms.designers also imports BOCS -> cvxpy)
    if name == "gp_bandit":
        from vizier._src.algorithms.designers.gp_bandit import VizierGPBandit

        return VizierGPBandit.from_problem(ps, seed=seed)
    if name == "random":
        from vizier._src.algorithms.designers.random import RandomDesigner

        return RandomDesigner(ps.search_space, seed=seed)
    if name == "nsga2":
        from vizier._src.algorithms.evolution.nsga2 import NSGA2Designer

        return NSGA2Designer(ps, seed=seed)
    raise ValueError(name)


def run(name: str, trials: int, seed: int) -> dict:
    """One designer, one seed: per trial the true objectives of the point evaluated and the suggestion time."""
    from vizier import algorithms as vza
    from vizier import pyvizier as vz

    ps = problem()
    designer = make_designer(name, ps, seed)
    rng = np.random.default_rng(1000 + seed)
    true_pts, seconds = [], []
    for i in range(trials):
        start = time.perf_counter()
        (s,) = designer.suggest(1)
        seconds.append(time.perf_counter() - start)
        a, b = float(s.parameters["a"].value), float(s.parameters["b"].value)
        c, p = true_objectives(np.array(a), np.array(b))
        true_pts.append((float(c), float(p)))
        trial = s.to_trial(i + 1)
        trial.complete(vz.Measurement({"consistency": float(c) + rng.normal(0, 0.045),
                                       "perplexity": float(p) * float(np.exp(rng.normal(0, 0.01)))}))
        designer.update(vza.CompletedTrials([trial]), vza.ActiveTrials())
    return {"points": true_pts, "suggest_seconds": seconds}


def hv_curve(points: list, total: float) -> list[float]:
    return [hypervolume_2d(points[:t], REFERENCE) / total for t in range(1, len(points) + 1)]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=100, help="trials for random search and NSGA-II")
    p.add_argument("--gp-trials", type=int, default=30)
    p.add_argument("--out", type=Path, help="write the curves as JSON here")
    args = p.parse_args(argv)
    import jax

    jax.config.update("jax_enable_x64", True)  # as Vizier's own service does for its designers (this process only)

    total = true_front_hypervolume()
    budgets = {"gp_bandit": args.gp_trials, "random": args.trials, "nsga2": args.trials}
    curves: dict[str, list[list[float]]] = {}
    timing: dict[str, float] = {}
    for name, n in budgets.items():
        curves[name], secs = [], []
        for seed in range(args.seeds):
            res = run(name, n, seed)
            curves[name].append(hv_curve(res["points"], total))
            secs += res["suggest_seconds"][1:]
            print(f"{name} seed {seed}: HV {curves[name][-1][-1]:.3f} after {n} trials", file=sys.stderr, flush=True)
        timing[name] = float(np.median(secs)) if secs else 0.0
    marks = [t for t in (5, 10, 15, 20, 30, 50, 100) if t <= max(budgets.values())]
    print(f"hypervolume / true front's ({args.seeds} seeds: mean +/- sd); median seconds per suggestion")
    print("designer    " + " ".join(f"{t:>12}" for t in marks) + "   s/suggest")
    for name, cs in curves.items():
        arr = np.array(cs)
        cells = [f"{arr[:, t - 1].mean():.3f}+/-{arr[:, t - 1].std():.3f}" if t <= arr.shape[1] else " " * 12
                 for t in marks]
        print(f"{name:<11} " + " ".join(f"{c:>12}" for c in cells) + f"   {timing[name]:.3f}")
    for name in ("random", "nsga2"):
        target = np.array(curves[name])[:, -1].mean()
        gp = np.array(curves["gp_bandit"]).mean(0)
        reach = next((t + 1 for t, v in enumerate(gp) if v >= target), None)
        print(f"GP-bandit reaches {name}'s {budgets[name]}-trial hypervolume ({target:.3f}) after "
              f"{reach if reach else f'more than {len(gp)}'} trials")
    if args.out:
        args.out.write_text(json.dumps({"curves": curves, "suggest_seconds": timing, "budgets": budgets}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
