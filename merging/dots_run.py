"""`run_dots(config, *, base, sft, rl, queries, out)`: DoTS end to end -- pick the SFT and RL coefficients with no
labels and no training, then write the picked merge as an HF checkpoint. `python -m merging.dots` is this function
behind flags (`merging.dots`); the settings are a `merging.dots_config.DotsConfig`.

Steps: (1) the task-vector analysis of tau_sft and tau_rl (analysis.json); (2) both vectors taken in float32 and
sparsified once (per-tensor top 30 % by default; `rescale` restores each vector's global L2 norm); (3) query
selection: each sparse vector applied alone scores every query of the pool with `selection_votes` votes, difficulty
= 1 - mean consistency, queries above `max_difficulty` are dropped, `n_easy` easy + `n_hard` hard are drawn
(queries.json); (4) a Vizier study over the coefficients (consistency maximised, perplexity minimised) whose sqlite
datastore lives in `out`, so `resume` continues it with no repeated trial; (5) the Pareto front, the automatic pick
(highest consistency within `ppl_budget` of the base model's perplexity, `merging.search.pick`), the trial table
(trials.csv, trials.json), pareto.png, summary.json, and the picked model written tensor by tensor (out/model).
Nothing is written per trial except the table. See docs/dots.md.

Every input is validated before anything is written into `out` (the checkpoints' shapes, the queries, a resumed
study's files): a refused run leaves nothing behind. One process owns `out` at a time (`out.lock`). A run killed at
any point (SIGKILL, Ctrl-C, full disk) resumes with `resume=True`; see docs/reliability.md.

Dependencies, declared here at the top: the search runs jax_cat's own models (`jax_cat.models.load_hf` / `save_hf`,
`jax_cat.sharding`) through the objectives of `merging.objectives` (jax_cat's sampler) and `merging.search`
(Vizier, the 'dots' extra, imported when a study opens). transformers' tokenizer is imported when a run loads
its models, as everywhere in jax_cat (importing it can pull in torch: seconds). The merging core (`import
merging`) imports none of this module.
"""
from __future__ import annotations

import csv
import io
import json
import math
import os
import shutil
import sqlite3
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from tqdm.auto import tqdm

from jax_cat.extras import pyplot, require
from jax_cat.io.atomic import atomic_write_text, clean_stale_temporaries, output_lock, save_figure
from jax_cat.io.safetensors import Checkpoint, CheckpointMismatchError, parse_size
from jax_cat.models import load_hf, save_hf
from jax_cat.models.hf import checkpoint_dtype
from jax_cat.sharding import make_mesh
from merging import search
from merging.dots_config import STUDY_KEYS, DotsConfig
from merging.adapters import open_checkpoint
from merging.methods import DotsMerge
from merging.objectives import (
    ObjectiveConfig, chat_prompt_ids, evaluate_candidate, query_difficulty, select_queries,
)
from merging.queries import load_queries
from merging.sparse_store import CompactCandidates, SparseVector
from merging.sparsify import Rescale, TopK
from merging.stream import analyze_checkpoints, merge_checkpoints

__all__ = ["DotsResult", "run_dots", "STUDY_KEYS", "check_checkpoints", "plot_pareto", "write_tables"]


@dataclass(frozen=True)
class DotsResult:
    """What a DoTS run picked and where it wrote it.

    Attributes:
      out: the run folder (tables, plot, summary.json, the study's vizier.db).
      model: the picked model, an HF checkpoint folder (out/model).
      coefficients: (sft, rl) coefficients of the picked trial.
      densities: (sft, rl) densities of the picked trial.
      metrics: the picked trial's metrics (consistency, perplexity, both perplexities, ...).
      reference: the same metrics of the base model on the same queries and draws.
      trial: the picked trial's id; num_trials: completed trials; front: trial ids on the Pareto front.
      summary: summary.json's content.
    """

    out: Path
    model: Path
    coefficients: tuple[float, float]
    densities: tuple[float, float]
    metrics: dict[str, float]
    reference: dict[str, float]
    trial: int
    num_trials: int
    front: tuple[int, ...]
    summary: dict[str, Any]


# ---------------------------------------------------------------------------------------------------------------
# Outputs
# ---------------------------------------------------------------------------------------------------------------
def _write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=_json_default) + "\n")


def _json_default(x: Any) -> Any:
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _records_table(records: Sequence[Any], front: set[int], picked: int | None) -> list[dict[str, Any]]:
    rows = []
    for r in records:
        row = r.row()
        row["on_front"] = r.trial_id in front
        row["picked"] = r.trial_id == picked
        rows.append(row)
    return rows


