"""ELATorch: an exported ELA model (`python -m ela_jax.convert.to_pytorch`) in plain PyTorch on stock `transformers`
classes, with the same encode_images / encode_texts contract as `ela_jax.load`. Imports no JAX.
"""

from __future__ import annotations

import json
import math
import os

import numpy as np
import torch
import transformers
from safetensors.torch import load_file
from transformers.models.bert.modeling_bert import BertLMPredictionHead

from ela_jax.data.images import model_images

# transformers classes an export's towers may be (ela_config.json's text_class / image_class; older exports hold
# neither and are BertForMaskedLM + ViTModel).
TEXT_CLASSES = ("BertForMaskedLM", "DistilBertForMaskedLM")
IMAGE_CLASSES = ("ViTModel", "CLIPVisionModel", "SiglipVisionModel", "Dinov2Model", "Dinov2WithRegistersModel")


def image_tower_states(image_model, pixels: torch.Tensor) -> torch.Tensor:
    """ela_jax's image tower output from a transformers image model: [b, 1 + patches, width], the summary first
    (the class token's state, CLIP's post-normed one, or SigLIP's pooled one), register tokens left out."""
    outputs = image_model(pixel_values=pixels)
    hidden = outputs.last_hidden_state
    name = type(image_model).__name__
    if name == "CLIPVisionModel":
        return torch.cat([outputs.pooler_output[:, None], hidden[:, 1:]], dim=1)
    if name == "SiglipVisionModel":
        return torch.cat([outputs.pooler_output[:, None], hidden], dim=1)
    if name == "Dinov2WithRegistersModel":
        return torch.cat([hidden[:, :1], hidden[:, 1 + image_model.config.num_register_tokens :]], dim=1)
    return hidden


