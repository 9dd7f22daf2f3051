"""Training: pCTR fitting and publishing, one IRPO epoch (``irpo``: sampling, Eq. 8 scoring,
preference pairs, TRL DPO on a LoRA adapter), and the model registry for pCTR and policy versions."""
