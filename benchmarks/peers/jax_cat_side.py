"""jax-cat's side of benchmarks/grpo_peers.py: the trainer's own `run_grpo` (what `python -m jax_cat.train` runs
for train.method = "grpo"), with timing hooks around its rollout call and its step loop, nothing re-implemented.

    python benchmarks/peers/jax_cat_side.py WORKLOAD_JSON
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StepClock, Workload, emit, peak_rss_mib, rss_mib, summarise  # noqa: E402

CLOCK = StepClock()  # before the heavy imports: start_to_first_step_end_s counts them


def overrides(w: Workload) -> dict:
    """The trainer settings of the shared workload (`--set` keys of `python -m jax_cat.train`)."""
    return {
        "train.method": "grpo", "train.steps": w.warmup + w.steps, "train.seed": w.seed,
        "train.eval_at_end": False, "train.save_final": False, "train.updates_per_batch": 1,
        "model.path": w.checkpoint,
        "data.dataset": "arithmetic:sum3", "data.style": "plain", "data.use_chat_template": False,
        "data.batch_size": w.batch_size, "data.max_prompt_len": w.max_prompt_len,
        "rollout.group_size": w.group_size, "rollout.max_new_tokens": w.max_new_tokens,
        "rollout.temperature": w.temperature,
        "optimizer.learning_rate": w.learning_rate, "optimizer.schedule": "constant", "optimizer.warmup_steps": 0,
        "optimizer.weight_decay": w.weight_decay, "optimizer.clip_norm": w.clip_norm,
        "loss.beta": 0.0, "logging.report_to": ["jsonl"], "logging.progress": False,
    }


def main() -> None:
    w = Workload.read(sys.argv[1])
    import jax

    from jax_cat.io import compile_cache

    # the product's own cache rule (JAX_CAT_XLA_CACHE from the harness's --compile-cache; off by default there)
    cache = compile_cache.enable(compile_cache.resolve(os.environ), prog="jax_cat_side")
    from jax_cat.training import grpo
    from jax_cat.training.config import load_config

    marks = {"rss_after_imports_mib": rss_mib()}
    trace: list = []
    if os.environ.get("GRPO_PEERS_TRACE"):  # RSS / peak after every XLA compile: where the peak comes from
        def on_event(event: str, duration: float, **_) -> None:
            if event == "/jax/core/compile/backend_compile_duration":
                trace.append({"compile_s": round(duration, 2), "rss_mib": round(rss_mib()),
                              "hwm_mib": round(peak_rss_mib())})
        jax.monitoring.register_event_duration_secs_listener(on_event)
    rollouts = grpo.collect_rollouts
    grpo.collect_rollouts = lambda *a, **k: CLOCK.timed_generate(rollouts, *a, **k)  # host rewards: synced
    loop = grpo.run_stage  # runtime.run_stage: the SFT and GRPO step loop (it took over grpo.run_steps)

    def timed_loop(*, do_step, **kwargs):
        def step(state, i):
            CLOCK.step_begin()
            state, metrics, stats = do_step(state, i)
            jax.block_until_ready(state.params)
            CLOCK.step_end()
            if i == 0:
                marks["rss_after_first_step_mib"] = rss_mib()
                marks["peak_after_first_step_mib"] = peak_rss_mib()
            return state, metrics, stats
        return loop(do_step=step, **kwargs)

    grpo.run_stage = timed_loop
    cfg = load_config(None, overrides(w))
    result = grpo.run_grpo(cfg, out=None)
    losses = [float(h["loss"]) for h in result.history if "loss" in h][:1]
    emit(summarise(CLOCK, w.warmup, side="jax-cat", first_logged_loss=losses[0] if losses else None,
                   rss_end_mib=rss_mib(), **marks, **({"compile_trace": trace} if trace else {}),
                   versions={"jax": jax.__version__, "jax_cat": _version()},
                   compile_cache=str(cache) if cache else None))


def _version() -> str:
    from importlib.metadata import version

    try:
        return version("jax-cat")
    except Exception:  # noqa: BLE001
        return "?"


if __name__ == "__main__":
    main()
