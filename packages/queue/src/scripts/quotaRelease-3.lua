--[[
  Releases a settled job's share of its tenant's queue quota, once (packages/queue
  jobs.ts, releaseQuota): only the caller that deletes the job's reservation marker
  gives the share back, whoever races to it (a cancel and a worker settling the same
  job). Never below zero.

  Input:
    KEYS[1] the tenant's queued-jobs counter
    KEYS[2] the tenant's queued-bytes counter
    KEYS[3] the job's reservation marker (value: its input bytes)

  Output: 1 when this call released the share, 0 when it was already released
]]
local bytes = redis.call('GETDEL', KEYS[3])
if not bytes then return 0 end
local j = redis.call('DECR', KEYS[1])
if j < 0 then redis.call('SET', KEYS[1], 0) end
local b = redis.call('DECRBY', KEYS[2], bytes)
if b < 0 then redis.call('SET', KEYS[2], 0) end
return 1
