"""A config that cannot run stops before anything compiles, with one line that says what to change."""

from __future__ import annotations

import os
import subprocess
import types

import pytest

from configs import mesh_presets
from ela_jax import config as config_lib
from ela_jax import validation
from ela_jax.experiment import Experiment, load_config
from tests.helpers import train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def validation_error(config, num_devices: int = 1) -> str:
    with pytest.raises(config_lib.ConfigError) as error:
        validation.validate(config, num_devices)
    message = str(error.value)
    assert "\n" not in message
    return message


def test_batch_not_divisible_by_data_parallel_devices_names_a_fix(tiny_config):
    message = validation_error(tiny_config(batch_size=100), num_devices=8)
    assert "batch_size 100" in message and "multiple of 8" in message


def test_mesh_that_cannot_use_the_devices_is_refused(tiny_config):
    message = validation_error(tiny_config(**{"mesh.data": 3, "mesh.fsdp": 1, "mesh.tensor": 1}), num_devices=8)
    assert "needs 3 devices but 8 are present" in message
    assert "cannot be split" in validation_error(tiny_config(**{"mesh.fsdp": 3}), num_devices=8)


def test_missing_vocabulary_file_is_named(tiny_config):
    message = validation_error(tiny_config(**{"tokenizer.vocab": "/nowhere/vocab.txt"}))
    assert "/nowhere/vocab.txt" in message and "does not exist" in message


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("objective.ela.loss", "hinge", "objective.ela.loss='hinge' is not one of"),
        ("objective.ela.target_source", "oracle", "objective.ela.target_source"),
        ("objective.ela.beta", 1.5, "beta must lie in [0, 1]"),
        ("model.dtype", "float8", "model.dtype"),
        ("eval.scores", ("global", "bm25"), "eval.scores='bm25'"),
        ("objective.global_weight", -1.0, "objective weights must be >= 0"),
        ("tokenizer.max_length", 64, "exceeds model.text.max_position_embeddings"),
        ("init.text_tower", "/nowhere", "holds no config.json"),
        ("data.image_size", 48, "differs from model.image.image_size"),
        ("train.microbatches", 3, "train.microbatches=3 micro-batches"),
        ("model.vocab_multiple", 0, "model.vocab_multiple must be >= 1"),
        ("model.lexicon.chunk", -1, "model.lexicon.chunk must be >= 0"),
        ("model.lexicon.impl", "fused", "model.lexicon.impl='fused' is not one of"),
        ("model.remat_policy", "everything", "model.remat_policy"),
        ("model.attention_batch_splits", 0, "model.attention_batch_splits must be a positive integer"),
        ("checkpoint.best_metric", "rsum", "must be 'SCORE/METRIC'"),
        ("checkpoint.best_mode", "highest", "checkpoint.best_mode"),
        ("resume", "/nowhere/run", "config.resume='/nowhere/run' does not exist"),
    ],
)
def test_invalid_values_are_named_with_their_key(tiny_config, key, value, expected):
    assert expected in validation_error(tiny_config(**{key: value}))


@pytest.mark.parametrize("source", ["online", "ema"])
def test_expansion_from_a_text_head_that_nothing_trains_is_refused(tiny_config, source):
    config = tiny_config(
        **{"objective.ela.beta": 0.5, "objective.mlm_weight": 0.0, "objective.ela.target_source": source}
    )
    message = validation_error(config)
    assert "nothing trains the text lexicon head" in message and "set objective.mlm_weight > 0" in message
    assert "init.text_tower" not in message, "an initialised head that nothing trains is no way out"
    # The same config validates with MLM training the head.
    validation.validate(tiny_config(**{"objective.ela.beta": 0.5, "objective.ela.target_source": source}), 1)


def test_expansion_from_a_frozen_copy_of_a_random_text_side_is_refused(tiny_config):
    config = tiny_config(**{"objective.ela.beta": 0.5, "objective.ela.target_source": "frozen"})
    assert "init.text_tower is empty so that copy is random" in validation_error(config)


