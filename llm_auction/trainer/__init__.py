"""Training: pCTR fitting, IRPO (sampling, preference pairs, TRL DPO), the policy registry and
offline evaluation."""
