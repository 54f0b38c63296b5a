-- wrk script for the scenarios that rotate tokens: every request carries the next of a few
-- hundred distinct bearer tokens. With the caches off (gateway-jwt-cold-*, gateway-opaque-miss)
-- no request can be answered from a cache; gateway-opaque-l2 uses it to spread reads over
-- many Redis keys.
-- Usage: wrk -s cold.lua URL -- TOKENS_FILE      (one token per line: a compact JWT or opaque)

local tokens = {}
local index = 0

function init(args)
  local path = args[1]
  assert(path, "cold.lua: give the tokens file after --")
  local file = assert(io.open(path, "r"))
  for line in file:lines() do
    if #line > 0 then
      tokens[#tokens + 1] = "Bearer " .. line
    end
  end
  file:close()
  assert(#tokens > 0, "cold.lua: no tokens in " .. path)
end

function request()
  index = index % #tokens + 1
  return wrk.format("GET", wrk.path, { Authorization = tokens[index] })
end
