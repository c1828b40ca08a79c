"""The argmax and Pallas (interpret mode) impls of the max-pooled lexicon logits equal the dense pool in values and
gradients, follow the lowest-token-index tie rule, and keep working with vocabulary padding and a vocabulary split
over the `tensor` mesh axis."""

from __future__ import annotations


import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ela_jax.errors import ConfigError
from ela_jax.models import lexicon, lexicon_kernel
from ela_jax.models.ela import ELAModel
from tests.helpers import model_inputs, module_report, tiny_model

IMPLS = [("argmax", 0), ("argmax", 8), ("pallas", 0)]  # chunk 8 does not divide 37 words: padded chunks


def head_inputs(seed: int = 0, vocab: int = 37):
    rng = np.random.default_rng(seed)
    features = jnp.asarray(rng.normal(size=(4, 5, 8)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(8, vocab)), jnp.float32)
    bias = jnp.asarray(rng.normal(size=(vocab,)), jnp.float32)
    # a full row, two padded rows, and a row without any real token (zero gradient, pooled to the float32 minimum)
    mask = jnp.asarray(np.array([[1, 1, 1, 1, 1], [1, 0, 1, 1, 0], [0, 0, 0, 1, 0], [0, 0, 0, 0, 0]], bool))
    weights = jnp.asarray(rng.normal(size=(4, vocab)), jnp.float32)
    return features, kernel, bias, mask, weights


def max_objective(features, kernel, bias, mask, weights, impl: str, chunk: int):
    pooled = lexicon.pool_vocab_logits(features, kernel, bias, mask, ("max",), chunk, impl, interpret=True)["max"]
    return jnp.sum(weights * jnp.tanh(jnp.maximum(pooled, -10.0))), pooled


@pytest.mark.parametrize("impl, chunk", IMPLS)
def test_max_pool_impls_equal_the_dense_pool_in_values_and_gradients(impl, chunk):
    features, kernel, bias, mask, weights = head_inputs()
    grad = jax.value_and_grad(max_objective, argnums=(0, 1, 2), has_aux=True)
    (_, expected), expected_grads = grad(features, kernel, bias, mask, weights, "dense", 0)
    (_, actual), actual_grads = jax.jit(grad, static_argnums=(5, 6))(features, kernel, bias, mask, weights, impl, chunk)
    np.testing.assert_allclose(actual, expected, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(actual[3]) == np.finfo(np.float32).min)
    for name, want, got in zip(("features", "kernel", "bias"), expected_grads, actual_grads):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


def test_accelerator_backward_takes_several_rows_per_scan_step(monkeypatch):
    """Off the CPU the argmax backward gathers several batch rows per step (same gradients)."""
    features, kernel, bias, mask, weights = head_inputs()
    grad = jax.grad(max_objective, argnums=(0, 1, 2), has_aux=True)
    expected = grad(features, kernel, bias, mask, weights, "dense", 0)[0]
    monkeypatch.setattr(lexicon.jax, "default_backend", lambda: "gpu")
    assert lexicon._rows_per_step(4, 8, 8) == 4 and lexicon._rows_per_step(4, 2**20, 2**8) == 1
    actual = grad(features, kernel, bias, mask, weights, "argmax", 8)[0]
    for name, want, got in zip(("features", "kernel", "bias"), expected, actual):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=name)


