--[[
  Included by quotaRelease-3.lua and settleFinal-5.lua: gives a job's share back to its
  tenant's counters once (only the caller that deletes the reservation marker does),
  never below zero, and returns 1; returns 0 when the share was already given back.
  KEYS[1] queued-jobs counter, KEYS[2] queued-bytes counter, KEYS[3] the job's marker.
]]
local bytes = redis.call('GETDEL', KEYS[3])
if not bytes then return 0 end
local j = redis.call('DECR', KEYS[1])
if j < 0 then redis.call('SET', KEYS[1], 0) end
local b = redis.call('DECRBY', KEYS[2], bytes)
if b < 0 then redis.call('SET', KEYS[2], 0) end
return 1
