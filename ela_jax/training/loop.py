"""The trainer, in named sections: setup, state, input, step, loop (log / checkpoint / evaluate), final report."""

from __future__ import annotations

import contextlib
import logging
import os
import signal

import jax
import ml_collections
from jax.experimental import multihost_utils

from ela_jax import config as config_lib
from ela_jax import host_allocator, parallel, plots
from ela_jax.convert import from_pytorch
from ela_jax.data import pipeline
from ela_jax.evaluation import evaluators
from ela_jax.experiment import Experiment
from ela_jax import paths
from ela_jax.paths import write_json, write_text
from ela_jax.training.checkpoint import Checkpointer, locate, restore_newest_params
from ela_jax.training import optimizer as optimizer_lib
from ela_jax.training import restarts, trackers
from ela_jax.training.metrics import MetricWriter
from ela_jax.training.profiling import StepTrace
from ela_jax.training.progress import Progress, Throughput
from ela_jax.training.state import TrainState
from ela_jax.training.workdir_lock import workdir_lock

log = logging.getLogger(__name__)

RUN_LOCK_FILE = "train.lock"  # held by the chief process for the life of a run


class TrainingDiverged(RuntimeError):
    """Too many updates in a row had a non-finite loss or gradient."""


class PreemptionWatch:
    """True once the job is asked to stop: SIGTERM on one process, JAX's preemption sync point across hosts (which
    every host reaches at the same step, so all of them save the same checkpoint)."""

    def __init__(self):
        self.requested = False
        self.multi_process = jax.process_count() > 1
        if not self.multi_process:
            self.previous_handler = signal.signal(signal.SIGTERM, self._on_sigterm)

    def _on_sigterm(self, signum, frame) -> None:
        del signum, frame
        self.requested = True

    def should_stop(self, step: int) -> bool:
        if self.multi_process:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.requested

    def close(self) -> None:
        if not self.multi_process:
            signal.signal(signal.SIGTERM, self.previous_handler)


class BadStepMonitor:
    """Reads each step's skip flag one step late (so dispatch stays asynchronous) and stops a run that diverged.

    `in_a_row` is the length of the bad run ending at the newest step it has judged: a state whose newest update
    was skipped is not worth a periodic checkpoint (it would rotate good ones out)."""

    def __init__(self, max_bad_steps: int):
        self.max_bad_steps = max_bad_steps
        self.skipped = 0
        self.in_a_row = 0
        self.pending = None

    def observe(self, step: int, metrics: dict, last_checkpoint) -> None:
        if self.pending is not None:
            self._check(*self.pending, last_checkpoint)
        self.pending = (step, metrics)

    def flush(self, last_checkpoint) -> None:
        if self.pending is not None:
            self._check(*self.pending, last_checkpoint)
            self.pending = None

    def _check(self, step: int, metrics: dict, last_checkpoint) -> None:
        self.in_a_row = in_a_row = int(metrics["bad_steps_in_a_row"])
        if in_a_row == 0:
            return
        self.skipped += 1
        log.warning("step %d: non-finite loss, gradient or update, update skipped (%d in a row)", step, in_a_row)
        if in_a_row >= self.max_bad_steps:
            good = "none" if last_checkpoint is None else f"step {last_checkpoint}"
            raise TrainingDiverged(
                f"loss, gradients or updates were non-finite for {in_a_row} steps in a row (steps "
                f"{step - in_a_row + 1}-{step}); the last good checkpoint is {good}. Lower optim.lr or check the data."
            )


class Evaluation:
    """The evaluators `config.evals` runs during training, on the current params; the jitted encoder and each
    evaluator's data are built once. Results are keyed by evaluator name."""

    def __init__(self, experiment: Experiment):
        self.experiment = experiment
        self.encoder = None
        self.evaluators = evaluators.during_training(experiment.config, experiment.tokenizer)
        entries = experiment.config.evals
        self.retrieval = next((name for name in self.evaluators if entries[name].type == "retrieval"), None)

    def __call__(self, params, step: int) -> dict[str, dict]:
        if self.encoder is None:
            self.encoder = self.experiment.encoder(params, self.experiment.config.eval.batch_size)
        self.encoder.params = params
        return {name: evaluator(self.encoder, step) for name, evaluator in self.evaluators.items()}

    def scalars(self, results: dict[str, dict]) -> dict[str, float]:
        return {
            key: value
            for name, result in results.items()
            for key, value in self.evaluators[name].scalars(result).items()
        }

    def write(self, workdir: str, results: dict[str, dict]) -> None:
        for name, result in results.items():
            write_json(os.path.join(workdir, "eval", self.evaluators[name].output), result)


