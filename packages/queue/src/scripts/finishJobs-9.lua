--[[
  Settles a worker's batch of final outcomes in one call, all in the queue's slot: for
  each job, what BullMQ's moveToFinished does for Citadel's jobs (bullmq 6.x,
  commands/moveToFinished-14.lua; re-check on upgrade) followed by what settleFinal-3.lua
  does, so a job is never final without its outbox entry. Per job: the lock checked
  and released, the job out of the active list and into completed/failed, its hash
  stamped (result or reason, finishedOn, attempts made), BullMQ's completed/failed
  event (the API's waiters read the result from it), its input bytes dropped and one
  outbox entry appended. Per batch, not per job: the stalled-set and active-set
  bookkeeping that takes many members (SREM, DEL, ZADD), the removal of finished jobs
  past their keep age, and the `drained` event; the event stream is trimmed by the
  XADD of each event (MAXLEN ~), not by a separate XTRIM.

  What BullMQ's script does that Citadel's jobs never need is left out: parents and
  flows, deduplication, metrics, `removeOnComplete: true` or a count (Citadel's jobs
  are kept by age only: their opts carry `{ age }`), and fetching the next job. The
  lease (packages/serving lease.ts) is the only caller; jobs are only ever given to it
  by BullMQ's moveToActive, so their hashes are BullMQ's.

  Input:
    KEYS[1] wait list          KEYS[2] active list      KEYS[3] prioritized set
    KEYS[4] event stream       KEYS[5] stalled set      KEYS[6] meta hash
    KEYS[7] completed set      KEYS[8] failed set       KEYS[9] the queue's outbox
    ARGV[1] the finish time (epoch ms)
    ARGV[2] the outbox's approximate bound
    ARGV[3] the keep age of completed jobs in seconds ('' keeps them, or skips the removal this time)
    ARGV[4] the keep age of failed jobs in seconds ('' as ARGV[3])
    ARGV[5] the queue's key prefix ('<prefix>:<queue>:'): a job's hash is ARGV[5] .. id and
            its input bytes that .. ':in' (as takeJobs-9.lua builds them: both in the
            queue's slot), and old jobs' keys are removed by it
    ARGV[6] the prefix of the queue's cancel flags ('<queue prefix>:cancel-requested:')
    ARGV[7] the failure reason of a completion a cancel overtook ('CANCELLED: …')
    then 13 per job, from ARGV[8]:
      id, lock token, 'completed' | 'failed', result JSON | failure reason, the job's
      stacktrace (BullMQ's JSON), attempts made after this one, attempts allowed, tenant,
      batch id ('' for none), line, custom_id, '1' to notify, callback URL
    and last, ARGV[8 + 13n]: the event stream's approximate bound (BullMQ's maxLenEvents)

  A completion whose job has a cancel flag (`ARGV[6] .. id`, set by the API before it
  publishes the cancel) is settled as failed with ARGV[7] instead, its result dropped:
  a cancel whose message the worker missed still wins over a result not yet final,
  read in the same atomic step that makes the result final.

  Output: one code per job: 0 settled as asked, 1 settled as cancelled (see above);
  BullMQ's codes otherwise (-1 no such job, -2 lock missing, -3 not active, -6 lock held
  by another token), nothing done for it.
]]
local rcall = redis.call
--- @include "includes/outboxEntry.lua"

local now = ARGV[1]
local nJobs = (#ARGV - 8) / 13
local codes = {}
local eventStream = KEYS[4]
-- What the batch changes in the queue's shared keys, sent once for all its jobs.
local unstalled, gone, completed, failed = {}, {}, {}, {}

-- The cancel flags of the completions, read with one MGET.
local flagKeys, flagOf = {}, {}
for i = 1, nJobs do
  local a = 8 + (i - 1) * 13
  if ARGV[a + 2] == 'completed' then
    flagKeys[#flagKeys + 1] = ARGV[6] .. ARGV[a]
    flagOf[i] = #flagKeys
  end
end
local flags = #flagKeys > 0 and rcall('MGET', unpack(flagKeys)) or {}

for i = 1, nJobs do
  local a = 8 + (i - 1) * 13
  local id, token, target, value = ARGV[a], ARGV[a + 1], ARGV[a + 2], ARGV[a + 3]
  local jobKey = ARGV[5] .. id
  local inputsKey = jobKey .. ':in'
  local lockKey = jobKey .. ':lock'
  local lock = rcall('GET', lockKey)
  local code = 0
  if lock ~= token then
    if lock then code = -6 elseif rcall('EXISTS', jobKey) == 0 then code = -1 else code = -2 end
  else
    -- The lock is ours: released whatever comes next (as BullMQ's removeLock).
    unstalled[#unstalled + 1] = id
    gone[#gone + 1] = lockKey
    if rcall('LREM', KEYS[2], -1, id) < 1 then code = -3 end
  end
  if code == 0 and flagOf[i] and flags[flagOf[i]] then
    target, value, code = 'failed', ARGV[7], 1
  end
  codes[i] = code
  if code >= 0 then
    -- Its inputs go with its lock: neither is needed once the job is final.
    gone[#gone + 1] = inputsKey
    local attemptsMade = ARGV[a + 5]
    local status
    if target == 'completed' then
      completed[#completed + 1] = now
      completed[#completed + 1] = id
      rcall('HSET', jobKey, 'returnvalue', value, 'finishedOn', now, 'atm', attemptsMade)
      -- Trimmed as it is added (BullMQ trims before each move; ~ keeps it one command).
      rcall('XADD', eventStream, 'MAXLEN', '~', ARGV[8 + nJobs * 13], '*',
        'event', 'completed', 'jobId', id, 'returnvalue', value, 'prev', 'active')
      status = 'completed'
    else
      failed[#failed + 1] = now
      failed[#failed + 1] = id
      rcall('HSET', jobKey, 'failedReason', value, 'stacktrace', ARGV[a + 4], 'finishedOn', now, 'atm', attemptsMade)
      rcall('HDEL', jobKey, 'defa')
      rcall('XADD', eventStream, 'MAXLEN', '~', ARGV[8 + nJobs * 13], '*',
        'event', 'failed', 'jobId', id, 'failedReason', value, 'prev', 'active')
      if tonumber(attemptsMade) >= tonumber(ARGV[a + 6]) then
        rcall('XADD', eventStream, '*', 'event', 'retries-exhausted', 'jobId', id, 'attemptsMade', attemptsMade)
      end
      status = string.sub(value, 1, 10) == 'CANCELLED:' and 'cancelled' or 'failed'
    end
    rcall('XADD', KEYS[9], 'MAXLEN', '~', ARGV[2], '*',
      unpack(outboxEntry(id, ARGV[a + 7], ARGV[a + 8], ARGV[a + 9], ARGV[a + 10], ARGV[a + 11], ARGV[a + 12],
        status, now, value)))
  end
end
if #unstalled > 0 then rcall('SREM', KEYS[5], unpack(unstalled)) end
if #gone > 0 then rcall('DEL', unpack(gone)) end
if #completed > 0 then rcall('ZADD', KEYS[7], unpack(completed)) end
if #failed > 0 then rcall('ZADD', KEYS[8], unpack(failed)) end

-- Finished jobs past their keep age go (as BullMQ's removeJobsByMaxAge, at most 1000 a
-- call), when the caller asks (it does so about once a second, not on every batch).
local function removeOlderThan(set, ageSeconds)
  if not ageSeconds or ageSeconds == '' then return end
  local before = tonumber(now) - tonumber(ageSeconds) * 1000
  local ids = rcall('ZREVRANGEBYSCORE', set, before, '-inf', 'LIMIT', 0, 1000)
  for _, old in ipairs(ids) do
    local k = ARGV[5] .. old
    rcall('DEL', k, k .. ':logs', k .. ':dependencies', k .. ':processed', k .. ':failed', k .. ':unsuccessful')
  end
  if #ids > 0 then
    if #ids < 1000 then rcall('ZREMRANGEBYSCORE', set, '-inf', before) else rcall('ZREM', set, unpack(ids)) end
  end
end
if #completed > 0 then removeOlderThan(KEYS[7], ARGV[3]) end
if #failed > 0 then removeOlderThan(KEYS[8], ARGV[4]) end

if (#completed > 0 or #failed > 0) and rcall('LLEN', KEYS[1]) == 0 and rcall('LLEN', KEYS[2]) == 0
    and rcall('ZCARD', KEYS[3]) == 0 then
  rcall('XADD', eventStream, '*', 'event', 'drained')
end
return codes
