--[[
  Takes over a pending Idempotency-Key entry whose lease has run out (apps/api
  idempotency.ts): a new attempt number and a new lease.

  Input:
    KEYS[1] the key's entry (a hash)

    ARGV[1] the new lease's end (epoch ms)
    ARGV[2] now (epoch ms)

  Output: the new attempt number; 0 when the entry is no longer pending, -1 when its
  lease still runs (another request took it over first)
]]
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
if tonumber(redis.call('HGET', KEYS[1], 'lease') or 0) > tonumber(ARGV[2]) then return -1 end
redis.call('HSET', KEYS[1], 'lease', ARGV[1])
return redis.call('HINCRBY', KEYS[1], 'attempt', 1)
