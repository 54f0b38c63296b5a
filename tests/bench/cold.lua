-- wrk script for the cold-verification scenarios: every request carries the next of a few
-- hundred distinct pre-minted bearer tokens, so no request can be answered from a token cache.
-- Usage: wrk -s cold.lua URL -- TOKENS_FILE      (one compact JWT per line)

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
