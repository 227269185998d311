-- wrk script template for bench/common/wrk.py: wrk.script() prepends a generated
-- block that defines bench_method, bench_path, bench_body, bench_content_type,
-- bench_headers (more request headers, e.g. Connection: close) and bench_tokens (the
-- devices' provision tokens, sent as X-Provision-Token; empty: none).
--
-- Each wrk thread has its own Lua state: setup() runs in the main state and
-- numbers the threads; init() runs in each thread and pre-builds that
-- thread's requests; request() walks them round-robin. Thread i of n uses
-- tokens i, i+n, i+2n, ... so the threads together cover every device.
-- response() counts every status outside 2xx (wrk itself only counts >= 400);
-- done() gathers the counts from the threads and prints one JSON line.

local threads = {}
local thread_count = 0

function setup(thread)
   thread:set("thread_index", thread_count)
   thread_count = thread_count + 1
   table.insert(threads, thread)
end

function init(args)
   local nthreads = tonumber(args[1]) or 1
   requests_ = {}
   local headers_for = function(token)
      local headers = {}
      for name, value in pairs(bench_headers or {}) do
         headers[name] = value
      end
      if token ~= nil then
         headers["X-Provision-Token"] = token
      end
      if bench_body ~= nil then
         headers["Content-Type"] = bench_content_type
      end
      return headers
   end
   if #bench_tokens == 0 then
      requests_[1] = wrk.format(bench_method, bench_path, headers_for(nil), bench_body)
   else
      for i = thread_index + 1, #bench_tokens, nthreads do
         requests_[#requests_ + 1] = wrk.format(bench_method, bench_path, headers_for(bench_tokens[i]), bench_body)
      end
   end
   next_ = 0
   non2xx = 0
   statuses = {}
end

function request()
   next_ = next_ + 1
   if next_ > #requests_ then
      next_ = 1
   end
   return requests_[next_]
end

function response(status, headers, body)
   if status < 200 or status > 299 then
      non2xx = non2xx + 1
      local key = tostring(status)
      statuses[key] = (statuses[key] or 0) + 1
   end
end

function done(summary, latency, requests)
   local non2xx_total = 0
   local merged = {}
   for _, thread in ipairs(threads) do
      non2xx_total = non2xx_total + (thread:get("non2xx") or 0)
      for status, count in pairs(thread:get("statuses") or {}) do
         merged[status] = (merged[status] or 0) + count
      end
   end
   local parts = {}
   for status, count in pairs(merged) do
      parts[#parts + 1] = string.format('"%s":%d', status, count)
   end
   local e = summary.errors
   io.write(string.format(
      'BENCH_RESULT {"requests":%d,"duration_us":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status_ge_400":%d,"timeout":%d},' ..
      '"non2xx":%d,"statuses":{%s},' ..
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
      '"p50":%d,"p75":%d,"p90":%d,"p99":%d,"p99_9":%d}}\n',
      summary.requests, summary.duration, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      non2xx_total, table.concat(parts, ","),
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(75), latency:percentile(90),
      latency:percentile(99), latency:percentile(99.9)))
end
