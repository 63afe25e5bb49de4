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
them (GP-bandit: `VizierGPBandit.from_problem`, random: `RandomDesigner`, NSGA-II: `NSGA2Designer` with Vizier's
defaults -- population 50, and uniform random suggestions until 2 x 50 trials are seen, so over 100 trials it IS
random search -- and "nsga2_p50", evolving after the first 50 trials as Optuna's NSGAIISampler, the authors' sampler).

    python benchmarks/dots_search.py                          # GP 30 trials, random and NSGA-II 100, 3 seeds
    python benchmarks/dots_search.py --seeds 1 --gp-trials 10 --trials 30
    python benchmarks/dots_search.py --out curves.json ...; python benchmarks/dots_search.py --report curves.json
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

        return NSGA2Designer(ps, seed=seed)  # Vizier's defaults: random until 2 x population (100) trials are seen
    if name == "nsga2_p50":
        from vizier._src.algorithms.evolution.nsga2 import NSGA2Designer

        # as Optuna's NSGAIISampler: a random first generation of 50, evolution from trial 51
        return NSGA2Designer(ps, population_size=50, first_survival_after=50, seed=seed)
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
        s = designer.suggest(1)[0]  # NSGA-II may hand back a whole batch of offspring for count=1
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


def report(data: dict) -> None:
    """Print the hypervolume table (mean +/- sd over the seeds run so far) and how soon GP-bandit matches the others."""
    curves, budgets, timing = data["curves"], data["budgets"], data["suggest_seconds"]
    marks = [t for t in (5, 10, 15, 20, 30, 50, 100) if t <= max(budgets.values())]
    print("hypervolume / true front's (mean +/- sd over seeds); median seconds per suggestion")
    print("designer    seeds " + " ".join(f"{t:>12}" for t in marks) + "   s/suggest")
    for name, cs in curves.items():
        if not cs:
            continue
        arr = np.array(cs)
        cells = [f"{arr[:, t - 1].mean():.3f}+/-{arr[:, t - 1].std():.3f}" if t <= arr.shape[1] else "-"
                 for t in marks]
        print(f"{name:<11} {len(cs):>5} " + " ".join(f"{c:>12}" for c in cells) + f"   {timing.get(name, 0):.3f}")
    if curves.get("gp_bandit"):
        gp = np.array(curves["gp_bandit"]).mean(0)
        for name in ("random", "nsga2", "nsga2_p50"):
            if not curves.get(name):
                continue
            for t in (30, budgets[name]):
                target = np.array(curves[name])[:, t - 1].mean()
                reach = next((i + 1 for i, v in enumerate(gp) if v >= target), None)
                print(f"GP-bandit reaches {name}'s {t}-trial hypervolume ({target:.3f}) after "
                      f"{reach if reach else f'more than {len(gp)}'} trials")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--trials", type=int, default=100, help="trials for random search and NSGA-II")
    p.add_argument("--gp-trials", type=int, default=30)
    p.add_argument("--out", type=Path, help="JSON of the curves, rewritten after every (designer, seed) run")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--designers", nargs="+", default=["random", "nsga2", "nsga2_p50", "gp_bandit"])
    p.add_argument("--report", type=Path, nargs="+", help="only print the table of JSONs written by --out (merged)")
    args = p.parse_args(argv)
    if args.report:
        merged: dict = {"curves": {}, "suggest_seconds": {}, "budgets": {}}
        for path in args.report:
            part = json.loads(path.read_text())
            for name, cs in part["curves"].items():
                merged["curves"].setdefault(name, []).extend(cs)
            merged["budgets"].update(part["budgets"])
            merged["suggest_seconds"].update(part["suggest_seconds"])
        report(merged)
        return 0
    import jax

    jax.config.update("jax_enable_x64", True)  # as Vizier's own service does for its designers (this process only)

    total = true_front_hypervolume()
    budgets = {n: args.gp_trials if n == "gp_bandit" else args.trials for n in args.designers}
    data: dict = {"curves": {n: [] for n in budgets}, "suggest_seconds": {}, "budgets": budgets}
    secs: dict[str, list[float]] = {n: [] for n in budgets}
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        for name, n in budgets.items():
            res = run(name, n, seed)
            data["curves"][name].append(hv_curve(res["points"], total))
            secs[name] += res["suggest_seconds"][1:]
            data["suggest_seconds"][name] = float(np.median(secs[name])) if secs[name] else 0.0
            print(f"{name} seed {seed}: HV {data['curves'][name][-1][-1]:.3f} after {n} trials", file=sys.stderr,
                  flush=True)
            if args.out:
                args.out.write_text(json.dumps(data) + "\n")
    report(data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
