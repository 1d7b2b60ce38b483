--[[
  Records that a job whose outcome is to be notified (its data has `notify`) has ended:
  one entry on the notifications stream, which the API's notifier hands to the webhook
  delivery queue. The worker sends it in its settle pipeline right after the job's
  moveToFinished (packages/serving lease.ts); a cancel that removes a queued job sends
  it with a fallback outcome (packages/queue jobs.ts). As batchRecord-4.lua does, it
  reads the outcome from the job's own hash (returnvalue: completed; a failedReason
  starting CANCELLED: cancelled; else failed), so a worker whose lock was lost adds
  nothing for a job still running elsewhere. A repeat (a settle racing a lost lock)
  adds a second entry for the same job: the notifier's deterministic delivery job id
  makes it one delivery.

  The entry holds no result or input: kind, id, tenant, event, target and finish time.

  Input:
    KEYS[1] the job's BullMQ hash
    KEYS[2] the notifications stream
    ARGV[1] the job's id
    ARGV[2] the job's tenant
    ARGV[3] the callback URL named by the job ('' for the tenant's own)
    ARGV[4] the outcome when the job's hash is gone (a cancel that removed it: 'cancelled'),
            or '' to record nothing then
    ARGV[5] the finish time (epoch ms) for that fallback outcome
    ARGV[6] the stream's approximate bound (XADD MAXLEN ~)

  Output: -1 when the job is not final (nothing done), -2 when its hash is gone and no
    fallback was given, 1 when the entry was added
]]
local f = redis.call('HMGET', KEYS[1], 'finishedOn', 'returnvalue', 'failedReason')
local status, finished
if f[1] then
  finished = f[1]
  if f[2] then
    status = 'completed'
  elseif string.sub(f[3] or '', 1, 10) == 'CANCELLED:' then
    status = 'cancelled'
  else
    status = 'failed'
  end
elseif redis.call('EXISTS', KEYS[1]) == 1 then
  return -1
elseif ARGV[4] ~= '' then
  status = ARGV[4]
  finished = ARGV[5]
else
  return -2
end
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[6], '*',
  'k', 'job', 'id', ARGV[1], 't', ARGV[2], 'e', 'job.' .. status, 'u', ARGV[3], 'f', finished)
return 1
