"""The sweep's search space: ``tune.space`` (dotted config path -> candidate values) to Ray Tune and back.

A trial's parameters are a flat dict keyed by dotted config paths — ``model.n_ctx``,
``train.lr_prompt``, and ``train.seed`` for the grid's repeats — and those same keys are used
everywhere: in ``tune.space``, in Ray Tune's ``param_space`` and the config each trial receives
(Tune resolves a search space by key tuples, so dots in a top-level key are plain characters;
only the trial folder's tag sanitises them, e.g. ``model_n_ctx=2,model_temporal_depth=1``), and
in the results table's columns.

:func:`apply_params` sets a trial's values into the experiment config exactly where ``--set
PATH=VALUE`` would and validates the result with the schema (:func:`pipeline.typed.from_dict`:
field types and each section's ``validate()``), so any field the schema accepts can be swept
without code here knowing it; :meth:`pipeline.config.TuneConfig.path_problem` says which paths a
sweep may not set (the data, storage, the sweep itself; in frozen-encoder mode, whatever changes
the cached embeddings or acts on pixels).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pipeline.config import ExperimentConfig, TuneConfig
from pipeline.errors import UserError
from pipeline.typed import ConfigError, to_dict

if TYPE_CHECKING:
    from pipeline.llm.selection import ChosenSet
    from pipeline.storage import Storage

__all__ = [
    "SEED_KEY",
    "swept_keys",
    "expected_trials",
    "param_space",
    "apply_params",
    "apply_params_to_dict",
    "trial_params",
    "DESCRIPTION_SET_KEY",
    "TrialSets",
]

# The dimension grid search adds for its repeats (num_samples > 1), seeds train.seed + 0, 1, ...
SEED_KEY = "train.seed"
# The dimension that gives each trial its own description set (a shipped set's name, a path or URI).
DESCRIPTION_SET_KEY = "describe.description_set"


def _space(tune_cfg: TuneConfig) -> dict[str, list]:
    return {path: list(values) for path, values in (tune_cfg.space or {}).items()}


def _repeats(tune_cfg: TuneConfig) -> bool:
    return tune_cfg.search == "grid" and tune_cfg.num_samples > 1


def swept_keys(tune_cfg: TuneConfig) -> list[str]:
    """The dotted paths a trial's config carries: ``tune.space``'s, in its order, then ``train.seed``
    when grid search repeats (``num_samples`` > 1)."""
    keys = list(_space(tune_cfg))
    if _repeats(tune_cfg) and SEED_KEY not in keys:
        keys.append(SEED_KEY)
    return keys


def expected_trials(tune_cfg: TuneConfig) -> int:
    """How many trials the whole sweep has (an interrupted one has fewer, or unfinished ones)."""
    if tune_cfg.search == "random":
        return tune_cfg.num_samples
    n = tune_cfg.num_samples
    for values in _space(tune_cfg).values():
        n *= len(values)
    return n


def param_space(tune_cfg: TuneConfig, base_seed: int) -> tuple[dict[str, Any], int]:
    """(Ray Tune ``param_space`` keyed by dotted path, ``num_samples`` for ``tune.TuneConfig``).

    Grid search crosses every list; ``num_samples`` repeats the grid with seeds
    ``base_seed + i`` (a ``train.seed`` dimension of its own, so each repeat is a distinct trial
    rather than an identical re-run). Random search draws each parameter uniformly from its list.
    """
    from ray import tune

    grid = tune_cfg.search == "grid"
    space: dict[str, Any] = {
        path: tune.grid_search(values) if grid else tune.choice(values) for path, values in _space(tune_cfg).items()
    }
    if not grid:
        return space, tune_cfg.num_samples
    if _repeats(tune_cfg):
        space[SEED_KEY] = tune.grid_search([base_seed + i for i in range(tune_cfg.num_samples)])
    return space, 1


def _check_paths(params: dict[str, Any], frozen_encoder: bool, where: str | None) -> None:
    problems = [f"{path}: {why}" for path in params if (why := TuneConfig.path_problem(path, frozen_encoder))]
    if problems:
        raise ConfigError(problems, where)


def apply_params(cfg: ExperimentConfig, params: dict[str, Any], where: str = "trial") -> ExperimentConfig:
    """``cfg`` with a trial's ``params`` (dotted path -> value) set, as a new, validated config.

    Each value goes where ``--set PATH=VALUE`` would put it and the whole config is rebuilt and
    validated by the schema; a :class:`~pipeline.typed.ConfigError` ("invalid configuration in
    ``where``") names each bad key path (``model.n_ctx: must be >= 1, got 0``), as does a path
    that is not a config field or may not be swept. ``cfg`` itself is not changed.
    """
    _check_paths(params, cfg.tune.frozen_encoder, where)
    return TuneConfig.trial_config(to_dict(cfg), params, where)


def apply_params_to_dict(config: dict[str, Any], params: dict[str, Any]) -> dict[str, Any]:
    """A copy of the plain experiment-config dict ``config`` (``to_dict(cfg)``) with ``params`` set.

    Paths are checked as in :func:`apply_params`; the values are not (load the result with
    :func:`pipeline.typed.from_dict` for that).
    """
    _check_paths(params, bool((config.get("tune") or {}).get("frozen_encoder", False)), None)
    return TuneConfig.with_params(config, params)


def trial_params(trial_config: dict[str, Any], swept: list[str]) -> dict[str, Any]:
    """A trial's parameters (dotted path -> value) from the config Tune hands its trainable.

    Tune's trial config holds the ``param_space`` keys unchanged, so this is a lookup; a swept
    key missing from it means the sweep was started with another space, and is an error.
    """
    missing = [key for key in swept if key not in trial_config]
    if missing:
        raise ValueError(
            f"the trial's config lacks swept parameter(s) {', '.join(missing)} "
            f"(it has {', '.join(map(str, trial_config)) or 'none'}): a sweep started with another space?"
        )
    return {key: trial_config[key] for key in swept}


@dataclass(frozen=True)
class TrialSets:
    """The description set(s) a sweep's trials use for their class prompts.

    Without a ``describe.description_set`` dimension every trial uses the experiment's set (the
    one training would use, :func:`pipeline.llm.selection.resolve_description_set`). With one,
    each value is resolved here, once, in the sweep's driver — a set that does not exist fails
    before any trial starts, naming the value — and a trial uses the set its value names, so
    "write descriptions with a new prompt, then compare them with the shipped ones" is one sweep.
    """

    default: ChosenSet | None = None  # every trial's set when the set is not swept (None: class names)
    by_value: dict[Any, ChosenSet] = field(default_factory=dict)  # swept value -> its set

    @classmethod
    def resolve(cls, cfg: ExperimentConfig, storage: Storage | None = None) -> TrialSets:
        from pipeline.llm.selection import resolve_description_set

        values = (cfg.tune.space or {}).get(DESCRIPTION_SET_KEY)
        if values is None:
            return cls(resolve_description_set(cfg, storage))
        if cfg.model.text_source != "descriptions":
            raise UserError(
                f"tune.space.{DESCRIPTION_SET_KEY}: the class prompts are model.text_source="
                f"{cfg.model.text_source}, not descriptions, so no trial would use the sets; "
                "set model.text_source: descriptions or drop the dimension"
            )
        by_value = {}
        for i, value in enumerate(values):
            trial_cfg = dataclasses.replace(cfg, describe=dataclasses.replace(cfg.describe, description_set=value))
            try:
                by_value[value] = resolve_description_set(trial_cfg, storage)
            except UserError as exc:
                raise UserError(f"tune.space.{DESCRIPTION_SET_KEY}[{i}]: {exc}") from exc
        return cls(None, by_value)

    @property
    def swept(self) -> bool:
        return bool(self.by_value)

    def for_params(self, params: dict[str, Any]) -> ChosenSet | None:
        """The set of the trial with parameters ``params`` (dotted path -> value)."""
        if not self.by_value:
            return self.default
        value = params.get(DESCRIPTION_SET_KEY)
        if value not in self.by_value:
            raise ValueError(
                f"{DESCRIPTION_SET_KEY}={value!r} is not one of the sweep's sets ({', '.join(map(repr, self.by_value))})"
            )
        return self.by_value[value]

    def ids(self) -> dict[Any, str | None]:
        """Swept value -> set id (``<name>@<digest>``); empty when the set is not swept."""
        return {value: chosen.id for value, chosen in self.by_value.items()}

    def signature(self) -> Any:
        """What a resumed sweep must find unchanged: the descriptions (per value when swept)."""
        if not self.by_value:
            return self.default.descriptions if self.default else None
        return {str(value): chosen.descriptions for value, chosen in self.by_value.items()}

    def record(self) -> dict[str, Any]:
        """What ``sweep.json`` keeps: the set every trial used, or each swept value's set."""
        if not self.by_value:
            return {"description_set": self.default.record() if self.default else None}
        return {
            "description_set": None,
            "description_sets": {str(value): chosen.record() for value, chosen in self.by_value.items()},
        }
