--[[
  Takes up to n jobs for a worker in one call, all in the queue's slot: what BullMQ's
  moveToActive (bullmq 6.x, commands/moveToActive-11.lua; re-check on upgrade) does
  for one job, n times, with the per-call parts done once — reading the queue's
  metadata, promoting delayed jobs whose time has come (retries after their backoff),
  and setting the marker that wakes other workers (only when jobs may remain). Per job: off the wait list (or the
  prioritized set when the list is empty) onto the active list, locked with its own
  token, BullMQ's `active` event, processedOn and attempts started stamped, and
  returned with what the worker needs to admit it: the hash fields it reads, whether a
  cancel was requested (the API sets that flag before it publishes the cancel, so a
  take that follows sees a cancel whose message went to no one) and, when they are
  small, its input bytes: one round trip, where a second one (MGET) read inputs and
  flags after the take. Large inputs are left for the worker to read itself (a plain
  MGET writes a value to the socket once; through Lua it is copied twice more, which
  doubled Redis's CPU per 1.7 MB job).

  A queue that uses what this script does not implement — a global rate limit or a
  global concurrency in its metadata, which Citadel never sets — gets -1 and nothing
  done: the caller then takes jobs through BullMQ's own script. A paused queue gives
  none (as BullMQ's).

  Input:
    KEYS[1] wait list       KEYS[2] active list     KEYS[3] prioritized set
    KEYS[4] event stream    KEYS[5] delayed set     KEYS[6] meta hash
    KEYS[7] priority counter KEYS[8] marker
    ARGV[1] the queue's key prefix ('<prefix>:<queue>:')
    ARGV[2] now (epoch ms)
    ARGV[3] lock duration (ms)
    ARGV[4] the worker's name ('' for none: BullMQ's processedBy)
    ARGV[5] the prefix of the queue's cancel flags ('<queue prefix>:cancel-requested:')
    ARGV[6] the largest inputs returned inline (bytes, as the job's data says: inputBytes)
    ARGV[7..] one lock token per job wanted

  Output: -1 (use BullMQ's script), or {taken, next due}: taken a list, one entry per
  job, of {id, data, opts, timestamp, attempts made, deferred failure, stacktrace, input
  bytes, cancel flag, '1' when its inputs were left to read} (nil where the hash has no
  such field, the job no inputs or they were left, no cancel was asked for); empty when
  none waits or the queue is paused. Next due: the time (epoch ms) the first delayed job
  is due when none was taken and one is delayed, else 0. The inputs are the job's
  `<job key>:in` and the flag `ARGV[5] .. id`, both in the queue's slot (job ids name
  their model); they are read with one MGET for the whole call.
]]
local rcall = redis.call
local prefix, now = ARGV[1], tonumber(ARGV[2])

local meta = rcall('HMGET', KEYS[6], 'paused', 'concurrency', 'max')
if meta[2] or meta[3] then return -1 end
local paused = meta[1] ~= false

-- Delayed jobs whose time has come go back to wait (or prioritized), as BullMQ's promoteDelayedJobs.
local due = rcall('ZRANGEBYSCORE', KEYS[5], 0, (now + 1) * 0x1000 - 1, 'LIMIT', 0, 1000)
if #due > 0 then
  rcall('ZREM', KEYS[5], unpack(due))
  for _, id in ipairs(due) do
    local priority = tonumber(rcall('HGET', prefix .. id, 'priority')) or 0
    if priority == 0 then
      rcall('LPUSH', KEYS[1], id)
    else
      rcall('ZADD', KEYS[3], priority * 0x100000000 + rcall('INCR', KEYS[7]) % 0x100000000, id)
    end
    rcall('XADD', KEYS[4], '*', 'event', 'waiting', 'jobId', id, 'prev', 'delayed')
    rcall('HSET', prefix .. id, 'delay', 0)
  end
  if not paused then rcall('ZADD', KEYS[8], 0, '0') end
end
if paused then return {{}, 0} end

local taken = {}
-- Keys read at the end in one MGET: each job's flag, and the inputs of those with small ones.
local reads, readInto = {}, {}
local inlineMax = tonumber(ARGV[6])
for i = 7, #ARGV do
  local id = rcall('RPOPLPUSH', KEYS[1], KEYS[2])
  -- A v4 marker left in the wait list (BullMQ drops them the same way).
  if id and string.sub(id, 1, 2) == '0:' then
    rcall('LREM', KEYS[2], 1, id)
    id = rcall('RPOPLPUSH', KEYS[1], KEYS[2])
  end
  if not id then
    local top = rcall('ZPOPMIN', KEYS[3])
    if #top > 0 then
      id = top[1]
      rcall('LPUSH', KEYS[2], id)
    else
      rcall('DEL', KEYS[7])
      break
    end
  end
  local jobKey = prefix .. id
  rcall('SET', jobKey .. ':lock', ARGV[i], 'PX', ARGV[3])
  rcall('XADD', KEYS[4], '*', 'event', 'active', 'jobId', id, 'prev', 'waiting')
  -- Read, then stamped in one HSET (BullMQ: HMSET processedOn, HINCRBY ats, HGETALL). The
  -- lock makes the read-increment safe. Attempts made: 'atm', or an older BullMQ's 'attemptsMade'.
  local f = rcall('HMGET', jobKey, 'data', 'opts', 'timestamp', 'atm', 'attemptsMade', 'defa', 'stacktrace', 'ats')
  local stamps = {'processedOn', ARGV[2], 'ats', tostring((tonumber(f[8]) or 0) + 1)}
  if ARGV[4] ~= '' then
    stamps[#stamps + 1] = 'pb'
    stamps[#stamps + 1] = ARGV[4]
  end
  rcall('HSET', jobKey, unpack(stamps))
  local entry = {id, f[1], f[2], f[3], f[5] or f[4], f[6], f[7], false, false, false}
  taken[#taken + 1] = entry
  -- The size the API recorded; the quote before it cannot come from inside a JSON string.
  local size = tonumber(string.match(f[1] or '', '"inputBytes":(%d+)'))
  if size and size <= inlineMax then
    reads[#reads + 1] = jobKey .. ':in'
    readInto[#reads] = {entry, 8}
  else
    entry[10] = '1'
  end
  reads[#reads + 1] = ARGV[5] .. id
  readInto[#reads] = {entry, 9}
end
if #reads > 0 then
  local values = rcall('MGET', unpack(reads))
  for r = 1, #reads do readInto[r][1][readInto[r][2]] = values[r] end
end
-- Other workers blocked on the marker wake and look for more (BullMQ's addBaseMarkerIfNeeded),
-- when more may wait: a call that emptied the queue leaves no marker to wake anyone for nothing.
if #taken > 0 and #taken == #ARGV - 6 then rcall('ZADD', KEYS[8], 0, '0') end
-- Nothing taken: when the next delayed job is due (as BullMQ's moveToActive answers), so a
-- worker that missed its delay marker still wakes for it.
local nextDue = 0
if #taken == 0 then
  local first = rcall('ZRANGE', KEYS[5], 0, 0, 'WITHSCORES')
  if first[2] then nextDue = math.floor(tonumber(first[2]) / 0x1000) end
end
return {taken, nextDue}
