"""Generation with parameters sharded over a (data, fsdp, tensor) mesh of 8 host CPU devices equals unsharded."""
import jax
import numpy as np

from jax_cat.models import load_hf
from jax_cat.sampling import generate
from jax_cat.sharding import make_mesh, shard_model
from tests.sampling.test_engine_hf import MAX_NEW, PROMPTS, hf_greedy


def test_sharded_params_and_batch_match_unsharded(tiny_hf_checkpoint):
    path = tiny_hf_checkpoint("qwen2")
    expected, tokenizer = hf_greedy(path, PROMPTS, MAX_NEW)
    mesh = make_mesh(data=2, fsdp=2, tensor=2)
    model = shard_model(load_hf(path), mesh)
    q_proj = model.layers[0].self_attn.q_proj[...]
    assert len(q_proj.sharding.device_set) == 8  # really spread over the mesh
    kw = dict(n=2, max_new_tokens=MAX_NEW, seed=1)
    greedy = generate(model, tokenizer, PROMPTS, temperature=0.0, mesh=mesh, **kw)
    assert [[c.tokens.tolist() for c in row] for row in greedy] == [[e, e] for e in expected]
    # sampling: same draws as on one device (keys depend on (seed, prompt, sample) only)
    sharded = generate(model, tokenizer, PROMPTS, temperature=1.0, mesh=mesh, **kw)
    single = generate(load_hf(path), tokenizer, PROMPTS, temperature=1.0, **kw)
    for row_s, row_1 in zip(sharded, single):
        for a, b in zip(row_s, row_1):
            assert a.tokens.tolist() == b.tokens.tolist()
            np.testing.assert_allclose(a.logprobs, b.logprobs, atol=1e-4)
