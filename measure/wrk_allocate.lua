-- wrk script: POST /v1/allocations, a new user id per request (as `coupon-pool bench allocate`).
--
--   wrk -t1 -c100 -d10s -s measure/wrk_allocate.lua http://127.0.0.1:8080
--
-- Used in docs/benchmarks.md to check that the bundled load script is not the bottleneck:
-- both clients drive the same endpoint and their throughputs are compared.
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local n = 0

request = function()
  n = n + 1
  return wrk.format(nil, "/v1/allocations",
    nil, string.format('{"user_id":"wrk-%d-%d","type":"STANDARD"}', os.time(), n))
end