def test_expansion_from_a_pretrained_teacher_needs_its_directory(tiny_config):
    config = tiny_config(**{"objective.ela.beta": 0.5, "objective.ela.target_source": "pretrained"})
    assert "needs objective.ela.teacher_dir" in validation_error(config)


def test_untrained_expansion_sources_are_accepted_when_nothing_expands(tiny_config):
    for source in ("online", "ema", "frozen", "pretrained"):
        for overrides in ({"objective.ela.beta": 0.0}, {"objective.ela.loss": "lexlip_cosine"}):
            config = tiny_config(**{"objective.mlm_weight": 0.0, "objective.ela.target_source": source, **overrides})
            validation.validate(config, 1)


def test_target_form_is_a_choice_defaulting_to_sparse(tiny_config):
    assert config_lib.base_config().objective.ela.target_form == "sparse"
    message = validation_error(tiny_config(**{"objective.ela.target_form": "dense"}))
    assert "objective.ela.target_form='dense' is not one of ['softmax', 'sparse']" in message


def test_vocab_size_that_disagrees_with_tokenizer_is_refused(tiny_config, tmp_path):
    with pytest.raises(config_lib.ConfigError, match="differs from the tokenizer"):
        Experiment.build(tiny_config(**{"model.vocab_size": 5}), str(tmp_path))


def test_building_an_experiment_leaves_the_callers_config_untouched(tiny_config, tmp_path):
    config = tiny_config()
    before = config.to_json_best_effort()
    experiment = Experiment.build(config, str(tmp_path))
    assert config.to_json_best_effort() == before
    assert config.model.vocab_size == config_lib.VOCAB_SIZE_FROM_TOKENIZER
    assert experiment.config.model.vocab_size == experiment.tokenizer.vocab_size


def run_training_cli(workdir, override: str) -> subprocess.CompletedProcess:
    return subprocess.run(train_command(str(workdir), override), cwd=REPO, capture_output=True, text=True, timeout=300)


@pytest.mark.integration  # runs the training CLI in a subprocess
def test_unknown_override_key_fails_on_the_command_line(tmp_path):
    result = run_training_cli(tmp_path, "--config.objective.no_such_key=1")
    assert result.returncode != 0
    assert "no_such_key" in result.stderr
    assert not os.path.exists(os.path.join(tmp_path, "config.json"))


@pytest.mark.integration  # runs the training CLI in a subprocess
def test_bad_config_on_the_command_line_is_one_line_before_compiling(tmp_path):
    result = run_training_cli(tmp_path, "--config.batch_size=0")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == ["config error: batch_size must be a positive integer, got 0"]


NOT_BERT = os.path.join(REPO, "configs", "demo.py")  # a text file that is no vocabulary

