"""The ELA objective's terms as pure functions of encoder outputs (shapes in the signatures).

Every contrastive term takes the *global* batch, so each row sees every negative in the step. On a mesh the step
computes them through `local_rows_info_nce` (see `ela_jax.training.contrastive`): each device scores its own rows
against all columns, never the full [B, B] matrix.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ela_jax import host_allocator
from ela_jax.config import TARGET_FORMS

# The JAX side applies the host-allocator settings on import, before JAX starts XLA:CPU's threads at its first
# computation (see ela_jax.host_allocator); the package's own import leaves a PyTorch process alone.
host_allocator.configure()


def info_nce(logits_i2t: jax.Array, logits_t2i: jax.Array) -> jax.Array:
    """Mean of image->text cross-entropy over the rows of logits_i2t and text->image cross-entropy over the columns
    of logits_t2i, the diagonal being the positive; both [B, B] (the same matrix except in FILIP)."""
    labels = jnp.arange(logits_i2t.shape[0])
    rows = optax.softmax_cross_entropy_with_integer_labels(logits_i2t.astype(jnp.float32), labels)
    columns = optax.softmax_cross_entropy_with_integer_labels(logits_t2i.T.astype(jnp.float32), labels)
    return 0.5 * (rows.mean() + columns.mean())


def symmetric_info_nce(logits: jax.Array) -> jax.Array:
    """Mean of row-wise and column-wise cross-entropy with the diagonal as the positive; logits [B, B]."""
    return info_nce(logits, logits)


def local_rows_info_nce(logits_i2t: jax.Array, logits_t2i: jax.Array, axis_name) -> jax.Array:
    """`symmetric_info_nce` of a row-sharded [B, B] problem, inside `shard_map` over `axis_name`.

    This device holds rows [offset, offset + b) of both logit matrices ([b, B]: its b images against all B
    captions); logits_i2t ranks captions per image, logits_t2i ranks images per caption (FILIP's two matrices differ;
    CLIP's are the same). Image->text is a local row softmax; text->image needs each column's logsumexp over every
    device's rows, assembled from per-device maxima and sums. No device ever holds a [B, B] matrix.
    """
    rows, total = logits_i2t.shape
    offset = jax.lax.axis_index(axis_name) * rows
    labels = offset + jnp.arange(rows)
    logits_i2t, logits_t2i = logits_i2t.astype(jnp.float32), logits_t2i.astype(jnp.float32)
    image_to_text = jax.lax.psum(optax.softmax_cross_entropy_with_integer_labels(logits_i2t, labels).sum(), axis_name)
    # The shift keeps exp() finite; it is a constant for the gradient (logsumexp's value does not depend on it).
    column_max = jax.lax.pmax(jnp.max(jax.lax.stop_gradient(logits_t2i), axis=0), axis_name)
    column_sum = jax.lax.psum(jnp.sum(jnp.exp(logits_t2i - column_max), axis=0), axis_name)
    column_logsumexp = jnp.log(column_sum) + column_max  # [B]
    positives = jax.lax.psum(jnp.take_along_axis(logits_t2i, labels[:, None], axis=1).sum(), axis_name)
    text_to_image = jnp.sum(column_logsumexp) - positives
    return 0.5 * (image_to_text + text_to_image) / total


def sigmoid_terms(logits: jax.Array, pairs_on_diagonal: bool | jax.Array = True) -> jax.Array:
    """sum_ij -log sigmoid(z_ij * logits_ij) over a block of SigLIP's logits (scaled and biased, [rows, columns]):
    z_ij = 1 where the block's diagonal holds the batch's image-caption pairs (when `pairs_on_diagonal`), -1 for
    every other entry. A row-sharded ring adds up these block sums (see `ela_jax.training.contrastive`)."""
    rows, columns = logits.shape
    positive = jnp.logical_and(pairs_on_diagonal, jnp.eye(rows, columns, dtype=bool))
    labels = jnp.where(positive, 1.0, -1.0)
    return -jnp.sum(jax.nn.log_sigmoid(labels * logits.astype(jnp.float32)))


def sigmoid_loss(logits: jax.Array) -> jax.Array:
    """SigLIP's pairwise sigmoid loss, normalised by the batch size as SigLIP's is; logits [B, B] scaled and biased."""
    return sigmoid_terms(logits) / logits.shape[0]


def global_contrastive_loss(image_global: jax.Array, text_global: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """CLIP InfoNCE; image_global, text_global: L2-normalised [B, d]."""
    return symmetric_info_nce(logit_scale * image_global @ text_global.T)


def filip_similarities(
    image_tokens: jax.Array, text_tokens: jax.Array, image_mask: jax.Array, text_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """FILIP late interaction. image_tokens [Bi, K, d], text_tokens [Bt, R, d], masks [B, len] (True = real token).

    Returns s_image [Bi, Bt] = mean_k max_r x_k.y_r and s_text [Bi, Bt] = mean_r max_k x_k.y_r, pads excluded.
    """
    similarity = jnp.einsum("ikd,jrd->ijkr", image_tokens, text_tokens).astype(jnp.float32)
    pair_mask = image_mask[:, None, :, None] & text_mask[None, :, None, :]  # [Bi, Bt, K, R]
    lowest = jnp.finfo(jnp.float32).min
    best_word = jnp.max(jnp.where(pair_mask, similarity, lowest), axis=3)  # [Bi, Bt, K]
    best_patch = jnp.max(jnp.where(pair_mask, similarity, lowest), axis=2)  # [Bi, Bt, R]
    s_image = _masked_mean(best_word, image_mask[:, None, :])
    s_text = _masked_mean(best_patch, text_mask[None, :, :])
    return s_image, s_text


def _masked_mean(values: jax.Array, mask: jax.Array) -> jax.Array:
    mask = jnp.broadcast_to(mask, values.shape).astype(values.dtype)
    return jnp.sum(values * mask, axis=-1) / jnp.maximum(jnp.sum(mask, axis=-1), 1.0)


def filip_loss(s_image: jax.Array, s_text: jax.Array, logit_scale: jax.Array) -> jax.Array:
    """Image->text rows use s_image, text->image rows use s_text (FILIP); both [Bi, Bt] with Bi = Bt."""
    return info_nce(logit_scale * s_image, logit_scale * s_text)


def caption_bag_of_words(token_ids: jax.Array, token_mask: jax.Array, content_vocab: jax.Array) -> jax.Array:
    """Multi-hot explicit words B_T [B, V]: the caption's wordpieces under token_mask that content_vocab [V] keeps
    (special tokens and, optionally, stopwords are 0 there)."""
    batch, vocab = token_ids.shape[0], content_vocab.shape[0]
    present = token_mask.astype(jnp.float32) * content_vocab[token_ids]
    rows = jnp.broadcast_to(jnp.arange(batch)[:, None], token_ids.shape)
    return jnp.zeros((batch, vocab), jnp.float32).at[rows, token_ids].max(present)


def expanded_targets(
    bag_of_words: jax.Array,
    text_lexicon: jax.Array,
    content_vocab: jax.Array,
    beta: float | jax.Array,
    tau_q: float,
    top_k: int,
    form: str = "softmax",
    source_top_k: int = 0,
) -> jax.Array:
    """q = normalise((1-beta) 1[v in B_T]/|B_T| + beta q_exp), kept on exactly its top_k entries (0 = all).

    q_exp over the content words: "softmax" is softmax(a_T/tau_q), which gives every content word some mass;
    "sparse" is a_T / sum a_T, zero wherever the text side did not activate a word (a caption whose a_T is zero on
    every content word then gets its explicit words only). bag_of_words [B, V]; text_lexicon a_T >= 0 [B, V]
    (treated as a constant). Entries tied at the k-th value are kept by lower word id, so a tied tail never
    widens the target beyond k words. A caption with no content word and beta = 0 gets an all-zero target, which
    contributes nothing to the loss. source_top_k > 0 first cuts a_T to its source_top_k strongest content words (see
    `expansion_distribution`).
    """
    explicit = bag_of_words / jnp.maximum(bag_of_words.sum(-1, keepdims=True), 1.0)
    expansion = expansion_distribution(text_lexicon, content_vocab, tau_q, form, source_top_k)
    targets = (1.0 - beta) * explicit + beta * expansion
    if top_k and top_k < targets.shape[-1]:
        targets = keep_top_k(targets, top_k)
    return targets / jnp.maximum(targets.sum(-1, keepdims=True), 1e-12)


def expansion_distribution(
    text_lexicon: jax.Array, content_vocab: jax.Array, tau_q: float, form: str, source_top_k: int = 0
) -> jax.Array:
    """q_exp [B, V] of `expanded_targets`, zero on words content_vocab drops; a_T is a constant.

    source_top_k > 0 keeps only each caption's source_top_k highest-weighted content words of a_T: a pretrained source
    activates nearly every word it knows, so without a cut its "sparse" distribution is close to uniform.
    """
    weights = jax.lax.stop_gradient(text_lexicon).astype(jnp.float32)
    is_content = content_vocab > 0
    if source_top_k and source_top_k < weights.shape[-1]:
        ranked = jnp.where(is_content, weights, -jnp.inf)
        _, indices = jax.lax.top_k(ranked, source_top_k)
        rows = jnp.arange(weights.shape[0])[:, None]
        is_content = jnp.zeros(weights.shape, bool).at[rows, indices].set(True) & is_content
    if form == "softmax":
        return jax.nn.softmax(jnp.where(is_content, weights / tau_q, -jnp.inf), axis=-1)
    if form == "sparse":
        active = jnp.where(is_content, jnp.maximum(weights, 0.0), 0.0)
        return active / jnp.maximum(active.sum(-1, keepdims=True), 1e-12)
    raise ValueError(f"unknown expansion target form {form!r}; use one of {TARGET_FORMS}")


def keep_top_k(values: jax.Array, top_k: int) -> jax.Array:
    """values [B, V] with all but exactly top_k entries per row set to 0 (ties kept by lower index, as lax.top_k)."""
    kept, indices = jax.lax.top_k(values, top_k)
    rows = jnp.arange(values.shape[0])[:, None]
    return jnp.zeros_like(values).at[rows, indices].set(kept)


def ela_soft_ce(image_vocab_logits: jax.Array, targets: jax.Array, tau_p: float) -> jax.Array:
    """-sum_v q[v] log softmax(z_hat / tau_p)[v], averaged over the batch; inputs [B, V]."""
    log_probs = jax.nn.log_softmax(image_vocab_logits.astype(jnp.float32) / tau_p, axis=-1)
    return -(targets * log_probs).sum(-1).mean()


def target_presence(image_vocab_logits: jax.Array, targets: jax.Array, margin: float) -> jax.Array:
    """sum_v q[v] softplus(margin - z_hat[v]), averaged over the batch; inputs [B, V].

    The lexicon is log(1 + ReLU(z_hat)), so which words it holds (its support, what an inverted index serves) is set
    by which logits clear zero. soft_ce is invariant to adding a constant to every logit and the saturated forms give
    a word below zero no gradient, so neither can lift a target word into the lexicon; this term does, and FLOPS
    pushes the other words down.
    """
    shortfall = jax.nn.softplus(margin - image_vocab_logits.astype(jnp.float32))
    return (targets * shortfall).sum(-1).mean()


def ela_bce(
    image_vocab_logits: jax.Array, targets: jax.Array, tau_p: float, threshold: float | jax.Array = 0.5
) -> jax.Array:
    """Multi-label BCE against q scaled so its largest entry is 1, normalised by each row's positive mass.

    Each word's probability is sigmoid(z_hat / tau_p + logit(threshold)), so z_hat > 0 (the word is in the lexicon
    log(1 + ReLU(z_hat))) exactly when the predicted label exceeds `threshold`. Every word is calibrated on its own,
    so a word whose label does not depend on the image gets the same logit on every image; at 0.5 an expanded word,
    whose scaled label is a fraction, would never enter the lexicon.
    """
    labels = targets / jnp.maximum(targets.max(-1, keepdims=True), 1e-12)
    offset = jnp.log(threshold) - jnp.log1p(-threshold)
    logits = image_vocab_logits.astype(jnp.float32) / tau_p + offset
    per_word = optax.sigmoid_binary_cross_entropy(logits, labels)
    return (per_word.sum(-1) / jnp.maximum(labels.sum(-1), 1.0)).mean()


def lex_contrastive_logits(image_vocab_logits: jax.Array, targets: jax.Array, tau: float) -> jax.Array:
    """s(i, j) / tau = sum_v q_j[v] log(1 + ReLU(z_hat_i[v])) / tau; [Bi, V] x [Bt, V] -> [Bi, Bt]."""
    image_weights = jnp.log1p(jax.nn.relu(image_vocab_logits.astype(jnp.float32)))
    return image_weights @ targets.T / tau


def sparse_lex_contrastive_logits(
    image_vocab_logits: jax.Array, target_values: jax.Array, target_ids: jax.Array, tau: float, chunk: int = 1024
) -> jax.Array:
    """`lex_contrastive_logits` with each caption's target as its entries target_values [Bt, k] at words target_ids
    [Bt, k] (every non-zero of a top-k target): [Bi, V] -> [Bi, Bt] without the [Bt, V] targets, which on a pod are
    gathered for the whole global batch. Columns go `chunk` at a time, each rematerialised, so at most a [Bi, chunk, k]
    block of gathered image weights exists."""
    image_weights = jnp.log1p(jax.nn.relu(image_vocab_logits.astype(jnp.float32)))
    columns, k = target_values.shape
    chunk = min(chunk, columns)
    num_chunks = -(-columns // chunk)
    padding = ((0, num_chunks * chunk - columns), (0, 0))  # zero-valued padded columns, cut off below

    @jax.checkpoint
    def block(values: jax.Array, ids: jax.Array) -> jax.Array:  # [chunk, k] -> [Bi, chunk]
        return jnp.einsum("ick,ck->ic", image_weights[:, ids], values)

    chunks = (jnp.pad(target_values, padding).reshape(num_chunks, chunk, k),)
    chunks += (jnp.pad(target_ids, padding).reshape(num_chunks, chunk, k),)
    blocks = jax.lax.map(lambda args: block(*args), chunks)  # [num_chunks, Bi, chunk]
    return jnp.moveaxis(blocks, 0, 1).reshape(image_weights.shape[0], -1)[:, :columns] / tau


def ela_lex_contrastive(image_vocab_logits: jax.Array, targets: jax.Array, tau: float) -> jax.Array:
    """In-batch InfoNCE on s(i, j) = sum_v q_j[v] log(1 + ReLU(z_hat_i[v])); inputs [B, V]."""
    return symmetric_info_nce(lex_contrastive_logits(image_vocab_logits, targets, tau))


def l2_normalise(vectors: jax.Array) -> jax.Array:
    """Rows of vectors [B, V] over their L2 norm (an all-zero row stays zero)."""
    return vectors / jnp.maximum(jnp.linalg.norm(vectors, axis=-1, keepdims=True), 1e-6)


def lexlip_logits(image_lexicon: jax.Array, text_lexicon: jax.Array, tau: float) -> jax.Array:
    """Cosine of the lexicon vectors over tau; [Bi, V] x [Bt, V] -> [Bi, Bt]."""
    return l2_normalise(image_lexicon) @ l2_normalise(text_lexicon).T / tau


def lexlip_cosine_loss(image_lexicon: jax.Array, text_lexicon: jax.Array, tau: float) -> jax.Array:
    """LexLIP: InfoNCE on the cosine of the lexicon vectors a_I, a_T [B, V]."""
    return symmetric_info_nce(lexlip_logits(image_lexicon, text_lexicon, tau))


def flops_regulariser(lexicon: jax.Array, normalised: bool = False) -> jax.Array:
    """FLOPS(a) = sum_v (mean_batch |a[v]|)^2; lexicon [B, V]. With `normalised`, of the L2-normalised vectors (as
    LexLIP): a side that only cosine terms train has no loss on its scale, so raw FLOPS would shrink it unopposed."""
    if normalised:
        lexicon = l2_normalise(lexicon)
    return jnp.sum(jnp.mean(jnp.abs(lexicon), axis=0) ** 2)


def quadratic_warmup(weight: float, step: jax.Array, warmup_steps: int) -> jax.Array:
    """weight * min(1, step / warmup_steps)^2 (SPLADE's FLOPS schedule)."""
    if warmup_steps <= 0:
        return jnp.asarray(weight, jnp.float32)
    return weight * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps) ** 2


