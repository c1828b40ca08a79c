"""`ela_jax.load(workdir)`: a trained model as two encode functions (the same contract as ELATorch)."""

from __future__ import annotations

import numpy as np

from ela_jax.data.images import model_images
from ela_jax.experiment import Experiment, load_config


class ELAInference:
    """encode_images(PIL images or uint8 [B, H, W, 3] of any size) and encode_texts(list[str]) -> {'global' [B, d], 'lexicon' [B, |V|]}, plus
    'tokens' (the towers' final hidden states) and the text 'mask' with return_tokens=True."""

    def __init__(self, experiment: Experiment, params, batch_size: int = 256, step: int | None = None):
        self.experiment, self.step = experiment, step  # the checkpoint step the params come from, when known
        self.tokenizer = experiment.tokenizer
        self.encoder = experiment.encoder(params, batch_size)

    @property
    def params(self):
        return self.encoder.params

    def encode_images(self, images, return_tokens: bool = False) -> dict[str, np.ndarray]:
        """`images`: PIL images or uint8 arrays of any size, brought to the model's input as evaluation does
        (`ela_jax.data.images.model_images`: shorter side resized, centre crop)."""
        images = model_images(images, self.experiment.config.model.image.image_size)
        outputs = self.encoder.encode_images(images, with_tokens=return_tokens)
        return _public_outputs(outputs)

    def encode_texts(self, texts: list[str], return_tokens: bool = False) -> dict[str, np.ndarray]:
        token_ids, mask = self.tokenizer.encode(list(texts))
        outputs = self.encoder.encode_tokens(token_ids, mask, with_tokens=return_tokens)
        outputs = _public_outputs(outputs)
        if return_tokens:
            outputs["mask"] = mask
        return outputs


def _public_outputs(outputs: dict) -> dict:
    public = {"global": outputs["global"], "lexicon": outputs["lexicon"]}
    if "hidden" in outputs:
        public["tokens"] = outputs["hidden"]
    return public


def load(workdir: str, step: int | None = None, batch_size: int = 256) -> ELAInference:
    """The model of `workdir`'s checkpoint `step` (latest when None), on all local devices."""
    experiment = Experiment.build(load_config(workdir), workdir)
    state, step = experiment.restore_checkpoint(step)
    return ELAInference(experiment, state.params, batch_size, step)
