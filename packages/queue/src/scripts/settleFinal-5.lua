--[[
  A job's bookkeeping once it is final, sent right after its moveToFinished in the
  worker's settle pipeline (packages/serving lease.ts; same connection, so it sees that
  move's effect). It acts only when the job is final: its hash gone (removed on
  completion) or carrying finishedOn. A job whose lock was lost and that runs again
  elsewhere keeps its inputs and its quota share. Then the job's input bytes go and its
  quota share is released once (as quotaRelease-3.lua does).

  All keys share one hash tag (one slot): the job's queue and its tenant's counters.

  Input:
    KEYS[1] the tenant's queued-jobs counter
    KEYS[2] the tenant's queued-bytes counter
    KEYS[3] the job's reservation marker (value: its input bytes)
    KEYS[4] the job's BullMQ hash
    KEYS[5] the job's input bytes

  Output: -1 when the job is not final (nothing done); else 1 when this call released
    the share, 0 when it was already released
]]
-- finishedOn first: the usual case (a kept job) costs one command.
if redis.call('HEXISTS', KEYS[4], 'finishedOn') == 0 and redis.call('EXISTS', KEYS[4]) == 1 then return -1 end
redis.call('DEL', KEYS[5])
--- @include "includes/releaseQuota.lua"
