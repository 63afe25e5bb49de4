"""Setting names users bring from TRL (`GRPOConfig` / `SFTConfig`) and tunix (`GRPOConfig`, `RLTrainingConfig`),
mapped to this trainer's keys, so a refused `--set num_generations=8` names the key to use and what differs.

Only the hint is given: the familiar names are never accepted as aliases (one name per concept, docs/glossary.md).
docs/training.md tabulates this mapping.
"""
from __future__ import annotations

from typing import NamedTuple

__all__ = ["FAMILIAR_NAMES", "Familiar", "familiar_hint"]


class Familiar(NamedTuple):
    """Where a familiar setting lives here (`key`: a config key, or a CLI flag starting with --) and what differs."""

    key: str
    source: str
    note: str = ""


FAMILIAR_NAMES: dict[str, Familiar] = {
    "num_generations": Familiar("rollout.group_size", "TRL/tunix"),
    "max_completion_length": Familiar("rollout.max_new_tokens", "TRL"),
    "max_tokens_to_generate": Familiar("rollout.max_new_tokens", "tunix"),
    "total_generation_steps": Familiar("rollout.max_new_tokens", "tunix"),
    "max_prompt_length": Familiar("data.max_prompt_len", "TRL/tunix", "longer prompts are refused, not cut"),
    "num_iterations": Familiar("train.updates_per_batch", "TRL/tunix"),
    "epsilon": Familiar("loss.clip_eps_low", "TRL/tunix", "None (the default) = no ratio clipping"),
    "epsilon_low": Familiar("loss.clip_eps_low", "TRL"),
    "epsilon_high": Familiar("loss.clip_eps_high", "TRL", "DAPO's clip-higher"),
    "loss_type": Familiar("loss.reduction", "TRL",
                          "TRL's 'grpo' = 'sequence_mean', 'bnpo'/'dapo' = 'token_mean', 'dr_grpo' = 'token_sum' "
                          "(over the batch's sequences) with loss.scale_rewards='none'"),
    "scale_rewards": Familiar("loss.scale_rewards", "TRL", "'group', 'batch' or 'none' (TRL's True = 'group')"),
    "beta": Familiar("loss.beta", "TRL/tunix"),
    "gradient_accumulation_steps": Familiar("train.micro_batches", "TRL",
                                            "splits ONE batch of data.batch_size prompts into that many micro-batches "
                                            "(exact: the same loss and gradient); TRL accumulates that many batches"),
    "per_device_train_batch_size": Familiar("data.batch_size", "TRL",
                                            "the global batch (prompts per step for GRPO), not per device"),
    "mini_batch_size": Familiar("data.batch_size", "tunix"),
    "logging_steps": Familiar("train.log_every", "TRL"),
    "save_steps": Familiar("train.checkpoint_every", "TRL"),
    "save_interval_steps": Familiar("train.checkpoint_every", "tunix"),
    "save_total_limit": Familiar("checkpoint.keep", "TRL"),
    "max_to_keep": Familiar("checkpoint.keep", "tunix/orbax"),
    "max_grad_norm": Familiar("optimizer.clip_norm", "TRL/tunix"),
    "learning_rate": Familiar("optimizer.learning_rate", "TRL/tunix", "warmup.learning_rate is the SFT warm-up's"),
    "lr_scheduler_type": Familiar("optimizer.schedule", "TRL", "'cosine' or 'constant'"),
    "warmup_steps": Familiar("optimizer.warmup_steps", "TRL/tunix"),
    "weight_decay": Familiar("optimizer.weight_decay", "TRL/tunix"),
    "adam_beta1": Familiar("optimizer.b1", "TRL"),
    "adam_beta2": Familiar("optimizer.b2", "TRL"),
    "adam_epsilon": Familiar("optimizer.eps", "TRL"),
    "max_steps": Familiar("train.steps", "TRL/tunix"),
    "num_train_epochs": Familiar("train.steps", "TRL", "training length is counted in steps here"),
    "temperature": Familiar("rollout.temperature", "TRL/tunix", "eval.temperature is the evaluation's"),
    "top_p": Familiar("rollout.top_p", "TRL/tunix"),
    "top_k": Familiar("rollout.top_k", "TRL/tunix"),
    "seed": Familiar("train.seed", "TRL"),
    "report_to": Familiar("logging.report_to", "TRL", "a list of 'jsonl', 'tensorboard', 'wandb' or 'none'; "
                          "metrics.jsonl is always written"),
    "run_name": Familiar("logging.run_name", "TRL", "the W&B run's name"),
    "flush_every_n_steps": Familiar("train.log_every", "tunix"),
    "logging_dir": Familiar("--out", "TRL", "TensorBoard files go to <out>/tb/<stage>/"),
    "log_dir": Familiar("--out", "tunix", "TensorBoard files go to <out>/tb/<stage>/"),
    "output_dir": Familiar("--out", "TRL", "a command-line flag, not a config key"),
    "checkpoint_root_directory": Familiar("--out", "tunix", "a command-line flag, not a config key"),
    "resume_from_checkpoint": Familiar("--resume", "TRL", "a command-line flag: resumes the newest intact checkpoint"),
    "model_name_or_path": Familiar("model.path", "TRL"),
    "dataset_name": Familiar("data.dataset", "TRL"),
    "bf16": Familiar("model.compute_dtype", "TRL", "'bfloat16' (model.param_dtype for the stored weights)"),
    "gradient_checkpointing": Familiar("model.remat", "TRL", "true/'full', or 'dots' / 'dots_no_batch'"),
    "lora_r": Familiar("lora.rank", "TRL/PEFT", "0 = full fine-tuning"),
    "lora_rank": Familiar("lora.rank", "tunix", "0 = full fine-tuning"),
    "lora_alpha": Familiar("lora.alpha", "TRL/PEFT/tunix", "scale alpha / rank, as PEFT"),
    "lora_dropout": Familiar("lora.dropout", "TRL/PEFT"),
    "lora_target_modules": Familiar("lora.targets", "TRL", "HF module names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
    "target_modules": Familiar("lora.targets", "PEFT", "HF module names: q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj"),
    "use_peft": Familiar("lora.rank", "TRL", "LoRA is on when lora.rank > 0"),
    "load_in_4bit": Familiar("lora.quantize", "TRL/bitsandbytes", "'nf4' (with lora.rank > 0: QLoRA)"),
    "load_in_8bit": Familiar("lora.quantize", "TRL/bitsandbytes", "'int8' (with lora.rank > 0)"),
    "bnb_4bit_quant_type": Familiar("lora.quantize", "bitsandbytes", "'nf4'"),
}


def familiar_hint(key: str) -> str | None:
    """'; did you mean ...' for a key named as TRL or tunix name it (its last dotted part), else None."""
    found = FAMILIAR_NAMES.get(key.rsplit(".", 1)[-1])
    if found is None:
        return None
    note = f"; {found.note}" if found.note else ""
    return f"; did you mean {found.key!r}? ({found.source}'s {key.rsplit('.', 1)[-1]}{note})"
