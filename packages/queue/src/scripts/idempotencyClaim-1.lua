--[[
  Claims an Idempotency-Key for a new job (apps/api idempotency.ts): creates the entry,
  pending under attempt 1 with nothing reserved, unless one exists.

  Input:
    KEYS[1] the key's entry (a hash)

    ARGV[1] job id
    ARGV[2] request fingerprint
    ARGV[3] model
    ARGV[4] version
    ARGV[5] now (epoch ms): when the key was claimed
    ARGV[6] the entry's TTL (ms)
    ARGV[7] until when this attempt owns the pending entry (epoch ms)

  Output: the existing entry's fields {id, fp, model, version, state, attempt, reserved,
  at, lease}, or nil when this call created it
]]
if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HMGET', KEYS[1], 'id', 'fp', 'model', 'version', 'state', 'attempt', 'reserved', 'at', 'lease')
end
redis.call('HSET', KEYS[1], 'id', ARGV[1], 'fp', ARGV[2], 'model', ARGV[3], 'version', ARGV[4],
  'state', 'pending', 'attempt', 1, 'reserved', 0, 'at', ARGV[5], 'lease', ARGV[7])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
return false
