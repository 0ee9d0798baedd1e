"""Ray Tune sweep over context-token length x temporal depth (and optionally learning rates).

Each trial trains DFER-CLIP with the train stage's code on the shards in
``<storage.root>/shards/<dataset>/``; ASHA stops poor trials early on ``tune.metric``. Two modes:

- full (default): every trial is a complete Ray Train run, image encoder fine-tuned;
- ``tune.frozen_encoder: true``: per-frame CLIP embeddings are computed once by a Ray Data job
  (cached in ``<storage.root>/embeddings/...``) and each trial trains only the temporal model
  and the prompts on them — far cheaper; faithful only with a frozen image encoder (docs/tune.md).

Outputs in ``<storage.root>/tune/<name>/``: results.parquet/.csv (one row per trial),
heatmap.png, best_config.yaml (ready for ``dferclip train --config``). Re-running the same
command resumes an interrupted sweep.
"""

from __future__ import annotations

from dataclasses import dataclass

from pipeline.cli import run_cli, stage_parser
from pipeline.config import ExperimentConfig, load_config

METRIC_HELP = "the metrics every epoch reports"


@dataclass
class SweepOutcome:
    path: str
    table: object  # pandas.DataFrame
    best: dict | None
    interrupted: bool


def _validate(cfg: ExperimentConfig) -> None:
    from pipeline.errors import UserError

    split = "test" if cfg.train.selection == "test" else "val"
    reported = [f"{split}_{m}" for m in ("uar", "war", "loss")] + ["train_loss", "train_acc", f"best_{cfg.train.best_metric}"]
    t = cfg.tune
    if t.metric not in reported:
        hint = (" — validation metrics need train.selection: validation (or select on test as the paper does: "
                "tune.metric: test_uar)") if t.metric.startswith("val_") else ""
        raise UserError(f"tune.metric: {t.metric!r} is not among {METRIC_HELP} with train.selection="
                        f"{cfg.train.selection} ({', '.join(reported)}){hint}")
    if t.metric.endswith("loss") and t.mode == "max":
        raise UserError(f"tune.mode: {t.metric} is a loss; use mode: min")


