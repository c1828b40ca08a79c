"""The declarative key map between ela_jax's Flax parameter paths and PyTorch state-dict keys (Hugging Face
`BertForMaskedLM` / `DistilBertForMaskedLM`, `ViTModel` / `CLIPVisionModel` / `SiglipVisionModel` / `Dinov2Model`,
and ELATorch's heads), with the reshape hook each key needs; it serves both directions.

Flax paths are '/'-joined from the params root (`text_tower/encoder/layer_0/attention/query/kernel`). This module
imports numpy only, so export, import and tests share it without pulling in JAX or PyTorch.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Mapping

import numpy as np

# The four projections into the retrieval spaces; torch.nn.Linear without bias in ELATorch.
PROJECTIONS = ("image_global", "text_global", "image_token", "text_token")
LOG_SCALES = ("global_log_scale", "fine_log_scale")
MLM_HEAD_PREFIX = "cls.predictions."


@dataclasses.dataclass(frozen=True)
class Hook:
    """One parameter's layout change: `to_torch(flax_array)` and its inverse `to_flax(torch_array, flax_shape)`."""

    to_torch: Callable[[np.ndarray], np.ndarray]
    to_flax: Callable[[np.ndarray, tuple[int, ...]], np.ndarray]


IDENTITY = Hook(lambda a: a, lambda t, shape: t)
# nn.Dense kernel [in, out] <-> torch.nn.Linear weight [out, in].
LINEAR = Hook(lambda a: a.T, lambda t, shape: t.T)
# Attention q/k/v DenseGeneral kernel [embed, heads, head_dim] <-> Linear weight [heads * head_dim, embed].
HEADS_IN = Hook(lambda a: a.reshape(a.shape[0], -1).T, lambda t, shape: t.T.reshape(shape))
# q/k/v bias [heads, head_dim] <-> [heads * head_dim].
HEADS_BIAS = Hook(lambda a: a.reshape(-1), lambda t, shape: t.reshape(shape))
# Attention output DenseGeneral kernel [heads, head_dim, embed] <-> Linear weight [embed, heads * head_dim].
HEADS_OUT = Hook(lambda a: a.reshape(-1, a.shape[-1]).T, lambda t, shape: t.T.reshape(shape))
# nn.Conv kernel [height, width, in, out] (HWIO) <-> torch.nn.Conv2d weight [out, in, height, width] (OIHW).
CONV = Hook(lambda a: a.transpose(3, 2, 0, 1), lambda t, shape: t.transpose(2, 3, 1, 0))


@dataclasses.dataclass(frozen=True)
class Rule:
    flax_path: str
    torch_key: str
    hook: Hook = IDENTITY
    # Further keys that receive the same array on export and are not read on import: transformers keeps the MLM
    # bias twice (`bias` and `decoder.bias`) when the decoder is not tied to the word embeddings.
    export_copies: tuple[str, ...] = ()
    # The vocabulary axis of the Flax array, if any: parameters there may be padded (model.vocab_multiple); export
    # cuts them to the real vocabulary and import pads with zeros.
    vocab_axis: int | None = None