# Every override a user might get wrong, as typed (--config.KEY=VALUE), and what the one-line error must name.
BAD_OVERRIDES = [
    ("model.image.patch_size=0", "model.image.patch_size must be a positive integer, got 0"),
    ("model.text.num_heads=0", "model.text.num_heads must be a positive integer, got 0"),
    ("model.image.width=0", "model.image.width must be a positive integer"),
    ("model.text.mlp_dim=0", "model.text.mlp_dim must be a positive integer"),
    ("model.embed_dim=0", "model.embed_dim must be a positive integer"),
    ("tokenizer.max_length=0", "tokenizer.max_length must be >= 3, got 0"),
    ("tokenizer.max_length=-3", "tokenizer.max_length must be >= 3"),
    (f"tokenizer.vocab={NOT_BERT}", "is not a BERT vocabulary: it lacks [PAD], [UNK], [CLS], [SEP], [MASK]"),
    ("tokenizer.vocab=/nowhere/vocab.txt", "'/nowhere/vocab.txt' does not exist"),
    ("eval.batch_size=0", "eval.batch_size must be a positive integer, got 0"),
    ("batch_size=-8", "batch_size must be a positive integer, got -8"),
    ("batch_size=100", "batch_size 100 must split"),
    ("data.num_train=0", "data.num_train must be a positive integer"),
    ("optim.warmup_steps=-10", "optim.warmup_steps must be >= 0, got -10"),
    ("optim.lr=-0.001", "optim.lr must be a finite number > 0, got -0.001"),
    ("optim.lr=nan", "optim.lr must be a finite number > 0, got nan"),
    ("optim.lr=inf", "optim.lr must be a finite number > 0, got inf"),
    ("optim.eps=0", "optim.eps must be a finite number > 0"),
    ("optim.b2=1.5", "optim.b2 must be in [0, 1)"),
    ("optim.weight_decay=-0.1", "optim.weight_decay must be a finite number >= 0"),
    ("optim.clip_norm=0", "optim.clip_norm must be > 0"),
    ("optim.end_lr_fraction=2", "optim.end_lr_fraction must be in [0, 1]"),
    ("model.init_temperature=0", "model.init_temperature must be a finite number > 0"),
    ("model.min_temperature=0", "model.min_temperature must be a finite number > 0"),
    ("model.min_temperature=0.5", "model.min_temperature 0.5 exceeds model.init_temperature"),
    ("objective.ela.tau_p=0", "objective.ela.tau_p must be a finite number > 0"),
    ("objective.ela.tau_q=0", "objective.ela.tau_q must be a finite number > 0"),
    ("objective.ela.tau_contrastive=0", "objective.ela.tau_contrastive must be a finite number > 0"),
    ("objective.ela.ema_decay=1.5", "objective.ela.ema_decay must be in [0, 1]"),
    ("objective.ela.bce_threshold=1", "objective.ela.bce_threshold must be in (0, 1)"),
    ("objective.ela.top_k=-1", "objective.ela.top_k must be >= 0"),
    ("objective.mlm_probability=1.5", "objective.mlm_probability must be in (0, 1]"),
    ("total_steps=0", "total_steps must be positive"),
    ("checkpoint.keep=0", "checkpoint.keep and checkpoint.keep_best must be >= 1"),
    ("train.max_bad_steps=0", "train.max_bad_steps must be >= 1"),
    ("log.every_steps=-1", "log.every_steps must be >= 0"),
    ("mesh.tensor=3", "8 devices cannot be split"),
]


def demo_config_with(override: str):
    """The demo config with one override applied as the command line applies it (the value parsed by type)."""
    from configs import demo

    config = demo.get_config()
    key, value = override.split("=", 1)
    node = config
    for part in key.split(".")[:-1]:
        node = node[part]
    current = node[key.split(".")[-1]]
    config_lib.set_dotted(config, key, value if isinstance(current, str) else type(current)(float(value)))
    return config


@pytest.mark.parametrize("override, expected", BAD_OVERRIDES, ids=[o.split("=")[0] for o, _ in BAD_OVERRIDES])
def test_every_bad_override_is_one_line_naming_the_key(override, expected):
    """What `python -m ela_jax.train` prints as `config error: <message>` before anything compiles (the command
    line path itself is run by the tests above and below)."""
    message = validation_error(demo_config_with(override), num_devices=8)
    assert expected in message


def test_an_unknown_key_on_the_command_line_is_one_line(tmp_path):
    result = run_training_cli(tmp_path, "--config.optim.lrr=1")
    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        'flag error: the config has no key \'lrr\' (in a --config.KEY override); Did you mean "lr" instead of "lrr"?'
    ]


def test_the_documented_fsdp_tp_preset_validates_on_the_demo_config_and_heads_are_checked():
    """README: `--config configs/demo.py:fsdp_tp` on 8 devices (fsdp 4 x tensor 2) must run on the shipped demo."""
    from configs import demo

    validation.validate(demo.get_config("fsdp_tp"), num_devices=8)
    three_heads = demo.get_config("fsdp_tp")
    three_heads.model.image.num_heads = 3
    message = validation_error(three_heads, num_devices=8)
    assert message.startswith("model.image.num_heads=3 does not split over the 2 devices of mesh.tensor")
    odd_mlp = demo.get_config("fsdp_tp")
    odd_mlp.model.text.mlp_dim = 385
    assert "model.text.mlp_dim=385 does not split" in validation_error(odd_mlp, num_devices=8)


