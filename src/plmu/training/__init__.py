"""Training: the experiment registry, configs, the Lightning runner and the objectives."""