class KeyMap:
    """An ordered set of rules: `to_torch` exports the parameters they cover, `to_flax` imports them."""

    def __init__(self, rules: Iterable[Rule]):
        self.rules = tuple(rules)

    def __add__(self, other: "KeyMap") -> "KeyMap":
        return KeyMap(self.rules + other.rules)

    @property
    def flax_paths(self) -> frozenset[str]:
        return frozenset(rule.flax_path for rule in self.rules)

    def to_torch(self, params: Mapping, vocab_size: int | None = None) -> dict[str, np.ndarray]:
        """Host params (nested dicts of arrays) -> {torch key: C-contiguous array} (safetensors stores raw buffers);
        vocabulary axes are cut to `vocab_size` words when given."""
        state_dict = {}
        for rule in self.rules:
            array = np.asarray(_get(params, rule.flax_path))
            if rule.vocab_axis is not None and vocab_size is not None:
                array = np.take(array, np.arange(vocab_size), axis=rule.vocab_axis)
            tensor = np.asarray(rule.hook.to_torch(array), order="C")
            for key in (rule.torch_key,) + rule.export_copies:
                state_dict[key] = tensor
        return state_dict

    def to_flax(self, state_dict: Mapping[str, np.ndarray], params: Mapping, source: str) -> dict:
        """A copy of `params` whose covered leaves come from `state_dict` (read from `source`), each in the shape and
        dtype of the leaf it replaces; `params` may hold arrays or jax.ShapeDtypeStructs."""
        missing = [rule.torch_key for rule in self.rules if rule.torch_key not in state_dict]
        if missing:
            raise ValueError(
                f"{source} lacks {len(missing)} weights the model needs, e.g. {missing[:3]}; "
                "is it a checkpoint of the expected architecture?"
            )
        updated = params
        for rule in self.rules:
            target = _get(params, rule.flax_path)
            tensor = np.asarray(state_dict[rule.torch_key])
            try:
                value = rule.hook.to_flax(tensor, tuple(target.shape))
            except ValueError:  # a reshape that cannot fit
                value = None
            if value is not None and rule.vocab_axis is not None:
                value = _pad_axis(value, rule.vocab_axis, target.shape[rule.vocab_axis])
            if value is None or value.shape != tuple(target.shape):
                raise ValueError(
                    f"{source}: {rule.torch_key} has shape {list(tensor.shape)}, which does not fit "
                    f"{rule.flax_path} {list(target.shape)}"
                )
            updated = _set(updated, rule.flax_path, np.asarray(value, dtype=target.dtype, order="C"))
        return updated


