"""Tests of experiments: assignment, metrics, statistics, analysis and bandits."""
