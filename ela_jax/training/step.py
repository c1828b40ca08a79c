"""One train-step builder for every objective: CLIP-only, FILIP, ELA and its ablations differ only in config."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from ela_jax import objectives, parallel
from ela_jax.models.ela import LOG_SCALE_PARAMS, ELAModel, max_log_scale
from ela_jax.training import optimizer as optimizer_lib
from ela_jax.training.teacher import PretrainedTeacher
from ela_jax.training.contrastive import Contrastive
from ela_jax.training.state import TrainState, teacher_params


@dataclasses.dataclass(frozen=True)
class Vocabulary:
    """What the objective needs to know of the tokenizer."""

    content: np.ndarray  # float32 [V]: 1 where a word can be an explicit ELA target
    special: np.ndarray  # bool [V]: [PAD], [CLS], ... never masked for MLM
    mask_id: int

    @classmethod
    def from_tokenizer(cls, tokenizer, drop_stopwords: bool) -> "Vocabulary":
        special = np.zeros(tokenizer.vocab_size, bool)
        special[list(tokenizer.special_ids)] = True
        return cls(tokenizer.content_vocab(drop_stopwords), special, tokenizer.mask_id)


@dataclasses.dataclass(frozen=True)
class Needs:
    """Which encoder outputs the configured objective reads (the rest is never computed), and which lexicon FLOPS
    regularises: only a side some loss trains, or the regulariser alone would drive that side to zero. FLOPS acts on
    a side's L2-normalised vectors where only cosine terms train its scale (LexLIP's form)."""

    image_lexicon: bool
    text_lexicon: bool
    tokens: bool
    expansion: bool
    flops_image: bool
    flops_text: bool
    flops_normalised_image: bool = False
    flops_normalised_text: bool = False

    @classmethod
    def from_config(cls, config) -> "Needs":
        objective, ela = config.objective, config.objective.ela
        use_ela = objective.ela_weight > 0
        expansion = use_ela and ela.beta > 0 and ela.loss != "lexlip_cosine"
        lexlip = use_ela and ela.loss == "lexlip_cosine"
        lexicon_term = objective.lexicon_weight > 0
        flops = objective.flops_weight > 0
        # Every ELA loss form trains the image lexicon; the text lexicon is trained by MLM (on captions or the text
        # stream), by LexLIP's cosine or by the lexicon retrieval term (expansion targets are stop-gradient). Only the
        # ELA forms other than lexlip_cosine act on the image lexicon's raw scale; MLM's cross-entropy ignores the
        # text lexicon's level.
        mlm = objective.mlm_weight > 0 or objective.stream_mlm_weight > 0
        flops_text = flops and (mlm or lexlip or lexicon_term)
        return cls(
            image_lexicon=use_ela or lexicon_term,
            text_lexicon=lexlip or lexicon_term or (expansion and ela.target_source == "online") or flops_text,
            tokens=objective.fine_weight > 0,
            expansion=expansion,
            flops_image=flops and (use_ela or lexicon_term),
            flops_text=flops_text,
            flops_normalised_image=lexlip or (lexicon_term and not use_ela),
            flops_normalised_text=lexlip or lexicon_term,
        )


def loss_weights(objective_config, step: jax.Array) -> dict[str, jax.Array]:
    flops = objectives.quadratic_warmup(objective_config.flops_weight, step, objective_config.flops_warmup_steps)
    return {
        "global": jnp.asarray(objective_config.global_weight, jnp.float32),
        "fine": jnp.asarray(objective_config.fine_weight, jnp.float32),
        "ela": jnp.asarray(objective_config.ela_weight, jnp.float32),
        "lexicon": jnp.asarray(objective_config.lexicon_weight, jnp.float32),
        "flops": flops,
        "mlm": jnp.asarray(objective_config.mlm_weight, jnp.float32),
        "stream_mlm": jnp.asarray(objective_config.stream_mlm_weight, jnp.float32),
    }


class ObjectiveBuilder:
    """Computes the weighted ELA objective for a batch; which terms exist is fixed by the config at trace time.

    Two stages: `representations` runs the encoders and returns per-example arrays (batch first); `loss_from_reps`
    turns the whole batch's representations into the loss. Gradient accumulation (`accumulated_gradients`) runs the
    first stage per micro-batch and the second once on the full batch, so every negative of the batch counts.
    """

    def __init__(self, model: ELAModel, config, vocabulary: Vocabulary, mesh: Mesh | None = None):
        self.model, self.config, self.vocabulary = model, config, vocabulary
        self.needs = Needs.from_config(config)
        source = config.objective.ela.target_source
        self.pretrained = (
            PretrainedTeacher.from_config(config) if self.needs.expansion and source == "pretrained" else None
        )
        self.contrastive = Contrastive(mesh, enabled=config.objective.sharded_contrastive)

    def __call__(self, params, teacher, batch: dict, step: jax.Array, rng: jax.Array):
        mlm = self.mlm_inputs(batch, rng)
        reps = self.representations(params, teacher, batch, mlm)
        return self.loss_from_reps(params, reps, batch, mlm, step)

    def mlm_inputs(self, batch: dict, rng: jax.Array) -> dict:
        """The corrupted captions and the selected positions for MLM ({} when MLM is off), drawn for the whole batch
        so that micro-batching does not change them."""
        inputs = {}
        if self.config.objective.mlm_weight > 0:
            inputs["corrupted"], inputs["selected"] = self.corrupt(batch["token_ids"], batch["mask"], rng)
        if self.config.objective.stream_mlm_weight > 0:
            stream_rng = jax.random.fold_in(rng, 1)
            inputs["stream_corrupted"], inputs["stream_selected"] = self.corrupt(
                batch["stream_tokens"], batch["stream_mask"], stream_rng
            )
        return inputs

    def corrupt(self, token_ids: jax.Array, mask: jax.Array, rng: jax.Array) -> tuple[jax.Array, jax.Array]:
        """MLM's corrupted tokens and selected positions for one set of sentences."""
        maskable = mask.astype(bool) & ~jnp.asarray(self.vocabulary.special)[token_ids]
        return objectives.mlm_corrupt(
            rng,
            token_ids,
            maskable,
            self.config.objective.mlm_probability,
            self.vocabulary.mask_id,
            self.vocabulary.content.shape[0],
        )

    def representations(self, params, teacher, batch: dict, mlm: dict) -> dict:
        """Per-example encoder outputs the loss reads, each [batch, ...]."""
        variables = {"params": params}
        needs = self.needs
        image = self.model.apply(
            variables,
            batch["images"],
            with_lexicon=needs.image_lexicon,
            with_tokens=needs.tokens,
            patch_pool=self.config.objective.ela.pool,
            method=ELAModel.encode_image,
        )
        text = self.model.apply(
            variables,
            batch["token_ids"],
            batch["mask"],
            with_lexicon=needs.text_lexicon,
            with_tokens=needs.tokens,
            method=ELAModel.encode_text,
        )
        reps = {"image_global": image["global"], "text_global": text["global"]}
        if needs.tokens:
            reps["image_tokens"], reps["text_tokens"] = image["token_embeddings"], text["token_embeddings"]
        if needs.image_lexicon:
            reps["image_lexicon"], reps["image_pooled"] = image["lexicon"], image["pooled_vocab_logits"]
        if needs.text_lexicon:
            reps["text_lexicon"] = text["lexicon"]
        if needs.expansion:
            reps["expansion"] = self.expansion_lexicon(params, teacher, text, batch)
        if "corrupted" in mlm:
            reps["mlm_sums"] = self.mlm_sums(
                params, mlm["corrupted"], batch["mask"], batch["token_ids"], mlm["selected"]
            )
        if "stream_corrupted" in mlm:
            reps["stream_mlm_sums"] = self.stream_mlm_sums(params, batch, mlm)
        return reps

    def mlm_sums(self, params, corrupted: jax.Array, mask: jax.Array, token_ids: jax.Array, selected: jax.Array):
        """[rows]: MLM's cross-entropy of the original ids summed over each sentence's selected positions."""
        losses = self.model.apply({"params": params}, corrupted, mask, token_ids, method=ELAModel.mlm_token_losses)
        return jnp.sum(losses * selected.astype(jnp.float32), axis=-1)

    def stream_mlm_sums(self, params, batch: dict, mlm: dict) -> jax.Array:
        """[stream rows]: MLM's summed token losses on the unpaired sentences, through the captions' MLM head."""
        return self.mlm_sums(
            params, mlm["stream_corrupted"], batch["stream_mask"], batch["stream_tokens"], mlm["stream_selected"]
        )

    def loss_from_reps(self, params, reps: dict, batch: dict, mlm: dict, step: jax.Array):
        objective = self.config.objective
        scales = self.model.apply({"params": params}, method=ELAModel.logit_scales)
        terms = {}
        if objective.global_weight > 0 and objective.global_loss == "sigmoid":
            shared = (scales["global"], scales["global_bias"])
            terms["global"] = self.contrastive.sigmoid(
                sigmoid_logits, reps["image_global"], reps["text_global"], shared
            )
        elif objective.global_weight > 0:
            terms["global"] = self.contrastive(
                global_logits, reps["image_global"], reps["text_global"], scales["global"]
            )
        if objective.fine_weight > 0:
            image_mask = jnp.ones(reps["image_tokens"].shape[:2], bool)
            terms["fine"] = self.contrastive(
                filip_logits,
                (reps["image_tokens"], image_mask),
                (reps["text_tokens"], text_token_mask(batch)),
                scales["fine"],
            )
        if objective.ela_weight > 0:
            terms["ela"] = self.ela_loss(reps, batch, step)
        if objective.lexicon_weight > 0:
            terms["lexicon"] = self.contrastive(
                lexlip_logits, reps["image_lexicon"], reps["text_lexicon"], objective.lexicon_tau
            )
        flops_sides = [side for side in ("image", "text") if getattr(self.needs, f"flops_{side}")]
        if flops_sides:
            terms["flops"] = sum(
                objectives.flops_regulariser(reps[f"{side}_lexicon"], getattr(self.needs, f"flops_normalised_{side}"))
                for side in flops_sides
            )
        if objective.mlm_weight > 0:
            selected = jnp.sum(mlm["selected"].astype(jnp.float32))
            terms["mlm"] = jnp.sum(reps["mlm_sums"]) / jnp.maximum(selected, 1.0)
        if objective.stream_mlm_weight > 0:
            selected = jnp.sum(mlm["stream_selected"].astype(jnp.float32))
            terms["stream_mlm"] = jnp.sum(reps["stream_mlm_sums"]) / jnp.maximum(selected, 1.0)
        weights = loss_weights(objective, step)
        loss = sum(weights[name] * value for name, value in terms.items())
        metrics = {f"loss_{name}": value for name, value in terms.items()}
        metrics["temperature"] = 1.0 / scales["global"]
        if "global_bias" in scales:
            metrics["logit_bias"] = scales["global_bias"]
        for side in ("image", "text"):
            if f"{side}_lexicon" in reps:
                metrics[f"{side}_lexicon_nonzeros"] = jnp.mean(jnp.sum(reps[f"{side}_lexicon"] > 0, axis=-1))
        return loss, metrics

    def expansion_lexicon(self, params, teacher, text: dict, batch: dict) -> jax.Array:
        """a_T [B, V] from the configured source, as a constant (another caption's, with the shuffle control)."""
        lexicon = jax.lax.stop_gradient(self.source_lexicon(params, teacher, text, batch))
        return jnp.roll(lexicon, 1, axis=0) if self.config.objective.ela.shuffle_source else lexicon

    def source_lexicon(self, params, teacher, text: dict, batch: dict) -> jax.Array:
        if self.config.objective.ela.target_source == "online":
            return text["lexicon"]
        if self.pretrained is not None:
            return self.pretrained.expansion_lexicon(teacher, batch["token_ids"], batch["mask"], text_token_mask(batch))
        variables = {"params": {**params, **teacher}}
        teacher_text = self.model.apply(
            variables, batch["token_ids"], batch["mask"], with_tokens=False, method=ELAModel.encode_text
        )
        return teacher_text["lexicon"]

    def ela_loss(self, reps: dict, batch: dict, step: jax.Array) -> jax.Array:
        ela = self.config.objective.ela
        if ela.loss == "lexlip_cosine":
            return self.contrastive(lexlip_logits, reps["image_lexicon"], reps["text_lexicon"], ela.tau_contrastive)
        rows = (batch["token_ids"], text_token_mask(batch))
        if self.needs.expansion:
            rows += (reps["expansion"],)
            beta = objectives.linear_warmup(ela.beta, step, ela.beta_warmup_steps)
        else:
            beta = jnp.float32(0.0)
        targets = self.contrastive.rowwise(self.targets, rows, (beta,))
        image_vocab_logits = reps["image_pooled"]
        if ela.loss == "bce":  # multi-label: trains which words clear zero by itself
            return objectives.ela_bce(image_vocab_logits, targets, ela.tau_p, ela.bce_threshold)
        if ela.loss == "soft_ce":
            alignment = objectives.ela_soft_ce(image_vocab_logits, targets, ela.tau_p)
        else:
            alignment = self.lex_contrastive(image_vocab_logits, targets)
        if ela.presence_weight > 0:
            presence = objectives.target_presence(image_vocab_logits, targets, ela.presence_margin)
            alignment = alignment + ela.presence_weight * presence
        return alignment

    def targets(self, token_ids: jax.Array, token_mask: jax.Array, *expansion_and_beta) -> jax.Array:
        """ELA's targets q [B, V] from the captions' words and, with expansion, the source lexicon a_T [B, V]."""
        ela = self.config.objective.ela
        content = jnp.asarray(self.vocabulary.content)
        bag_of_words = objectives.caption_bag_of_words(token_ids, token_mask, content)
        *expansion, beta = expansion_and_beta
        text_lexicon = expansion[0] if expansion else jnp.zeros_like(bag_of_words)
        return objectives.expanded_targets(
            bag_of_words, text_lexicon, content, beta, ela.tau_q, ela.top_k, ela.target_form, ela.source_top_k
        )

    def lex_contrastive(self, image_vocab_logits: jax.Array, targets: jax.Array) -> jax.Array:
        """ELA's in-batch lex_contrastive term. A top-k target goes to the other devices as its k entries and word ids
        (all its non-zeros): the dense [global batch, V] targets would be the largest array on a pod's chip."""
        ela = self.config.objective.ela
        if 0 < ela.top_k < targets.shape[-1]:
            columns = self.contrastive.rowwise(lambda q: jax.lax.top_k(q, ela.top_k), (targets,))
            return self.contrastive(sparse_lex_logits, image_vocab_logits, columns, ela.tau_contrastive)
        return self.contrastive(dense_lex_logits, image_vocab_logits, targets, ela.tau_contrastive)

    def accumulated_gradients(self, params, teacher, batch: dict, step: jax.Array, rng: jax.Array, microbatches: int):
        """GradCache: the full-batch loss and its exact gradient, with activations of one micro-batch at a time.

        1. encode every micro-batch without keeping activations; 2. loss and d loss / d representations on the whole
        batch; 3. re-encode each micro-batch and pull those representation gradients back into the parameters.
        """
        mlm = self.mlm_inputs(batch, rng)
        micro_batch, micro_mlm = split_microbatches(batch, microbatches), split_microbatches(mlm, microbatches)
        encode = lambda p, inputs: self.representations(p, teacher, *inputs)  # noqa: E731
        micro_reps = jax.lax.map(lambda inputs: encode(params, inputs), (micro_batch, micro_mlm))
        reps = merge_microbatches(micro_reps)
        grad_fn = jax.value_and_grad(self.loss_from_reps, argnums=(0, 1), has_aux=True)
        (loss, metrics), (loss_grads, rep_grads) = grad_fn(params, reps, batch, mlm, step)

        def pull_back(grads, inputs_and_rep_grads):
            inputs, micro_rep_grads = inputs_and_rep_grads
            _, vjp = jax.vjp(lambda p: encode(p, inputs), params)
            return jax.tree.map(jnp.add, grads, vjp(micro_rep_grads)[0]), None

        micro_rep_grads = split_microbatches(rep_grads, microbatches)
        grads, _ = jax.lax.scan(pull_back, loss_grads, ((micro_batch, micro_mlm), micro_rep_grads))
        return (loss, metrics), grads


