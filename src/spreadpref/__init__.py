"""spreadpref: Spread Preference Annotation (SPA) for aligning language models from a small seed of human labels."""

from spreadpref.config import Config, load_config
from spreadpref.loss import soft_dpo_loss

__version__ = "0.1.0"


def train_policy(config: Config, force: bool = False):
    """Run the train stage (DPO on ``config.data.train``); see :mod:`spreadpref.train`."""
    from spreadpref.train import train_policy as _train_policy

    return _train_policy(config, force=force)


def run(config: Config, force: bool = False):
    """Run SPA end to end: seed DPO, then ``config.loop.rounds`` rounds; see :mod:`spreadpref.loop`."""
    from spreadpref.loop import run as _run

    return _run(config, force=force)


__all__ = ["run", "Config", "load_config", "soft_dpo_loss", "train_policy", "__version__"]
