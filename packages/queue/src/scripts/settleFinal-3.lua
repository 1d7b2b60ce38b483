--[[
  A job's bookkeeping once it is final, all in its queue's slot: the worker sends it
  right after the job's moveToFinished in its settle pipeline (packages/serving
  lease.ts; same connection, so it sees that move's effect), and the API inside the
  MULTI that leaves a removed job's tombstone (packages/queue jobs.ts, cancel). It acts
  only when the job is final: its hash carries finishedOn, or the hash is gone and the
  caller names the outcome (a cancel removed it). A job whose lock was lost and that
  runs again elsewhere keeps its inputs and gets no entry.

  Then the job's input bytes go, and one entry is appended to the queue's outbox with
  everything its final state implies outside this slot: its tenant's quota share to
  release, its batch line (the record built here from the job's own hash: a worker
  whose lock was lost cannot overwrite the outcome of the worker that won) and its
  notification. The API's outbox relay applies those (each guarded, so a repeat is a
  no-op) and deletes the entry (packages/queue outbox.ts).

  Input:
    KEYS[1] the job's BullMQ hash
    KEYS[2] the job's input bytes
    KEYS[3] the queue's outbox stream
    ARGV[1] the job's id
    ARGV[2] its tenant ('' when its data could not be read: no share to release)
    ARGV[3] its batch id ('' for none)
    ARGV[4] its line in the batch
    ARGV[5] its custom_id ('' for none)
    ARGV[6] '1' when its outcome is to be notified, else ''
    ARGV[7] the callback URL it named ('' for its tenant's own)
    ARGV[8] the outcome when its hash is gone ('cancelled'), or '' when the hash must be read
    ARGV[9] the finish time (epoch ms) for that outcome
    ARGV[10] the outbox's approximate bound (XADD MAXLEN ~)

  Output: -1 when the job is not final (nothing done), else 1 (entry added)
]]
--- @include "includes/outboxEntry.lua"

local f = redis.call('HMGET', KEYS[1], 'finishedOn', 'returnvalue', 'failedReason')
local status, finished, value
if f[1] then
  finished = string.match(f[1], '^%d+$') or '0'
  -- returnvalue first: a job retried after a transient failure keeps that attempt's failedReason.
  if f[2] then
    status = 'completed'
    value = f[2]
  else
    status = string.sub(f[3] or '', 1, 10) == 'CANCELLED:' and 'cancelled' or 'failed'
    value = f[3] or 'INTERNAL: the job failed'
  end
elseif ARGV[8] ~= '' then
  status = ARGV[8]
  finished = string.match(ARGV[9], '^%d+$') or '0'
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
else
  -- Final and removed at once (never the case for Citadel's jobs, which are kept): the share still goes back.
  status = ''
  finished = '0'
end
redis.call('DEL', KEYS[2])
redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[10], '*',
  unpack(outboxEntry(ARGV[1], ARGV[2], ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7], status, finished, value)))
return 1
