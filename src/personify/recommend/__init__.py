"""Recommendations: user-item interactions read from the lake, recommenders fitted on them
(popularity, item-to-item co-visitation, EASE, implicit ALS and BPR) and their offline
evaluation at a temporal split (docs/recommend.md)."""
