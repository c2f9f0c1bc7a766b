/*!
 * personify.js — the Personify browser tracker. No dependencies; served at GET /personify.js.
 *
 * Install (either form):
 *
 *   <script async src="https://personify.example.com/personify.js"
 *           data-write-key="WRITE_KEY"></script>
 *
 *   <script>
 *     // calls made before the script has loaded are queued as arrays and replayed in order
 *     window.personify = window.personify || [];
 *     personify.push(["load", "WRITE_KEY", { flushAt: 20 }]);
 *     personify.push(["page"]);
 *   </script>
 *   <script async src="https://personify.example.com/personify.js"></script>
 *
 * Once loaded, `window.personify` is the tracker and `personify.push([...])` still works.
 * Script attributes: data-write-key, data-api-host, data-flush-at, data-flush-interval-ms,
 * data-max-retries (a queued "load" call wins over them).
 *
 * API: load(writeKey, {apiHost, flushAt, flushIntervalMs, maxRetries}), page(name?, props?),
 * track(event, props?), identify(userId?, traits?), reset(), flush() -> Promise,
 * anonymousId(), userId().
 *
 * Delivery: events are Segment-spec messages posted as text/plain (no CORS preflight) to
 * {apiHost}/v1/batch, batched by count and time. Undelivered events are kept in localStorage
 * under one key per page instance, so two tabs never overwrite each other's queue; a new page
 * adopts the queues of instances that closed or went silent. On pagehide or when the page is
 * hidden, what is queued goes out with navigator.sendBeacon. A beacon's delivery is never
 * confirmed, so beaconed events stay stored and are sent again when the page is shown again
 * or by the page that adopts them: the server deduplicates by messageId, so a resend costs a
 * request, never a doubled event. Network errors, 5xx and 429 are retried with exponential
 * backoff and jitter, keeping the messageIds, up to maxRetries (default 10) times per event;
 * a 413 halves the batch; other 4xx are dropped with a console warning.
 */
