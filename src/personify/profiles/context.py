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
def _parse_user_agent(user_agent: str) -> tuple[str, str | None, str | None]:
    # a site sees few distinct User-Agent strings, so each is parsed once
    return device_type(user_agent), browser_name(user_agent), os_name(user_agent)


def _host(url: Any) -> str | None:
    text = _text(url)
    if not text:
        return None
    return _hostname(text)


@lru_cache(maxsize=4096)
def _hostname(text: str) -> str | None:
    try:
        host = urlsplit(text).hostname
    except ValueError:
        return None
    if not host:
        return None
    return host.removeprefix("www.")


def _utm(query: Any) -> dict[str, str]:
    text = _text(query)
    if not text:
        return {}
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


def campaign_of(data: Mapping[str, Any]) -> dict[str, str] | None:
    """The campaign of an event: ``context.campaign``, else the page URL's ``utm_*`` parameters."""
    context = _mapping(data.get("context"))
    declared = _mapping(context.get("campaign"))
    campaign = {k: v for k in _CAMPAIGN_FIELDS if (v := _text(declared.get(k)))} if declared else {}
    if not campaign and (context or "search" in _mapping(data.get("properties"))):
        page = _mapping(context.get("page"))
        properties = _mapping(data.get("properties"))
        for query in (page.get("search"), page.get("url"), properties.get("search")):
            campaign = _utm(query)
            if campaign:
                break
    if not campaign or not ("source" in campaign or "medium" in campaign or "name" in campaign):
        return None
    return campaign


def context_fields(
    data: Mapping[str, Any], campaign: dict[str, str] | None = None
) -> dict[str, str]:
    """The last-touch context fields an event carries (absent ones are left out).

    ``campaign`` is ``campaign_of(data)`` when the caller has it already.
    """
    context = _mapping(data.get("context"))
    fields: dict[str, str] = {}
    if not context:
        return fields
    user_agent = _text(context.get("userAgent"))
    device = _mapping(context.get("device"))
    declared_type = (_text(device.get("type")) or "").lower()
    if declared_type in _DEVICE_TYPES:
        fields["device_type"] = declared_type
    elif declared_type in _MOBILE_PLATFORMS:
        fields["device_type"] = "mobile"
    elif user_agent:
        fields["device_type"] = _parse_user_agent(user_agent)[0]
    parsed = _parse_user_agent(user_agent) if user_agent else None
    system = _text(_mapping(context.get("os")).get("name"))
    if system is None and parsed:
        system = parsed[2]
    if system:
        fields["os"] = system
    if parsed and parsed[1]:
        fields["browser"] = parsed[1]
    location = _mapping(context.get("location"))
    for name in ("country", "city"):
        if value := _text(location.get(name)):
            fields[name] = value
    for name in ("locale", "timezone"):
        if value := _text(context.get(name)):
            fields[name] = value
    page = _mapping(context.get("page"))
    referrer = _host(page.get("referrer")) or _host(_mapping(context.get("referrer")).get("url"))
    if referrer is None:
        referrer = _host(_mapping(data.get("properties")).get("referrer"))
    # a referral from the site itself is navigation, not a source
    if referrer and referrer != _host(page.get("url")):
        fields["referrer"] = referrer
    if campaign is None:
        campaign = campaign_of(data)
    if campaign:
        for name in ("source", "medium", "name"):
            if name in campaign:
                fields["utm_" + ("campaign" if name == "name" else name)] = campaign[name]
    return fields
