"""Network trials race on steps (successive halving) while trees and linear models prune on folds."""

from __future__ import annotations

import numpy as np
import optuna
import pandas as pd

from metagen import FitOptions, make_table
from metagen.config import NetConfig
from metagen.families import Candidate
from metagen.families.mlp import MLPFamily
from metagen.fit import prepare_data
from metagen.meta_model import shipped_meta_model
from metagen.search import FamilyPruner, quiet_optuna, run_search

Pruned = optuna.trial.TrialState.PRUNED
Complete = optuna.trial.TrialState.COMPLETE


def _planted(n: int = 300, seed: int = 0) -> pd.DataFrame:
    """A binary target of two columns that a network with a sensible learning rate learns in a few dozen steps."""
    rng = np.random.default_rng(seed)
    frame = pd.DataFrame(rng.normal(size=(n, 4)), columns=list("abcd"))
    frame["y"] = (frame["a"] + frame["b"] > 0).astype(int)
    return frame


def _net(lr: float) -> Candidate:
    return Candidate("mlp", NetConfig(depth=1, width=64, lr=lr, steps=200, dropout=0.0, batch_size=64,
                                      schedule="constant").to_json())


def test_successive_halving_stops_the_trials_the_planted_problem_says_trail():
    """A network whose learning rate cannot learn in 25 steps stops at the first rung once a good one exists;
    the first trial of a rung has nothing to trail, so it goes on."""
    table = make_table(_planted(), target="y")
    options = FitOptions(families=("mlp",), use_meta=False)
    data = prepare_data(table, options).search
    slow = [_net(1e-4 * (1 + i / 10)) for i in range(4)]  # the space's smallest rates: nothing learnt in 25 steps
    with quiet_optuna():
        study = optuna.create_study(direction="maximize", pruner=FamilyPruner(),
                                    sampler=optuna.samplers.RandomSampler(seed=0))
        result = run_search(data, study, ("mlp",), time_budget=60, n_trials=5,
                            enqueue=[slow[0], _net(1e-2), *slow[1:]])
    states = [t.state for t in study.trials]
    assert states[:2] == [Complete, Complete], "the first trial and the one that learns both train to the end"
    assert states[2:] == [Pruned] * 3
    assert all(t.last_step == 25 for t in study.trials[2:]), "stopped at the first rung, after 25 steps"
    assert result.best_trial == 1
    assert set(study.trials[1].intermediate_values) == {25, 75}, "rungs in steps, below the trial's 200"


def test_each_family_is_pruned_in_its_own_unit():
    """In one study, trees report folds to a median pruner and networks rungs of steps to successive halving;
    neither sees the other's intermediate values."""
    study = optuna.create_study(direction="maximize", pruner=FamilyPruner())
    family = optuna.distributions.CategoricalDistribution(["gbdt", "mlp"])
    for _ in range(5):  # five complete tree trials that scored 0.9 on every fold
        study.enqueue_trial({"family": "gbdt"})
        trial = study.ask({"family": family})
        for fold in range(5):
            trial.report(0.9, fold)
        study.tell(trial, 0.9)
    study.enqueue_trial({"family": "gbdt"})
    weak_tree = study.ask({"family": family})
    weak_tree.report(0.5, 0)
    weak_tree.report(0.5, 1)
    assert weak_tree.should_prune(), "a tree trailing the median of the complete trees' folds"
    study.tell(weak_tree, state=Pruned)
    study.enqueue_trial({"family": "mlp"})
    network = study.ask({"family": family})
    network.report(0.5, 1)  # step 1 of a network: below its first rung, no tree fold compares with it
    assert not network.should_prune()
    network.report(0.5, 25)
    assert not network.should_prune(), "the first network at a rung has none to trail"
    study.tell(network, 0.5)
    study.enqueue_trial({"family": "mlp"})
    weaker = study.ask({"family": family})
    weaker.report(0.4, 25)
    assert weaker.should_prune(), "a network trailing the one that reached the rung before it"


def test_with_a_meta_model_the_start_is_a_search_parameter_and_enqueued_starts_come_back():
    meta = shipped_meta_model()
    table = make_table(_planted(), target="y")
    info = prepare_data(table, FitOptions(families=("mlp",)), meta).search.info
    family = MLPFamily()
    member = next(c for c in family.defaults(info) if c["init"] != "random")
    with quiet_optuna():
        study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for config in (member, NetConfig().to_json()):
        study.enqueue_trial(family.trial_params(config))
        assert family.suggest(study.ask(), info) == family._clip(NetConfig.from_json(config)).to_json()
    drawn = [family.suggest(study.ask(), info)["init"] for _ in range(30)]
    assert set(drawn) == {"random", *meta.members}, "the sampler draws learned and random starts"
    without = prepare_data(table, FitOptions(families=("mlp",), use_meta=False)).search.info
    trial = study.ask()
    assert family.suggest(trial, without)["init"] == "random" and "mlp.init" not in trial.params