(function (window, document) {
  "use strict";

  var VERSION = "0.1.0";
  var AID_KEY = "pfy_aid";
  var UID_KEY = "pfy_uid";
  var QUEUE_PREFIX = "pfy_q.";
  var COOKIE_MAX_AGE_S = 365 * 24 * 3600;
  // an instance refreshes its stored queue on every flush or retry; older than this, it is gone
  var STALE_MS = 2 * 60 * 1000;
  var RESEND_BEACONED_MS = 12 * 3600 * 1000; // half the server's default dedupe window
  var RETRY_BASE_MS = 500;
  var RETRY_CAP_MS = 30000;
  var MAX_BATCH_EVENTS = 100;
  var MAX_BATCH_BYTES = 400 * 1024; // under the server's default 500 KB batch limit
  var MAX_BEACON_BYTES = 60 * 1024; // browsers allow about 64 KB of beacons in flight
  var MAX_QUEUED = 1000;
  var MAX_BEACONED = 500;

  var existing = window.personify;
  if (existing && existing.__personify) {
    return;
  }

  var config = null; // {writeKey, url, flushAt, flushIntervalMs, maxRetries}
  var queue = []; // [{e: event, n: failed attempts}]
  var beaconed = []; // handed to sendBeacon, kept until a later request succeeds
  var storageKey = null;
  var closed = false;
  var flushTimer = null;
  var retryTimer = null;
  var failures = 0;
  var batchLimit = MAX_BATCH_EVENTS;
  var inFlight = null;
  var warnedStorage = false;
  var encoder = typeof TextEncoder === "function" ? new TextEncoder() : null;

  function warn() {
    if (window.console && console.warn) {
      console.warn.apply(console, ["personify:"].concat([].slice.call(arguments)));
    }
  }

  // -- storage -------------------------------------------------------------------------------

  function storage() {
    try {
      return window.localStorage || null;
    } catch (err) {
      return null; // sandboxed frames and some privacy modes refuse access
    }
  }

  function storageGet(key) {
    var store = storage();
    try {
      return store ? store.getItem(key) : null;
    } catch (err) {
      return null;
    }
  }

  function storageSet(key, value) {
    var store = storage();
    if (!store) return;
    try {
      if (value === null) store.removeItem(key);
      else store.setItem(key, value);
    } catch (err) {
      if (!warnedStorage) {
        warnedStorage = true;
        warn("cannot write localStorage:", err && err.name);
      }
    }
  }

  function readCookie(name) {
    try {
      var parts = document.cookie ? document.cookie.split("; ") : [];
      for (var i = 0; i < parts.length; i++) {
        var eq = parts[i].indexOf("=");
        if (parts[i].slice(0, eq) === name) return decodeURIComponent(parts[i].slice(eq + 1));
      }
    } catch (err) {
      return null;
    }
    return null;
  }

  function writeCookie(name, value) {
    var secure = window.location.protocol === "https:" ? "; Secure" : "";
    try {
      document.cookie =
        name + "=" + encodeURIComponent(value) + "; Path=/; Max-Age=" + COOKIE_MAX_AGE_S +
        "; SameSite=Lax" + secure;
    } catch (err) {
      // cookies disabled: localStorage still carries the id
    }
  }

  // -- ids -----------------------------------------------------------------------------------

  function uuid() {
    var c = window.crypto;
    if (c && typeof c.randomUUID === "function") return c.randomUUID();
    var bytes = new Uint8Array(16);
    if (c && typeof c.getRandomValues === "function") c.getRandomValues(bytes);
    else for (var i = 0; i < 16; i++) bytes[i] = Math.floor(Math.random() * 256);
    bytes[6] = (bytes[6] & 0x0f) | 0x40; // version 4
    bytes[8] = (bytes[8] & 0x3f) | 0x80; // RFC 4122 variant
    var hex = [];
    for (var j = 0; j < 16; j++) hex.push((bytes[j] + 0x100).toString(16).slice(1));
    return (
      hex.slice(0, 4).join("") + "-" + hex.slice(4, 6).join("") + "-" +
      hex.slice(6, 8).join("") + "-" + hex.slice(8, 10).join("") + "-" + hex.slice(10).join("")
    );
  }

  function anonymousId() {
    var id = readCookie(AID_KEY) || storageGet(AID_KEY);
    if (!id) id = uuid();
    // rewritten on every visit so the one-year cookie slides, and restored if either copy went
    writeCookie(AID_KEY, id);
    storageSet(AID_KEY, id);
    return id;
  }

  var ids = { anonymousId: anonymousId(), userId: storageGet(UID_KEY) };

  // -- events --------------------------------------------------------------------------------

  function pageUrl() {
    var href = window.location.href;
    var hash = href.indexOf("#");
    return hash < 0 ? href : href.slice(0, hash);
  }

  function pageFields() {
    return {
      path: window.location.pathname,
      referrer: document.referrer,
      search: window.location.search,
      title: document.title,
      url: pageUrl(),
    };
  }

  var UTM_NAMES = { utm_campaign: "name", utm_source: "source", utm_medium: "medium",
    utm_term: "term", utm_content: "content" };

  function campaign() {
    var found = null;
    var pairs = window.location.search.replace(/^\?/, "").split("&");
    for (var i = 0; i < pairs.length; i++) {
      var eq = pairs[i].indexOf("=");
      var key = eq < 0 ? pairs[i] : pairs[i].slice(0, eq);
      if (key.slice(0, 4) !== "utm_" || key.length === 4) continue;
      var raw = eq < 0 ? "" : pairs[i].slice(eq + 1);
      var value;
      try {
        value = decodeURIComponent(raw.replace(/\+/g, " "));
      } catch (err) {
        value = raw;
      }
      found = found || {};
      found[UTM_NAMES[key] || key.slice(4)] = value;
    }
    return found;
  }

  function context() {
    var ctx = {
      library: { name: "personify.js", version: VERSION },
      locale: navigator.language,
      page: pageFields(),
      userAgent: navigator.userAgent,
    };
    try {
      ctx.timezone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    } catch (err) {
      // older engines without Intl: the field is optional
    }
    var utm = campaign();
    if (utm) ctx.campaign = utm;
    return ctx;
  }

  function isObject(value) {
    return value !== null && typeof value === "object" && !Array.isArray(value);
  }

  function copy(target, source) {
    if (isObject(source)) for (var key in source) {
      if (Object.prototype.hasOwnProperty.call(source, key)) target[key] = source[key];
    }
    return target;
  }

  function message(type, fields) {
    var event = {
      type: type,
      messageId: uuid(),
      anonymousId: ids.anonymousId,
      timestamp: new Date().toISOString(),
      context: context(),
    };
    if (ids.userId) event.userId = ids.userId;
    return copy(event, fields);
  }

  // -- queue and persistence -----------------------------------------------------------------

  function persist() {
    if (!storageKey) return;
    if (!queue.length && !beaconed.length) {
      storageSet(storageKey, null);
      return;
    }
    storageSet(storageKey, JSON.stringify({ t: Date.now(), c: closed, q: queue, b: beaconed }));
  }

  function adoptStoredQueues() {
    var store = storage();
    if (!store) return;
    var prefix = QUEUE_PREFIX + config.writeKey + ".";
    var keys = [];
    try {
      for (var i = 0; i < store.length; i++) {
        var key = store.key(i);
        if (key && key.indexOf(prefix) === 0 && key !== storageKey) keys.push(key);
      }
    } catch (err) {
      return;
    }
    var known = {};
    for (var k = 0; k < queue.length; k++) known[queue[k].e.messageId] = true;
    var now = Date.now();
    keys.forEach(function (key) {
      var record;
      try {
        record = JSON.parse(storageGet(key) || "null");
      } catch (err) {
        record = null;
      }
      if (record && !record.c && now - record.t < STALE_MS) return; // a live tab owns it
      storageSet(key, null);
      if (!record) return;
      // past the server's dedupe window a resent beacon could be stored twice; it most
      // likely arrived, so it is let go
      var resend = now - record.t < RESEND_BEACONED_MS ? record.b || [] : [];
      resend.concat(record.q || []).forEach(function (item) {
        if (item && isObject(item.e) && !known[item.e.messageId]) {
          known[item.e.messageId] = true;
          queue.push({ e: item.e, n: item.n || 0 });
        }
      });
    });
  }

  function enqueue(event) {
    queue.push({ e: event, n: 0 });
    if (queue.length > MAX_QUEUED) {
      queue.splice(0, queue.length - MAX_QUEUED);
      warn("over " + MAX_QUEUED + " events queued; the oldest were dropped");
    }
    if (!config) return; // kept in memory until load() names the write key
    persist();
    schedule();
  }

  function schedule() {
    if (!config || inFlight || retryTimer || !queue.length) return;
    if (queue.length >= config.flushAt) {
      send();
    } else if (!flushTimer) {
      flushTimer = setTimeout(function () {
        flushTimer = null;
        send();
      }, config.flushIntervalMs);
    }
  }

  function byteLength(text) {
    return encoder ? encoder.encode(text).length : text.length * 3;
  }

  function body(events) {
    return JSON.stringify({
      batch: events,
      sentAt: new Date().toISOString(),
      writeKey: config.writeKey,
    });
  }

  function takeBatch(items, maxEvents, maxBytes) {
    var batch = [];
    var bytes = 0;
    for (var i = 0; i < items.length && batch.length < maxEvents; i++) {
      var size = byteLength(JSON.stringify(items[i].e)) + 1;
      if (batch.length && bytes + size > maxBytes) break;
      batch.push(items[i]);
      bytes += size;
    }
    return batch;
  }

  function removeItems(items) {
    var gone = {};
    items.forEach(function (item) {
      gone[item.e.messageId] = true;
    });
    queue = queue.filter(function (item) {
      return !gone[item.e.messageId];
    });
  }

  function backoffMs(attempt) {
    var ceiling = Math.min(RETRY_CAP_MS, RETRY_BASE_MS * Math.pow(2, attempt - 1));
    // jitter spreads the retries of many browsers after an outage
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  function retryLater(items, why) {
    var dropped = [];
    items.forEach(function (item) {
      item.n += 1;
      if (item.n > config.maxRetries) dropped.push(item);
    });
    if (dropped.length) {
      removeItems(dropped);
      warn("dropped " + dropped.length + " event(s) after " + config.maxRetries + " retries:", why);
    }
    failures += 1;
    persist();
    if (retryTimer) clearTimeout(retryTimer);
    retryTimer = null;
    if (!queue.length) return;
    retryTimer = setTimeout(function () {
      retryTimer = null;
      send();
    }, backoffMs(failures));
  }

  function post(payload) {
    return window
      .fetch(config.url, {
        method: "POST",
        // the browser library sends text/plain to avoid a CORS preflight
        headers: { "Content-Type": "text/plain" },
        body: payload,
        credentials: "omit",
        mode: "cors",
      })
      .then(
        function (response) {
          return { status: response.status, error: null };
        },
        function (error) {
          return { status: 0, error: error };
        }
      );
  }

  // one request at a time; resolves true when the batch was settled (sent or dropped)
  function send() {
    if (inFlight) return inFlight;
    if (flushTimer) {
      clearTimeout(flushTimer);
      flushTimer = null;
    }
    if (!config || !queue.length || typeof window.fetch !== "function") {
      return Promise.resolve(!queue.length);
    }
    var items = takeBatch(queue, batchLimit, MAX_BATCH_BYTES);
    var events = items.map(function (item) {
      return item.e;
    });
    inFlight = post(body(events)).then(function (result) {
      inFlight = null;
      var status = result.status;
      if (status >= 200 && status < 300) {
        failures = 0;
        removeItems(items);
        persist();
        schedule();
        return true;
      }
      if (status === 0 || status === 429 || status >= 500) {
        retryLater(items, result.error ? String(result.error) : "HTTP " + status);
        return false;
      }
      if (status === 413 && items.length > 1) {
        batchLimit = Math.max(1, Math.floor(items.length / 2));
        return send();
      }
      removeItems(items);
      warn("the server refused " + items.length + " event(s) with HTTP " + status + "; dropped");
      persist();
      schedule();
      return true;
    });
    return inFlight;
  }

  function flush() {
    if (retryTimer) {
      clearTimeout(retryTimer);
      retryTimer = null;
    }
    function loop(ok) {
      if (!ok || !config || !queue.length || retryTimer) return Promise.resolve(!queue.length);
      return send().then(loop);
    }
    return (inFlight || Promise.resolve(true)).then(function () {
      return loop(true);
    });
  }

  function beaconAll() {
    if (!config || !queue.length || typeof navigator.sendBeacon !== "function") return;
    while (queue.length) {
      var items = takeBatch(queue, MAX_BATCH_EVENTS, MAX_BEACON_BYTES - 512);
      var payload = body(items.map(function (item) {
        return item.e;
      }));
      var accepted = false;
      if (byteLength(payload) <= MAX_BEACON_BYTES) {
        try {
          accepted = navigator.sendBeacon(config.url, payload);
        } catch (err) {
          accepted = false;
        }
      }
      // a refused beacon (over quota) stays queued and stored, for this page or the next
      if (!accepted) break;
      removeItems(items);
      beaconed = beaconed.concat(items).slice(-MAX_BEACONED);
    }
  }

  function onPageHide() {
    beaconAll();
    closed = true;
    persist();
  }

  // the page is in use again: send what went by beacon once more, in case the beacon was lost
  function revive() {
    closed = false;
    if (beaconed.length) {
      var known = {};
      queue.forEach(function (item) {
        known[item.e.messageId] = true;
      });
      queue = beaconed.filter(function (item) {
        return !known[item.e.messageId];
      }).concat(queue);
      beaconed = [];
    }
    persist();
    schedule();
  }

  // -- public API ----------------------------------------------------------------------------

  function numberOr(value, fallback) {
    var n = Number(value);
    return value !== undefined && value !== null && value !== "" && isFinite(n) ? n : fallback;
  }

  function load(writeKey, options) {
    if (config) {
      warn("load() was already called; ignored");
      return;
    }
    if (!writeKey || typeof writeKey !== "string") {
      warn("load() needs a write key");
      return;
    }
    options = options || {};
    var host = String(options.apiHost || defaultHost).replace(/\/+$/, "");
    if (host.indexOf("://") < 0) host = window.location.protocol + "//" + host;
    config = {
      writeKey: writeKey,
      url: host + "/v1/batch",
      flushAt: Math.max(1, numberOr(options.flushAt, 20)),
      flushIntervalMs: Math.max(0, numberOr(options.flushIntervalMs, 1000)),
      maxRetries: Math.max(0, numberOr(options.maxRetries, 10)),
    };
    storageKey = QUEUE_PREFIX + writeKey + "." + uuid();
    adoptStoredQueues();
    persist();
    // adopted events, and those of calls made before load(), have waited long enough
    if (queue.length) send();
    window.addEventListener("pagehide", onPageHide);
    window.addEventListener("pageshow", function (event) {
      if (event.persisted) revive(); // back from the back/forward cache
    });
    document.addEventListener("visibilitychange", function () {
      if (document.visibilityState === "hidden") {
        beaconAll();
        persist();
      } else {
        revive();
      }
    });
    window.addEventListener("online", function () {
      if (retryTimer) flush();
    });
  }

  function page(name, properties) {
    if (isObject(name)) {
      properties = name;
      name = undefined;
    }
    var props = copy(pageFields(), properties);
    var fields = { properties: props };
    if (typeof name === "string" && name) {
      fields.name = name;
      props.name = name;
    }
    enqueue(message("page", fields));
  }

  function track(event, properties) {
    if (typeof event !== "string" || !event) {
      warn("track() needs an event name");
      return;
    }
    enqueue(message("track", { event: event, properties: copy({}, properties) }));
  }

  function identify(userId, traits) {
    if (isObject(userId)) {
      traits = userId;
      userId = undefined;
    }
    if (userId !== undefined && userId !== null && userId !== "") {
      ids.userId = String(userId);
      storageSet(UID_KEY, ids.userId);
    }
    enqueue(message("identify", { traits: copy({}, traits) }));
  }

  function reset() {
    ids.userId = null;
    storageSet(UID_KEY, null);
    ids.anonymousId = uuid();
    writeCookie(AID_KEY, ids.anonymousId);
    storageSet(AID_KEY, ids.anonymousId);
  }

  var api = {
    __personify: true,
    VERSION: VERSION,
    load: load,
    page: page,
    track: track,
    identify: identify,
    reset: reset,
    flush: flush,
    anonymousId: function () {
      return ids.anonymousId;
    },
    userId: function () {
      return ids.userId;
    },
    push: function (call) {
      if (!Array.isArray(call) || typeof api[call[0]] !== "function" || call[0] === "push") {
        warn("unknown call", call);
        return;
      }
      api[call[0]].apply(api, call.slice(1));
    },
  };

  // -- bootstrap -----------------------------------------------------------------------------

  function ownScript() {
    var script = document.currentScript;
    if (script && script.src) return script;
    var scripts = document.getElementsByTagName("script");
    for (var i = scripts.length - 1; i >= 0; i--) {
      if (/\/personify\.js(\?|#|$)/.test(scripts[i].src)) return scripts[i];
    }
    return null;
  }

  var script = ownScript();
  var defaultHost = window.location.origin;
  if (script) {
    try {
      defaultHost = new URL(script.src, window.location.href).origin;
    } catch (err) {
      // an unparsable src: fall back to this page's origin
    }
  }

  window.personify = api;
  var pending = Array.isArray(existing) ? existing.slice() : [];
  var explicitLoad = pending.some(function (call) {
    return Array.isArray(call) && call[0] === "load";
  });
  var data = script ? script.dataset || {} : {};
  if (data.writeKey && !explicitLoad) {
    load(data.writeKey, {
      apiHost: data.apiHost,
      flushAt: data.flushAt,
      flushIntervalMs: data.flushIntervalMs,
      maxRetries: data.maxRetries,
    });
  }
  pending.forEach(api.push);
})(window, document);
