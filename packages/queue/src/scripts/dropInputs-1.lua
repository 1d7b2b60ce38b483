--[[
  Replaces a settled job's data with its inputs-free copy, only while the job exists:
  never re-creates a removed one (packages/serving lease.ts).

  Input:
    KEYS[1] BullMQ's hash for the job

    ARGV[1] the job's data without its inputs (JSON)

  Output: 1 when the data was replaced, 0 when the job is gone
]]
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('HSET', KEYS[1], 'data', ARGV[1])
  return 1
end
return 0
