"""``ijepa-ds eval`` options into typed ``EvalArgs``: every action, defaults, list options."""

from __future__ import annotations

import argparse
import dataclasses

import pytest

from ijepa_ds.cli.eval_cmd import ACTIONS, configure_eval, eval_args_from
from ijepa_ds.eval.args import ACTIONS as EVAL_ACTIONS
from ijepa_ds.eval.args import POS_INTERP, EvalArgs
from ijepa_ds.eval.features import POOLS
from ijepa_ds.models.pos_embed import POS_INTERP_MODES

pytestmark = pytest.mark.fast


def _parse(*argv: str) -> EvalArgs:
    parser = argparse.ArgumentParser()
    configure_eval(parser)
    return eval_args_from(parser.parse_args(list(argv)))


def test_the_cli_offers_exactly_the_actions_eval_runs():
    assert tuple(ACTIONS) == EVAL_ACTIONS


def test_the_cli_offers_exactly_the_pools_features_implements():
    parser = argparse.ArgumentParser()
    configure_eval(parser)
    linear = parser._subparsers._group_actions[0].choices["linear"]
    pool = next(a for a in linear._actions if a.dest == "pool")
    assert tuple(pool.choices) == POOLS
    assert _parse("knn", "r", "--pool", "tokens").pool == "tokens"
    with pytest.raises(ValueError, match="--pool tokens is for knn only, not linear"):
        _parse("linear", "r", "--pool", "tokens")


def test_the_cli_offers_exactly_the_position_modes_the_model_implements():
    parser = argparse.ArgumentParser()
    configure_eval(parser)
    knn = parser._subparsers._group_actions[0].choices["knn"]
    pos = next(a for a in knn._actions if a.dest == "pos_interp")
    assert tuple(pos.choices) == POS_INTERP == POS_INTERP_MODES
    assert _parse("knn", "r", "--pos-interp", "bicubic").pos_interp == "bicubic"
    with pytest.raises(ValueError, match="--pos-interp 'nearest'"):
        EvalArgs(action="knn", source="r", pos_interp="nearest")


@pytest.mark.parametrize("action", EVAL_ACTIONS)
def test_defaults_of_every_action_are_the_dataclass_defaults(action):
    assert _parse(action, "runs/r") == EvalArgs(action=action, source="runs/r")


def test_list_options_become_tuples_and_lowshot_k_a_one_item_tuple():
    knn = _parse("knn", "r", "--k", "5", "20", "--mean", "0.5", "--std", "0.25")
    assert knn.k == (5, 20) and knn.mean == (0.5,) and knn.std == (0.25,)
    low = _parse("lowshot", "r", "--k", "7", "--fractions", "0.01", "--seeds", "1", "2")
    assert low.k == (7,) and low.fractions == (0.01,) and low.seeds == (1, 2)
    linear = _parse("linear", "r", "--lrs", "0.1", "--wds", "0", "--no-batchnorm")
    assert linear.lrs == (0.1,) and linear.wds == (0.0,) and linear.no_batchnorm
    assert dataclasses.replace(linear, wds=None).wds is None  # None: eval.linear_wds


def test_an_unknown_action_is_refused_by_name():
    with pytest.raises(ValueError, match="'probe'"):
        EvalArgs(action="probe", source="r")
