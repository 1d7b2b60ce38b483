--[[
  Gives back reservations of jobs that provably never reached the queue (apps/api
  quota.ts, TenantQuota.giveBack).

  A job without a key is the caller's own; a keyed job is given back only when its
  entry is pending under the caller's attempt and that attempt made the reservation
  (an adopted one may belong to an earlier attempt whose enqueue is still on its way);
  those entries go with their reservations, so their keys are free again. Each share is
  given back only by the call that deletes its marker. Never below zero.

  Input (the number of keys varies: 2 + n + the keyed jobs):
    KEYS[1]          the tenant's queued-jobs counter
    KEYS[2]          the tenant's queued-bytes counter
    KEYS[2 + i]      job i's reservation marker, i = 1..n
    KEYS[2 + n + e]  the Idempotency-Key entry with index e

    ARGV[1]          job count n
    then per job i, at a = 2 + (i - 1) * 2:
      ARGV[a]        its entry index e (0: no key)
      ARGV[a + 1]    the caller's attempt

  Output: the number of jobs given back
]]
--- @include "includes/quotaLower.lua"

local n = tonumber(ARGV[1])
local jobs, bytes = 0, 0
for i = 1, n do
  local a = 2 + (i - 1) * 2
  local entry = tonumber(ARGV[a])
  local mine = true
  if entry > 0 then
    local e = redis.call('HMGET', KEYS[2 + n + entry], 'state', 'attempt', 'reserved')
    mine = e[1] == 'pending' and e[2] == ARGV[a + 1] and e[3] == ARGV[a + 1]
    if mine then redis.call('DEL', KEYS[2 + n + entry]) end
  end
  local held = mine and redis.call('GET', KEYS[2 + i])
  if held then
    redis.call('DEL', KEYS[2 + i])
    jobs = jobs + 1
    bytes = bytes + tonumber(held)
  end
end
if jobs == 0 then return 0 end
quotaLower(KEYS[1], KEYS[2], jobs, bytes)
return jobs