def write_tables(out: Path, rows: list[dict[str, Any]]) -> None:
    """trials.json and trials.csv (atomic)."""
    _write_json(out / "trials.json", rows)
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns)
    writer.writeheader()
    for row in rows:
        writer.writerow(row)
    atomic_write_text(out / "trials.csv", buf.getvalue())


def plot_pareto(path: Path, records: Sequence[Any], front: set[int], picked: Any, reference: dict[str, float] | None,
                perplexity_label: str) -> None:
    """Consistency against perplexity of every trial; the front joined, the pick starred, the base marked."""
    plt = pyplot(feature="the Pareto plot")
    if plt is None:
        return

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = [r.metrics["perplexity"] for r in records]
    ys = [r.metrics["consistency"] for r in records]
    ax.scatter(xs, ys, s=18, c=[r.trial_id for r in records], cmap="viridis", label="trials (colour: trial id)")
    fr = sorted((r for r in records if r.trial_id in front), key=lambda r: r.metrics["perplexity"])
    ax.plot([r.metrics["perplexity"] for r in fr], [r.metrics["consistency"] for r in fr], "r-o", ms=5, lw=1,
            mfc="none", label="Pareto front")
    if picked is not None:
        ax.plot(picked.metrics["perplexity"], picked.metrics["consistency"], "r*", ms=16, label="picked")
    if reference is not None:
        ax.plot(reference["perplexity"], reference["consistency"], "kx", ms=10, label="base model")
    ax.set_xlabel(f"{perplexity_label} perplexity (lower is better)")
    ax.set_ylabel("consistency (higher is better)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, path, dpi=120)


# ---------------------------------------------------------------------------------------------------------------
# Validation: everything before anything is written
# ---------------------------------------------------------------------------------------------------------------
def check_checkpoints(base: Any, sft: Any, rl: Any) -> None:
    """base, sft and rl are readable safetensors checkpoints of one architecture (headers only: no weights are
    read): the same tensor names and shapes (a tied lm_head.weight may be missing on either side)."""
    paths = {"base": base, "sft": sft, "rl": rl}
    ckpts = {}
    for name, given in paths.items():
        path = Path(given)
        if not path.is_dir():
            raise FileNotFoundError(f"--{name}: no checkpoint folder {path}")
        try:  # sft / rl may be LoRA adapter folders (base + B.A.alpha/r)
            ckpts[name] = open_checkpoint(path, ckpts.get("base"))
        except (ValueError, OSError) as err:
            raise type(err)(f"--{name}: {err}") from None
    base_info = ckpts["base"].info
    for name in ("sft", "rl"):
        info = ckpts[name].info
        for tensor in sorted(set(base_info) & set(info)):
            if base_info[tensor].shape != info[tensor].shape:
                raise CheckpointMismatchError(
                    f"--{name} {paths[name]} is not a fine-tune of --base: tensor {tensor!r} has shape "
                    f"{info[tensor].shape} there and {base_info[tensor].shape} in the base")
        missing = sorted((set(base_info) ^ set(info)) - {"lm_head.weight"})
        if missing:
            where = "--base" if missing[0] in info else f"--{name}"
            raise CheckpointMismatchError(
                f"--{name} {paths[name]} is not a fine-tune of --base: tensor {missing[0]!r} is missing in "
                f"{where} ({len(missing)} tensor name(s) differ)")


def _read_json(path: Path, what: str, kind: type = dict) -> Any:
    """A JSON file the run wrote earlier; a damaged one is bad input naming the file and what to do."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"{path} is damaged ({' '.join(str(err).split())[:100]}); {what}") from None
    if not isinstance(value, kind):
        raise ValueError(f"{path} is damaged (a JSON {type(value).__name__}, not a {kind.__name__}); {what}")
    return value


def _check_database(db: Path) -> None:
    """vizier.db opens as a SQLite database (read only: nothing is created or changed)."""
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
        try:
            con.execute("select count(*) from sqlite_master").fetchone()
        finally:
            con.close()
    except sqlite3.Error as err:
        raise ValueError(f"{db} is not a readable Vizier study database ({err}); move it aside to start the search "
                         f"afresh (trials.json beside it lists the completed trials), or restore it from a backup") \
            from None


def check_out(out: Path, record: dict[str, Any], queries: list[str], *, resume: bool) -> None:
    """`out` can be written and, with `resume`, holds the same study with intact files (read only)."""
    if out.exists() and not out.is_dir():
        raise NotADirectoryError(f"--out {out} is a file; give a folder")
    probe = out
    while not probe.exists():
        probe = probe.parent
    if not probe.is_dir() or not os.access(probe, os.W_OK | os.X_OK):
        raise PermissionError(f"--out {out}: cannot write in {probe} (read-only file system or no permission); "
                              f"choose another --out")
    if not (out.exists() and any(out.iterdir())):
        return
    if not resume:
        raise FileExistsError(f"--out {out} exists and is not empty (pass --resume to continue its study, or "
                              f"choose another --out)")
    cfg_path = out / "config.json"
    if cfg_path.exists():
        old = _read_json(cfg_path, "restore it, or start again in another --out")
        changed = [k for k in STUDY_KEYS if json.dumps(old.get(k)) != json.dumps(record.get(k))]
        if changed:
            k = changed[0]
            raise ValueError(f"--resume: --{k.replace('_', '-')} was {old.get(k)!r} in {out}, now "
                             f"{record.get(k)!r} ({len(changed)} setting(s) differ); resume with the same arguments "
                             f"or choose another --out")
    redo = "remove it and --resume to compute it again"
    for name in ("analysis.json", "reference.json"):
        if (out / name).exists():
            _read_json(out / name, redo)
    if (out / "queries.json").exists():
        q = _read_json(out / "queries.json", redo)
        sel = q.get("selected")
        if not (isinstance(sel, list) and sel and all(isinstance(i, int) and 0 <= i < len(queries) for i in sel)):
            raise ValueError(f"{out / 'queries.json'} is damaged (its 'selected' indices do not fit the "
                             f"{len(queries)} queries of --queries); {redo}")
    if (out / "vizier.db").exists():
        _check_database(out / "vizier.db")


def _load_queries(queries: Any, limit: int) -> list[str]:
    if isinstance(queries, (str, os.PathLike)):
        return load_queries(str(queries), limit)
    texts = [str(q).strip() for q in queries][:limit]
    if not texts or not all(texts):
        raise ValueError("queries: give a non-empty list of non-empty query texts (or a file / dataset to read)")
    return texts


def _validate(config: DotsConfig, base: Any, sft: Any, rl: Any, queries: Any, out: Path
              ) -> tuple[list[str], dict[str, Any]]:
    """Check every input before anything is written (mesh, checkpoints, queries, out); the query pool and the
    study record."""
    if config.mesh:
        need, have = math.prod(config.mesh), len(jax.devices())
        if need > have:
            raise ValueError(f"--mesh {' '.join(map(str, config.mesh))} needs {need} devices, {have} available")
    check_checkpoints(base, sft, rl)
    pool = _load_queries(queries, config.query_pool)
    record = config.study_record(base=base, sft=sft, rl=rl, queries=queries if isinstance(
        queries, (str, os.PathLike)) else pool)
    check_out(out, record, pool, resume=config.resume)
    return pool, record


def _remove_run(out: Path, keep_folder: bool) -> None:
    if not keep_folder:
        shutil.rmtree(out, ignore_errors=True)
        return
    for p in out.iterdir() if out.is_dir() else ():
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------------
def run_dots(config: DotsConfig, *, base: str | os.PathLike[str], sft: str | os.PathLike[str],
             rl: str | os.PathLike[str], queries: str | os.PathLike[str] | Sequence[str],
             out: str | os.PathLike[str]) -> DotsResult:
    """Run DoTS (see the module doc) on three HF checkpoint folders and unlabeled `queries` (a file, folder, hub
    dataset id or `arithmetic:PRESET`, or the query texts themselves) into the folder `out`.

    Validates everything, then owns `out` (its lock) for the run; a refused or failed fresh run leaves no `out`
    behind (an interrupted one stays, for `resume`). Errors name the setting by its flag (`--base`, `--resume`).
    """
    require("vizier.service.clients", feature="python -m merging.dots (the coefficient search)")
    out = Path(out)
    pool, record = _validate(config, base, sft, rl, queries, out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with output_lock(out):
        check_out(out, record, pool, resume=config.resume)  # again, now that we own it
        created = not out.exists()
        fresh = created or not any(out.iterdir())
        clean_stale_temporaries(out)
        try:
            return _pipeline(config, record, Path(base), Path(sft), Path(rl), pool, out)
        except BaseException as err:
            if fresh and not isinstance(err, KeyboardInterrupt) and not (out / "trials.json").exists():
                _remove_run(out, keep_folder=not created)  # ours (this run made it, under our lock), nothing done
            raise


def _pipeline(config: DotsConfig, record: dict[str, Any], base: Path, sft: Path, rl: Path, queries: list[str],
              out: Path) -> DotsResult:
    c = config
    objective_cfg = ObjectiveConfig(votes=c.votes, temperature=c.temperature, top_p=c.top_p,
                                    max_new_tokens=c.max_new_tokens, extract=c.extract, seed=c.seed,
                                    batch_size=c.batch_size, strategy=c.strategy())
    lo, hi = c.coeff_range
    densities = {n: c.search_density for n in ("sft", "rl")} if c.search_density else {}
    space = search.SearchSpace({"sft": (lo, hi), "rl": (lo, hi)}, densities)
    out.mkdir(parents=True, exist_ok=True)
    _write_json(out / "config.json", record)
    log = (lambda *a: print(*a, file=sys.stderr, flush=True)) if c.progress else (lambda *a: None)

    # (1) analysis, tensor by tensor
    if not (out / "analysis.json").exists():
        cmp = analyze_checkpoints(base, sft, rl, top_fraction=c.density, progress=c.progress)
        _write_json(out / "analysis.json", cmp.summary())
        log(cmp.table())

    # (2) models, task vectors, sparsification (once per density)
    if c.mesh:
        d, f, t = c.mesh
        mesh = make_mesh(d, f, t, devices=jax.devices()[: d * f * t])
    else:
        mesh = make_mesh()
    from transformers import AutoTokenizer  # as jax_cat does: transformers (and the torch it may pull) on use only

    dtype = jnp.dtype(c.dtype)
    tokenizer = AutoTokenizer.from_pretrained(base)
    base_model = load_hf(base, dtype=dtype, mesh=mesh)
    base_state = nnx.state(base_model)
    rescale = Rescale("l2", "global") if c.rescale else None
    cache: dict[tuple[int, float], SparseVector] = {}

    def sparse(i: int, density: float) -> SparseVector:
        """S(tau_i) at `density`, kept compactly (merging/sparse_store.py): the fine-tune is loaded, its task
        vector taken and sparsified leaf by leaf, and dropped; a density met later in the search loads it again."""
        if (i, density) not in cache:
            ft = load_hf((sft, rl)[i], dtype=dtype, mesh=mesh)
            cache[(i, density)] = SparseVector.from_models(nnx.state(ft), base_state,
                                                           TopK(density, c.topk_scope, rescale))
            del ft
        return cache[(i, density)]

    candidates = CompactCandidates(base_model, [sparse(0, c.density), sparse(1, c.density)])
    pool_ids = chat_prompt_ids(tokenizer, queries)

    # (3) query selection (cached in queries.json)
    qpath = out / "queries.json"
    if qpath.exists():
        chosen = _read_json(qpath, "remove it and --resume to compute it again")["selected"]
    else:
        n_draw = c.n_easy + c.n_hard
        difficulty = None
        if len(queries) > n_draw:
            sel_cfg = replace(objective_cfg, votes=c.selection_votes, strategy=None)
            log(f"query selection: scoring {len(queries)} queries with each sparse vector alone "
                f"({c.selection_votes} votes)")
            per_model = [evaluate_candidate(candidates.single(i), tokenizer, pool_ids, sel_cfg, mesh=mesh).per_query
                         for i in range(2)]
            difficulty = query_difficulty(per_model)
            try:
                chosen = select_queries(difficulty, n_easy=c.n_easy, n_hard=c.n_hard,
                                        max_difficulty=c.max_difficulty, seed=c.seed)
            except ValueError as err:  # name the setting that lets the run go on
                raise ValueError(f"{err}; raise --max-difficulty (e.g. 1.0) or give easier --queries") from None
        else:
            chosen = list(range(len(queries)))
        _write_json(qpath, {"selected": chosen, "queries": [queries[i] for i in chosen],
                            "difficulty": None if difficulty is None else difficulty.tolist(),
                            "pool_size": len(queries)})
    prompt_ids = [pool_ids[i] for i in chosen]

    # reference: the base model on the same queries and draws (cached)
    rpath = out / "reference.json"
    if rpath.exists():
        reference = _read_json(rpath, "remove it and --resume to compute it again")
    else:
        # base + 0 x each vector is the base itself (the float32 sum rounds back to it): no candidate is built
        scores = evaluate_candidate(base_model, tokenizer, prompt_ids, objective_cfg, mesh=mesh)
        reference = scores.metrics()
        reference["perplexity"] = reference[f"{c.perplexity}_perplexity"]
        _write_json(rpath, reference)

    # (4) the search
    def objective(params: dict[str, float]) -> dict[str, float]:
        ds = [params.get(f"density_{n}", c.density) for n in ("sft", "rl")]
        model = candidates.model([params["sft"], params["rl"]], [sparse(i, d) for i, d in enumerate(ds)])
        metrics = evaluate_candidate(model, tokenizer, prompt_ids, objective_cfg, mesh=mesh).metrics()
        metrics["perplexity"] = metrics[f"{c.perplexity}_perplexity"]
        return metrics

    def choose(records: Sequence[Any]) -> tuple[set[int], Any]:
        pts = [[r.metrics["consistency"], r.metrics["perplexity"]] for r in records]
        front = {records[i].trial_id for i in search.pareto_front(pts, ("max", "min"))} if records else set()
        return front, search.pick(records, reference_perplexity=reference["perplexity"], budget=c.ppl_budget)

    bar = tqdm(total=c.trials, desc="trials", unit="trial", disable=None if c.progress else True)

    def on_trial(rec: Any, records: list[Any]) -> None:
        front, best = choose(records)
        write_tables(out, _records_table(records, front, best.trial_id if best else None))
        bar.n = min(len(records), c.trials)
        if best is not None:
            bar.set_postfix_str(f"pick #{best.trial_id}: sft={best.parameters['sft']:.2f} "
                                f"rl={best.parameters['rl']:.2f} cons={best.metrics['consistency']:.3f} "
                                f"ppl={best.metrics['perplexity']:.3g}")
        bar.refresh()

    metrics = [search.Metric("consistency", "max"), search.Metric("perplexity", "min")]
    start = time.perf_counter()
    records = search.run_search(objective, space, metrics, num_trials=c.trials, db_path=out / "vizier.db",
                                study_id="dots", designer=c.designer, on_trial=on_trial, seed=c.seed)
    bar.close()
    if not records:
        raise RuntimeError("the study has no completed feasible trial")
    front, best = choose(records)
    write_tables(out, _records_table(records, front, best.trial_id))
    plot_pareto(out / "pareto.png", records, front, best, reference, c.perplexity)

    # (5) the picked model, tensor by tensor
    picked_d = [best.parameters.get(f"density_{n}", c.density) for n in ("sft", "rl")]
    model_dir = out / "model"
    coeffs = (best.parameters["sft"], best.parameters["rl"])
    if picked_d[0] == picked_d[1]:
        # rescale off = a per-tensor L-inf "rescale": top-k always keeps a tensor's largest |x|, so its factor is
        # exactly 1 (tests/merging/test_dots_cli.py checks the written model equals the searched candidate).
        norm, scope = ("l2", "global") if c.rescale else ("linf", "tensor")
        spec = DotsMerge(coefficients=coeffs, density=picked_d[0], topk_scope=c.topk_scope, norm=norm,
                         rescale_scope=scope)
        merge_checkpoints(base, [sft, rl], spec, model_dir, max_shard_size=c.max_shard_size, overwrite=True,
                          progress=c.progress, dtype=c.out_dtype)
        how = "streamed merge"
    else:  # two densities: not one DotsMerge; write the in-memory candidate (the very weights that were scored)
        out_dtype = checkpoint_dtype(base) if c.out_dtype == "base" else c.out_dtype  # as the streamed path writes
        save_hf(candidates.model(list(coeffs), [sparse(i, d) for i, d in enumerate(picked_d)]), model_dir,
                tokenizer=base, max_shard_bytes=parse_size(c.max_shard_size), dtype=out_dtype, source=base)
        how = "in-memory candidate"
    summary = {
        "picked": best.row(), "densities": picked_d, "rescale": record["rescale"], "topk_scope": c.topk_scope,
        "reference_base_model": reference, "ppl_budget": c.ppl_budget, "perplexity_objective": c.perplexity,
        "front": [r.row() for r in records if r.trial_id in front], "num_trials": len(records),
        "designer": c.designer, "search_seconds": time.perf_counter() - start, "model": str(model_dir),
        "model_written_by": how,
    }
    _write_json(out / "summary.json", summary)
    return DotsResult(out=out, model=model_dir, coefficients=coeffs, densities=(picked_d[0], picked_d[1]),
                      metrics=dict(best.metrics), reference=dict(reference), trial=best.trial_id,
                      num_trials=len(records), front=tuple(sorted(front)), summary=summary)
