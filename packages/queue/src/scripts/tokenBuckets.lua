--[[
  Token buckets, so limits hold across API replicas (packages/submit limits.ts,
  RateLimiter). One call checks several buckets of one hash slot at once and charges
  them only if all allow it; a request's buckets in other slots (per IP, per tenant) are
  other calls, and RateLimiter refunds with a negative cost the calls that charged when
  one refuses. State is one string with a TTL (includes/tokenBucket.lua: GET and SET PX,
  two commands per bucket, where a hash took three), so idle buckets disappear. A
  negative cost refunds tokens (never past the burst on the next refill). A tenant's
  sample bucket is charged by quotaReserve.lua instead, in the same call as its quota.

  Input (one key per bucket):
    KEYS[i]  bucket i's state (a string "tokens:last update in ms"), i = 1..#KEYS

    ARGV[1]  now (epoch ms)
    then per bucket i, at a = 2 + (i - 1) * 3:
      ARGV[a]      rate (tokens per second)
      ARGV[a + 1]  burst (the bucket's size)
      ARGV[a + 2]  cost

  Output: {0, 0} when every bucket was charged; else {i, retry after ms} for the first
  bucket i that refused, and nothing was charged
]]
--- @include "includes/tokenBucket.lua"
local now = tonumber(ARGV[1])
local n = #KEYS
local tokens = {}
for i = 1, n do
  local rate = tonumber(ARGV[2 + (i - 1) * 3])
  local burst = tonumber(ARGV[3 + (i - 1) * 3])
  local cost = tonumber(ARGV[4 + (i - 1) * 3])
  local t = bucketTokens(KEYS[i], rate, burst, now)
  if t < cost then
    return {i, math.ceil((cost - t) * 1000 / rate)}
  end
  tokens[i] = t - cost
end
for i = 1, n do
  bucketStore(KEYS[i], tokens[i], tonumber(ARGV[2 + (i - 1) * 3]), tonumber(ARGV[3 + (i - 1) * 3]), now)
end
return {0, 0}
