--[[
  Takes a tenant's share for new jobs atomically (apps/api quota.ts, TenantQuota.reserve).

  Each Idempotency-Key entry must still be owned by the caller's attempt (else verdict
  3: another request took the key over, and this one must not enqueue). A job whose
  entry already holds a reservation (from an earlier attempt) is not counted again;
  every job counted now gets its marker (its bytes, so release gives back exactly this)
  and its entry records the attempt that reserved it, so a key's job is reserved once
  however many requests try to enqueue it. Refused (nothing kept) when the jobs
  (verdict 1) or bytes (verdict 2) would pass their bound.

  The tenant's sample bucket (a token bucket in the same slot, includes/tokenBucket.lua)
  is checked first and charged in the same call, only when the reservation is taken:
  one call for what used to be two (tokenBuckets.lua, then this), and a refusal of
  either charges neither (verdict 4: the bucket refused; nothing kept).

  Input (the number of keys varies: 2 + n + the keyed jobs, + 1 with a bucket):
    KEYS[1]          the tenant's queued-jobs counter
    KEYS[2]          the tenant's queued-bytes counter
    KEYS[2 + i]      job i's reservation marker, i = 1..n
    KEYS[2 + n + e]  the Idempotency-Key entry with index e (a hash: attempt, reserved, ...)
    KEYS[#KEYS]      the sample bucket, when ARGV[8] (its cost) is above 0

    ARGV[1]          max queued jobs
    ARGV[2]          max queued bytes
    ARGV[3]          job count n
    ARGV[4]          marker TTL (ms)
    ARGV[5]          now (epoch ms)
    ARGV[6]          the bucket's rate (tokens per second)
    ARGV[7]          the bucket's burst
    ARGV[8]          the bucket's cost (the samples); 0: no bucket
    then per job i, at a = 9 + (i - 1) * 3:
      ARGV[a]        its input bytes
      ARGV[a + 1]    its entry index e (0: no key)
      ARGV[a + 2]    the caller's attempt

  Output: {verdict, jobs queued before (verdict 4: retry after ms), jobs reserved now}
    verdict 0 taken, 1 jobs bound, 2 bytes bound, 3 an entry is not the caller's attempt,
    4 the sample bucket refused
]]
--- @include "includes/tokenBucket.lua"
local n = tonumber(ARGV[3])
local now, rate, burst, cost = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7]), tonumber(ARGV[8])
local tokens
if cost > 0 then
  tokens = bucketTokens(KEYS[#KEYS], rate, burst, now)
  if tokens < cost then return {4, math.ceil((cost - tokens) * 1000 / rate), 0} end
end
local function charge()
  if cost > 0 then bucketStore(KEYS[#KEYS], tokens - cost, rate, burst, now) end
end
local jobs, bytes = 0, 0
local counted = {}
for i = 1, n do
  local a = 9 + (i - 1) * 3
  local entry = tonumber(ARGV[a + 1])
  local count = true
  if entry > 0 then
    local e = redis.call('HMGET', KEYS[2 + n + entry], 'attempt', 'reserved')
    if e[1] ~= ARGV[a + 2] then return {3, 0, 0} end
    count = e[2] == '0'
  end
  if count then
    jobs = jobs + 1
    bytes = bytes + tonumber(ARGV[a])
    counted[#counted + 1] = i
  end
end
if jobs == 0 then
  charge()
  return {0, tonumber(redis.call('GET', KEYS[1]) or 0), 0}
end
local j = redis.call('INCRBY', KEYS[1], jobs)
local b = redis.call('INCRBY', KEYS[2], bytes)
local verdict = 0
if j > tonumber(ARGV[1]) then verdict = 1 elseif b > tonumber(ARGV[2]) then verdict = 2 end
if verdict > 0 then
  redis.call('DECRBY', KEYS[1], jobs)
  redis.call('DECRBY', KEYS[2], bytes)
  return {verdict, j - jobs, 0}
end
charge()
for _, i in ipairs(counted) do
  local a = 9 + (i - 1) * 3
  redis.call('SET', KEYS[2 + i], ARGV[a], 'PX', ARGV[4])
  local entry = tonumber(ARGV[a + 1])
  if entry > 0 then redis.call('HSET', KEYS[2 + n + entry], 'reserved', ARGV[a + 2]) end
end
return {0, j - jobs, jobs}
