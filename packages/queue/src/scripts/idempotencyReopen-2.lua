--[[
  Reopens a confirmed Idempotency-Key entry whose job vanished sooner than any retention
  removes one (packages/submit submit.ts decides by the entry's age): a Redis master
  that failed over before replicating the job lost it, or someone removed it by hand.
  The entry goes back to pending under a new attempt and lease, and the request that
  reopened it enqueues the job again under its id. Its reservation is kept when its
  marker still exists (the job never ended); when the marker is gone (the job ended and
  its share came back, then its outcome was lost) the entry's reservation is cleared so
  the new attempt reserves again.

  Both keys are in the tenant's slot.

  Input:
    KEYS[1] the key's entry (a hash)
    KEYS[2] the reservation marker of the job the entry names

    ARGV[1] the job id the caller read from the entry
    ARGV[2] the new lease's end (epoch ms)

  Output: {attempt, 1 when the reservation is kept else 0}; {-1, 0} when the entry is not
  confirmed for that job any more (another request reopened it: read it again)
]]
local e = redis.call('HMGET', KEYS[1], 'state', 'id')
if e[1] ~= 'confirmed' or e[2] ~= ARGV[1] then return {-1, 0} end
local kept = redis.call('EXISTS', KEYS[2])
redis.call('HSET', KEYS[1], 'state', 'pending', 'lease', ARGV[2])
if kept == 0 then redis.call('HSET', KEYS[1], 'reserved', 0) end
return {redis.call('HINCRBY', KEYS[1], 'attempt', 1), kept}
