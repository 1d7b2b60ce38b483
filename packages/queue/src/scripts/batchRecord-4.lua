--[[
  Records a batch job's final outcome in its batch, exactly once per line: the worker
  sends it in its settle pipeline right after the job's moveToFinished (packages/serving
  lease.ts), and a cancel that removes a queued job sends it with a fallback outcome
  (packages/queue jobs.ts). The outcome is read from the job's own hash (returnvalue
  for a completed job, failedReason for a failed or cancelled one), not from the caller:
  a worker whose lock was lost cannot overwrite the outcome of the worker that won.
  HSETNX on the line makes a repeat (a retried pipeline, a cancel racing a settle) a
  no-op, and only the call that writes the line counts it. A batch past its retention
  (its hash gone) is left alone: nothing is created without an expiry. The call that
  records a batch's last line notifies its completion when the batch asked for that
  (includes/batchNotify.lua), in the same script: no line can be final unnoticed.

  All keys share one hash tag (one slot): the job's queue and the batch's keys.

  Input:
    KEYS[1] the job's BullMQ hash
    KEYS[2] the batch's hash (counters; its TTL is the batch's retention)
    KEYS[3] the batch's results hash (line -> outcome JSON)
    KEYS[4] the notifications stream
    ARGV[1] the job's line in the batch
    ARGV[2] the job's id
    ARGV[3] the job's custom_id ('' for none)
    ARGV[4] the outcome when the job's hash is gone (a cancel that removed it: 'cancelled'),
            or '' to record nothing then
    ARGV[5] the finish time (epoch ms) for that fallback outcome
    ARGV[6] the batch's tenant
    ARGV[7] the batch's id
    ARGV[8] the notifications stream's approximate bound (XADD MAXLEN ~)
    ARGV[9] now (epoch ms), the time of a completion notification

  Output: -1 when the job is not final (nothing done), -2 when its hash is gone and no
    fallback was given, 0 when the batch is gone or the line was already recorded, 1
    when this call recorded it
]]
--- @include "includes/batchNotify.lua"
local f = redis.call('HMGET', KEYS[1], 'finishedOn', 'returnvalue', 'failedReason')
local head = '{"j":' .. cjson.encode(ARGV[2])
if ARGV[3] ~= '' then head = head .. ',"c":' .. cjson.encode(ARGV[3]) end
local function ms(v) return string.match(v, '^%d+$') or '0' end
local status, record
if f[1] then
  head = head .. ',"f":' .. ms(f[1])
  -- returnvalue first: a job retried after a transient failure keeps that attempt's failedReason.
  if f[2] then
    status = 'completed'
    record = head .. ',"s":"completed","r":' .. f[2] .. '}'
  else
    local reason = f[3] or 'INTERNAL: the job failed'
    status = (string.sub(reason, 1, 10) == 'CANCELLED:') and 'cancelled' or 'failed'
    record = head .. ',"s":"' .. status .. '","e":' .. cjson.encode(reason) .. '}'
  end
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
elseif ARGV[4] ~= '' then
  status = ARGV[4]
  record = head .. ',"f":' .. ms(ARGV[5]) .. ',"s":' .. cjson.encode(status) .. '}'
else
  return -2
end
local ttl = redis.call('PTTL', KEYS[2])
if ttl <= 0 then return 0 end
if redis.call('HSETNX', KEYS[3], ARGV[1], record) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[3], ttl)
redis.call('HINCRBY', KEYS[2], status, 1)
notifyBatchIfOver(KEYS[2], KEYS[4], ARGV[6], ARGV[7], ARGV[8], ARGV[9])
return 1
