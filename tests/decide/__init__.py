"""Tests of the decision engine: eligibility, strategies, fallbacks, exposures, the catalog cache."""
