--[[
  Takes up to n jobs for a worker in one call, all in the queue's slot: what BullMQ's
  moveToActive (bullmq 6.x, commands/moveToActive-11.lua; re-check on upgrade) does
  for one job, n times, with the per-call parts done once — reading the queue's
  metadata, promoting delayed jobs whose time has come (retries after their backoff),
  and setting the marker that wakes other workers (only when jobs may remain). Per job: off the wait list (or the
  prioritized set, in one ZPOPMIN, when the list is empty) onto the active list, locked with its own
  token, BullMQ's `active` event, processedOn and attempts started stamped, and
  returned with what the worker needs to admit it: the hash fields it reads, whether a
  cancel was requested (the API sets that flag before it publishes the cancel, so a
  take that follows sees a cancel whose message went to no one) and, when they are
  small, its input bytes: one round trip, where a second one (MGET) read inputs and
  flags after the take. Large inputs are left for the worker to read itself (a plain
  MGET writes a value to the socket once; through Lua it is copied twice more, which
  doubled Redis's CPU per 1.7 MB job).

  Fair shares between tenants (start-time fair queuing, as weighted fair queues order
  packets): normal jobs wait in the prioritized set at BullMQ's score for priority 1
  (2^32 + arrival counter: "untagged"). A call that will leave jobs behind first tags
  those, oldest first: a job's tag is the later of its tenant's last tag and the queue's
  virtual time (the tag of the last job taken), plus its samples (the job data's
  `batch`), and its score becomes 2^33 + tag. Taking in score order then interleaves
  tenants by the work each asked for, first-come within a tenant: one tenant's backlog
  never holds another's job behind all of it. Tags only grow while the queue has work
  (2^33 + tag stays an exact integer below the 'low' band for 9·10^15 samples) and
  start again from 0 once a take finds the queue empty. 'high' jobs (the wait list) go
  first, 'low' ones (priority 2^21 - 1) after every normal one, each first-come.

  A queue that uses what this script does not implement — a global rate limit or a
  global concurrency in its metadata, which Citadel never sets — gets -1 and nothing
  done: the caller then takes jobs through BullMQ's own script. A paused queue gives
  none (as BullMQ's).

  Input:
    KEYS[1] wait list       KEYS[2] active list     KEYS[3] prioritized set
    KEYS[4] event stream    KEYS[5] delayed set     KEYS[6] meta hash
    KEYS[7] priority counter KEYS[8] marker
    KEYS[9] fair shares (a hash: tenant -> its last tag, '~v' -> the virtual time)
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

local want = #ARGV - 6
local ids = {}
-- First the wait list ('high' jobs, and jobs BullMQ itself moved back there).
local inWait = rcall('LLEN', KEYS[1])
while #ids < want and inWait > 0 do
  inWait = inWait - 1
  local id = rcall('RPOPLPUSH', KEYS[1], KEYS[2])
  -- A v4 marker left in the wait list (BullMQ drops them the same way).
  if id and string.sub(id, 1, 2) == '0:' then
    rcall('LREM', KEYS[2], 1, id)
  elseif id then
    ids[#ids + 1] = id
  end
end

-- Then the prioritized set in score order, after tagging (fair shares: see the header).
local NORMAL, TAGGED, TAG_MAX = 0x100000000, 0x200000000, 256
-- 'low' jobs: BullMQ priority 2^21 - 1 (jobs.ts priorityOptions).
local LOW = 0x1FFFFF * 0x100000000

-- Who a job is and what it costs, from its data (the API writes tenant first and batch
-- before any field the tenant chooses, such as metadata).
local function tenantAndCost(data)
  data = data or ''
  return string.match(data, '^{"tenant":"([^"]*)"') or '', math.max(1, tonumber(string.match(data, '"batch":(%d+)')) or 1)
end

-- Tags for jobs in arrival order ({tenant, cost} each), from the shares stored so far;
-- returns them and each tenant's last tag.
local function assignTags(jobs)
  local fields = {'~v'}
  for j, job in ipairs(jobs) do fields[j + 1] = job[1] end
  local known = rcall('HMGET', KEYS[9], unpack(fields))
  local virtual, last, tags = tonumber(known[1]) or 0, {}, {}
  for j = 2, #fields do last[fields[j]] = tonumber(known[j]) or 0 end
  for j, job in ipairs(jobs) do
    tags[j] = math.max(virtual, last[job[1]]) + job[2]
    last[job[1]] = tags[j]
  end
  return tags, last
end

local rest = want - #ids
-- Whether this call takes every job of the set: tags then only order this call's jobs
-- (in memory, below), and nothing is written for them.
local drains = false
local scoreOf = {}
if rest > 0 then
  drains = rcall('ZCARD', KEYS[3]) <= rest
  if not drains then
    -- Up to TAG_MAX a call (about 10 µs of Redis time each, which blocks the shard):
    -- a larger burst is tagged over several calls, its oldest untagged jobs first-come meanwhile.
    local untagged = rcall('ZRANGEBYSCORE', KEYS[3], NORMAL, TAGGED - 1, 'LIMIT', 0, TAG_MAX)
    if #untagged > 0 then
      local jobs = {}
      for j, id in ipairs(untagged) do jobs[j] = {tenantAndCost(rcall('HGET', prefix .. id, 'data'))} end
      local tags, last = assignTags(jobs)
      local scored, lasts = {}, {}
      for j, id in ipairs(untagged) do
        scored[#scored + 1] = TAGGED + tags[j]
        scored[#scored + 1] = id
      end
      rcall('ZADD', KEYS[3], 'XX', unpack(scored))
      for t, tag in pairs(last) do
        lasts[#lasts + 1] = t
        lasts[#lasts + 1] = tag
      end
      rcall('HSET', KEYS[9], unpack(lasts))
    end
  end
  local top = rcall('ZPOPMIN', KEYS[3], rest)
  local popped, lastTag = {}, nil
  for k = 1, #top, 2 do
    popped[#popped + 1] = top[k]
    scoreOf[top[k]] = tonumber(top[k + 1])
    if scoreOf[top[k]] >= TAGGED and scoreOf[top[k]] < LOW then lastTag = scoreOf[top[k]] - TAGGED end
  end
  if #popped > 0 then
    rcall('LPUSH', KEYS[2], unpack(popped))
    for _, id in ipairs(popped) do ids[#ids + 1] = id end
  end
  if not drains and lastTag then
    -- The queue's virtual time: the tag of the last job taken.
    local virtual = tonumber(rcall('HGET', KEYS[9], '~v')) or 0
    if lastTag > virtual then rcall('HSET', KEYS[9], '~v', lastTag) end
  end
end

-- Each job's hash fields the worker reads (attempts made: 'atm', or an older BullMQ's
-- 'attemptsMade'), read before anything is stamped: the order below may still change.
local fields = {}
for k, id in ipairs(ids) do
  fields[k] = rcall('HMGET', prefix .. id, 'data', 'opts', 'timestamp', 'atm', 'attemptsMade', 'defa', 'stacktrace', 'ats')
end

if drains then
  -- The set is empty now: this call's jobs from it go in the order tags would give them
  -- (arrival order for the untagged, their tags for the others, 'low' last), before
  -- each is locked with the token of its place; the counter and the shares start again.
  local fromSet, untaggedJobs, untaggedAt = {}, {}, {}
  for k, id in ipairs(ids) do
    local score = scoreOf[id]
    if score then
      fromSet[#fromSet + 1] = {id = id, f = fields[k], key = score < LOW and score - TAGGED or math.huge, at = k}
      if score < TAGGED then
        untaggedJobs[#untaggedJobs + 1] = {tenantAndCost(fields[k][1])}
        untaggedAt[#untaggedJobs] = #fromSet
      end
    end
  end
  if #fromSet > 1 then
    if #untaggedJobs > 0 then
      local tags = assignTags(untaggedJobs)
      for j, tag in ipairs(tags) do fromSet[untaggedAt[j]].key = tag end
    end
    local slots = {}
    for j, e in ipairs(fromSet) do slots[j] = e.at end
    table.sort(fromSet, function(x, y)
      if x.key ~= y.key then return x.key < y.key end
      return x.at < y.at
    end)
    for j, e in ipairs(fromSet) do
      ids[slots[j]] = e.id
      fields[slots[j]] = e.f
    end
  end
  rcall('DEL', KEYS[7], KEYS[9])
end

local taken = {}
-- Keys read at the end in one MGET: each job's flag, and the inputs of those with small ones.
local reads, readInto = {}, {}
local inlineMax = tonumber(ARGV[6])
for k, id in ipairs(ids) do
  local jobKey = prefix .. id
  local f = fields[k]
  -- Job k gets token k: the worker matches them by place.
  rcall('SET', jobKey .. ':lock', ARGV[6 + k], 'PX', ARGV[3])
  rcall('XADD', KEYS[4], '*', 'event', 'active', 'jobId', id, 'prev', 'waiting')
  -- Stamped in one HSET (BullMQ: HMSET processedOn, HINCRBY ats, HGETALL).
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
