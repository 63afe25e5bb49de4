"""The sampler speaks the glossary: explicit keys, SamplingParams, group_ids / sample_mask / mask in its output,
old argument names as aliases, and `group_ids` + `answer_ids` flowing straight into the losses."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax_cat.losses import dynamic_consensus_threshold, group_advantages
from jax_cat.rewards import answer_ids
from jax_cat.sampling import SamplingParams, generate, group_ids, sample_tokens
from tests.sampling.toy_model import CharTokenizer, ToyLM

V, EOS = 12, 2


def chain_model(noise: float = 0.0, seed: int = 0, eos_after: int = 6):
    """Greedy walks t -> t+1 and emits EOS after id `eos_after`; `noise` makes sampling draw different tokens."""
    rng = np.random.default_rng(seed)
    table = rng.normal(size=(V, V)) * noise
    for t in range(V):
        table[t, EOS if t == eos_after else min(t + 1, V - 1)] += 5.0
    return ToyLM(table, rng.normal(size=(64, V)) * noise, eos_token_id=EOS)


IDS = np.array([[0, 0, 1, 3], [1, 3, 4, 5]], np.int32)
MASK = (IDS != 0).astype(np.int32)


def test_a_key_is_required():
    model = chain_model()
    with pytest.raises(TypeError, match=r"no key given; pass key=jax.random.key\(seed\)"):
        sample_tokens(model, IDS, MASK, max_new_tokens=2)
    with pytest.raises(TypeError, match=r"key=jax.random.key\(3\)"):
        sample_tokens(model, IDS, MASK, max_new_tokens=2, key=3)
    key = jax.random.key(0)
    with pytest.raises(TypeError, match="not both"):
        sample_tokens(model, IDS, MASK, max_new_tokens=2, key=key, row_keys=jax.random.split(key, 2))


def test_outputs_carry_group_ids_sample_mask_and_the_loss_mask():
    model = chain_model()
    # prompt rows: [.., a] and [a, b, c]; rows continue prompts 1, 0, 1; the last row is filler
    out = sample_tokens(model, IDS, MASK, max_new_tokens=5, key=jax.random.key(0), temperature=0.0,
                        eos_token_ids=[EOS], group_ids=[1, 0, 1], sample_mask=[True, True, False])
    # greedy chain: c(5) -> 6 -> EOS ; a(3) -> 4 5 6 EOS
    np.testing.assert_array_equal(out.tokens, [[6, EOS, 0, 0, 0], [4, 5, 6, EOS, 0], [0, 0, 0, 0, 0]])
    np.testing.assert_array_equal(out.group_ids, [1, 0, 1])
    np.testing.assert_array_equal(out.sample_mask, [True, True, False])
    np.testing.assert_array_equal(out.mask, [[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [0, 0, 0, 0, 0]])
    plain = sample_tokens(model, IDS, MASK, max_new_tokens=5, key=jax.random.key(0), temperature=0.0)
    np.testing.assert_array_equal(plain.group_ids, [0, 1])
    np.testing.assert_array_equal(plain.sample_mask, [True, True])


def test_old_argument_names_are_gone():
    """prompt_mask / row_prompt / inactive were removed in 0.1.0 (CHANGELOG.md): Python names the keyword."""
    model = chain_model(noise=2.0, seed=1)
    kw = dict(max_new_tokens=6, key=jax.random.key(4), temperature=1.0)
    for old in (dict(prompt_mask=MASK), dict(row_prompt=[1, 1, 0]), dict(inactive=[False, True, False])):
        (name,) = old
        with pytest.raises(TypeError, match=f"unexpected keyword argument '{name}'"):
            sample_tokens(model, IDS, MASK, **old, **kw)


def test_sampling_params_equal_the_loose_keywords():
    model = chain_model(noise=3.0, seed=2)
    tok = CharTokenizer(V)
    params = SamplingParams(temperature=0.7, top_p=0.9, top_k=4)
    kw = dict(max_new_tokens=6, key=jax.random.key(1))
    a = sample_tokens(model, IDS, MASK, sampling_params=params, **kw)
    b = sample_tokens(model, IDS, MASK, temperature=0.7, top_p=0.9, top_k=4, **kw)
    np.testing.assert_array_equal(a.tokens, b.tokens)
    np.testing.assert_array_equal(a.sample_logprobs, b.sample_logprobs)
    gkw = dict(n=3, max_new_tokens=5, seed=2, eos_token_ids=[])
    toks = lambda out: [[c.tokens.tolist() for c in row] for row in out]
    assert toks(generate(model, tok, ["ab", "c"], sampling_params=params, **gkw)) == toks(
        generate(model, tok, ["ab", "c"], temperature=0.7, top_p=0.9, top_k=4, **gkw))
    with pytest.raises(ValueError, match="got sampling_params and temperature="):
        generate(model, tok, ["a"], sampling_params=params, temperature=1.0, max_new_tokens=2)
    with pytest.raises(TypeError, match="must be a SamplingParams"):
        sample_tokens(model, IDS, MASK, sampling_params={"temperature": 1.0}, **kw)


def test_generate_group_ids_and_answer_ids_feed_the_losses():
    """generate -> group_ids; extracted answers -> answer_ids; both go into the losses as they are."""
    model = chain_model(noise=2.0, seed=3)
    out = generate(model, CharTokenizer(V), ["ab", "c"], n=4, max_new_tokens=3, seed=0, eos_token_ids=[])
    groups = group_ids(out)
    np.testing.assert_array_equal(groups, [0, 0, 0, 0, 1, 1, 1, 1])
    assert groups.dtype == np.int32 and [c.group_id for row in out for c in row] == groups.tolist()
    np.testing.assert_array_equal(group_ids(out[1]), [1] * 4)

    # A hand-made pool in the shape of that output: prompt 0's wrong answer "1/2" written three ways is ONE rival
    # with 3 votes, so the dynamic threshold is floor(8 * 3 / 4) + 1 = 7, capped at 8 // 2 + 1 = 5.
    answers = ["1/2", "0.5", "\\frac{1}{2}", "7", "7", None, "3", "x"]
    correct = np.array([0, 0, 0, 1, 1, 0, 0, 0], bool)
    ids = answer_ids(answers, groups)
    np.testing.assert_array_equal(ids, [0, 0, 0, 1, 0, -1, 1, 2])
    k = dynamic_consensus_threshold(jnp.asarray(ids), jnp.asarray(correct), jnp.asarray(groups), 8)
    # group 1: rivals "7", "3", "x" with one vote each among 4 rollouts -> floor(8 * 1 / 4) + 1 = 3
    np.testing.assert_array_equal(k, [5, 5, 5, 5, 3, 3, 3, 3])
    adv = group_advantages(jnp.asarray(correct, jnp.float32), jnp.asarray(groups), sample_mask=jnp.ones(8, bool))
    # each group: one correct of four -> mean 1/4, sample std 1/2: (r - 1/4) / (1/2 + eps)
    np.testing.assert_allclose(adv, (correct - 0.25) / (0.5 + 1e-4), rtol=1e-5)