@pytest.mark.parametrize("impl, chunk", IMPLS)
def test_ties_go_to_the_lowest_token_index(impl, chunk):
    """Token 3 repeats token 1 and tokens 2 and 4 are zeros (logit = bias), so every word's max is a tie: the whole
    gradient goes to token 1 or 2, where `jax.grad` of the dense pool splits it evenly (token 0 is masked)."""
    features, kernel, bias, _, _ = head_inputs(1)
    features = features.at[:, 3].set(features[:, 1]).at[:, 2].set(0.0).at[:, 4].set(0.0)
    mask = jnp.asarray(np.array([[0, 1, 1, 1, 1]] * 4, bool))

    def pooled_sum(features, impl, chunk):
        pooled = lexicon.pool_vocab_logits(features, kernel, bias, mask, ("max",), chunk, impl, interpret=True)
        return jnp.sum(pooled["max"])

    grads = jax.jit(jax.grad(pooled_sum), static_argnums=(1, 2))(features, impl, chunk)
    dense_grads = jax.grad(pooled_sum)(features, "dense", 0)
    won_by_1 = (np.einsum("bw,wv->bv", features[:, 1], kernel) > 0).astype(np.float32)  # else token 2 (and 4) win
    assert 0 < won_by_1.mean() < 1
    for token, won in ((1, won_by_1), (2, 1.0 - won_by_1)):
        expected = np.einsum("bv,wv->bw", won, kernel)
        np.testing.assert_allclose(grads[:, token], expected, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(dense_grads[:, token], expected / 2, rtol=1e-5, atol=1e-5)
    assert np.all(np.asarray(grads[:, 3:]) == 0.0) and np.all(np.asarray(grads[:, 0]) == 0.0)


# "pallas" runs the same custom VJP as "argmax" behind its own forward; the argmax forward is checked against dense
# in the pool-level tests above, so the model-level argmax case is kept for the slow run.
@pytest.mark.integration
@pytest.mark.parametrize("impl", [pytest.param("argmax", marks=pytest.mark.slow), "pallas"])
def test_model_lexicons_equal_the_dense_model_with_a_padded_vocabulary(impl):
    """Image and text lexicons and their parameter gradients: 50 words padded to 128, chunks of 16 words."""
    dense = tiny_model(vocab_multiple=128)
    other = tiny_model(vocab_multiple=128, chunk=16)
    other.config.unlock()
    other.config.lexicon.impl, other.config.lexicon.pallas_interpret = impl, True
    images, tokens, mask = model_inputs()
    params = nn.unbox(dense.init(jax.random.key(2), images, tokens, mask))["params"]
    weights = jnp.asarray(np.random.default_rng(0).normal(size=(2, 50)), jnp.float32)

    def lexicons(params, model):
        image = model.apply({"params": params}, images, with_tokens=False, method=ELAModel.encode_image)
        text = model.apply({"params": params}, tokens, mask, with_tokens=False, method=ELAModel.encode_text)
        loss = jnp.sum(weights * image["lexicon"]) + jnp.sum(weights * text["lexicon"])
        return loss, (image["lexicon"], text["lexicon"])

    grad = jax.value_and_grad(lexicons, has_aux=True)
    (_, expected), expected_grads = jax.jit(lambda p: grad(p, dense))(params)
    (_, actual), actual_grads = jax.jit(lambda p: grad(p, other))(params)
    for want, got in zip(expected, actual):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    flat_expected = jax.tree_util.tree_leaves_with_path(expected_grads)
    for (path, want), got in zip(flat_expected, jax.tree.leaves(actual_grads)):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=jax.tree_util.keystr(path))


def test_pallas_refuses_a_backend_it_cannot_compile_for():
    features, kernel, bias, mask, _ = head_inputs()
    if jax.default_backend() != "cpu":
        pytest.skip("the refusal is for CPU")
    with pytest.raises(ConfigError, match="impl='pallas' needs a GPU or TPU backend"):
        lexicon.pool_vocab_logits(features, kernel, bias, mask, ("max",), 0, "pallas", interpret=False)
    with lexicon_kernel.lowering_for("tpu"):  # compiling ahead of time for a TPU slice from this host
        lexicon_kernel.check_backend(interpret=False)


@pytest.mark.integration
def test_impls_on_a_mesh_that_splits_the_vocabulary():
    """fsdp_tp on 8 fake CPU devices (batch over 4 fsdp, vocabulary over 2 tensor): every impl equals the
    single-device dense pool, and the kernel gradient comes back split over `tensor` like the kernel. The Pallas
    kernel, which XLA cannot partition on a TPU, runs per device on its 2 of the 8 rows and 128 of the 256 words
    (padded to the kernel's blocks), and its kernel gradient is reduce-scattered to FSDP's shards."""
    report = module_report("tests.sharded_lexicon", devices=8)
    assert set(report) == {"dense", "chunked", "argmax", "pallas"}
    for impl, entry in report.items():
        assert entry["max_error"] < 1e-5, (impl, entry)
        assert entry["kernel_grad_spec"] == ["fsdp" if impl == "pallas" else None, "tensor"], (impl, entry)
        assert bool(entry["pallas_operand_shapes"]) == (impl == "pallas"), (impl, entry)
    assert report["pallas"]["pallas_operand_shapes"] == [[[2, 32, 128], [128, 128]]]


@pytest.mark.parametrize("platform", ["cuda", "tpu"])
def test_pallas_kernel_lowers_for_accelerators(platform):
    """The compiled kernel's lowering (Triton on GPU, Mosaic on TPU) at the B/16 head's width, from this CPU."""
    shapes = [((2, 196, 768), jnp.bfloat16), ((768, 300), jnp.bfloat16), ((300,), jnp.float32), ((2, 196), bool)]
    args = [jax.ShapeDtypeStruct(shape, dtype) for shape, dtype in shapes]
    fused = jax.jit(lambda *a: lexicon_kernel.pallas_max_argmax(*a, interpret=False))
    with lexicon_kernel.lowering_for("gpu" if platform == "cuda" else platform):
        assert fused.trace(*args).lower(lowering_platforms=(platform,)).as_text()
