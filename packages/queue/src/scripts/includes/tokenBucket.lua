--[[
  Included by tokenBuckets.lua and quotaReserve.lua: a token bucket's state is one string
  "tokens:last update in ms" with a TTL (GET and SET PX: two commands per bucket), so
  idle buckets disappear. bucketTokens reads a bucket's tokens now (refilled, never past
  its burst); bucketStore writes them back.
]]
local function bucketTokens(key, rate, burst, now)
  -- pcall: a key left by an older format (a hash) reads as a full bucket; SET replaces it.
  local raw = redis.pcall('GET', key)
  local t, ts = burst, now
  if type(raw) == 'string' then
    local a, b = string.match(raw, '^([^:]+):(.+)$')
    t = tonumber(a) or burst
    ts = tonumber(b) or now
  end
  return math.min(burst, t + (now - ts) * rate / 1000)
end

local function bucketStore(key, tokens, rate, burst, now)
  redis.call('SET', key, string.format('%.17g:%d', tokens, now), 'PX', math.ceil(burst * 1000 / rate) + 1000)
end
