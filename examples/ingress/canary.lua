-- Percentage canary on top of header-mode routing.
--
--   sandgate ingress --script examples/ingress/canary.lua --routes routes.json
--
-- Requests are routed exactly as by policies/ingress/header.lua (same
-- headers, same secure access checks, same errors), then a share of the
-- clients of some sandboxes is sent to a canary sandbox instead:
--
--   CANARIES["app-1"] = { sandbox = "app-1-canary", percent = 10 }
--
-- sends 10% of app-1's clients to app-1-canary, on the same port. The
-- config's "canaries" object, if present, replaces the table below, so a
-- rollout is advanced by editing the config and reloading, not the script.
--
-- Which clients: a hash of the client address, so a client stays on one
-- side from request to request (and across reloads, as long as the
-- percentage does not change) and raising the percentage only ever moves
-- clients from stable to canary. A request can force its side with
-- "X-Sandgate-Canary: always" or "never" (for testing); that header is
-- removed before forwarding.
--
-- Credentials are checked against the sandbox the client asked for: a
-- token or signed URL for app-1 also reaches app-1-canary. When the canary
-- is unknown or not ready, the request stays on the stable sandbox.
local route = require "sandgate.ingress.route"
local backends = require "sandgate.ingress.backends"

local byte, tobit, bxor, lshift, band = string.byte, bit.tobit, bit.bxor, bit.lshift, bit.band

local M = {}

local CANARIES = {
  ["app-1"] = { sandbox = "app-1-canary", percent = 10 },
}

local OVERRIDE = "x-sandgate-canary"
local REMOVE = { OVERRIDE }

local router = route.new({ mode = "header", backends = backends.routes(nil) })
local lookup = backends.routes(nil)
local canaries = CANARIES

-- Checks a canaries table; raises naming the bad entry.
local function check(t)
  for id, c in pairs(t) do
    if type(c) ~= "table" or type(c.sandbox) ~= "string" or type(c.percent) ~= "number"
      or c.percent < 0 or c.percent > 100 then
      error("canaries[" .. tostring(id) .. "] must be {sandbox = \"id\", percent = 0-100}", 0)
    end
  end
  return t
end

function M.load(ctx)
  local configured = ctx.config.canaries
  canaries = check(configured ~= nil and configured or CANARIES)
  router:configure(ctx)
  lookup = ctx.backends
end

-- FNV-1a (32 bit) of the client address, in 0-99. The multiplication by
-- the FNV prime (2^24 + 403) is split so that it stays exact in doubles.
function M.bucket(client)
  local h = tobit(0x811c9dc5)
  for i = 1, #client do
    h = bxor(h, byte(client, i))
    h = tobit(lshift(h, 24) + h * 403)
  end
  return band(h, 0x7fffffff) % 100
end

function M.route(req)
  local r = router:route(req)
  if r.status then return r end
  r.remove_headers = REMOVE
  local c = canaries[r.sandbox]
  if not c then return r end
  local force = req.headers[OVERRIDE]
  local canary
  if force == "always" then
    canary = true
  elseif force == "never" then
    canary = false
  else
    canary = M.bucket(req.client) < c.percent
  end
  if canary then
    local b = lookup:lookup(c.sandbox)
    if b and b.ready ~= false then
      r.host, r.sandbox = b.host, c.sandbox
    end
  end
  return r
end

function M.selftest()
  check(canaries)
  -- The split must be stable and spread: the same address twice gives the
  -- same bucket, and neighbouring addresses do not all land together.
  if M.bucket("10.0.0.1") ~= M.bucket("10.0.0.1") then error("bucket is not stable") end
  local seen = {}
  for i = 1, 50 do seen[M.bucket("10.0.0." .. i)] = true end
  local n = 0
  for _ in pairs(seen) do n = n + 1 end
  if n < 20 then error("bucket spreads 50 addresses over only " .. n .. " buckets") end
end

return M
