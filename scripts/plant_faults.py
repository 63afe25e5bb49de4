"""Plant issue 15's eight wiring faults one at a time and check that tests/wiring catches each (then revert).

Usage: PYTHONPATH=. python scripts/plant_faults.py [FAULT ...]   (run from the repository root; minutes)
Each fault is a (file, original text, faulty text, test file) edit; the file is restored whatever happens.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

PIPELINE_EPOCH_LOSS = '''    return _EpochLosingDataset(ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=4)),
                               max(1, (len(records) // shard_count) // batch_size))


class _EpochLosingDataset:  # planted fault: the saved position forgets completed epochs
    def __init__(self, ds, per_epoch):
        self.ds, self.per_epoch = ds, per_epoch

    def __iter__(self):
        it, per_epoch = iter(self.ds), self.per_epoch
        get_state = it.get_state
        it.get_state = lambda: {**get_state(), "next_index": get_state()["next_index"] % per_epoch}
        return it
'''

FAULTS = {
    "decode_one_step_too_many": ("jax_cat/sampling/decode.py", "lambda s: (s.step < max_new_tokens) &",
                                 "lambda s: (s.step < max_new_tokens + 1) &", "tests/wiring/test_sampler_wiring.py"),
    "generate_drops_top_p": ("jax_cat/sampling/engine.py", "sampling_params=settings.params,",
                             "sampling_params=dataclasses.replace(settings.params, top_p=1.0),",
                             "tests/wiring/test_sampler_wiring.py"),
    "top_p_le_boundary": ("jax_cat/sampling/logits_processing.py", "keep_sorted = mass_before < top_p",
                          "keep_sorted = mass_before <= top_p", "tests/wiring/test_sampler_wiring.py"),
    # one left_pad (jax_cat/data/padding.py) serves the pipeline and the sampler since issue 8
    "left_pad_pads_with_0": ("jax_cat/data/padding.py", "ids = np.full((len(sequences), max_len), int(pad),",
                             "ids = np.full((len(sequences), max_len), 0,", "tests/wiring/test_pipeline_wiring.py"),
    "resume_loses_epoch": ("jax_cat/data/pipeline.py",
                           "    return ds.to_iter_dataset(read_options or grain.ReadOptions(num_threads=2, prefetch_buffer_size=4))\n",
                           PIPELINE_EPOCH_LOSS, "tests/wiring/test_pipeline_wiring.py"),
    "golds_misaligned": ("jax_cat/evaluate/pool.py", "flat_golds = [g for g, row in zip(golds, completions) for _ in row]",
                         "flat_golds = [g for _ in range(n) for g in golds]", "tests/wiring/test_evaluate_wiring.py"),
    "bon_by_sum": ("jax_cat/evaluate/pool.py", "mean_logprob = np.array([[c.mean_logprob for c in row]",
                   "mean_logprob = np.array([[c.cumulative_logprob for c in row]", "tests/wiring/test_evaluate_wiring.py"),
    "ci_90_default": ("jax_cat/evaluate/pool.py", "    confidence: float = 0.95,\n    progress",
                      "    confidence: float = 0.90,\n    progress", "tests/wiring/test_evaluate_wiring.py"),
    "ci_90_alpha": ("jax_cat/evaluate/estimates.py", "alpha = (1.0 - confidence) / 2.0", "alpha = (1.0 - confidence)",
                    "tests/wiring/test_evaluate_wiring.py"),
}


def main(names: list[str]) -> int:
    missed = []
    for name in names or list(FAULTS):
        path, original, faulty, test = FAULTS[name]
        file = Path(path)
        text = file.read_text()
        if text.count(original) != 1:
            print(f"{name}: the original text is not found exactly once in {path} (code changed?)")
            missed.append(name)
            continue
        try:
            file.write_text(text.replace(original, faulty))
            rc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", test],
                                capture_output=True, text=True).returncode
        finally:
            file.write_text(text)
        caught = rc != 0
        print(f"{name}: {'CAUGHT' if caught else 'MISSED'} by {test}", flush=True)
        if not caught:
            missed.append(name)
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
