"""What a model predicts: a target (``churn`` or ``clv``), its horizon H in days, and the
event it reads.

* ``churn``: the probability that the user has no *qualifying* event in the next H days
  (default 30). The qualifying event is any event (``event`` None), or a named track event
  such as ``Order Completed``.
* ``clv``: the revenue expected in the next H days (default 90) and the number of orders;
  an order is ``event`` (default ``Order Completed``) and its value is
  ``properties.revenue``, else ``properties.total``, as the ``revenue`` feature reads it.

A target's ``key`` names it in the registry: ``churn:30d:*``, ``clv:90d:Order Completed``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from personify.errors import ValidationError

__all__ = ["DEFAULT_HORIZON_DAYS", "ORDER_EVENT", "TARGETS", "Target", "target"]

TARGETS = ("churn", "clv")
DEFAULT_HORIZON_DAYS: dict[str, float] = {"churn": 30.0, "clv": 90.0}
ORDER_EVENT = "Order Completed"
# a horizon's bounds: a day at least (labels by event time), five years at most
_MIN_DAYS, _MAX_DAYS = 1.0, 1826.0


@dataclass(frozen=True, slots=True)
class Target:
    """A prediction target (module docstring)."""

    name: str
    horizon_days: float
    event: str | None

    @property
    def key(self) -> str:
        """The registry's name of the target: ``name:Hd:event`` (``*`` for any event)."""
        return f"{self.name}:{self.horizon_days:g}d:{self.event or '*'}"

    @property
    def order_event(self) -> str:
        """The event that counts as an order (its value is revenue)."""
        if self.name == "clv" and self.event:
            return self.event
        return ORDER_EVENT

    @property
    def qualifying_event(self) -> str | None:
        """The event whose absence is churn (None: any event)."""
        return self.event if self.name == "churn" else self.order_event

    def describe(self) -> str:
        """The target in words (reports, errors)."""
        if self.name == "churn":
            what = f"'{self.event}' event" if self.event else "event at all"
            return f"no {what} in the next {self.horizon_days:g} days"
        return f"revenue from '{self.order_event}' in the next {self.horizon_days:g} days"


def target(name: str, horizon_days: float | None = None, event: str | None = None) -> Target:
    """A checked target; raises ``ValidationError`` (``invalid_target``) on a bad part."""
    if name not in TARGETS:
        raise ValidationError(
            f"target must be one of {', '.join(TARGETS)}, not {name!r}", code="invalid_target"
        )
    days = DEFAULT_HORIZON_DAYS[name] if horizon_days is None else float(horizon_days)
    if not math.isfinite(days) or not _MIN_DAYS <= days <= _MAX_DAYS:
        raise ValidationError(
            f"the horizon must be between {_MIN_DAYS:g} and {_MAX_DAYS:g} days",
            code="invalid_target",
        )
    if event is not None:
        event = event.strip()
        if not event or len(event) > 200:
            raise ValidationError(
                "the event must be a name of 1 to 200 characters", code="invalid_target"
            )
    if name == "clv" and event is None:
        event = ORDER_EVENT
    return Target(name, days, event)
