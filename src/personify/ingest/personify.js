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
 * decide({placements?, timeoutMs?, root?, fill?, context?}) -> Promise, anonymousId(), userId().
 *
 * Decide (docs/browser.md): decide() asks {apiHost}/v1/decide (text/plain, the write key in
 * the body) for the content of the page's placements, as this user (userId, anonymousId) on
 * this page (context.page, context.locale from navigator.language), and fills them:
 *
 *   <section data-personify-placement="hero" data-personify-limit="1">
 *     <template><a data-personify-attr="href:url"><h2 data-personify-field="title"></h2></a></template>
 *     <h2>Welcome</h2>  <!-- the default, kept when the decision fails or times out -->
 *   </section>
 *
 * Without `placements`, every [data-personify-placement] element under `root` (document) is
 * asked for, with its data-personify-limit. Each item is rendered from the element's
 * <template> (or a copy of its first [data-personify-item] child) and replaces the default
 * markup (the [data-personify-item] children, else everything but the template);
 * data-personify-field="path" sets the text and data-personify-attr="attr:path,..." sets
 * attributes from the item's content (a URL attribute takes http(s), mailto, tel or relative
 * URLs only). Each rendered element gets data-personify-item=ID and data-personify-rank; the
 * placement element gets data-personify-decision, data-personify-item-ids and
 * data-personify-fallback, and a bubbling "personify:decided" event {placement, decisionId,
 * items, strategy, fallback}. The promise always resolves: with the answer, or, after
 * timeoutMs (1500) or an error, with {decisionId: null, placements: {}, error} while the
 * elements keep their markup. Of two decide() calls in flight, the later one fills.
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

  var config = null; // {writeKey, host, url, flushAt, flushIntervalMs, maxRetries}
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
      host: host,
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

  // -- decide: content chosen for this user, filled into the page's placements ---------------

  var PLACEMENT_ATTR = "data-personify-placement";
  var ITEM_ATTR = "data-personify-item";
  var DECIDE_TIMEOUT_MS = 1500;
  var MAX_PLACEMENTS = 20; // what the server takes in one decision
  var MAX_LIMIT = 50;
  // attributes whose value the browser follows as a URL
  var URL_ATTRS = {
    action: true, background: true, cite: true, codebase: true, data: true, formaction: true,
    href: true, manifest: true, ping: true, poster: true, src: true, srcset: true,
    "xlink:href": true,
  };
  var SAFE_SCHEMES = { http: true, https: true, mailto: true, tel: true };
  var decisions = 0; // numbers each decide() call, so that a late answer never wins
  var PROTOTYPE = "__personifyPrototype";
  var LATEST = "__personifyDecision";

  function decideFailed(error) {
    return { decisionId: null, placements: {}, error: error };
  }

  function lookup(content, path) {
    var value = content;
    var parts = path.split(".");
    for (var i = 0; i < parts.length; i++) {
      if (!isObject(value) || !Object.prototype.hasOwnProperty.call(value, parts[i])) return null;
      value = value[parts[i]];
    }
    return value;
  }

  function textOf(value) {
    if (typeof value === "string") return value;
    if (typeof value === "number" || typeof value === "boolean") return String(value);
    return null;
  }

  // catalog content can come from events anyone may send (products' url and image_url), so
  // a URL attribute never takes a script: URL or any scheme but http(s), mailto and tel
  function isSafeUrl(value) {
    // browsers ignore control characters and spaces in a scheme, so "java\tscript:" runs
    var compact = value.replace(/[\u0000-\u0020\u007f]/g, "");
    var scheme = /^([a-z][a-z0-9+.\-]*):/i.exec(compact);
    return !scheme || SAFE_SCHEMES[scheme[1].toLowerCase()] === true;
  }

  function setAttribute(target, name, value) {
    var lower = name.toLowerCase();
    // a handler or an inline document would run catalog text as code
    if (!lower || lower.slice(0, 2) === "on" || lower === "srcdoc" || lower === "style") {
      warn("data-personify-attr may not set " + name);
      return;
    }
    if (URL_ATTRS[lower] && !isSafeUrl(value)) {
      warn("refused an unsafe URL for " + name + ":", value);
      return;
    }
    try {
      target.setAttribute(name, value);
    } catch (err) {
      warn("cannot set attribute " + name + ":", err && err.name);
    }
  }

  // data-personify-field="title" and data-personify-attr="href:url,src:image_url" read the
  // item's content (dotted paths reach into objects); what the item lacks keeps its markup
  function bind(node, content) {
    var targets = [node].concat([].slice.call(
      node.querySelectorAll("[data-personify-field],[data-personify-attr]")
    ));
    targets.forEach(function (target) {
      var field = target.getAttribute("data-personify-field");
      var text = field ? textOf(lookup(content, field)) : null;
      if (text !== null) target.textContent = text;
      var attrs = target.getAttribute("data-personify-attr");
      if (!attrs) return;
      attrs.split(",").forEach(function (pair) {
        // the last colon splits, so that xlink:href:url names the xlink:href attribute
        var at = pair.lastIndexOf(":");
        if (at < 0) return;
        var name = pair.slice(0, at).replace(/^\s+|\s+$/g, "");
        var value = textOf(lookup(content, pair.slice(at + 1).replace(/^\s+|\s+$/g, "")));
        if (value !== null) setAttribute(target, name, value);
      });
    });
  }

  function childElements(element, test) {
    var found = [];
    for (var i = 0; i < element.children.length; i++) {
      if (test(element.children[i])) found.push(element.children[i]);
    }
    return found;
  }

  function isTemplate(node) {
    return node.tagName === "TEMPLATE";
  }

  function isItem(node) {
    return node.hasAttribute(ITEM_ATTR);
  }

  // what each item is rendered from: the element's <template>, else a copy of its first
  // [data-personify-item] child taken before the first fill replaced it
  function prototypeOf(element) {
    var template = childElements(element, isTemplate)[0];
    var fragment = document.createDocumentFragment();
    if (template) {
      var source = template.content || template; // engines without <template> keep children
      for (var node = source.firstChild; node; node = node.nextSibling) {
        if (node.nodeType === 1) fragment.appendChild(node.cloneNode(true));
      }
      return fragment.firstChild ? fragment : null;
    }
    if (!element[PROTOTYPE]) {
      var first = childElements(element, isItem)[0];
      if (!first) return null;
      element[PROTOTYPE] = first.cloneNode(true);
    }
    fragment.appendChild(element[PROTOTYPE].cloneNode(true));
    return fragment;
  }

  function render(prototype, item, rank) {
    var copy = prototype.cloneNode(true);
    var content = isObject(item.content) ? item.content : {};
    for (var node = copy.firstChild; node; node = node.nextSibling) {
      node.setAttribute(ITEM_ATTR, String(item.id));
      node.setAttribute("data-personify-rank", String(rank));
      bind(node, content);
    }
    return copy;
  }

  // the markup the items replace: the [data-personify-item] children (the default item, or an
  // earlier fill), else, beside a <template>, every child but the template
  function replaced(element) {
    var items = childElements(element, isItem);
    if (items.length || !childElements(element, isTemplate).length) return items;
    return [].slice.call(element.childNodes).filter(function (node) {
      return !(node.nodeType === 1 && isTemplate(node));
    });
  }

  function announce(element, detail) {
    var event;
    if (typeof window.CustomEvent === "function") {
      event = new window.CustomEvent("personify:decided", { bubbles: true, detail: detail });
    } else {
      event = document.createEvent("CustomEvent");
      event.initCustomEvent("personify:decided", true, false, detail);
    }
    element.dispatchEvent(event);
  }

  function fill(element, placementId, answer, decisionId) {
    var items = Array.isArray(answer.items) ? answer.items.filter(isObject) : [];
    var prototype = items.length ? prototypeOf(element) : null;
    if (prototype) {
      var old = replaced(element);
      var rendered = document.createDocumentFragment();
      items.forEach(function (item, rank) {
        rendered.appendChild(render(prototype, item, rank));
      });
      element.insertBefore(rendered, old.length ? old[0] : null);
      old.forEach(function (node) {
        element.removeChild(node);
      });
    }
    element.setAttribute("data-personify-decision", String(decisionId));
    element.setAttribute("data-personify-item-ids", items.map(function (item) {
      return String(item.id);
    }).join(","));
    element.setAttribute("data-personify-fallback", answer.fallback ? "true" : "false");
    announce(element, {
      placement: placementId,
      decisionId: decisionId,
      items: items,
      strategy: answer.strategy === undefined ? null : answer.strategy,
      fallback: !!answer.fallback,
    });
  }

  function limitOf(value) {
    var n = numberOr(value, null);
    return n === null ? null : Math.min(MAX_LIMIT, Math.max(1, Math.floor(n)));
  }

  function decide(options) {
    options = options || {};
    var root = options.root || document;
    var elements = [].slice.call(root.querySelectorAll("[" + PLACEMENT_ATTR + "]"));
    var asks = [];
    var byId = {};
    function ask(id, limit) {
      if (typeof id !== "string" || !id) return;
      limit = limitOf(limit);
      var known = byId[id];
      if (!known) {
        byId[id] = known = { id: id };
        asks.push(known);
      }
      // two elements of one placement: the larger wins, and each shows what it was given
      if (limit !== null && (known.limit === undefined || limit > known.limit)) known.limit = limit;
    }
    if (Array.isArray(options.placements)) {
      options.placements.forEach(function (placement) {
        if (typeof placement === "string") ask(placement, null);
        else if (isObject(placement)) ask(placement.id, placement.limit);
      });
    } else {
      elements.forEach(function (element) {
        ask(element.getAttribute(PLACEMENT_ATTR), element.getAttribute("data-personify-limit"));
      });
    }
    if (asks.length > MAX_PLACEMENTS) {
      warn("decide() fills at most " + MAX_PLACEMENTS + " placements at once; the rest wait");
      asks = asks.slice(0, MAX_PLACEMENTS);
    }
    var asked = {};
    asks.forEach(function (placement) {
      asked[placement.id] = true;
    });
    var targets = options.fill === false ? [] : elements.filter(function (element) {
      return asked[element.getAttribute(PLACEMENT_ATTR)] === true;
    });
    if (!config) {
      warn("decide() needs load() first");
      return Promise.resolve(decideFailed("not_loaded"));
    }
    if (!asks.length) return Promise.resolve(decideFailed("no_placements"));
    if (typeof window.fetch !== "function") return Promise.resolve(decideFailed("no_fetch"));
    decisions += 1;
    var number = decisions;
    targets.forEach(function (element) {
      element[LATEST] = number;
    });
    var page = pageFields();
    var request = {
      placements: asks,
      anonymousId: ids.anonymousId,
      context: copy({
        page: { path: page.path, url: page.url, title: page.title },
        locale: navigator.language,
      }, options.context),
      writeKey: config.writeKey,
    };
    if (ids.userId) request.userId = ids.userId;
    var timeoutMs = Math.max(0, numberOr(options.timeoutMs, DECIDE_TIMEOUT_MS));
    var aborter = typeof window.AbortController === "function" ? new AbortController() : null;

    return new Promise(function (resolve) {
      var settled = false;
      var timer = null;
      function settle(answer, error) {
        if (settled) return;
        settled = true;
        if (timer) clearTimeout(timer);
        if (error) {
          // the elements keep the markup they have: the page's default, or an earlier fill
          warn("decide() failed:", error);
          resolve(decideFailed(error));
          return;
        }
        targets.forEach(function (element) {
          var id = element.getAttribute(PLACEMENT_ATTR);
          var placement = answer.placements[id];
          if (element[LATEST] === number && isObject(placement)) {
            fill(element, id, placement, answer.decisionId);
          }
        });
        resolve(answer);
      }
      timer = setTimeout(function () {
        settle(null, "timeout");
        if (aborter) aborter.abort();
      }, timeoutMs);
      var init = {
        method: "POST",
        // the browser library sends text/plain to avoid a CORS preflight
        headers: { "Content-Type": "text/plain" },
        body: JSON.stringify(request),
        credentials: "omit",
        mode: "cors",
      };
      if (aborter) init.signal = aborter.signal;
      window.fetch(config.host + "/v1/decide", init).then(
        function (response) {
          if (!response.ok) {
            settle(null, "HTTP " + response.status);
            return;
          }
          return response.json().then(
            function (answer) {
              if (isObject(answer) && isObject(answer.placements)) settle(answer, null);
              else settle(null, "not a decision");
            },
            function () {
              settle(null, "not a decision");
            }
          );
        },
        function (error) {
          settle(null, String((error && error.message) || error));
        }
      );
    });
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
    decide: decide,
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
