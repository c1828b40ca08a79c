"""SigLIP's sigmoid loss as objective.global_loss: the dense form, the ring-sharded form on 8 devices, and the learnable
logit bias it brings."""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ela_jax import objectives, validation
from ela_jax.errors import ConfigError
from ela_jax.experiment import Experiment
from ela_jax.models.ela import ELAModel
from tests.helpers import make_tiny_config, module_report


def test_the_dense_loss_is_the_mean_over_images_of_every_pairs_log_sigmoid():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(6, 6)) * 5.0
    signs = 2.0 * np.eye(6) - 1.0
    expected = np.sum(np.log1p(np.exp(-signs * logits))) / 6
    np.testing.assert_allclose(float(objectives.sigmoid_loss(jnp.asarray(logits, jnp.float32))), expected, rtol=1e-5)
    # An off-diagonal block (another device's captions) holds only negatives.
    block = np.sum(np.log1p(np.exp(logits)))
    np.testing.assert_allclose(
        float(objectives.sigmoid_terms(jnp.asarray(logits, jnp.float32), False)), block, rtol=1e-5
    )


@pytest.mark.integration  # spawns an 8-device process
def test_the_ring_sharded_loss_matches_a_dense_reference_and_holds_no_batch_square():
    report = module_report("tests.sharded_sigmoid", devices=8)
    assert report.pop("dense_holds_batch_square")  # the check finds a [B, B] array where there is one
    assert set(report) == {"data", "data_x_fsdp"}
    for mesh, entry in report.items():
        assert max(entry["errors"]) < 1e-5, (mesh, entry)  # loss, then d/d images, captions, scale, bias
        assert not entry["holds_batch_square"], mesh


def test_the_sigmoid_loss_brings_a_logit_bias_that_starts_where_siglips_does(tmp_path):
    config = make_tiny_config(**{"objective.global_loss": "sigmoid"})
    experiment = Experiment.build(config, str(tmp_path))
    assert experiment.config.model.sigmoid.enabled and not config.model.sigmoid.enabled  # the caller's is untouched
    params = experiment.state_factory().abstract_params
    assert params["global_logit_bias"].shape == ()
    # Only setup and logit_scales run: the scales' own parameters, initialised without the towers.
    scales_only = experiment.model.init(jax.random.key(0), method=ELAModel.logit_scales)["params"]
    scales = experiment.model.apply({"params": scales_only}, method=ELAModel.logit_scales)
    np.testing.assert_allclose([float(scales["global"]), float(scales["global_bias"])], [10.0, -10.0], rtol=1e-6)
    np.testing.assert_allclose(float(scales["fine"]), 1.0 / config.model.init_temperature, rtol=1e-6)


@pytest.mark.parametrize(
    "key, value, message",
    [
        ("objective.global_loss", "softmax", "objective.global_loss='softmax' is not one of"),
        ("model.sigmoid.init_scale", 1000.0, "model.sigmoid.init_scale must be in \\(0, 100\\]"),
    ],
)
def test_bad_sigmoid_settings_are_refused(key, value, message):
    config = make_tiny_config(**{"objective.global_loss": "sigmoid", key: value})
    with pytest.raises(ConfigError, match=message):
        validation.validate(config, num_devices=1)
