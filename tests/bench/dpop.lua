-- wrk script for the DPoP scenarios (tests/bench/sender_constrained.py): every request
-- carries the DPoP-bound access token and the next of N pre-signed proofs, each with its own
-- jti, so no proof is ever sent twice (a replay would be refused, and counted as non-2xx).
-- wrk cannot sign a proof itself; the proofs are made just before the run, well inside the
-- gateway's max_age.
-- Usage: wrk -s dpop.lua URL -- PROOFS_FILE TOKEN     (one compact proof per line)

local proofs = {}
local index = 0
local authorization

function init(args)
  local path, token = args[1], args[2]
  assert(path and token, "dpop.lua: give the proofs file and the token after --")
  local file = assert(io.open(path, "r"))
  for line in file:lines() do
    if #line > 0 then
      proofs[#proofs + 1] = line
    end
  end
  file:close()
  assert(#proofs > 0, "dpop.lua: no proofs in " .. path)
  authorization = "DPoP " .. token
end

function request()
  -- Past the last proof the last one is sent again: the gateway refuses it as a replay, and
  -- the run reports non-2xx answers instead of silently measuring refusals.
  if index < #proofs then
    index = index + 1
  end
  return wrk.format("GET", wrk.path, { Authorization = authorization, DPoP = proofs[index] })
end
