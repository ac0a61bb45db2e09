"""The Hydra configs, recipes (experiment/) and sweeps (sweep/) of the suite, read as pkg://sharebench.conf."""
