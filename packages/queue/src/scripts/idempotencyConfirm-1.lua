--[[
  Marks an Idempotency-Key's job as in the queue: pending -> confirmed (apps/api
  idempotency.ts).

  Input:
    KEYS[1] the key's entry (a hash)

  Output: 1 for the one caller that made the change, else 0
]]
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return 0 end
redis.call('HSET', KEYS[1], 'state', 'confirmed')
return 1
