--[[
  Included by quotaRelease-3.lua, quotaReleaseMany.lua and quotaGiveBack.lua: lowers a
  tenant's queued-jobs and queued-bytes counters by the shares a call released, never
  below zero (a counter an operator reset, or one lost to a failover, stays at zero).
]]
local function quotaLower(jobsKey, bytesKey, jobs, bytes)
  local j = redis.call('DECRBY', jobsKey, jobs)
  if j < 0 then redis.call('SET', jobsKey, 0) end
  local b = redis.call('DECRBY', bytesKey, bytes)
  if b < 0 then redis.call('SET', bytesKey, 0) end
end
