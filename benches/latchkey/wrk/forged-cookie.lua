-- wrk script for the benchmark's forward-auth phase: every request carries a fresh,
-- well-formed forged session cookie `<id>.<mac>` (16 and 32 random bytes, base64url
-- without padding, trailing bits zero so that both decode), as an attacker's flood would.
local alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"

-- `n` base64url characters whose last one comes from `last` (its low bits zero).
local function b64(n, last)
  local out = {}
  for i = 1, n - 1 do
    local k = math.random(1, 64)
    out[i] = alphabet:sub(k, k)
  end
  local k = math.random(1, #last)
  out[n] = last:sub(k, k)
  return table.concat(out)
end

local thread_seed = 0
function setup(thread)
  thread_seed = thread_seed + 1
  thread:set("seed", thread_seed)
end

function init(args)
  math.randomseed(os.time() * 1000 + (seed or 0))
end

function request()
  -- 16 bytes: 22 characters, 4 trailing bits; 32 bytes: 43 characters, 2 trailing bits.
  local cookie = "latchkey_session=" .. b64(22, "AQgw") .. "." .. b64(43, "AEIMQUYcgkosw048")
  wrk.headers["Cookie"] = cookie
  return wrk.format(nil)
end
