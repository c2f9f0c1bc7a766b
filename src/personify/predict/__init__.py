"""Predictions. Today the first half: profiles replayed from the lake as of a cut-off T
(``replay``), point-in-time feature tables (``features``) and labelled training frames
(``training``); the churn and lifetime-value models build on them."""