def check_resumed_config(config, workdir: str, resumed_step: int | None, is_chief: bool) -> None:
    """The workdir's checkpoints continue the experiment its config.json records, not another one: a changed
    objective, model or data would be trained on top of them and the record rewritten. Refused unless
    train.allow_config_change, which keeps the old record as config.before_step_<N>.json."""
    try:
        differing = [] if resumed_step is None else restarts.workdir_config_differences(workdir, config)
    except ValueError as error:  # an empty or damaged record cannot be compared; the checkpoints still resume
        log.warning("%s/config.json is unreadable (%s); it is rewritten from this run's config", workdir, error)
        return
    if not differing:
        return
    listed = ", ".join(differing[:6]) + (f" and {len(differing) - 6} more" if len(differing) > 6 else "")
    if not config.train.allow_config_change:
        raise config_lib.ConfigError(
            f"{workdir} holds checkpoints (step {resumed_step}) of a run whose config.json differs in {listed}; use "
            "another workdir, delete this one, or pass --config.train.allow_config_change=True to continue it under "
            "the new config (the old config.json is kept)"
        )
    log.warning("continuing %s under a changed config (%s)", workdir, listed)
    if is_chief:
        paths.copy(
            os.path.join(workdir, "config.json"), os.path.join(workdir, f"config.before_step_{resumed_step}.json")
        )


def check_total_steps(config, workdir: str, resumed_step: int | None) -> None:
    """A checkpoint past total_steps holds weights trained longer than the run would record: refused, not evaluated
    under the shorter length's name."""
    if resumed_step is not None and resumed_step > config.total_steps:
        raise config_lib.ConfigError(
            f"total_steps={config.total_steps} is below the step of {workdir}'s newest checkpoint ({resumed_step}); "
            f"pass --config.total_steps={resumed_step} or more to resume it, or evaluate it with "
            "python -m ela_jax.evaluate"
        )


def log_trainable_parameters(config, abstract_params) -> None:
    """How many parameter values the optimizer updates; shown (as a warning) whenever optim.frozen holds some back."""
    trainable, total = optimizer_lib.count_parameters(abstract_params, config.optim)
    level = logging.WARNING if trainable < total else logging.INFO
    log.log(level, "trainable parameters: %d of %d (%.1f%%)", trainable, total, 100.0 * trainable / max(total, 1))


def initial_state(config, factory, checkpointer: Checkpointer, data_iterator) -> tuple[TrainState, int]:
    """The state to start from and its step, in this order: the workdir's newest checkpoint that restores (a
    preempted or killed run continues; newer unreadable ones are set aside, see Checkpointer.restore_newest),
    `config.resume` (another run's checkpoint: state and data position), `config.init.workdir` (another run's
    weights only), the pretrained towers of `config.init.*_tower`, or a fresh initialisation."""
    restored = checkpointer.restore_newest(factory.abstract_with_shardings(), data_iterator)
    if restored is not None:
        log.info("resuming from checkpoint step %d in %s", restored[1], checkpointer.directory)
        return restored
    if config.resume:
        directory, step = locate(config.resume)
        source = Checkpointer(directory, keep=1, create=False)
        step = source.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"config.resume={config.resume!r} holds no complete checkpoint")
        log.info("starting from config.resume: checkpoint step %d in %s", step, directory)
        state = source.restore(step, factory.abstract_with_shardings(), data_iterator)
        source.close()
        return state, step
    if config.init.workdir:
        params, step = restore_newest_params(config.init.workdir, factory.abstract_with_shardings().params)
        log.warning(
            "starting from init.workdir: the weights of step %d in %s, a fresh optimizer at step 0",
            step,
            config.init.workdir,
        )
        return factory.load_pretrained_teacher(factory.from_params(params)), 0
    state = factory.create(config.seed)
    if config.init.text_tower or config.init.image_tower:
        # Every host loads the checkpoint into the whole params, then keeps only its devices' shards.
        params = from_pytorch.load_pretrained_towers(config, parallel.fetch(state.params))
        state = factory.from_params(parallel.host_tree_to_global(params, factory.param_shardings))
    return factory.load_pretrained_teacher(state), 0


