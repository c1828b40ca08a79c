"""AdamW with linear warm-up and cosine decay, global-norm clipping, and decay only on matrices; parameters that
`optim.frozen` names are left as they are (no update, no optimizer state, no decay), and `optim.lr_multipliers`
scales the learning rate of the parameters its patterns name (e.g. a pretrained tower trained ten times slower)."""

from __future__ import annotations

import re

import jax
import jax.numpy as jnp
import optax

from ela_jax.errors import ConfigError

# Parameters that are matrices by shape but are positions or tokens, not weights; BERT and ViT do not decay them.
NO_DECAY_NAMES = ("cls_token", "position_embeddings")
FROZEN = "frozen"


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


def path_name(path) -> str:
    """A parameter's path as the patterns see it: its keys joined by '/', e.g. 'image_tower/encoder/layer_0/...'."""
    return "/".join(str(getattr(key, "key", key)) for key in path)


def multiplier_label(multiplier: float) -> str:
    return f"lr_x{multiplier:g}"


def parameter_labels(params, optim_config):
    """Each parameter's group: FROZEN when a pattern of `optim.frozen` matches its whole path, else the label of the
    multiplier of the first `optim.lr_multipliers` pattern that matches (x1 when none does). A pattern that matches
    no parameter is a ConfigError: a misspelt pattern would otherwise train what it meant to freeze."""
    frozen = [re.compile(pattern) for pattern in optim_config.frozen]
    multipliers = [(re.compile(pattern), float(value)) for pattern, value in optim_config.lr_multipliers]
    used = set()

    def label(path, _) -> str:
        name = path_name(path)
        for pattern in frozen:
            if pattern.fullmatch(name):
                used.add(("optim.frozen", pattern.pattern))
                return FROZEN
        for pattern, multiplier in multipliers:
            if pattern.fullmatch(name):
                used.add(("optim.lr_multipliers", pattern.pattern))
                return multiplier_label(multiplier)
        return multiplier_label(1.0)

    labels = jax.tree_util.tree_map_with_path(label, params)
    named = [("optim.frozen", p.pattern) for p in frozen] + [
        ("optim.lr_multipliers", p.pattern) for p, _ in multipliers
    ]
    for key, pattern in named:
        if (key, pattern) not in used:
            paths = [path_name(path) for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
            example = max(paths, key=lambda name: name.count("/"))
            raise ConfigError(
                f"{key} pattern {pattern!r} matches no parameter (or only ones an earlier pattern took); patterns "
                f"match whole '/'-joined paths such as {example!r}, e.g. 'image_tower/.*'"
            )
    return labels


def trainable_mask(params, optim_config):
    """True for the parameters the optimizer updates (not frozen)."""
    return jax.tree.map(lambda label: label != FROZEN, parameter_labels(params, optim_config))


def count_parameters(params, optim_config) -> tuple[int, int]:
    """(trainable, total) number of parameter values; works on shapes alone (abstract params)."""
    sizes = jax.tree.leaves(jax.tree.map(lambda leaf: leaf.size, params))
    trainable = jax.tree.leaves(trainable_mask(params, optim_config))
    return sum(size for size, keep in zip(sizes, trainable) if keep), sum(sizes)


def make_optimizer(optim_config, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """The optimizer and its base schedule. Without frozen parameters or multipliers it is one AdamW (the state
    layout earlier checkpoints hold). Otherwise frozen gradients are zeroed before clipping (so they do not count in
    the global norm), frozen parameters get `set_to_zero`, which keeps no state, and each multiplier group has its
    own AdamW, whose moments cover that group's parameters only."""
    schedule = learning_rate_schedule(optim_config, total_steps)

    def adamw(multiplier: float) -> optax.GradientTransformation:
        return optax.adamw(
            schedule if multiplier == 1.0 else lambda step: multiplier * schedule(step),
            b1=optim_config.b1,
            b2=optim_config.b2,
            eps=optim_config.eps,
            weight_decay=optim_config.weight_decay,
            mask=weight_decay_mask,
        )

    if not optim_config.frozen and not optim_config.lr_multipliers:
        return optax.chain(optax.clip_by_global_norm(optim_config.clip_norm), adamw(1.0)), schedule
    multipliers = {1.0} | {float(value) for _, value in optim_config.lr_multipliers}
    groups = {multiplier_label(m): adamw(m) for m in sorted(multipliers)}
    groups[FROZEN] = optax.set_to_zero()
    labels = lambda params: parameter_labels(params, optim_config)  # noqa: E731
    is_frozen = lambda params: jax.tree.map(lambda label: label == FROZEN, labels(params))  # noqa: E731
    optimizer = optax.chain(
        optax.masked(optax.set_to_zero(), is_frozen),
        optax.clip_by_global_norm(optim_config.clip_norm),
        optax.multi_transform(groups, labels),
    )
    return optimizer, schedule


def without_frozen_gradients(grads, optim_config):
    """The gradients with the frozen parameters' set to zero (unchanged when nothing is frozen): the frozen ones are
    then unused, so XLA drops their backward pass, and the logged gradient norm is the trainable parameters'."""
    if not optim_config.frozen:
        return grads
    zero_frozen = lambda grad, keep: grad if keep else jnp.zeros_like(grad)  # noqa: E731
    return jax.tree.map(zero_frozen, grads, trainable_mask(grads, optim_config))
