--[[
  A batch's ingest is over (sealed) or the batch was cancelled: notifies its completion
  when every accepted line is already final (includes/batchNotify.lua); otherwise the
  record of its last line (batchRecord-4.lua) will. Sealing sets `sealed` here, in the
  same script as the check, so a line recorded just before cannot be missed by both.
  A batch past its retention (its hash gone) is left alone.

  Input:
    KEYS[1] the batch's hash
    KEYS[2] the notifications stream
    ARGV[1] the batch's tenant
    ARGV[2] the batch's id
    ARGV[3] the stream's approximate bound (XADD MAXLEN ~)
    ARGV[4] '1' to seal the batch first, '' to only check
    ARGV[5] now (epoch ms), the notification's time

  Output: -1 when the batch is gone, 1 when its completion was notified now, else 0
]]
--- @include "includes/batchNotify.lua"
if redis.call('EXISTS', KEYS[1]) == 0 then return -1 end
if ARGV[4] == '1' then redis.call('HSET', KEYS[1], 'sealed', 1) end
return notifyBatchIfOver(KEYS[1], KEYS[2], ARGV[1], ARGV[2], ARGV[3], ARGV[5])
