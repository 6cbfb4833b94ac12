"""spa.train.round_config: the training settings of a round."""

from spreadpref.config import load_config
from spreadpref.spa.train import round_config


def test_a_round_trains_with_the_loops_epochs_rate_and_batching_where_set():
    config = load_config(None, ["train.num_epochs=3", "train.learning_rate=1e-4", "train.group_by_length=true"])
    plain = round_config(config).train
    assert (plain.num_epochs, plain.learning_rate, plain.group_by_length) == (1.0, 1e-4, True)  # epochs_per_round
    config = load_config(
        None, ["loop.epochs_per_round=2", "loop.learning_rate=5e-5", "loop.group_by_length=false", "train.beta=0.3"]
    )
    own = round_config(config).train
    assert (own.num_epochs, own.learning_rate, own.group_by_length, own.beta) == (2.0, 5e-5, False, 0.3)
    assert config.train.num_epochs != 2.0  # the run's own settings are left as they are