def linear_warmup(value: float, step: jax.Array, warmup_steps: int) -> jax.Array:
    if warmup_steps <= 0:
        return jnp.asarray(value, jnp.float32)
    return value * jnp.minimum(1.0, step.astype(jnp.float32) / warmup_steps)


def mlm_corrupt(
    rng: jax.Array,
    token_ids: jax.Array,
    maskable: jax.Array,
    probability: float,
    mask_token_id: int,
    vocab_size: int,
) -> tuple[jax.Array, jax.Array]:
    """BERT masking: pick `probability` of the maskable tokens; of those 80% -> [MASK], 10% random, 10% kept.

    Returns (corrupted ids, selected [B, L] bool).
    """
    select_rng, action_rng, random_rng = jax.random.split(rng, 3)
    selected = maskable & (jax.random.uniform(select_rng, token_ids.shape) < probability)
    action = jax.random.uniform(action_rng, token_ids.shape)
    random_ids = jax.random.randint(random_rng, token_ids.shape, 0, vocab_size)
    corrupted = jnp.where(selected & (action < 0.8), mask_token_id, token_ids)
    corrupted = jnp.where(selected & (action >= 0.8) & (action < 0.9), random_ids, corrupted)
    return corrupted, selected


def mlm_token_losses(vocab_logits: jax.Array, token_ids: jax.Array, selected: jax.Array) -> jax.Array:
    """[B, L] cross-entropy of the original ids at the selected positions, 0 elsewhere; vocab_logits [B, L, V]."""
    per_token = optax.softmax_cross_entropy_with_integer_labels(vocab_logits.astype(jnp.float32), token_ids)
    return per_token * selected.astype(jnp.float32)


def mlm_loss(vocab_logits: jax.Array, token_ids: jax.Array, selected: jax.Array) -> jax.Array:
    """Mean cross-entropy of the original ids over the selected positions; vocab_logits [B, L, V]."""
    total = jnp.sum(mlm_token_losses(vocab_logits, token_ids, selected))
    return total / jnp.maximum(jnp.sum(selected.astype(jnp.float32)), 1.0)


def needs_teacher(config) -> bool:
    """Whether the ELA term expands from a teacher (EMA, frozen or pretrained) that the train state must carry."""
    ela = config.objective.ela
    return config.objective.ela_weight > 0 and ela.beta > 0 and ela.target_source in ("ema", "frozen", "pretrained")
