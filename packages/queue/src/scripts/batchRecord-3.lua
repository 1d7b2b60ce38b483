--[[
  Records a batch job's final outcome on its line, exactly once per line: the outbox
  relay (packages/queue outbox.ts) sends it for an outbox entry that names a batch,
  with the line's record the job's settlement built from the job's own hash
  (settleFinal-3.lua). HSETNX on the line makes a repeat (an entry relayed twice, a
  relay that died before deleting it) a no-op, and only the call that writes the line
  counts it. A batch past its retention (its hash gone) is left alone: nothing is
  created without an expiry. The call that records a batch's last line notifies its
  completion when the batch asked for that (includes/batchNotify.lua), in the same
  script: no line can be final unnoticed.

  All keys share the deployment's slot.

  Input:
    KEYS[1] the batch's hash (counters; its TTL is the batch's retention)
    KEYS[2] the batch's results hash (line -> outcome JSON)
    KEYS[3] the notifications stream
    ARGV[1] the job's line in the batch
    ARGV[2] the line's record (JSON: job id, custom_id, finish time, status, result or error)
    ARGV[3] the job's status (completed, failed or cancelled)
    ARGV[4] the batch's tenant
    ARGV[5] the batch's id
    ARGV[6] the notifications stream's approximate bound (XADD MAXLEN ~)
    ARGV[7] now (epoch ms), the time of a completion notification

  Output: 0 when the batch is gone or the line was already recorded, 1 when this call
    recorded it
]]
--- @include "includes/batchNotify.lua"
local ttl = redis.call('PTTL', KEYS[1])
if ttl <= 0 then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[1], ARGV[2]) == 0 then return 0 end
redis.call('PEXPIRE', KEYS[2], ttl)
redis.call('HINCRBY', KEYS[1], ARGV[3], 1)
notifyBatchIfOver(KEYS[1], KEYS[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7])
return 1
