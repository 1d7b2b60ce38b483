--[[
  Frees an Idempotency-Key whose request was refused before its enqueue (apps/api
  idempotency.ts): only the current attempt, and only with nothing reserved.

  Input:
    KEYS[1] the key's entry (a hash)

    ARGV[1] the caller's attempt

  Output: 1 when the entry was deleted, else 0
]]
local e = redis.call('HMGET', KEYS[1], 'state', 'attempt', 'reserved')
if e[1] ~= 'pending' or e[2] ~= ARGV[1] or e[3] ~= '0' then return 0 end
return redis.call('DEL', KEYS[1])
