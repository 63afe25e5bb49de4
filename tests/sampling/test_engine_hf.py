"""Our sampler against transformers' `generate` on tiny random checkpoints, token for token (float32)."""
import numpy as np
import pytest
import torch
import transformers

from jax_cat.models import load_hf
from jax_cat.sampling import generate

# Different lengths, so the batch is left-padded (and our prompt bucket pads further than transformers does).
PROMPTS = ["<bos>user: 12+7=?\nassistant: ", "<bos>hi", "<bos>The quick brown fox jumps over"]
MAX_NEW = 12
EOS, PAD = 2, 0


def hf_greedy(path, prompts, max_new_tokens):
    tokenizer = transformers.AutoTokenizer.from_pretrained(path)
    tokenizer.padding_side = "left"
    model = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    batch = tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.no_grad():
        out = model.generate(**batch, do_sample=False, max_new_tokens=max_new_tokens, eos_token_id=EOS,
                             pad_token_id=PAD)
    new = out[:, batch["input_ids"].shape[1]:].numpy()
    rows = []
    for row in new:
        row = row.tolist()
        rows.append(row[: row.index(EOS) + 1] if EOS in row else row)
    return rows, tokenizer


@pytest.fixture(scope="module")
def qwen3(tiny_hf_checkpoint):
    path = tiny_hf_checkpoint("qwen3")
    return path, load_hf(path), transformers.AutoTokenizer.from_pretrained(path)


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_greedy_equals_transformers_generate(tiny_hf_checkpoint, model_type):
    path = tiny_hf_checkpoint(model_type)
    expected, tokenizer = hf_greedy(path, PROMPTS, MAX_NEW)
    ours = generate(load_hf(path), tokenizer, PROMPTS, n=2, max_new_tokens=MAX_NEW, temperature=0.0)
    for i, row in enumerate(ours):
        for comp in row:
            assert comp.tokens.tolist() == expected[i], f"{model_type} prompt {i}"
            assert comp.finish_reason == ("eos" if expected[i][-1] == EOS else "length")
            assert comp.text == tokenizer.decode([t for t in expected[i] if t != EOS], skip_special_tokens=True)


def test_policy_logprobs_equal_transformers_scores(qwen3):
    """Completion.logprobs = log softmax of the model's logits at each generated token (checked via a torch forward)."""
    path, model, tokenizer = qwen3
    (comp,), = generate(model, tokenizer, PROMPTS[:1], max_new_tokens=MAX_NEW, temperature=1.0, seed=3)
    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    prompt = tokenizer(PROMPTS[:1])["input_ids"][0]
    ids = torch.tensor([prompt + comp.tokens.tolist()])
    with torch.no_grad():
        logp = torch.log_softmax(hf(ids).logits[0].double(), -1).numpy()
    expect = logp[np.arange(len(prompt) - 1, ids.shape[1] - 1), comp.tokens]
    np.testing.assert_allclose(comp.logprobs, expect, atol=2e-4)
    np.testing.assert_allclose(comp.sample_logprobs, comp.logprobs, atol=1e-5)  # T=1, no filters


def test_low_temperature_equals_greedy_and_seeds(qwen3):
    _, model, tokenizer = qwen3
    kw = dict(n=2, max_new_tokens=MAX_NEW)
    greedy = generate(model, tokenizer, PROMPTS, temperature=0.0, **kw)
    cold = generate(model, tokenizer, PROMPTS, temperature=1e-4, seed=5, **kw)
    assert [[c.tokens.tolist() for c in r] for r in cold] == [[c.tokens.tolist() for c in r] for r in greedy]
    for r_cold, r_greedy in zip(cold, greedy):
        for a, b in zip(r_cold, r_greedy):
            np.testing.assert_allclose(a.logprobs, b.logprobs, rtol=1e-5, atol=1e-6)

    hot_a = generate(model, tokenizer, PROMPTS, temperature=1.0, seed=5, **kw)
    hot_b = generate(model, tokenizer, PROMPTS, temperature=1.0, seed=5, **kw)
    hot_c = generate(model, tokenizer, PROMPTS, temperature=1.0, seed=6, **kw)
    toks = lambda out: [[c.tokens.tolist() for c in r] for r in out]
    assert toks(hot_a) == toks(hot_b)
    assert toks(hot_a) != toks(hot_c)
    for row in toks(hot_a):
        assert len({tuple(t) for t in row}) == len(row)  # n samples of a prompt differ (vocab 128, 12 tokens)
    # top-k = 1 is greedy too, whatever the temperature
    top1 = generate(model, tokenizer, PROMPTS, temperature=1.0, top_k=1, seed=5, **kw)
    assert toks(top1) == toks(greedy)


def test_shared_prefill_equals_one_prefill_per_row(qwen3):
    """sample_tokens(group_ids=...) (a prompt's KV cache copied to its rows) = prefilling every row, on a real
    KV-cached model with left-padded prompts of different lengths."""
    import jax

    from jax_cat.sampling import row_keys_for, sample_tokens
    from jax_cat.sampling.engine import left_pad

    _, model, tokenizer = qwen3
    lists = tokenizer(PROMPTS[:2])["input_ids"]
    ids, mask = left_pad(lists, 32, PAD)
    group_ids = np.array([1, 0, 1, 1, 0, 0])
    keys = row_keys_for(jax.random.key(2), group_ids, np.arange(6))
    kw = dict(max_new_tokens=MAX_NEW, row_keys=keys, temperature=1.0, eos_token_ids=[EOS], pad_token_id=PAD)
    shared = sample_tokens(model, ids, mask, group_ids=group_ids, **kw)
    per_row = sample_tokens(model, ids[group_ids], mask[group_ids], **kw)
    np.testing.assert_array_equal(shared.tokens, per_row.tokens)
    np.testing.assert_array_equal(shared.lengths, per_row.lengths)
    np.testing.assert_allclose(shared.logprobs, per_row.logprobs, atol=1e-5)
    assert len({tuple(t) for t in np.asarray(shared.tokens).tolist()}) == 6  # six different samples
    with pytest.raises(ValueError, match="group_ids indices"):
        sample_tokens(model, ids, mask, group_ids=np.array([0, 2]), max_new_tokens=2)
