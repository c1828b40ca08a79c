"""One train-step builder for every objective: CLIP-only, FILIP, ELA and its ablations differ only in config."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax

from ela_jax import objectives
from ela_jax.models.ela import ELAModel
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
    """Which encoder outputs the configured objective reads (the rest is never computed)."""

    image_lexicon: bool
    text_lexicon: bool
    tokens: bool
    expansion: bool

    @classmethod
    def from_config(cls, config) -> "Needs":
        objective, ela = config.objective, config.objective.ela
        use_ela = objective.ela_weight > 0
        expansion = use_ela and ela.beta > 0 and ela.loss != "lexlip_cosine"
        lexlip = use_ela and ela.loss == "lexlip_cosine"
        return cls(
            image_lexicon=use_ela or objective.flops_weight > 0,
            text_lexicon=lexlip
            or (expansion and ela.target_source == "online")
            or (objective.flops_weight > 0 and objective.mlm_weight > 0),
            tokens=objective.fine_weight > 0,
            expansion=expansion,
        )


def loss_weights(objective_config, step: jax.Array) -> dict[str, jax.Array]:
    flops = objectives.quadratic_warmup(objective_config.flops_weight, step, objective_config.flops_warmup_steps)
    return {
        "global": jnp.asarray(objective_config.global_weight, jnp.float32),
        "fine": jnp.asarray(objective_config.fine_weight, jnp.float32),
        "ela": jnp.asarray(objective_config.ela_weight, jnp.float32),
        "flops": flops,
        "mlm": jnp.asarray(objective_config.mlm_weight, jnp.float32),
    }


class ObjectiveBuilder:
    """Computes the weighted ELA objective for a batch; which terms exist is fixed by the config at trace time."""

    def __init__(self, model: ELAModel, config, vocabulary: Vocabulary):
        self.model, self.config, self.vocabulary = model, config, vocabulary
        self.needs = Needs.from_config(config)

    def __call__(self, params, teacher, batch: dict, step: jax.Array, rng: jax.Array):
        objective = self.config.objective
        variables = {"params": params}
        image = self.model.apply(
            variables,
            batch["images"],
            with_lexicon=self.needs.image_lexicon,
            with_tokens=self.needs.tokens,
            method=ELAModel.encode_image,
        )
        text = self.model.apply(
            variables,
            batch["token_ids"],
            batch["mask"],
            with_lexicon=self.needs.text_lexicon,
            with_tokens=self.needs.tokens,
            method=ELAModel.encode_text,
        )
        scales = self.model.apply(variables, method=ELAModel.logit_scales)
        terms = {}
        if objective.global_weight > 0:
            terms["global"] = objectives.global_contrastive_loss(image["global"], text["global"], scales["global"])
        if objective.fine_weight > 0:
            s_image, s_text = objectives.filip_similarities(
                image["token_embeddings"], text["token_embeddings"], image["token_mask"], text["token_mask"]
            )
            terms["fine"] = objectives.filip_loss(s_image, s_text, scales["fine"])
        if objective.ela_weight > 0:
            terms["ela"] = self.ela_loss(params, teacher, image, text, batch, step)
        if objective.flops_weight > 0:
            terms["flops"] = sum(
                objectives.flops_regulariser(out["lexicon"]) for out in (image, text) if "lexicon" in out
            )
        if objective.mlm_weight > 0:
            terms["mlm"] = self.mlm_loss(params, batch, rng)
        weights = loss_weights(objective, step)
        loss = sum(weights[name] * value for name, value in terms.items())
        metrics = {f"loss_{name}": value for name, value in terms.items()}
        metrics["temperature"] = 1.0 / scales["global"]
        for side, out in (("image", image), ("text", text)):
            if "lexicon" in out:
                metrics[f"{side}_lexicon_nonzeros"] = jnp.mean(jnp.sum(out["lexicon"] > 0, axis=-1))
        return loss, metrics

    def expansion_lexicon(self, params, teacher, text: dict, batch: dict) -> jax.Array:
        """a_T [B, V] from the configured source, as a constant."""
        if self.config.objective.ela.target_source == "online":
            return jax.lax.stop_gradient(text["lexicon"])
        variables = {"params": {**params, **teacher}}
        teacher_text = self.model.apply(
            variables, batch["token_ids"], batch["mask"], with_tokens=False, method=ELAModel.encode_text
        )
        return jax.lax.stop_gradient(teacher_text["lexicon"])

    def ela_loss(self, params, teacher, image: dict, text: dict, batch: dict, step: jax.Array) -> jax.Array:
        ela = self.config.objective.ela
        if ela.loss == "lexlip_cosine":
            return objectives.lexlip_cosine_loss(image["lexicon"], text["lexicon"], ela.tau_contrastive)
        content = jnp.asarray(self.vocabulary.content)
        bag_of_words = objectives.caption_bag_of_words(batch["token_ids"], text["token_mask"], content)
        if self.needs.expansion:
            text_lexicon = self.expansion_lexicon(params, teacher, text, batch)
            beta = objectives.linear_warmup(ela.beta, step, ela.beta_warmup_steps)
        else:
            text_lexicon, beta = jnp.zeros_like(bag_of_words), 0.0
        targets = objectives.expanded_targets(bag_of_words, text_lexicon, content, beta, ela.tau_q, ela.top_k)
        image_vocab_logits = objectives.pool_patches(image["vocab_logits"], ela.pool)
        if ela.loss == "soft_ce":
            return objectives.ela_soft_ce(image_vocab_logits, targets, ela.tau_p)
        if ela.loss == "bce":
            return objectives.ela_bce(image_vocab_logits, targets, ela.tau_p)
        return objectives.ela_lex_contrastive(image_vocab_logits, targets, ela.tau_contrastive)

    def mlm_loss(self, params, batch: dict, rng: jax.Array) -> jax.Array:
        maskable = batch["mask"].astype(bool) & ~jnp.asarray(self.vocabulary.special)[batch["token_ids"]]
        corrupted, selected = objectives.mlm_corrupt(
            rng,
            batch["token_ids"],
            maskable,
            self.config.objective.mlm_probability,
            self.vocabulary.mask_id,
            self.vocabulary.content.shape[0],
        )
        logits = self.model.apply({"params": params}, corrupted, batch["mask"], method=ELAModel.mlm_logits)
        return objectives.mlm_loss(logits, batch["token_ids"], selected)


def make_train_step(
    model: ELAModel, optimizer: optax.GradientTransformation, schedule: optax.Schedule, config, vocabulary: Vocabulary
):
    """train_step(state, batch) -> (state, metrics); pure, to be jitted with shardings and donation."""
    objective = ObjectiveBuilder(model, config, vocabulary)
    base_rng = jax.random.key(config.seed)
    ema_decay = config.objective.ela.ema_decay
    update_teacher = objective.needs.expansion and config.objective.ela.target_source == "ema"

    def train_step(state: TrainState, batch: dict) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(base_rng, state.step)
        grad_fn = jax.value_and_grad(objective, has_aux=True)
        (loss, metrics), grads = grad_fn(state.params, state.teacher, batch, state.step, rng)
        grad_norm = optax.global_norm(grads)
        updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        teacher = state.teacher
        if update_teacher:
            teacher = jax.tree.map(lambda t, p: ema_decay * t + (1.0 - ema_decay) * p, teacher, teacher_params(params))
        # A non-finite loss or gradient skips the update (params, optimizer and teacher stay as they were).
        finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
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
