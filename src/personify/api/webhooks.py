"""Webhook routes (Bearer API key): the URLs told when content is published or unpublished,
their delivery log, and retrying a failed delivery (``personify.content.webhooks``,
``docs/webhooks.md``).

Reads need the ``read`` role, writes the ``admin`` role. A webhook's secret is in the answer
to ``POST /v1/webhooks`` and nowhere else: it cannot be read again, only replaced by a new
webhook. Deleting deactivates (the delivery log is kept, and ``GET`` still shows it).
"""

from __future__ import annotations

import functools
from datetime import timedelta
from typing import Annotated, Any, Literal

import msgspec
from litestar import Router, delete, get, post
from litestar.concurrency import sync_to_thread
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import JSONBody, PathParameter, QueryParameter

from personify.api.documents import admin_responses, error_response
from personify.api.guards import BEARER_SECURITY, authorize, needs
from personify.content.webhooks import MAX_URL_CHARS, Delivery, WebhookRepository
from personify.content.webhooks import Webhook as WebhookRecord

__all__ = [
    "CreatedWebhook",
    "NewWebhook",
    "Webhook",
    "WebhookDeliveries",
    "WebhookDelivery",
    "WebhookList",
    "webhook_router",
]

# the scope each route needs (``personify.auth.roles``; per_user: an audited read)
READ = needs("content:read")
WRITE = needs("content:write")
# ids are 64-bit row ids; the bound keeps a path from overflowing the database's integer
_MAX_ID = 2**62

EventName = Literal["content.published", "content.unpublished"]
DeliveryStatus = Literal["pending", "delivered", "failed"]

WebhookId = Annotated[int, PathParameter(ge=1, le=_MAX_ID, description="a webhook's id")]
DeliveryId = Annotated[
    int, PathParameter(ge=1, le=_MAX_ID, description="a delivery's id (its `id` in the log)")
]


