"""The ELA model and objective written the way a PyTorch user would: stock `transformers` `BertForMaskedLM` (its MLM
head is the tied text lexicon head) and `ViTModel`, a BERT MLM head on the patches, linear global heads, and the loss
in plain torch. It mirrors what `ela_jax.training.step` computes for the config (global InfoNCE, ELA soft-CE on the
caption's content words with beta = 0 and max over patches, FLOPS on both lexicon vectors, MLM), so that the two can
be timed on the same batch. Used only by the benchmarks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
import transformers
from transformers.models.bert.modeling_bert import BertLMPredictionHead


def supported(config) -> None:
    """Raises ValueError for objectives this reference does not implement (it covers the demo's)."""
    objective, ela = config.objective, config.objective.ela
    unsupported = {
        "objective.fine_weight": objective.fine_weight > 0,
        "objective.ela.beta": ela.beta > 0,
        "objective.ela.loss": ela.loss != "soft_ce",
        "objective.ela.pool": ela.pool != "max",
        "objective.ela.top_k": ela.top_k > 0,
    }
    bad = [key for key, is_bad in unsupported.items() if is_bad]
    if bad:
        raise ValueError(f"the PyTorch reference implements the demo objective only; unsupported settings: {bad}")


class TorchELA(torch.nn.Module):
    def __init__(self, model_config, vocab_size: int):
        super().__init__()
        image, text = model_config.image, model_config.text
        common = dict(hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, hidden_act="gelu")
        self.text = transformers.BertForMaskedLM(
            transformers.BertConfig(
                vocab_size=vocab_size,
                hidden_size=text.width,
                num_hidden_layers=text.depth,
                num_attention_heads=text.num_heads,
                intermediate_size=text.mlp_dim,
                max_position_embeddings=text.max_position_embeddings,
                layer_norm_eps=text.layer_norm_eps,
                **common,
            )
        )
        self.image = transformers.ViTModel(
            transformers.ViTConfig(
                hidden_size=image.width,
                num_hidden_layers=image.depth,
                num_attention_heads=image.num_heads,
                intermediate_size=image.mlp_dim,
                image_size=image.image_size,
                patch_size=image.patch_size,
                layer_norm_eps=image.layer_norm_eps,
                **common,
            ),
            add_pooling_layer=False,
        )
        self.image_lexicon = BertLMPredictionHead(
            transformers.BertConfig(vocab_size=vocab_size, hidden_size=image.width, layer_norm_eps=image.layer_norm_eps)
        )
        self.image_global = torch.nn.Linear(image.width, model_config.embed_dim, bias=False)
        self.text_global = torch.nn.Linear(text.width, model_config.embed_dim, bias=False)
        self.global_log_scale = torch.nn.Parameter(torch.tensor(math.log(1.0 / model_config.init_temperature)))
        self.max_log_scale = math.log(1.0 / model_config.min_temperature)
        self.global_pool = model_config.global_pool
        self.register_buffer("pixel_mean", torch.tensor(image.pixel_mean), persistent=False)
        self.register_buffer("pixel_std", torch.tensor(image.pixel_std), persistent=False)

    def pool(self, hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if self.global_pool == "cls":
            return hidden[:, 0]
        weights = mask.to(hidden.dtype)[..., None]
        return (hidden * weights).sum(1) / weights.sum(1).clamp(min=1.0)

    def encode_image(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        pixels = (images.float() / 255.0 - self.pixel_mean) / self.pixel_std
        hidden = self.image(pixel_values=pixels.permute(0, 3, 1, 2)).last_hidden_state
        patch_logits = self.image_lexicon(hidden[:, 1:])  # [b, patches, vocab]
        return {
            "global": F.normalize(self.image_global(self.pool(hidden, torch.ones(hidden.shape[:2]))), dim=-1),
            "vocab_logits": patch_logits,
            "lexicon": torch.log1p(torch.relu(patch_logits).amax(1)),
        }

    def encode_text(self, token_ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.text.bert(input_ids=token_ids, attention_mask=mask.long()).last_hidden_state
        token_mask = mask.clone()
        token_mask[:, 0] = False  # CLS is not a word
        token_logits = self.text.cls(hidden)  # [b, len, vocab]
        return {
            "global": F.normalize(self.text_global(self.pool(hidden, mask)), dim=-1),
            "token_mask": token_mask,
            "lexicon": torch.log1p((torch.relu(token_logits) * token_mask[..., None]).amax(1)),
        }


class TorchObjective:
    """loss(model, batch, step) for the config's objective (see `supported`), with BERT's MLM corruption."""

    def __init__(self, config, content_vocab: np.ndarray, special: np.ndarray, mask_id: int):
        supported(config)
        self.objective = config.objective
        self.content = torch.from_numpy(np.asarray(content_vocab, np.float32))
        self.special = torch.from_numpy(np.asarray(special, bool))
        self.mask_id = mask_id
        self.generator = torch.Generator().manual_seed(config.seed)

    def __call__(
        self, model: TorchELA, batch: dict[str, torch.Tensor], mlm_batch: dict[str, torch.Tensor], flops_weight
    ) -> torch.Tensor:
        """mlm_batch from `corrupt`, flops_weight from `flops_weight` (outside, so torch.compile sees no Python
        scalars that change per step)."""
        objective = self.objective
        image = model.encode_image(batch["images"])
        text = model.encode_text(batch["token_ids"], batch["mask"])
        scale = model.global_log_scale.clamp(max=model.max_log_scale).exp()
        logits = scale * image["global"] @ text["global"].T
        labels = torch.arange(logits.shape[0])
        loss = objective.global_weight * 0.5 * (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels))
        if objective.ela_weight > 0:
            loss = loss + objective.ela_weight * self.ela_soft_ce(image["vocab_logits"], batch, text["token_mask"])
        if objective.flops_weight > 0:
            loss = loss + flops_weight * sum((out["lexicon"].abs().mean(0) ** 2).sum() for out in (image, text))
        if objective.mlm_weight > 0:
            logits = model.text(input_ids=mlm_batch["corrupted"], attention_mask=batch["mask"].long()).logits
            mlm = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), mlm_batch["labels"].reshape(-1))
            loss = loss + objective.mlm_weight * mlm
        return loss

    def flops_weight(self, step: int) -> torch.Tensor:
        """lambda_flops * min(1, step / warm-up)^2."""
        warmup = self.objective.flops_warmup_steps
        return torch.tensor(self.objective.flops_weight * (min(1.0, step / warmup) ** 2 if warmup > 0 else 1.0))

    def ela_soft_ce(self, patch_logits: torch.Tensor, batch: dict, token_mask: torch.Tensor) -> torch.Tensor:
        """Soft cross-entropy of max-over-patches logits against the caption's content words (beta = 0)."""
        token_ids = batch["token_ids"]
        present = token_mask.float() * self.content[token_ids]
        bag = torch.zeros(token_ids.shape[0], self.content.shape[0]).scatter_reduce(1, token_ids, present, "amax")
        targets = bag / bag.sum(-1, keepdim=True).clamp(min=1.0)
        targets = targets / targets.sum(-1, keepdim=True).clamp(min=1e-12)
        log_probs = F.log_softmax(patch_logits.amax(1) / self.objective.ela.tau_p, dim=-1)
        return -(targets * log_probs).sum(-1).mean()

    def corrupt(self, batch: dict) -> dict[str, torch.Tensor]:
        """BERT masking: 30% of the real non-special tokens; 80% [MASK], 10% random, 10% kept; labels -100 elsewhere."""
        token_ids, mask = batch["token_ids"], batch["mask"]
        maskable = mask & ~self.special[token_ids]
        shape, g = token_ids.shape, self.generator
        selected = maskable & (torch.rand(shape, generator=g) < self.objective.mlm_probability)
        action = torch.rand(shape, generator=g)
        random_ids = torch.randint(0, self.content.shape[0], shape, generator=g)
        corrupted = torch.where(selected & (action < 0.8), self.mask_id, token_ids)
        corrupted = torch.where(selected & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
        return {"corrupted": corrupted, "labels": torch.where(selected, token_ids, -100)}


def make_optimizer(model: TorchELA, optim_config, total_steps: int):
    """AdamW (decay on matrices only), linear warm-up then cosine, as `ela_jax.training.optimizer`."""
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "position_embeddings" not in n]
    no_decay = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "position_embeddings" not in n)]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": optim_config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=optim_config.lr,
        betas=(optim_config.b1, optim_config.b2),
        eps=optim_config.eps,
    )
    warmup = max(1, optim_config.warmup_steps)

    def factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total_steps - warmup))))

    return optimizer, torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


