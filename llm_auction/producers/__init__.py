"""Producers: the synthetic world, traffic replay (queries with fresh bids) and version publishers."""
