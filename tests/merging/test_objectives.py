"""DoTS objectives: consistency, perplexities, candidates and the query selection, against hand computations and
transformers' logits."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from merging.objectives import (
    Candidates, ObjectiveConfig, answer_key, chat_prompt_ids, consistency, evaluate_candidate, modal_share,
    prompt_perplexity, query_difficulty, select_queries, sequence_nll, strategy_consistency,
)


# ---------------------------------------------------------------------------------------------- consistency
def test_modal_share_and_consistency_by_hand():
    assert modal_share(["4", "4", "5", None]) == 0.5
    assert modal_share([None, None]) == 0.0  # nothing extractable: 0, not 1
    assert modal_share(["a"] * 7) == 1.0
    assert modal_share(["a", "b", "b", "c", "a", "b", None]) == 3 / 7
    assert consistency([["4", "4", "5", None], [None, None, None, None], ["1"] * 4]) == pytest.approx(0.5)


def test_strategy_consistency_majority_estimate_by_hand():
    from jax_cat.losses import MajorityAtN

    # pool [a, a, b, None], votes of 3: {a,a,b} -> a, {a,a,-} -> a, {a,b,-} x2 -> tie a/b (half) = (1+1+.5+.5)/4
    assert strategy_consistency(["a", "a", "b", None], MajorityAtN(3)) == pytest.approx(0.75)
    assert strategy_consistency([None, None, None], MajorityAtN(3)) == 0.0


def test_answer_key_extracts_and_canonicalises():
    assert answer_key("so the answer is \\boxed{7}") == answer_key("7") != answer_key("8")
    text = "The answer is 5. Later 6 apples"
    assert answer_key(text) == answer_key("5") and answer_key(text, style="number") == answer_key("6")
    assert answer_key("x = 0.5") == answer_key("it is 1/2")
    assert answer_key("no digits here") is None


# ---------------------------------------------------------------------------------------------- tiny models
def _forced_model(char: str):
    """Untied tiny model whose next-token logits are 40 for `char` and 0 elsewhere at every position: every layer's
    output projections are zero (the residual stream is the embedding), every embedding is e_0, lm_head[0] = 5 e_char
    (RMSNorm(e_0) = sqrt(64) e_0, so the logit is 8 * 5)."""
    from jax_cat.models import CausalLM
    from jax_cat.models.tiny import char_vocab, tiny_model_config

    cfg = tiny_model_config(tie_word_embeddings=False)
    model = CausalLM(cfg, rngs=nnx.Rngs(0))
    tok = char_vocab()[char]

    def fix(path, x):
        name = "/".join(str(p) for p in path)
        if name.endswith("o_proj") or name.endswith("down_proj") or name.endswith("o_bias") \
                or name.endswith("down_bias"):
            return jnp.zeros_like(x)
        if name == "embed_tokens":
            return jnp.zeros_like(x).at[:, 0].set(1.0)
        if name == "lm_head":
            return jnp.zeros_like(x).at[0, tok].set(5.0)
        return x

    graphdef, state = nnx.split(model)
    state = nnx.from_flat_state({p: v.replace(fix(p, v.get_value())) for p, v in nnx.to_flat_state(state)})
    return nnx.merge(graphdef, state), tok, cfg.vocab_size


@pytest.fixture(scope="module")
def tokenizer():
    from jax_cat.models.tiny import build_char_tokenizer

    return build_char_tokenizer()


def test_forced_answer_model_has_consistency_one_and_answer_perplexity_one(tokenizer):
    model, _, vocab = _forced_model("7")
    prompts = chat_prompt_ids(tokenizer, ["What is 3+4?", "Say seven."])
    cfg = ObjectiveConfig(votes=7, temperature=0.6, max_new_tokens=4)
    scores = evaluate_candidate(model, tokenizer, prompts, cfg)
    assert scores.consistency == 1.0 and scores.extractable == 1.0  # "7777" every time
    assert scores.per_query == (1.0, 1.0)
    # answer NLL per token = log(e^40 + (V - 1)) - 40 (temperature-1 log-probs): perplexity 1 to float precision
    assert scores.answer_perplexity == pytest.approx(np.exp(np.log1p((vocab - 1) * np.exp(-40.0))), abs=1e-6)
    # a model that only ever says "x" has nothing to extract: consistency 0
    letters, _, _ = _forced_model("x")
    assert evaluate_candidate(letters, tokenizer, prompts, cfg).consistency == 0.0


def test_prompt_perplexity_of_forced_model_by_hand(tokenizer):
    model, tok, vocab = _forced_model("7")
    prompts = [[20, 21, 22, 23], [30, 31, 32]]  # letters, no "7": each predicted token has logit 0
    nll = np.log(np.exp(40.0) + vocab - 1)
    assert sequence_nll(model, prompts) == pytest.approx([nll, nll], rel=1e-4)  # float32 logits near 40
    prompts = [[20, tok, tok, 21], [30, 31]]  # a "7" costs log(e^40 + V - 1) - 40 = ~0, a letter ~40
    seq = [(2 * np.log1p((vocab - 1) * np.exp(-40.0)) + nll) / 3, nll]
    assert prompt_perplexity(model, prompts) == pytest.approx(np.exp(np.mean(seq)), rel=1e-3)


def test_prompt_perplexity_matches_transformers(tiny_hf_checkpoint):
    """exp(mean over prompts of the per-prompt mean token NLL), the NLL from torch cross-entropy on HF logits."""
    import torch
    import transformers

    from jax_cat.models import load_hf

    path = tiny_hf_checkpoint("qwen2")
    prompts = [[1, 5, 9, 14, 3, 22, 7], [1, 40, 41], [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11]]
    ref = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    per_seq = []
    with torch.no_grad():
        for p in prompts:
            ids = torch.tensor([p])
            logits = ref(ids).logits[0, :-1]
            per_seq.append(float(torch.nn.functional.cross_entropy(logits.double(), ids[0, 1:])))
    model = load_hf(path)
    assert sequence_nll(model, prompts) == pytest.approx(per_seq, rel=2e-5)  # left padding in one batch
    assert prompt_perplexity(model, prompts) == pytest.approx(float(np.exp(np.mean(per_seq))), rel=2e-5)


# ---------------------------------------------------------------------------------------------- candidates
def test_candidates_build_base_plus_coefficients_without_recompiling():
    from jax_cat.models import CausalLM
    from jax_cat.models.tiny import tiny_model_config

    base = CausalLM(tiny_model_config(), rngs=nnx.Rngs(0))
    _, base_state = nnx.split(base)
    taus = [jax.tree.map(lambda x, s=s: jnp.full(x.shape, s, jnp.float32), base_state) for s in (1.0, -0.25)]
    cands = Candidates(base, taus)
    for c in ([0.5, 2.0], [1.5, 0.75], [0.0, 0.0]):
        state = cands.state(c)
        want = jax.tree.map(lambda b: b + c[0] * 1.0 + c[1] * -0.25, base_state)
        for got, ref in zip(jax.tree.leaves(state), jax.tree.leaves(want)):
            np.testing.assert_allclose(np.asarray(got), np.asarray(ref), rtol=1e-6, atol=1e-6)
    assert cands._build._cache_size() == 1  # coefficients are traced: one compilation for every trial
    for a, b in zip(jax.tree.leaves(nnx.split(base)[1]), jax.tree.leaves(base_state)):
        assert a is b  # the base was never modified


# ---------------------------------------------------------------------------------------------- query selection
def test_query_difficulty_by_hand():
    np.testing.assert_allclose(query_difficulty([[1.0, 0.2, 0.0], [0.6, 0.2, 1.0]]), [0.2, 0.8, 0.5])


def test_select_queries_on_a_hand_made_table():
    # 20 queries: difficulties 0.00, 0.05, ..., 0.95; those above 0.8 (17..19 -> .85, .9, .95) are dropped;
    # kept 0..16 (0.0 .. 0.8), median 0.4: easy = 0..8 (<= .4), hard = 9..16
    d = [i * 0.05 for i in range(20)]
    picked = select_queries(d, n_easy=4, n_hard=3, seed=1)
    easy = [i for i in picked if i <= 8]
    hard = [i for i in picked if 9 <= i <= 16]
    assert len(picked) == 7 and len(easy) == 4 and len(hard) == 3 and picked == sorted(set(picked))
    assert select_queries(d, n_easy=4, n_hard=3, seed=1) == picked  # seeded
    assert select_queries(d, n_easy=4, n_hard=3, seed=2) != picked
    # the DoTS 8 + 8 from 17 kept queries: all but one
    assert len(select_queries(d)) == 16
    # a short half is filled from the other: 3 kept queries, 2 + 2 asked -> all 3
    assert select_queries([0.1, 0.2, 0.3, 0.95], n_easy=2, n_hard=2) == [0, 1, 2]
    with pytest.raises(ValueError, match="no query has difficulty"):
        select_queries([0.9, 1.0])
