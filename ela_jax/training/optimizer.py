"""AdamW with linear warm-up and cosine decay, global-norm clipping, and decay only on matrices."""

from __future__ import annotations

import jax
import optax

# Parameters that are matrices by shape but are positions or tokens, not weights; BERT and ViT do not decay them.
NO_DECAY_NAMES = ("cls_token", "position_embeddings")


def learning_rate_schedule(optim_config, total_steps: int) -> optax.Schedule:
    warmup_steps = min(optim_config.warmup_steps, total_steps)
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0,
        peak_value=optim_config.lr,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, warmup_steps + 1),
        end_value=optim_config.lr * optim_config.end_lr_fraction,
    )


def weight_decay_mask(params):
    """True where AdamW decays: kernels and embeddings; never biases, LayerNorm, logit scales, CLS or positions."""

    def decays(path, leaf) -> bool:
        name = str(getattr(path[-1], "key", path[-1]))
        return leaf.ndim >= 2 and name not in NO_DECAY_NAMES

    return jax.tree_util.tree_map_with_path(decays, params)


def make_optimizer(optim_config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    schedule = learning_rate_schedule(optim_config, total_steps)
    optimizer = optax.chain(
        optax.clip_by_global_norm(optim_config.clip_norm),
        optax.adamw(
            schedule,
            b1=optim_config.b1,
            b2=optim_config.b2,
            eps=optim_config.eps,
            weight_decay=optim_config.weight_decay,
            mask=weight_decay_mask,
        ),
    )
    return optimizer, schedule