def main(cfg: ExperimentConfig, *, callbacks: list | None = None) -> SweepOutcome:
    """Run (or resume) the sweep and write its outputs.

    ``callbacks``: extra Ray Tune callbacks for a new sweep. Tune saves them with the sweep and a
    resumed sweep runs those again (with the state their ``get_state()`` saved), not new ones.
    """
    from ray import tune

    from pipeline.data.shards import shard_dir, shard_files
    from pipeline.errors import UserError
    from pipeline.llm.sets import load_description_set
    from pipeline.raycluster import check_resources, ensure_ray
    from pipeline.storage import Storage
    from pipeline.tune import results as res
    from pipeline.tune.space import apply_params_to_dict, expected_trials, swept_keys
    from pipeline.tune.sweep import run_sweep, sweep_rel
    from pipeline.typed import from_dict, to_dict

    # validate
    _validate(cfg)
    t, storage = cfg.tune, Storage(cfg.storage.root)
    name = t.name or cfg.name
    class_names = cfg.dataset.class_names
    descriptions = (load_description_set(cfg.describe.description_set, class_names)
                    if cfg.model.text_source == "descriptions" else None)
    swept = swept_keys(t)
    mode = "fast" if t.frozen_encoder else "full"
    signature = {"mode": mode, "dataset": to_dict(cfg.dataset), "model": to_dict(cfg.model), "train": to_dict(cfg.train),
                 "descriptions": descriptions,
                 "search": {k: v for k, v in to_dict(t).items() if k in (*swept, "n_ctx", "temporal_depth", "search",
                                                                          "num_samples", "metric", "mode", "scheduler",
                                                                          "grace_period", "reduction_factor")}}
    shards = shard_dir(storage, cfg.dataset.name)
    if not shard_files(storage, shards):
        raise UserError(f"no shards in {storage.path(shards)}: run `dferclip preprocess` first")
    # build
    ensure_ray()
    if t.frozen_encoder:
        from pipeline.tune.embeddings import ensure_embeddings, load_embeddings
        from pipeline.tune.fast import FastSetup, fast_trial

        check_resources("a sweep trial", cpus=t.cpus_per_trial, gpus=t.gpus_per_trial, key="tune.cpus_per_trial / tune.gpus_per_trial")
        info = ensure_embeddings(storage, cfg.dataset.name, cfg.model, class_names, seed=cfg.train.seed,
                                 batch_size=t.embed_batch_size, workers=t.embed_workers, cpus=t.embed_cpus, gpus=t.embed_gpus)
        setup = FastSetup(cfg.model, cfg.train, class_names, descriptions, cfg.train.fold, swept, storage.path(info.rel_dir))
        trainable = tune.with_resources(tune.with_parameters(fast_trial, data=load_embeddings(storage, info), setup=setup),
                                        {"cpu": t.cpus_per_trial, "gpu": t.gpus_per_trial})
    else:
        from pipeline.tune.full import FullSetup, full_trainable, runs_path

        # The driver only waits on its Train workers; they hold the trial's real resources.
        setup = FullSetup(cfg.model, cfg.train, class_names, descriptions, cfg.storage.root, cfg.dataset.name,
                          cfg.train.fold, runs_path(storage.path(sweep_rel(name))), swept, to_dict(cfg))
        trainable = full_trainable(setup, driver_cpus=t.driver_cpus)
    # run
    print(f"[tune] {mode} sweep {name!r}: {t.search} search over {', '.join(swept)}; metric {t.metric} ({t.mode}); "
          f"up to {cfg.train.epochs} epochs per trial, {t.max_concurrent_trials} at a time", flush=True)
    results = run_sweep(trainable, t, storage=storage, name=name, max_epochs=cfg.train.epochs, seed=cfg.train.seed,
                        signature=signature, keep_checkpoints=cfg.train.keep_checkpoints,
                        callbacks=callbacks)
    # write
    rel = sweep_rel(name)
    table = res.results_table(results, swept, t.metric, t.mode, cfg.train.epochs, res.trial_statuses(results))
    pq_path, csv_path = res.write_table(storage, rel, table)
    storage.write_bytes(res.heatmap_png(table, t.metric, t.mode, f"{name}: best {t.metric} ({mode} mode)"), rel, "heatmap.png")
    # Interrupted: trials left unfinished, or (Ctrl+C between trials) some not even created yet.
    interrupted = len(table) < expected_trials(t) or bool((table["status"] == "unfinished").any())
    best = None
    if not interrupted and (table["status"] != "error").any():
        best = res.best_params(table, swept)
        best_cfg = apply_params_to_dict(to_dict(cfg), best)
        from_dict(ExperimentConfig, best_cfg, "best_config.yaml")  # it must load as a valid experiment
        top = table.iloc[0]
        header = [f"Best trial of sweep {name!r} ({mode} mode): {top['trial']}",
                  f"{t.metric} = {top['best_value']:.4f} at epoch {top['best_epoch']}; values: {best}",
                  f"Train it: dferclip train --config {storage.path(rel, 'best_config.yaml')}"]
        if t.frozen_encoder:
            header.append("Found with a frozen image encoder and no augmentation; full training fine-tunes "
                          f"the encoder at train.lr_image_encoder={cfg.train.lr_image_encoder:g}.")
        storage.write_text(res.best_config_yaml(best_cfg, header), rel, "best_config.yaml")
    print(table.drop(columns=["error", "metric"]).to_string(index=False, float_format=lambda v: f"{v:.4f}"), flush=True)
    print(f"[tune] results: {pq_path}, {csv_path}, {storage.path(rel, 'heatmap.png')}", flush=True)
    if interrupted:
        print("[tune] the sweep did not finish; run the same command again to resume it", flush=True)
    elif best is not None:
        print(f"[tune] best: {best} -> {storage.path(rel, 'best_config.yaml')}", flush=True)
    return SweepOutcome(storage.path(rel), table, best, interrupted)


def cli(argv=None) -> int:
    parser = stage_parser("dferclip tune", __doc__)
    args = parser.parse_args(argv)
    return run_cli(lambda: 130 if main(load_config(args.config, args.overrides)).interrupted else 0)


if __name__ == "__main__":
    raise SystemExit(cli())
