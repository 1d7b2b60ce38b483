--[[
  Releases the shares of several settled jobs of one tenant at once (packages/queue
  outbox.ts: the relay, one call per tenant per read of an outbox), each once: as
  quotaRelease-3.lua, only the call that deletes a job's reservation marker gives its
  share back, so a job released already (by a cancel, a repeat of its entry) counts
  nothing. The counters move once per call, never below zero.

  Input (the number of keys varies: 2 + n):
    KEYS[1]      the tenant's queued-jobs counter
    KEYS[2]      the tenant's queued-bytes counter
    KEYS[2 + i]  job i's reservation marker (value: its input bytes), i = 1..n

  Output: the number of jobs this call released
]]
--- @include "includes/quotaLower.lua"

local jobs, bytes = 0, 0
for i = 3, #KEYS do
  local held = redis.call('GETDEL', KEYS[i])
  if held then
    jobs = jobs + 1
    bytes = bytes + tonumber(held)
  end
end
if jobs == 0 then return 0 end
quotaLower(KEYS[1], KEYS[2], jobs, bytes)
return jobs
