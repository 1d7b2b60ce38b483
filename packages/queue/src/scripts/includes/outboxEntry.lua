--[[
  Included by settleFinal-3.lua and finishJobs-9.lua: the outbox entry of a job that is
  final, with everything its final state implies outside its queue's slot (its
  tenant's quota share, its batch line, its notification), as field/value pairs for
  XADD. The batch line's record is built here from the outcome the caller read or
  wrote: `value` is the result's JSON for 'completed', the failure reason otherwise
  (nil when there is none to name: a removed job's cancel).
]]
local function outboxEntry(id, tenant, batchId, line, customId, notify, url, status, finished, value)
  local entry = {'id', id, 't', tenant, 's', status, 'f', finished}
  if batchId ~= '' and status ~= '' then
    local rec = '{"j":' .. cjson.encode(id)
    if customId ~= '' then rec = rec .. ',"c":' .. cjson.encode(customId) end
    rec = rec .. ',"f":' .. finished .. ',"s":"' .. status .. '"'
    if status == 'completed' then
      rec = rec .. ',"r":' .. value .. '}'
    elseif value then
      rec = rec .. ',"e":' .. cjson.encode(value) .. '}'
    else
      rec = rec .. '}'
    end
    for _, v in ipairs({'b', batchId, 'l', line, 'r', rec}) do entry[#entry + 1] = v end
  end
  if notify == '1' and status ~= '' then
    entry[#entry + 1] = 'u'
    entry[#entry + 1] = url
  end
  return entry
end