def text_token_mask(batch: dict) -> jax.Array:
    """The caption tokens the token-level terms read: real tokens except CLS (as ELAModel.encode_text)."""
    return jnp.asarray(batch["mask"], bool).at[:, 0].set(False)


def split_microbatches(tree, microbatches: int):
    """[B, ...] -> [k, B / k, ...] taking every k-th example, so each micro-batch stays spread over the batch-sharded
    devices (micro-batch i holds examples i, i + k, ...)."""
    return jax.tree.map(
        lambda x: jnp.swapaxes(x.reshape(x.shape[0] // microbatches, microbatches, *x.shape[1:]), 0, 1), tree
    )


def merge_microbatches(tree):
    """Inverse of `split_microbatches`: [k, B / k, ...] -> [B, ...] in the original example order."""
    return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(x.shape[0] * x.shape[1], *x.shape[2:]), tree)


def global_logits(image: jax.Array, text: jax.Array, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    logits = scale * image @ text.T
    return logits, logits


def dense_lex_logits(image_vocab_logits: jax.Array, targets: jax.Array, tau: float) -> tuple[jax.Array, jax.Array]:
    logits = objectives.lex_contrastive_logits(image_vocab_logits, targets, tau)
    return logits, logits


def sparse_lex_logits(image_vocab_logits: jax.Array, targets: tuple, tau: float) -> tuple[jax.Array, jax.Array]:
    logits = objectives.sparse_lex_contrastive_logits(image_vocab_logits, *targets, tau)
    return logits, logits


def lexlip_logits(image_lexicon: jax.Array, text_lexicon: jax.Array, tau: float) -> tuple[jax.Array, jax.Array]:
    logits = objectives.lexlip_logits(image_lexicon, text_lexicon, tau)
    return logits, logits


def sigmoid_logits(image: jax.Array, text: jax.Array, scale_and_bias: tuple) -> tuple[jax.Array, jax.Array]:
    """SigLIP's logits: scale * cosine + bias."""
    scale, bias = scale_and_bias
    logits = scale * image @ text.T + bias
    return logits, logits


def filip_logits(image: tuple, text: tuple, scale: jax.Array) -> tuple[jax.Array, jax.Array]:
    s_image, s_text = objectives.filip_similarities(image[0], text[0], image[1], text[1])
    return scale * s_image, scale * s_text


def clamp_log_scales(params: dict, largest: float) -> dict:
    """params with each log logit scale clamped at `largest` (the minimum temperature)."""
    return {**params, **{name: jnp.minimum(params[name], largest) for name in LOG_SCALE_PARAMS}}


def make_train_step(
    model: ELAModel,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config,
    vocabulary: Vocabulary,
    mesh: Mesh | None = None,
):
    """train_step(state, batch) -> (state, metrics); pure, to be jitted with shardings and donation. With `mesh`,
    contrastive terms are row-sharded over its batch axes (see training/contrastive.py)."""
    objective = ObjectiveBuilder(model, config, vocabulary, mesh)
    base_rng = jax.random.key(config.seed)
    ema_decay = config.objective.ela.ema_decay
    microbatches = config.train.microbatches
    update_teacher = objective.needs.expansion and config.objective.ela.target_source == "ema"
    largest_log_scale = max_log_scale(config.model)

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(base_rng, state.step)
        if microbatches > 1:
            (loss, metrics), grads = objective.accumulated_gradients(
                state.params, state.teacher, batch, state.step, rng, microbatches
            )
        else:
            grad_fn = jax.value_and_grad(objective, has_aux=True)
            (loss, metrics), grads = grad_fn(state.params, state.teacher, batch, state.step, rng)
        grads = optimizer_lib.without_frozen_gradients(grads, config.optim)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        params = clamp_log_scales(params, largest_log_scale)
        teacher = state.teacher
        if update_teacher:
            teacher = jax.tree.map(lambda t, p: ema_decay * t + (1.0 - ema_decay) * p, teacher, teacher_params(params))
        # A non-finite loss, gradient, update or result skips the update (params, optimizer and teacher stay as they
        # were): a finite gradient can still give a non-finite update (optim.eps=0, a huge or NaN learning rate).
        # Norms overflow float32 near 1e19, so an absurdly large update or parameter counts as non-finite too.
        finite = (
            jnp.isfinite(loss)
            & jnp.isfinite(grad_norm)
            & jnp.isfinite(optax.global_norm(updates))
            & jnp.isfinite(optax.global_norm(params))
        )
        keep_if_finite = lambda new, old: jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, old)  # noqa: E731
        bad_in_a_row = jnp.where(finite, 0, state.bad_steps_in_a_row + 1)
        new_state = TrainState(
            step=state.step + 1,
            params=keep_if_finite(params, state.params),
            opt_state=keep_if_finite(opt_state, state.opt_state),
            teacher=keep_if_finite(teacher, state.teacher),
            bad_steps_in_a_row=bad_in_a_row,
            longest_bad_run=jnp.maximum(state.longest_bad_run, bad_in_a_row),
        )
        metrics = {
            **metrics,
            "loss": loss,
            "grad_norm": grad_norm,
            "learning_rate": schedule(state.step),
            "skipped": 1.0 - finite.astype(jnp.float32),
            "bad_steps_in_a_row": bad_in_a_row,
        }
        return new_state, metrics

    return train_step


def jit_train_step(
    model: ELAModel,
    optimizer: optax.GradientTransformation,
    schedule: optax.Schedule,
    config,
    vocabulary: Vocabulary,
    mesh: Mesh,
    state_shardings: TrainState,
    donate: bool = True,
):
    """The train step exactly as the loop runs it: jitted with the state's shardings in and out, the batch sharded
    over the batch axes, metrics replicated, and the state donated so the update reuses its buffers. The loop, the
    benchmarks and the ahead-of-time compiler all build it here, so what they measure is what trains."""
    return jax.jit(
        make_train_step(model, optimizer, schedule, config, vocabulary, mesh),
        in_shardings=(state_shardings, parallel.batch_sharding(mesh)),
        out_shardings=(state_shardings, parallel.replicated(mesh)),
        donate_argnums=(0,) if donate else (),
    )
