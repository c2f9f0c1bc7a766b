-- wrk script for bench/ingest.py: POSTs Segment-shaped track events, each with its own messageId.
--
--   wrk -s bench/wrk/ingest.lua URL -- MODE EVENTS AUTH TAG TIMESTAMP SENT_AT
--
-- MODE is "track" (one event per request, the body is the event) or "batch" (EVENTS events in
-- {"batch": [...], "sentAt": ...}). AUTH is the full Authorization header value. TAG (0..4095)
-- tells one wrk run from another, so that warm-up and measured runs never repeat a messageId.
-- A messageId is unique by (TAG, wrk thread, per-thread counter); its leading 47 bits are
-- random, like a uuid4, so dedupe-index inserts land all over the B-tree as they do in production.
-- done() prints one line "BENCH_RESULT {json}": exact counts, latency percentiles (us), and what
-- the threads built (requests, events, body bytes) so the body size is measured, not assumed.

local mode, per_request, tag, timestamp, sent_at
local threads = {}
-- globals, so that done() can read them from each thread with thread:get
counter = 0
requests_built = 0
body_bytes = 0

-- ~400 bytes on the wire once filled in: what analytics-python sends for a product view
-- (ids, ISO timestamps, a few properties, library context).
local EVENT = '{"type":"track","event":"Product Viewed","userId":"user-%06d",'
  .. '"anonymousId":"7c0d5e1a-2b3c-4d5e-8f90-%012d","messageId":"%08x-%04x-4%03x-a%03x-%012x",'
  .. '"timestamp":"%s",%s"properties":{"product_id":"sku-%05d","category":"shirts",'
  .. '"price":49.9,"currency":"EUR"},"context":{"library":{"name":"analytics-python",'
  .. '"version":"2.3.3"}},"integrations":{}}'

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  mode = args[1]
  per_request = tonumber(args[2])
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  wrk.headers["Authorization"] = args[3]
  tag = tonumber(args[4])
  timestamp = args[5]
  sent_at = args[6]
  math.randomseed(os.time() * 1000 + thread_id * 7919 + tag)
end

local function event(sent_at_field)
  counter = counter + 1
  local user = math.random(1, 50000)
  local product = math.random(1, 5000)
  return string.format(EVENT, user, user,
    math.random(0, 0x7fffffff), math.random(0, 0xffff), tag, thread_id, counter,
    timestamp, sent_at_field, product)
end

function request()
  local body
  if mode == "track" then
    body = event('"sentAt":"' .. sent_at .. '",')
  else
    local events = {}
    for i = 1, per_request do
      events[i] = event("")
    end
    body = '{"batch":[' .. table.concat(events, ",") .. '],"sentAt":"' .. sent_at .. '"}'
  end
  requests_built = requests_built + 1
  body_bytes = body_bytes + #body
  return wrk.format(nil, nil, nil, body)
end

function done(summary, latency, requests)
  local built, bytes, events = 0, 0, 0
  for _, thread in ipairs(threads) do
    built = built + thread:get("requests_built")
    bytes = bytes + thread:get("body_bytes")
    events = events + thread:get("counter")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,'
      .. '"built":{"requests":%d,"events":%d,"body_bytes":%d},'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f,"stdev":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, built, events, bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, latency.stdev))
end
