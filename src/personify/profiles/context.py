"""What an event's ``context`` says about the visit: device, browser, place, referrer, campaign."""

from __future__ import annotations

import re
from collections.abc import Mapping
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

_BOT = re.compile(r"bot|crawl|spider|slurp|headless", re.IGNORECASE)
_TABLET = re.compile(r"ipad|tablet|kindle|silk|playbook|android(?!.*mobile)", re.IGNORECASE)
_MOBILE = re.compile(r"mobi|iphone|ipod|android|windows phone", re.IGNORECASE)
# order matters: Edge and Opera also say "Chrome", Chrome also says "Safari"
_BROWSERS = (
    ("Edge", re.compile(r"Edg(e|A|iOS)?/")),
    ("Opera", re.compile(r"OPR/|Opera")),
    ("Samsung Internet", re.compile(r"SamsungBrowser/")),
    ("Firefox", re.compile(r"Firefox/|FxiOS/")),
    ("Chrome", re.compile(r"Chrome/|CriOS/")),
    ("Safari", re.compile(r"Safari/")),
)
_SYSTEMS = (
    ("iOS", re.compile(r"iPhone|iPad|iPod")),
    ("Android", re.compile(r"Android")),
    ("Windows", re.compile(r"Windows")),
    ("ChromeOS", re.compile(r"CrOS")),
    ("macOS", re.compile(r"Mac OS X|Macintosh")),
    ("Linux", re.compile(r"Linux")),
)
_DEVICE_TYPES = {"mobile", "tablet", "desktop", "tv", "bot", "wearable", "console"}
_MOBILE_PLATFORMS = {"ios", "android"}
_CAMPAIGN_FIELDS = ("source", "medium", "name", "term", "content")
_MAX_TEXT = 200


_EMPTY: Mapping[str, Any] = {}


def _mapping(value: Any) -> Mapping[str, Any]:
    # events are decoded JSON, so plain dicts (an ABC check would cost more than the rest)
    return value if type(value) is dict else _EMPTY


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        value = value.strip()
        return value[:_MAX_TEXT] if value else None
    return None


def device_type(user_agent: str) -> str:
    """``bot``, ``tablet``, ``mobile`` or ``desktop`` from a User-Agent string."""
    if _BOT.search(user_agent):
        return "bot"
    if _TABLET.search(user_agent):
        return "tablet"
    if _MOBILE.search(user_agent):
        return "mobile"
    return "desktop"


def browser_name(user_agent: str) -> str | None:
    """The browser family named by a User-Agent string, if one is recognised."""
    for name, pattern in _BROWSERS:
        if pattern.search(user_agent):
            return name
    return None


def os_name(user_agent: str) -> str | None:
    """The operating system named by a User-Agent string, if one is recognised."""
    for name, pattern in _SYSTEMS:
        if pattern.search(user_agent):
            return name
    return None


@lru_cache(maxsize=4096)
def _parse_user_agent(user_agent: str) -> tuple[str, str | None, str | None] | None:
    # a site sees few distinct User-Agent strings, so each is parsed once
    user_agent = user_agent.strip()
    if not user_agent:
        return None
    return device_type(user_agent), browser_name(user_agent), os_name(user_agent)


def _host(url: Any) -> str | None:
    if type(url) is not str or not url:
        return None
    return _hostname(url)


@lru_cache(maxsize=4096)
def _hostname(text: str) -> str | None:
    text = text.strip()
    if not text:
        return None
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    if not host:
        return None
    return host.removeprefix("www.")


def _utm(query: Any) -> dict[str, str]:
    """``utm_*`` parameters of a URL or query string (nothing to parse without ``utm_``)."""
    if type(query) is not str or "utm_" not in query:
        return {}
    text = query.strip()
    if "?" in text:
        text = text.split("?", 1)[1]
    found: dict[str, str] = {}
    for key, values in parse_qs(text.lstrip("?")).items():
        if key.startswith("utm_") and values:
            name = key[4:]
            name = "name" if name == "campaign" else name
            value = _text(values[0])
            if name in _CAMPAIGN_FIELDS and value:
                found[name] = value
    return found


def _named(campaign: dict[str, str]) -> dict[str, str] | None:
    if "source" in campaign or "medium" in campaign or "name" in campaign:
        return campaign
    return None


def campaign_of(data: Mapping[str, Any]) -> dict[str, str] | None:
    """The campaign of an event: ``context.campaign``, else the page URL's ``utm_*`` parameters.

    A campaign names at least a source, a medium or a name; anything less is none.
    """
    context = data.get("context")
    if type(context) is dict and context:
        declared = context.get("campaign")
        if type(declared) is dict and declared:
            campaign = {k: v for k in _CAMPAIGN_FIELDS if (v := _text(declared.get(k)))}
            if _named(campaign):
                return campaign
        page = context.get("page")
        if type(page) is dict:
            for query in (page.get("search"), page.get("url")):
                if type(query) is str and "utm_" in query:
                    return _named(_utm(query))
    properties = data.get("properties")
    if type(properties) is dict:
        query = properties.get("search")
        if type(query) is str and "utm_" in query:
            return _named(_utm(query))
    return None


_UNSET: Any = object()


def _clean(value: Any) -> str | None:
    # the inline form of _text for the hot path below
    if type(value) is str:
        value = value.strip()
        return value[:_MAX_TEXT] if value else None
    return None


def context_fields(data: Mapping[str, Any], campaign: Any = _UNSET) -> dict[str, str]:
    """The last-touch context fields an event carries (absent ones are left out).

    ``campaign`` is ``campaign_of(data)`` when the caller has it already (``None`` included).
    """
    context = data.get("context")
    fields: dict[str, str] = {}
    if type(context) is not dict or not context:
        return fields
    user_agent = context.get("userAgent")
    parsed = _parse_user_agent(user_agent) if type(user_agent) is str and user_agent else None
    device = context.get("device")
    declared_type = ""
    if type(device) is dict:
        declared_type = (_clean(device.get("type")) or "").lower()
    if declared_type in _DEVICE_TYPES:
        fields["device_type"] = declared_type
    elif declared_type in _MOBILE_PLATFORMS:
        fields["device_type"] = "mobile"
    elif parsed:
        fields["device_type"] = parsed[0]
    system = context.get("os")
    name = _clean(system.get("name")) if type(system) is dict else None
    if name is None and parsed:
        name = parsed[2]
    if name:
        fields["os"] = name
    if parsed and parsed[1]:
        fields["browser"] = parsed[1]
    location = context.get("location")
    if type(location) is dict:
        for key in ("country", "city"):
            if value := _clean(location.get(key)):
                fields[key] = value
    if value := _clean(context.get("locale")):
        fields["locale"] = value
    if value := _clean(context.get("timezone")):
        fields["timezone"] = value
    page = context.get("page")
    if type(page) is not dict:
        page = _EMPTY
    referrer = _host(page.get("referrer"))
    if referrer is None:
        declared = context.get("referrer")
        if type(declared) is dict:
            referrer = _host(declared.get("url"))
    if referrer is None:
        properties = data.get("properties")
        if type(properties) is dict:
            referrer = _host(properties.get("referrer"))
    # a referral from the site itself is navigation, not a source
    if referrer and referrer != _host(page.get("url")):
        fields["referrer"] = referrer
    if campaign is _UNSET:
        campaign = campaign_of(data)
    if campaign:
        for key in ("source", "medium", "name"):
            if key in campaign:
                fields["utm_" + ("campaign" if key == "name" else key)] = campaign[key]
    return fields
