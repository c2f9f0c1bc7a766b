-- wrk script for bench/decide.py: replays prepared requests, one per line of a file, in turn.
--
--   wrk -s bench/wrk/decide.lua URL -- MODE FILE AUTH
--
-- MODE is "post" (each line is a JSON body POSTed to the URL's path) or "get" (each line is a
-- path, query string included, fetched with GET). AUTH is the full Authorization header value.
-- Each wrk thread starts at its own offset in the file, so that the threads ask for different
-- users at the same moment, as the open-loop generator of bench/decide.py does.
-- done() prints one line "BENCH_RESULT {json}": exact counts and latency percentiles (us).

local requests = {}
local threads = {}
local position = 0
-- a global, so that done() can read it from each thread with thread:get
sent = 0

function setup(thread)
  thread:set("thread_id", #threads)
  table.insert(threads, thread)
end

function init(args)
  local mode, file, auth = args[1], args[2], args[3]
  local headers = { ["Authorization"] = auth }
  if mode == "post" then
    headers["Content-Type"] = "application/json"
  end
  for line in io.lines(file) do
    if mode == "post" then
      table.insert(requests, wrk.format("POST", wrk.path, headers, line))
    else
      table.insert(requests, wrk.format("GET", line, headers, nil))
    end
  end
  -- each thread starts at its own place in the file (a prime stride apart)
  position = (thread_id * 1009) % #requests
end

function request()
  position = position % #requests + 1
  sent = sent + 1
  return requests[position]
end

function done(summary, latency, requests_done)
  local built = 0
  for _, thread in ipairs(threads) do
    built = built + thread:get("sent")
  end
  local e = summary.errors
  io.write(string.format(
    'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,"sent":%d,'
      .. '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},'
      .. '"latency_us":{"p50":%d,"p90":%d,"p99":%d,"p999":%d,"max":%d,"mean":%.1f,"stdev":%.1f}}\n',
    summary.requests, summary.duration, summary.bytes, built,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency:percentile(99.9), latency.max, latency.mean, latency.stdev))
end