class BestCheckpoints:
    """Keeps the `checkpoint.keep_best` checkpoints with the best `checkpoint.best_metric` under W/best/."""

    def __init__(self, experiment: Experiment):
        checkpoint = experiment.config.checkpoint
        self.score, _, self.metric = checkpoint.best_metric.partition("/")
        self.checkpointer = None
        if checkpoint.best_metric:
            self.checkpointer = Checkpointer(
                os.path.join(experiment.workdir, "best"),
                keep=checkpoint.keep_best,
                best_metric=checkpoint.best_metric,
                best_mode=checkpoint.best_mode,
            )

    def offer(self, step: int, state, results: dict) -> None:
        if self.checkpointer is None or not results["scores"] or step in (self.checkpointer.manager.all_steps() or ()):
            return
        value = float(results["scores"][self.score][self.metric])
        self.checkpointer.save(step, state, metrics={f"{self.score}/{self.metric}": value})

    def close(self) -> None:
        if self.checkpointer is not None:
            self.checkpointer.close()


def train(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains (resuming from the latest checkpoint in `workdir`), evaluates, and returns the final retrieval results
    ({} when no retrieval evaluator runs during training).
    Raises WorkdirBusy at once when another run holds `workdir` (the chief process holds it for the whole run)."""
    # --- setup: validation happens before anything compiles.
    experiment = Experiment.build(config, workdir)
    is_chief = jax.process_index() == 0
    with (
        workdir_lock(workdir, RUN_LOCK_FILE, 60 * config.train.stale_lock_minutes)
        if is_chief
        else contextlib.nullcontext(),
        contextlib.ExitStack() as closing,
    ):
        return _train(experiment, is_chief, closing)


def _train(experiment: Experiment, is_chief: bool, closing: contextlib.ExitStack) -> dict:
    """The run; what `closing` holds (the trackers) is closed once the run ends, however it ends."""
    config, workdir = experiment.config, experiment.workdir
    mesh, rules = experiment.mesh, parallel.logical_rules(config.mesh)
    log.debug("host allocator: %s", host_allocator.state())  # ELA_JAX_HOST_MALLOC; see ela_jax.host_allocator
    checkpointer = experiment.checkpointer()
    check_total_steps(config, workdir, checkpointer.latest_step())
    check_resumed_config(config, workdir, checkpointer.latest_step(), is_chief)
    for change in restarts.schedule_changes(config, workdir, checkpointer.latest_step()):
        log.warning("%s", change)
    # After the resume checks: a refused resume starts no tracker run.
    run_trackers = closing.enter_context(trackers.opened(config, workdir, enabled=is_chief))

    # --- state: abstract first, then created (or restored) directly into its shardings.
    factory = experiment.state_factory()
    log_trainable_parameters(config, factory.abstract_params)

    # --- input: the grain iterator is part of the checkpoint.
    progress = Progress(config.total_steps, is_chief, config.log.progress)
    progress.phase(f"preparing data ({config.data.name}) and the train state in {workdir}")
    with parallel.process_zero_first("prepare the training data"):  # one writer in a shared data directory
        data_iterator = iter(
            pipeline.train_dataset(config, experiment.tokenizer, jax.process_index(), jax.process_count())
        )
    state, start_step = initial_state(config, factory, checkpointer, data_iterator)
    # The workdir's records change only once its checkpoints restored under this config: a failed restore (another
    # process count, a config they no longer fit) leaves the record of the run they belong to.
    if is_chief:
        write_text(os.path.join(workdir, "config.json"), config.to_json_best_effort(indent=1))
        report = parallel.sharding_report(mesh, factory.param_shardings, factory.abstract_params)
        parallel.write_sharding_report(os.path.join(workdir, "sharding.json"), report)

    # --- step: one jit, explicit shardings, donated state.
    train_step = experiment.train_step(factory)

    # --- loop
    writer = MetricWriter(workdir, start_step, enabled=is_chief, trackers=run_trackers)
    evaluation = Evaluation(experiment)
    best = BestCheckpoints(experiment)
    preemption = PreemptionWatch()
    bad_steps = BadStepMonitor(config.train.max_bad_steps)
    last_checkpoint = start_step or None
    progress.start(start_step)
    throughput = Throughput(config.batch_size)
    trace = StepTrace(workdir, config.log.profile_steps, config.log.profile_start_step, start_step)
    try:
        for step in range(start_step + 1, config.total_steps + 1):
            batch = parallel.host_batch_to_global(next(data_iterator), mesh)
            if step == start_step + 1:
                progress.phase(f"compiling the train step (from step {step})")
            with parallel.sharding_context(mesh, rules), trace.step(step):
                state, metrics = train_step(state, batch)
            if trace.step_done(step, metrics):
                progress.phase(f"profiled steps {trace.steps.start}-{step} into {trace.directory}")
            if step == start_step + 1:
                host_allocator.release_free_memory()  # what compiling the step freed
                jax.block_until_ready(metrics)
                throughput.restart()  # from the end of the compiling step
            else:
                throughput.step_done()
            bad_steps.observe(step, metrics, last_checkpoint)
            checkpointer.check_saved()  # a failed asynchronous save stops the run here, not one save later
            progress.step_done(step)
            if step % config.log.every_steps == 0 or step == config.total_steps:
                metrics = {k: float(v) for k, v in jax.device_get(metrics).items()}
                rate = throughput.pairs_per_second()
                if rate is not None:  # None at the compiling step, when it is logged
                    metrics["pairs_per_second"] = rate
                metrics["skipped_steps"] = bad_steps.skipped
                writer.write(step, metrics)
                progress.logged(step, metrics)
            preempted = preemption.should_stop(step)
            every = config.checkpoint.every_steps
            if step == config.total_steps or preempted or (every and step % every == 0):
                bad_steps.flush(last_checkpoint)  # never checkpoint past a run that must stop
                if bad_steps.in_a_row and not (preempted or step == config.total_steps):
                    log.warning("step %d: checkpoint not saved, the step's update was skipped", step)
                else:
                    checkpointer.save(step, state, data_iterator)
                    last_checkpoint = step
                    # The save finishes in the background; check_saved stops the run at the first step after a failure.
                    progress.phase(f"saving checkpoint: step {step} to {checkpointer.directory}")
            if preempted:
                log.warning("preempted: saved checkpoint %d in %s; rerun the same command to resume", step, workdir)
                return {"preempted_at_step": step}
            if config.eval.every_steps and step % config.eval.every_steps == 0 and step != config.total_steps:
                progress.phase(f"evaluating at step {step}")
                results = evaluation(state.params, step)
                host_allocator.release_free_memory()
                best.offer(step, state, results.get(evaluation.retrieval))
                writer.write(step, evaluation.scalars(results))
        bad_steps.flush(last_checkpoint)
    finally:
        trace.close()
        progress.close()
        checkpointer.close()
        preemption.close()
        writer.close()

    # --- final report
    progress.phase(f"evaluating at step {config.total_steps}")
    results = evaluation(state.params, config.total_steps)
    best.offer(config.total_steps, state, results.get(evaluation.retrieval))
    best.close()
    MetricWriter.final_evaluation(
        workdir, config.total_steps, evaluation.scalars(results), enabled=is_chief, trackers=run_trackers
    )
    if is_chief:
        evaluation.write(workdir, results)
        plots.training_curves(workdir, os.path.join(workdir, "plots", "training_curves.png"))
    progress.phase(f"done: eval/results.json, metrics.jsonl, tensorboard/, checkpoints/ and plots/ are in {workdir}")
    return results.get(evaluation.retrieval, {})
