from collections.abc import Callable
from typing import Any

from personify.eventlog.base import LogRecord

def setup(
    unset: Any,
    raw_type: type,
    record_type: type,
    event_type: type,
    astuple: Callable[[Any], tuple[Any, ...]],
    /,
) -> None: ...
def wire_record(
    event: Any,
    route_kind: str | None,
    received_us: int,
    received_text: str,
    source_id: str,
    sent_default: Any,
    tolerance_us: int,
    max_bytes: int,
    pii_roots: tuple[tuple[int, tuple[bytes, ...] | None], ...],
    /,
) -> LogRecord | None: ...
def wire_records(
    events: list[Any],
    route_kind: str | None,
    received_us: int,
    received_text: str,
    source_id: str,
    sent_default: Any,
    tolerance_us: int,
    max_bytes: int,
    pii_roots: tuple[tuple[int, tuple[bytes, ...] | None], ...],
    /,
) -> tuple[list[LogRecord | None], int]: ...