def text_tower_states(text_model, token_ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(last_hidden_state [b, len, width], MLM logits [b, len, vocab]) of a BertForMaskedLM or DistilBertForMaskedLM:
    the MLM head is the text lexicon head."""
    if isinstance(text_model, transformers.DistilBertForMaskedLM):
        hidden = text_model.distilbert(input_ids=token_ids, attention_mask=mask.long()).last_hidden_state
        transformed = text_model.vocab_layer_norm(text_model.activation(text_model.vocab_transform(hidden)))
        return hidden, text_model.vocab_projector(transformed)
    hidden = text_model.bert(input_ids=token_ids, attention_mask=mask.long()).last_hidden_state
    return hidden, text_model.cls(hidden)


def l2_normalise(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """As ela_jax.models.ela.l2_normalise: x / max(|x|, eps)."""
    return x * torch.rsqrt(torch.clamp(torch.sum(x * x, dim=-1, keepdim=True), min=eps * eps))


def pool_lexicon(logits: torch.Tensor, token_mask: torch.Tensor, special_ids: list[int]) -> torch.Tensor:
    """log(1 + max over tokens with token_mask of ReLU(logits)): [batch, len, vocab] -> [batch, vocab], 0 on the
    special tokens (as ela_jax's lexicon heads)."""
    activated = torch.relu(logits) * token_mask[..., None].to(logits.dtype)
    lexicon = torch.log1p(activated.amax(dim=1))
    lexicon[:, special_ids] = 0.0
    return lexicon


class ELATorch(torch.nn.Module):
    """encode_images(PIL images or uint8 [B, H, W, 3] of any size) and encode_texts(list[str]) -> {'global' [B, d], 'lexicon' [B, |V|]} as
    float32 numpy, plus 'tokens' (the towers' last_hidden_state) and the text 'mask' with return_tokens=True."""

    def __init__(
        self,
        text_model: transformers.PreTrainedModel,
        image_model: transformers.PreTrainedModel,
        tokenizer,
        ela_config: dict,
        batch_size: int = 64,
    ):
        super().__init__()
        self.text_model, self.image_model, self.tokenizer = text_model, image_model, tokenizer
        self.ela_config, self.batch_size = ela_config, batch_size
        self.special_ids = list(ela_config.get("special_ids", ()))  # absent from exports made before it was masked
        text_width = getattr(text_model.config, "dim", None) or text_model.config.hidden_size  # DistilBERT: dim
        image_width = image_model.config.hidden_size
        # The image lexicon head is a BERT MLM head (untied) on the image tower's width.
        image_head_config = transformers.BertConfig(
            vocab_size=ela_config["vocab_size"], hidden_size=image_width, **ela_config["image_lexicon"]
        )
        self.image_lexicon = BertLMPredictionHead(image_head_config)
        linear = lambda width, features: torch.nn.Linear(width, features, bias=False)  # noqa: E731
        self.image_global = linear(image_width, ela_config["embed_dim"])
        self.text_global = linear(text_width, ela_config["embed_dim"])
        self.image_token = linear(image_width, ela_config["token_dim"])
        self.text_token = linear(text_width, ela_config["token_dim"])
        self.global_log_scale = torch.nn.Parameter(torch.zeros(()))
        self.fine_log_scale = torch.nn.Parameter(torch.zeros(()))
        self.register_buffer(
            "pixel_mean", torch.tensor(ela_config["pixel_mean"], dtype=torch.float32), persistent=False
        )
        self.register_buffer("pixel_std", torch.tensor(ela_config["pixel_std"], dtype=torch.float32), persistent=False)

    @classmethod
    def from_pretrained(cls, directory: str, batch_size: int = 64) -> "ELATorch":
        """The model `to_pytorch` wrote into `directory`, in eval mode and float32."""
        with open(os.path.join(directory, "ela_config.json")) as f:
            ela_config = json.load(f)
        text_dir, image_dir = (os.path.join(directory, ela_config[name]) for name in ("text", "image"))
        text_class = _class(ela_config.get("text_class", "BertForMaskedLM"), TEXT_CLASSES, directory)
        image_class = _class(ela_config.get("image_class", "ViTModel"), IMAGE_CLASSES, directory)
        # ELA's ViT has no pooler; the other classes' poolers are part of the tower (or, for Dinov2, a plain slice).
        pooler = {"add_pooling_layer": False} if image_class is transformers.ViTModel else {}
        # safetensors only: a pickled .bin beside them would run code on load.
        text_model = text_class.from_pretrained(text_dir, dtype=torch.float32, use_safetensors=True)
        image_model = image_class.from_pretrained(image_dir, dtype=torch.float32, use_safetensors=True, **pooler)
        tokenizer = transformers.BertTokenizerFast.from_pretrained(text_dir)
        model = cls(text_model, image_model, tokenizer, ela_config, batch_size)
        heads = load_file(os.path.join(directory, ela_config["heads"]))
        incompatible = model.load_state_dict(heads, strict=False)
        missing = [key for key in incompatible.missing_keys if not key.startswith(("text_model.", "image_model."))]
        if missing or incompatible.unexpected_keys:
            raise ValueError(
                f"{ela_config['heads']} in {directory} does not fit ELATorch: missing {missing}, "
                f"unexpected {incompatible.unexpected_keys}; re-export with this version of ela_jax"
            )
        return model.to(torch.float32).eval()

    def logit_scales(self) -> dict[str, float]:
        """exp(learned log scale), clipped at 1 / min_temperature as in training."""
        max_log_scale = math.log(1.0 / self.ela_config["min_temperature"])
        return {
            "global": math.exp(min(self.global_log_scale.item(), max_log_scale)),
            "fine": math.exp(min(self.fine_log_scale.item(), max_log_scale)),
        }

    def _pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The global head's input, as ELAModel.pool: the CLS state or the mean over real tokens, [b, width]."""
        if self.ela_config.get("global_pool", "cls") == "cls":
            return hidden[:, 0]
        weights = mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)

    @torch.no_grad()
    def encode_images(self, images, return_tokens: bool = False) -> dict[str, np.ndarray]:
        """`images`: PIL images or uint8 arrays of any size, brought to the model's input as ela_jax.load and
        evaluation do (shorter side resized, centre crop; the exported preprocessor_config.json says the same)."""
        images = model_images(images, self.ela_config["image_size"])
        chunks = [
            self._encode_image_batch(torch.from_numpy(images[start : start + self.batch_size]), return_tokens)
            for start in range(0, len(images), self.batch_size)
        ]
        return _concatenate(chunks)

    def _encode_image_batch(self, images: torch.Tensor, return_tokens: bool) -> dict[str, torch.Tensor]:
        """images uint8 [b, H, W, 3] -> global [b, embed_dim], lexicon [b, vocab] (, tokens [b, 1+patches, width])."""
        pixels = (images.to(torch.float32) / 255.0 - self.pixel_mean) / self.pixel_std
        hidden = image_tower_states(self.image_model, pixels.permute(0, 3, 1, 2))
        patches = hidden[:, 1:]
        patch_logits = self.image_lexicon(patches)  # [b, patches, vocab]
        outputs = {
            "global": l2_normalise(self.image_global(self._pool(hidden, torch.ones(hidden.shape[:2])))),
            "lexicon": pool_lexicon(patch_logits, torch.ones(patches.shape[:2], dtype=torch.bool), self.special_ids),
        }
        if return_tokens:
            outputs["tokens"] = hidden
        return outputs

    @torch.no_grad()
    def encode_texts(self, texts: list[str], return_tokens: bool = False) -> dict[str, np.ndarray]:
        encoded = self.tokenizer(
            list(texts),
            max_length=self.ela_config["max_length"],
            padding="max_length",
            truncation=True,
            return_tensors="pt",
        )
        token_ids, mask = encoded["input_ids"], encoded["attention_mask"].bool()
        chunks = [
            self._encode_text_batch(
                token_ids[start : start + self.batch_size], mask[start : start + self.batch_size], return_tokens
            )
            for start in range(0, len(token_ids), self.batch_size)
        ]
        outputs = _concatenate(chunks)
        if return_tokens:
            outputs["mask"] = mask.numpy()
        return outputs

    def _encode_text_batch(
        self, token_ids: torch.Tensor, mask: torch.Tensor, return_tokens: bool
    ) -> dict[str, torch.Tensor]:
        """token_ids, mask [b, len] -> global [b, embed_dim], lexicon [b, vocab] (, tokens [b, len, width])."""
        hidden, token_logits = text_tower_states(self.text_model, token_ids, mask)  # logits [b, len, vocab]
        token_mask = mask.clone()
        token_mask[:, 0] = False  # CLS is not a word
        outputs = {
            "global": l2_normalise(self.text_global(self._pool(hidden, mask))),
            "lexicon": pool_lexicon(token_logits, token_mask, self.special_ids),
        }
        if return_tokens:
            outputs["tokens"] = hidden
        return outputs


def _class(name: str, supported: tuple[str, ...], directory: str):
    if name not in supported:
        raise ValueError(f"{directory}/ela_config.json names {name!r}; ELATorch loads {list(supported)}")
    return getattr(transformers, name)


def _concatenate(chunks: list[dict[str, torch.Tensor]]) -> dict[str, np.ndarray]:
    return {key: torch.cat([chunk[key] for chunk in chunks]).to(torch.float32).numpy() for key in chunks[0]}
