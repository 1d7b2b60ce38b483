--[[
  Token buckets, so limits hold across API replicas (packages/submit limits.ts,
  RateLimiter). One call checks several buckets of one hash slot at once and charges
  them only if all allow it; a request's buckets in other slots (per IP, per tenant) are
  other calls, and RateLimiter refunds with a negative cost the calls that charged when
  one refuses. State is one string with a TTL (GET and SET PX:
  two commands per bucket, where a hash took three), so idle buckets disappear. A
  negative cost refunds tokens (never past the burst on the next refill).

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
local now = tonumber(ARGV[1])
local n = #KEYS
local tokens = {}
for i = 1, n do
  local rate = tonumber(ARGV[2 + (i - 1) * 3])
  local burst = tonumber(ARGV[3 + (i - 1) * 3])
  local cost = tonumber(ARGV[4 + (i - 1) * 3])
  -- pcall: a key left by an older format (a hash) reads as a full bucket; SET replaces it.
  local raw = redis.pcall('GET', KEYS[i])
  local t, ts = burst, now
  if type(raw) == 'string' then
    local a, b = string.match(raw, '^([^:]+):(.+)$')
    t = tonumber(a) or burst
    ts = tonumber(b) or now
  end
  t = math.min(burst, t + (now - ts) * rate / 1000)
  if t < cost then
    return {i, math.ceil((cost - t) * 1000 / rate)}
  end
  tokens[i] = t - cost
end
for i = 1, n do
  local rate = tonumber(ARGV[2 + (i - 1) * 3])
  local burst = tonumber(ARGV[3 + (i - 1) * 3])
  redis.call('SET', KEYS[i], string.format('%.17g:%d', tokens[i], now), 'PX', math.ceil(burst * 1000 / rate) + 1000)
end
return {0, 0}
