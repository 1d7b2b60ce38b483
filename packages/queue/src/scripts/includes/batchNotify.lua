--[[
  Included by batchRecord-3.lua and batchSettled-2.lua: once a batch whose completion is
  to be notified (its hash has a `notify` field: 'tenant' or a URL) is over — sealed (its
  ingest ended) or cancelled, and every accepted line final — adds one entry to the
  notifications stream. HSETNX of `notified` on the batch's hash makes it once per batch,
  whichever call (the last line's record, the seal, a cancel) sees it over first.
  Returns 1 when this call added the entry, else 0.
]]
local function notifyBatchIfOver(meta, stream, tenant, batchId, maxLen, nowMs)
  local h = redis.call('HMGET', meta, 'notify', 'sealed', 'cancel', 'accepted', 'completed', 'failed', 'cancelled')
  if not h[1] or h[1] == '' then return 0 end
  local cancel = h[3] == '1'
  if h[2] ~= '1' and not cancel then return 0 end
  local final = tonumber(h[5] or '0') + tonumber(h[6] or '0') + tonumber(h[7] or '0')
  if final < tonumber(h[4] or '0') then return 0 end
  if redis.call('HSETNX', meta, 'notified', 1) == 0 then return 0 end
  local url = h[1] == 'tenant' and '' or h[1]
  redis.call('XADD', stream, 'MAXLEN', '~', maxLen, '*',
    'k', 'batch', 'id', batchId, 't', tenant, 'e', cancel and 'batch.cancelled' or 'batch.completed',
    'u', url, 'f', nowMs)
  return 1
end