def test_written_config_round_trips(tiny_config, tmp_path):
    config = tiny_config()
    (tmp_path / "config.json").write_text(config.to_json_best_effort())
    restored = load_config(str(tmp_path))
    assert restored.to_dict() == config.to_dict()


def test_mesh_presets_are_overlays_and_unknown_ones_are_named():
    config = mesh_presets.apply_overlays(config_lib.base_config(), "fsdp_tp")
    assert (config.mesh.data, config.mesh.fsdp, config.mesh.tensor, config.model.vocab_multiple) == (1, -1, 2, 128)
    with pytest.raises(config_lib.ConfigError, match="unknown config overlay 'zero3'.*fsdp_tp"):
        mesh_presets.apply_overlays(config_lib.base_config(), "zero3")


@pytest.mark.parametrize("preset", sorted(mesh_presets.MESH_PRESETS))
def test_mesh_presets_compute_attention_over_the_whole_batch(preset):
    from configs import demo

    assert demo.get_config().model.attention_batch_splits > 1  # the CPU demo slices it
    assert mesh_presets.apply_overlays(demo.get_config(), preset).model.attention_batch_splits == 1


@pytest.mark.parametrize(
    "mesh, devices, effective",
    [
        ({"mesh.data": -1}, 1, 8),  # one device: the CPU knob pays
        ({"mesh.data": -1}, 2, 1),  # the default mesh on two devices or processes (launch.local --processes 2)
        ({"mesh.data": 1, "mesh.fsdp": 2}, 2, 1),  # a hand-set FSDP mesh
        ({"mesh.data": 1, "mesh.tensor": 2}, 2, 8),  # tensor parallelism alone leaves the batch whole
    ],
)
def test_attention_batch_splits_switch_off_on_a_batch_sharded_mesh(tiny_config, monkeypatch, tmp_path, caplog, mesh,
                                                                    devices, effective):  # fmt: skip
    from ela_jax import experiment

    monkeypatch.setattr(experiment.parallel, "create_mesh", lambda mesh_config, devices: None)  # they are not real
    config = tiny_config(**mesh, **{"model.attention_batch_splits": 8, "model.vocab_multiple": 128})
    built = experiment.Experiment.build(
        config, str(tmp_path), devices=[types.SimpleNamespace(process_index=0)] * devices
    )
    assert built.model.config.attention_batch_splits == effective
    assert config.model.attention_batch_splits == 8  # the caller's config (and config.json) keep what was asked
    assert ("attention_batch_splits=8 switched off" in caplog.text) == (effective == 1)


def test_a_vocabulary_that_does_not_split_over_tensor_asks_for_padding(tiny_config):
    from ela_jax import experiment

    config = tiny_config(**{"mesh.data": 1, "mesh.tensor": 2})
    config.model.vocab_size = 75
    with pytest.raises(config_lib.ConfigError, match="vocab_multiple=128"):
        experiment.check_vocab_sharding(config, num_devices=2)
    config.model.vocab_multiple = 128
    experiment.check_vocab_sharding(config, num_devices=2)


@pytest.mark.parametrize("name", ["ela_b16", "ela_l14"])
def test_accelerator_configs_validate_on_a_pod_sized_mesh(name):
    """The B/16 and L/14 configs are consistent (checked with the embedded world standing in for their data)."""
    import importlib

    config = importlib.import_module(f"configs.{name}").get_config("fsdp")
    config.data.update(name="world", eval_name="", manual_dir="")
    validation.validate(config, num_devices=256)
    assert config.model.image.image_size == config.data.image_size == 224
