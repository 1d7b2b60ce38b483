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
--- @include "includes/quotaLower.lua"

local bytes = redis.call('GETDEL', KEYS[3])
if not bytes then return 0 end
quotaLower(KEYS[1], KEYS[2], 1, bytes)
return 1
