"""A/B, multivariate and bandit experiments (docs/experiments.md)."""
