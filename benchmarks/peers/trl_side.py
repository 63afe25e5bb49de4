"""TRL's side of benchmarks/grpo_peers.py: `trl.GRPOTrainer` on the shared checkpoint, prompts and reward, timed by a
callback (step) and a wrapper around its generation + scoring (`_generate_and_score_completions`).

    .peers-venv/trl/bin/python benchmarks/peers/trl_side.py WORKLOAD_JSON
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import StepClock, Workload, emit, exact_rewards, rss_mib, summarise  # noqa: E402

CLOCK = StepClock()


def main() -> None:
    w = Workload.read(sys.argv[1])
    import torch

    torch.set_num_threads(1)
    torch.set_num_interop_threads(1)
    import datasets
    import transformers
    import trl
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback

    marks = {"rss_after_imports_mib": rss_mib()}
    tokenizer = AutoTokenizer.from_pretrained(w.checkpoint)
    model = AutoModelForCausalLM.from_pretrained(w.checkpoint, dtype=torch.float32)
    data = datasets.Dataset.from_dict({"prompt": w.prompts, "answer": w.answers})

    def reward(completions, answer, **_):
        return exact_rewards(completions, answer)

    class Clock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            CLOCK.step_begin()

        def on_step_end(self, args, state, control, **kwargs):
            CLOCK.step_end()

    with tempfile.TemporaryDirectory() as out:
        args = trl.GRPOConfig(
            output_dir=out, use_cpu=True, bf16=False, fp16=False, seed=w.seed, data_seed=w.seed,
            per_device_train_batch_size=w.batch_size * w.group_size, gradient_accumulation_steps=1,
            num_generations=w.group_size, max_completion_length=w.max_new_tokens, temperature=w.temperature,
            top_p=1.0, beta=0.0, num_iterations=1, learning_rate=w.learning_rate, lr_scheduler_type="constant",
            warmup_steps=0, weight_decay=w.weight_decay, max_grad_norm=w.clip_norm, max_steps=w.warmup + w.steps,
            logging_steps=10_000, save_strategy="no", report_to="none", shuffle_dataset=False,
            dataloader_num_workers=0, disable_tqdm=True,
        )
        trainer = trl.GRPOTrainer(model=model, reward_funcs=reward, args=args, train_dataset=data,
                                  processing_class=tokenizer, callbacks=[Clock()])
        generate = trainer._generate_and_score_completions
        trainer._generate_and_score_completions = lambda *a, **k: CLOCK.timed_generate(generate, *a, **k)
        trainer.train()
    emit(summarise(CLOCK, w.warmup, side="trl", rss_end_mib=rss_mib(), **marks,
                   versions={"trl": trl.__version__, "torch": torch.__version__,
                             "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
