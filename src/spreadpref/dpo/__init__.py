"""Soft-label DPO, knowing nothing about rounds: any policy, any pairs, any reference log-probs.

- :mod:`~spreadpref.dpo.loss`: the loss and the DPO logit z.
- :mod:`~spreadpref.dpo.logprobs`: summed reply log-probs, chunked log-softmax.
- :mod:`~spreadpref.dpo.refine`: self-refinement and decoupled noise detection (DND).
- :mod:`~spreadpref.dpo.reference`: reference log-probs from the data, the cache or one pass.
- :mod:`~spreadpref.dpo.trainer`: the ``transformers.Trainer`` subclass.
- :mod:`~spreadpref.dpo.checkpoints`: resume and ``save_pretrained`` outputs.
- :mod:`~spreadpref.dpo.train`: a DPO stage from pairs to a saved model (``spreadpref train``).
"""