class NewWebhook(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/webhooks``."""

    url: Annotated[
        str,
        msgspec.Meta(
            min_length=8,
            max_length=MAX_URL_CHARS,
            pattern="^https?://",
            description="the http:// or https:// URL to POST to (no credentials or fragment)",
        ),
    ]
    events: Annotated[
        list[EventName] | None,
        msgspec.Meta(description="the events it is told of (every event when absent)"),
    ] = None


class Webhook(msgspec.Struct):
    """A URL told of content events, signed with its secret."""

    id: Annotated[int, msgspec.Meta(description="the webhook's id")]
    url: Annotated[str, msgspec.Meta(description="where deliveries are POSTed")]
    events: Annotated[list[str], msgspec.Meta(description="the events it is told of")]
    active: Annotated[bool, msgspec.Meta(description="false once deleted: it gets nothing")]
    createdAt: Annotated[str, msgspec.Meta(description="when it was created (ISO-8601 UTC)")]


class CreatedWebhook(Webhook):
    """A new webhook, with the secret that signs its deliveries: shown this once."""

    secret: Annotated[
        str,
        msgspec.Meta(
            description="whsec_…: the HMAC-SHA256 key of Personify-Signature (docs/webhooks.md)"
        ),
    ]


class WebhookList(msgspec.Struct):
    """The webhooks by id."""

    data: list[Webhook]


class WebhookDelivery(msgspec.Struct):
    """One event for one webhook: the body sent, and how sending it went so far."""

    id: Annotated[int, msgspec.Meta(description="the delivery's id (Personify-Delivery)")]
    webhookId: int
    event: Annotated[str, msgspec.Meta(description="content.published or content.unpublished")]
    itemId: Annotated[str, msgspec.Meta(description="the content item it is about")]
    itemVersion: Annotated[int | None, msgspec.Meta(description="the item's version, if any")]
    payload: Annotated[
        Any, msgspec.Meta(description="the JSON body sent: {id, event, createdAt, data}")
    ]
    status: Annotated[
        str,
        msgspec.Meta(
            description="pending (tried at nextAttemptAt), delivered, or failed (given up)"
        ),
    ]
    attempts: Annotated[int, msgspec.Meta(description="tries so far")]
    nextAttemptAt: Annotated[
        str | None, msgspec.Meta(description="when it is tried next (pending only)")
    ]
    lastStatusCode: Annotated[
        int | None, msgspec.Meta(description="the receiver's last HTTP status (null: no answer)")
    ]
    lastError: Annotated[
        str | None, msgspec.Meta(description="why the last try failed (null once delivered)")
    ]
    createdAt: Annotated[str, msgspec.Meta(description="when the event happened (ISO-8601)")]
    deliveredAt: Annotated[str | None, msgspec.Meta(description="when a 2xx answered it")]


class WebhookDeliveries(msgspec.Struct):
    """A page of a webhook's deliveries, newest first; ``next`` is the next page's ``before``."""

    webhook: int
    data: list[WebhookDelivery]
    next: int | None = None


def _webhook(record: WebhookRecord) -> Webhook:
    return msgspec.convert(record.to_dict(), Webhook)


def _delivery(record: Delivery) -> WebhookDelivery:
    return msgspec.convert(record.to_dict(), WebhookDelivery)


def _not_found(what: str = "webhook_not_found: no webhook has that id") -> dict[int, ResponseSpec]:
    return {404: error_response(what)}


@get("/v1/webhooks", opt=READ, responses=admin_responses())
async def list_webhooks(
    webhooks: NamedDependency[WebhookRepository],
    deleted: Annotated[bool, QueryParameter(description="include deleted webhooks")] = False,
) -> WebhookList:
    """Every webhook by id (active ones unless ``deleted=true``); secrets are never shown."""
    found = await sync_to_thread(webhooks.list, include_inactive=deleted)
    return WebhookList(data=[_webhook(record) for record in found])


@post(
    "/v1/webhooks",
    opt=WRITE,
    responses={
        **admin_responses(),
        400: error_response(
            "invalid_url (not http(s), no host, credentials, a fragment, over 2,000 characters), "
            "invalid_event, or invalid_parameter (a body that is not the documented object)"
        ),
    },
)
async def create_webhook(
    webhooks: NamedDependency[WebhookRepository], data: JSONBody[NewWebhook]
) -> CreatedWebhook:
    """Create a webhook told of the given events (every event when none is given); the
    answer holds its signing secret, which is never shown again."""
    record, secret = await sync_to_thread(webhooks.create, data.url, data.events)
    return CreatedWebhook(**record.to_dict(), secret=secret)


@get("/v1/webhooks/{webhook_id:int}", opt=READ, responses={**admin_responses(), **_not_found()})
async def show_webhook(
    webhooks: NamedDependency[WebhookRepository], webhook_id: WebhookId
) -> Webhook:
    """One webhook (a deleted one too, with ``active: false``)."""
    return _webhook(await sync_to_thread(webhooks.get, webhook_id))


@delete(
    "/v1/webhooks/{webhook_id:int}",
    opt=WRITE,
    # the deactivated webhook is the answer, so not the 204 Litestar gives a DELETE
    status_code=200,
    responses={**admin_responses(), **_not_found()},
)
async def delete_webhook(
    webhooks: NamedDependency[WebhookRepository], webhook_id: WebhookId
) -> Webhook:
    """Deactivate a webhook: it gets no new deliveries and its pending ones are failed
    unsent; its delivery log is kept. Deleting it again changes nothing."""
    return _webhook(await sync_to_thread(webhooks.delete, webhook_id))


@get(
    "/v1/webhooks/{webhook_id:int}/deliveries",
    opt=READ,
    responses={**admin_responses(), **_not_found()},
)
async def list_deliveries(
    webhooks: NamedDependency[WebhookRepository],
    webhook_id: WebhookId,
    limit: Annotated[int, QueryParameter(ge=1, le=1000, description="page size")] = 50,
    before: Annotated[
        int | None,
        QueryParameter(ge=1, le=_MAX_ID, description="only ids below: the previous page's `next`"),
    ] = None,
    after: Annotated[
        int | None,
        QueryParameter(ge=0, le=_MAX_ID, description="only ids above (what is new since)"),
    ] = None,
    status: Annotated[
        DeliveryStatus | None, QueryParameter(description="only deliveries in this status")
    ] = None,
) -> WebhookDeliveries:
    """The webhook's delivery log, newest first: each event's body, tries, the receiver's
    last status and error."""
    page = await sync_to_thread(
        lambda: webhooks.deliveries(
            webhook_id, limit=limit, before=before, after=after, status=status
        )
    )
    return WebhookDeliveries(
        webhook=webhook_id,
        data=[_delivery(record) for record in page.deliveries],
        next=page.next,
    )


@post(
    "/v1/webhooks/{webhook_id:int}/deliveries/{delivery_id:int}/retry",
    opt=WRITE,
    # the delivery, pending again, is the answer: 200, not Litestar's 201
    status_code=200,
    responses={
        **admin_responses(),
        **_not_found(
            "webhook_not_found, or delivery_not_found: the webhook has no delivery of that id"
        ),
        409: error_response(
            "delivery_not_failed: only a failed delivery is retried; webhook_inactive: the "
            "webhook was deleted"
        ),
    },
)
async def retry_delivery(
    webhooks: NamedDependency[WebhookRepository], webhook_id: WebhookId, delivery_id: DeliveryId
) -> WebhookDelivery:
    """Send a failed delivery again: pending, due now, tried once more at the next pass."""

    def retry() -> Delivery:
        # the webhook's own 404 first, as every other route under it answers
        webhooks.get(webhook_id)
        return webhooks.retry(delivery_id, webhook_id=webhook_id)

    return _delivery(await sync_to_thread(retry))


class SecretRotation(msgspec.Struct, forbid_unknown_fields=True):
    """The body of ``POST /v1/webhooks/{id}/rotate``."""

    overlapHours: Annotated[
        float,
        msgspec.Meta(
            ge=0,
            le=24 * 90,
            description="how long deliveries are signed with the previous secret too",
        ),
    ] = 24.0


@post(
    "/v1/webhooks/{webhook_id:int}/rotate",
    opt=WRITE,
    # the webhook with its new secret is the answer: 200, not Litestar's 201
    status_code=200,
    responses={**admin_responses(), **_not_found("webhook_not_found: no active webhook")},
)
async def rotate_webhook_secret(
    webhooks: NamedDependency[WebhookRepository],
    webhook_id: WebhookId,
    data: JSONBody[SecretRotation],
) -> CreatedWebhook:
    """Give a webhook a new signing secret, shown this once. For ``overlapHours`` every
    delivery carries two ``v1`` signatures, the new secret's and the previous one's, so the
    receiver can move to the new secret without refusing a delivery."""
    record, secret = await sync_to_thread(
        functools.partial(webhooks.rotate, webhook_id, overlap=timedelta(hours=data.overlapHours))
    )
    return CreatedWebhook(**record.to_dict(), secret=secret)


def webhook_router() -> Router:
    """The webhook routes, behind the API key guard (writes need the admin role)."""
    return Router(
        "/",
        route_handlers=[
            list_webhooks,
            create_webhook,
            show_webhook,
            delete_webhook,
            list_deliveries,
            retry_delivery,
            rotate_webhook_secret,
        ],
        guards=[authorize],
        security=BEARER_SECURITY,
        tags=["webhooks"],
    )