def _pad_axis(value: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Zero-pads `axis` up to `size` (the model's padded vocabulary); larger arrays are left to the shape check."""
    missing = size - value.shape[axis]
    if missing <= 0:
        return value
    widths = [(0, 0)] * value.ndim
    widths[axis] = (0, missing)
    return np.pad(value, widths)


def leaf_paths(params: Mapping, prefix: str = "") -> list[str]:
    paths = []
    for name, value in params.items():
        if isinstance(value, Mapping):
            paths += leaf_paths(value, f"{prefix}{name}/")
        else:
            paths.append(f"{prefix}{name}")
    return paths


def uncovered_paths(params: Mapping, keymaps: Iterable[KeyMap]) -> list[str]:
    """Parameters no rule exports: a new parameter without a rule would silently be lost in PyTorch."""
    covered = frozenset().union(*(keymap.flax_paths for keymap in keymaps))
    return [path for path in leaf_paths(params) if path not in covered]


def _get(tree: Mapping, path: str) -> Any:
    for name in path.split("/"):
        tree = tree[name]
    return tree


def _set(tree: Mapping, path: str, value: Any) -> dict:
    head, _, rest = path.partition("/")
    return {**tree, head: _set(tree[head], rest, value) if rest else value}


def _linear(flax: str, torch: str) -> list[Rule]:
    return [Rule(f"{flax}/kernel", f"{torch}.weight", LINEAR), Rule(f"{flax}/bias", f"{torch}.bias")]


def _layer_norm(flax: str, torch: str) -> list[Rule]:
    return [Rule(f"{flax}/scale", f"{torch}.weight"), Rule(f"{flax}/bias", f"{torch}.bias")]


# One transformer block's modules: ela_jax's name -> the block's torch module, per Hugging Face class family.
BERT_BLOCK = {
    "attention/query": "attention.self.query",
    "attention/key": "attention.self.key",
    "attention/value": "attention.self.value",
    "attention/output": "attention.output.dense",
    "mlp/intermediate": "intermediate.dense",
    "mlp/output": "output.dense",
    "attention_norm": "attention.output.LayerNorm",
    "mlp_norm": "output.LayerNorm",
}
DISTILBERT_BLOCK = {
    "attention/query": "attention.q_lin",
    "attention/key": "attention.k_lin",
    "attention/value": "attention.v_lin",
    "attention/output": "attention.out_lin",
    "mlp/intermediate": "ffn.lin1",
    "mlp/output": "ffn.lin2",
    "attention_norm": "sa_layer_norm",
    "mlp_norm": "output_layer_norm",
}
VIT_BLOCK = {
    **{f"attention/{name}": f"attention.attention.{name}" for name in ("query", "key", "value")},
    "attention/output": "attention.output.dense",
    "mlp/intermediate": "intermediate.dense",
    "mlp/output": "output.dense",
    "attention_norm": "layernorm_before",
    "mlp_norm": "layernorm_after",
}
# CLIPVisionModel and SiglipVisionModel.
CLIP_BLOCK = {
    **{f"attention/{name}": f"self_attn.{name[0]}_proj" for name in ("query", "key", "value")},
    "attention/output": "self_attn.out_proj",
    "mlp/intermediate": "mlp.fc1",
    "mlp/output": "mlp.fc2",
    "attention_norm": "layer_norm1",
    "mlp_norm": "layer_norm2",
}
# Dinov2Model (and with registers), in the on-disk layout transformers v4 and v5 both read and v5 writes.
DINOV2_BLOCK = {
    **{f"attention/{name}": f"attention.attention.{name}" for name in ("query", "key", "value")},
    "attention/output": "attention.output.dense",
    "mlp/intermediate": "mlp.fc1",
    "mlp/output": "mlp.fc2",
    "attention_norm": "norm1",
    "mlp_norm": "norm2",
    "attention_scale": "layer_scale1.lambda1",
    "mlp_scale": "layer_scale2.lambda1",
}


def _transformer_block(flax: str, torch: str, names: Mapping[str, str]) -> list[Rule]:
    """The shared TransformerBlock <-> one block of a Hugging Face model whose module names are `names`."""
    rules = []
    for module, torch_module in names.items():
        flax_path, torch_path = f"{flax}/{module}", f"{torch}.{torch_module}"
        if module in ("attention/query", "attention/key", "attention/value"):
            rules += [Rule(f"{flax_path}/kernel", f"{torch_path}.weight", HEADS_IN)]
            rules += [Rule(f"{flax_path}/bias", f"{torch_path}.bias", HEADS_BIAS)]
        elif module == "attention/output":
            rules += [Rule(f"{flax_path}/kernel", f"{torch_path}.weight", HEADS_OUT)]
            rules += [Rule(f"{flax_path}/bias", f"{torch_path}.bias")]
        elif module.startswith("mlp/"):
            rules += _linear(flax_path, torch_path)
        elif module.endswith("_norm"):
            rules += _layer_norm(flax_path, torch_path)
        else:  # a layer scale vector
            rules.append(Rule(flax_path, torch_path))
    return rules


def _blocks(flax: str, torch: str, depth: int, names: Mapping[str, str]) -> list[Rule]:
    return [
        rule
        for layer in range(depth)
        for rule in _transformer_block(f"{flax}/layer_{layer}", f"{torch}.{layer}", names)
    ]


def bert_encoder(depth: int, prefix: str) -> KeyMap:
    """text_tower <-> BertModel (prefix '') or the `bert.` module of BertForMaskedLM (prefix 'bert.')."""
    rules = [Rule("text_tower/word_embeddings/embedding", f"{prefix}embeddings.word_embeddings.weight", vocab_axis=0)]
    rules += [
        Rule(f"text_tower/{name}/embedding", f"{prefix}embeddings.{name}.weight")
        for name in ("position_embeddings", "token_type_embeddings")
    ]
    rules += _layer_norm("text_tower/embeddings_norm", f"{prefix}embeddings.LayerNorm")
    rules += _blocks("text_tower/encoder", f"{prefix}encoder.layer", depth, BERT_BLOCK)
    return KeyMap(rules)


def distilbert_encoder(depth: int, prefix: str) -> KeyMap:
    """text_tower (type_vocab_size 0) <-> DistilBertModel (prefix '') or DistilBertForMaskedLM's `distilbert.`."""
    rules = [Rule("text_tower/word_embeddings/embedding", f"{prefix}embeddings.word_embeddings.weight", vocab_axis=0)]
    rules += [Rule("text_tower/position_embeddings/embedding", f"{prefix}embeddings.position_embeddings.weight")]
    rules += _layer_norm("text_tower/embeddings_norm", f"{prefix}embeddings.LayerNorm")
    rules += _blocks("text_tower/encoder", f"{prefix}transformer.layer", depth, DISTILBERT_BLOCK)
    return KeyMap(rules)


def text_encoder(text_config, prefix: str) -> KeyMap:
    """The text tower's key map for its `hf_class` (model.text)."""
    if text_config.hf_class == "DistilBertForMaskedLM":
        return distilbert_encoder(text_config.depth, prefix)
    return bert_encoder(text_config.depth, prefix)


def vit_encoder(depth: int, prefix: str) -> KeyMap:
    """image_tower <-> ViTModel without pooler (prefix '') or the `vit.` module of ViTForImageClassification.

    The keys are the on-disk layout that transformers v4 and v5 both read and that v5's save_pretrained writes."""
    rules = [
        Rule("image_tower/patch_embedding/kernel", f"{prefix}embeddings.patch_embeddings.projection.weight", CONV),
        Rule("image_tower/patch_embedding/bias", f"{prefix}embeddings.patch_embeddings.projection.bias"),
        Rule("image_tower/cls_token", f"{prefix}embeddings.cls_token"),
        Rule("image_tower/position_embeddings", f"{prefix}embeddings.position_embeddings"),
    ]
    rules += _blocks("image_tower/encoder", f"{prefix}encoder.layer", depth, VIT_BLOCK)
    rules += _layer_norm("image_tower/final_norm", f"{prefix}layernorm")
    return KeyMap(rules)


def dinov2_encoder(depth: int, prefix: str, registers: bool) -> KeyMap:
    """image_tower <-> Dinov2Model or Dinov2WithRegistersModel (`registers`); prefix 'dinov2.' in task models. The
    mask token (used only by masked pre-training) is not read; export writes zeros, as transformers initialises it."""
    rules = [
        Rule("image_tower/patch_embedding/kernel", f"{prefix}embeddings.patch_embeddings.projection.weight", CONV),
        Rule("image_tower/patch_embedding/bias", f"{prefix}embeddings.patch_embeddings.projection.bias"),
        Rule("image_tower/cls_token", f"{prefix}embeddings.cls_token"),
        Rule("image_tower/position_embeddings", f"{prefix}embeddings.position_embeddings"),
    ]
    if registers:
        rules.append(Rule("image_tower/register_tokens", f"{prefix}embeddings.register_tokens"))
    rules += _blocks("image_tower/encoder", f"{prefix}encoder.layer", depth, DINOV2_BLOCK)
    rules += _layer_norm("image_tower/final_norm", f"{prefix}layernorm")
    return KeyMap(rules)


# [1, tokens, width] position embeddings <-> a torch Embedding weight [tokens, width].
UNBATCHED = Hook(lambda a: a.reshape(a.shape[1:]), lambda t, shape: t.reshape(shape))
# The [1, 1, width] class token <-> CLIP's class_embedding [width].
VECTOR = Hook(lambda a: a.reshape(-1), lambda t, shape: t.reshape(shape))


def clip_encoder(depth: int, prefix: str, siglip: bool) -> KeyMap:
    """image_tower <-> CLIPVisionModel, or SiglipVisionModel (`siglip`: patch bias, no class token, no pre-encoder
    norm, attention-pooling head); prefix 'vision_model.' in transformers v4 files and in CLIPModel / SiglipModel."""
    rules = [
        Rule("image_tower/patch_embedding/kernel", f"{prefix}embeddings.patch_embedding.weight", CONV),
        Rule("image_tower/position_embeddings", f"{prefix}embeddings.position_embedding.weight", UNBATCHED),
    ]
    if siglip:
        rules.append(Rule("image_tower/patch_embedding/bias", f"{prefix}embeddings.patch_embedding.bias"))
    else:
        rules.append(Rule("image_tower/cls_token", f"{prefix}embeddings.class_embedding", VECTOR))
        rules += _layer_norm("image_tower/embedding_norm", f"{prefix}pre_layrnorm")
    rules += _blocks("image_tower/encoder", f"{prefix}encoder.layers", depth, CLIP_BLOCK)
    rules += _layer_norm("image_tower/final_norm", f"{prefix}post_layernorm")
    if siglip:
        head = f"{prefix}head."
        rules += [
            Rule("image_tower/attention_pool/probe", f"{head}probe"),
            Rule("image_tower/attention_pool/qkv_kernel", f"{head}attention.in_proj_weight", HEADS_IN),
            Rule("image_tower/attention_pool/qkv_bias", f"{head}attention.in_proj_bias", HEADS_BIAS),
            Rule("image_tower/attention_pool/output/kernel", f"{head}attention.out_proj.weight", HEADS_OUT),
            Rule("image_tower/attention_pool/output/bias", f"{head}attention.out_proj.bias"),
        ]
        rules += _layer_norm("image_tower/attention_pool/norm", f"{head}layernorm")
        rules += _linear("image_tower/attention_pool/mlp/intermediate", f"{head}mlp.fc1")
        rules += _linear("image_tower/attention_pool/mlp/output", f"{head}mlp.fc2")
    return KeyMap(rules)


def image_encoder(image_config, prefix: str) -> KeyMap:
    """The image tower's key map for its `hf_class` (model.image)."""
    name, depth = image_config.hf_class, image_config.depth
    if name in ("CLIPVisionModel", "SiglipVisionModel"):
        return clip_encoder(depth, prefix, siglip=name == "SiglipVisionModel")
    if name in ("Dinov2Model", "Dinov2WithRegistersModel"):
        return dinov2_encoder(depth, prefix, registers=name == "Dinov2WithRegistersModel")
    return vit_encoder(depth, prefix)


def lexicon_head(group: str, prefix: str, tied: bool) -> KeyMap:
    """A LexiconHead <-> transformers' BertLMPredictionHead layout (`cls.predictions.` in BertForMaskedLM).

    Tied, the decoder is the word embeddings and its bias is `bias`; untied, transformers reads `decoder.bias`."""
    rules = _linear(f"{group}/transform", f"{prefix}transform.dense")
    rules += _layer_norm(f"{group}/transform_norm", f"{prefix}transform.LayerNorm")
    if tied:
        rules.append(Rule(f"{group}/decoder_bias", f"{prefix}bias", vocab_axis=0))
    else:
        rules += [
            Rule(f"{group}/decoder_kernel", f"{prefix}decoder.weight", LINEAR, vocab_axis=1),
            Rule(f"{group}/decoder_bias", f"{prefix}decoder.bias", export_copies=(f"{prefix}bias",), vocab_axis=0),
        ]
    return KeyMap(rules)


def distilbert_mlm_head(tied: bool) -> KeyMap:
    """The text LexiconHead <-> DistilBertForMaskedLM's head (vocab_transform, vocab_layer_norm, vocab_projector);
    tied, vocab_projector.weight is the word embeddings."""
    rules = _linear("text_lexicon/transform", "vocab_transform")
    rules += _layer_norm("text_lexicon/transform_norm", "vocab_layer_norm")
    rules.append(Rule("text_lexicon/decoder_bias", "vocab_projector.bias", vocab_axis=0))
    if not tied:
        rules.append(Rule("text_lexicon/decoder_kernel", "vocab_projector.weight", LINEAR, vocab_axis=1))
    return KeyMap(rules)


def ela_heads() -> KeyMap:
    """What ELATorch holds besides the text and image towers (the file ela_heads.safetensors)."""
    rules = list(lexicon_head("image_lexicon", "image_lexicon.", tied=False).rules)
    rules += [Rule(f"{name}/kernel", f"{name}.weight", LINEAR) for name in PROJECTIONS]
    rules += [Rule(name, name) for name in LOG_SCALES]
    return KeyMap(rules)


def export_layout(model_config) -> dict[str, KeyMap]:
    """The exported directory's three weight files -> the key map of each: 'text' (model.text.hf_class), 'image'
    (model.image.hf_class) and 'heads' (ELATorch's own). `model_config` is config.model."""
    tied = model_config.lexicon.tie_text_decoder
    if model_config.text.hf_class == "DistilBertForMaskedLM":
        text = distilbert_encoder(model_config.text.depth, "distilbert.") + distilbert_mlm_head(tied)
    else:
        text = bert_encoder(model_config.text.depth, "bert.") + lexicon_head("text_lexicon", MLM_HEAD_PREFIX, tied)
    return {
        "text": text,
        "image": image_encoder(model_config.image, ""),
        "heads": ela_heads(),
    }
