"""The decision engine: candidates, eligibility, ranking, diversity and a trace, answered from
the cached catalog snapshot and the user's profile (docs/decide.md)."""