class TorchTrainer:
    """model + objective + AdamW + clipping; `compile=True` wraps the loss computation in torch.compile."""

    def __init__(self, config, vocabulary, compile: bool = False):
        torch.manual_seed(config.seed)
        self.model = TorchELA(config.model, int(vocabulary.content.shape[0])).train()
        self.objective = TorchObjective(config, vocabulary.content, vocabulary.special, vocabulary.mask_id)
        self.optimizer, self.schedule = make_optimizer(self.model, config.optim, config.total_steps)
        self.clip_norm = config.optim.clip_norm
        self.loss_fn = torch.compile(self.objective) if compile else self.objective
        self.step_index = 0

    def step(self, batch: dict[str, torch.Tensor]) -> float:
        self.optimizer.zero_grad(set_to_none=True)
        mlm_batch = self.objective.corrupt(batch)
        loss = self.loss_fn(self.model, batch, mlm_batch, self.objective.flops_weight(self.step_index))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_norm)
        self.optimizer.step()
        self.schedule.step()
        self.step_index += 1
        return loss

    def run(self, batch: dict[str, torch.Tensor], steps: int) -> float:
        import time

        start = time.perf_counter()
        for _ in range(steps):
            self.step(batch)
        return time.perf_counter() - start


def torch_batch(host_batch: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {
        "images": torch.from_numpy(np.ascontiguousarray(host_batch["images"])),
        "token_ids": torch.from_numpy(host_batch["token_ids"].astype(np.int64)),
        "mask": torch.from_numpy(host_batch["mask"].astype(bool)),
    }
