"""Predictions: point-in-time features and training frames from the lake (``training``); the
churn and lifetime-value models build on them."""
