"""tunix's side of benchmarks/grpo_peers.py: `tunix.rl.grpo.GRPOLearner` over an `RLCluster` (vanilla rollout engine,
actor and rollout on one CPU device) with tunix's own Qwen2 loaded from the shared safetensors checkpoint; timed
around its global step (`_run_global_step`) and its generation + advantages (`_generate_and_compute_advantage`).

    .peers-venv/tunix/bin/python benchmarks/peers/tunix_side.py WORKLOAD_JSON
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StepClock, Workload, emit, exact_rewards, rss_mib, summarise  # noqa: E402

CLOCK = StepClock()


def main() -> None:
    w = Workload.read(sys.argv[1])
    import jax
    import numpy as np
    import optax
    from importlib.metadata import version
    from transformers import AutoTokenizer
    from tunix.models.qwen2 import model as qwen2_model
    from tunix.models.qwen2 import params as qwen2_params
    from tunix.rl import rl_cluster as rlc
    from tunix.rl.grpo.grpo_learner import GRPOConfig, GRPOLearner
    from tunix.rl.rollout import base_rollout

    marks = {"rss_after_imports_mib": rss_mib()}
    hf = json.loads((Path(w.checkpoint) / "config.json").read_text())
    config = qwen2_model.ModelConfig(
        num_layers=hf["num_hidden_layers"], vocab_size=hf["vocab_size"], embed_dim=hf["hidden_size"],
        hidden_dim=hf["intermediate_size"], num_heads=hf["num_attention_heads"], head_dim=hf["head_dim"],
        num_kv_heads=hf["num_key_value_heads"], rope_theta=int(hf.get("rope_theta") or
                                                              hf["rope_parameters"]["rope_theta"]),
        norm_eps=hf["rms_norm_eps"], use_tied_embedding=hf["tie_word_embeddings"])
    mesh = jax.make_mesh((1, 1), ("fsdp", "tp"), axis_types=(jax.sharding.AxisType.Auto,) * 2)
    model = qwen2_params.create_model_from_safe_tensors(w.checkpoint, config, mesh)
    tokenizer = AutoTokenizer.from_pretrained(w.checkpoint)
    optimizer = optax.chain(optax.clip_by_global_norm(w.clip_norm),
                            optax.adamw(w.learning_rate, weight_decay=w.weight_decay))
    total = w.warmup + w.steps
    cluster = rlc.RLCluster(
        actor=model, reference=None, tokenizer=tokenizer,
        cluster_config=rlc.ClusterConfig(
            role_to_mesh={rlc.Role.ACTOR: mesh, rlc.Role.REFERENCE: mesh, rlc.Role.ROLLOUT: mesh},
            rollout_engine="vanilla", offload_to_cpu=False,
            training_config=rlc.RLTrainingConfig(actor_optimizer=optimizer, eval_every_n_steps=10 ** 9,
                                                 max_steps=total, mini_batch_size=w.batch_size,
                                                 ),
            rollout_config=base_rollout.RolloutConfig(
                max_tokens_to_generate=w.max_new_tokens, max_prompt_length=w.max_prompt_len + 3,
                kv_cache_size=w.max_prompt_len + 3 + w.max_new_tokens, temperature=w.temperature, top_p=1.0,
                top_k=None, eos_tokens=[tokenizer.eos_token_id]),
        ),
    )

    def reward(prompts, completions, answer, **_):
        return exact_rewards(completions, answer)

    learner = GRPOLearner(rl_cluster=cluster, reward_fns=[reward],  # token-mean loss like the others
                          algo_config=GRPOConfig(num_generations=w.group_size, num_iterations=1, beta=0.0))
    generate = learner._generate_and_compute_advantage
    learner._generate_and_compute_advantage = lambda *a, **k: CLOCK.timed_generate(generate, *a, **k)
    step = learner._run_global_step

    def timed_step(*a, **k):
        CLOCK.step_begin()
        out = step(*a, **k)
        jax.block_until_ready(nnx_state(cluster))
        CLOCK.step_end()
        return out

    def nnx_state(c):
        from flax import nnx
        return nnx.state(c.actor_trainer.model)

    learner._run_global_step = timed_step
    b = w.batch_size
    # arrays, not lists: tunix repeats each batch's leaves num_generations times with jax.tree.map
    data = [{"prompts": np.asarray(w.prompts[i:i + b]), "answer": np.asarray(w.answers[i:i + b])}
            for i in range(0, total * b, b)]
    learner.train(data)
    emit(summarise(CLOCK, w.warmup, side="tunix", rss_end_mib=rss_mib(), **marks,
                   versions={"tunix": version("google-tunix"), "jax": jax.__version__}))


if __name__ == "__main__":
    main()
