local support = require "support.policy"

local PATH = "examples/ingress/canary.lua"

local ROUTES = {
  ["app-1"] = "10.0.0.1",
  ["app-1-canary"] = "10.0.1.1",
  ["app-2"] = { host = "10.0.0.2", token = "tok-2" },
  ["app-2-next"] = "10.0.1.2",
  ["app-3"] = "10.0.0.3",
  ["app-3-canary"] = { host = "10.0.1.3", ready = false },
}

local function entry(cfg)
  cfg = cfg or {}
  cfg.routes = cfg.routes or ROUTES
  return support.ingress(PATH, cfg)
end

-- host, sandbox and removed headers of one request.
local function call(e, client, headers)
  local r = e("GET", "/x?y", client, headers)
  if r[1] ~= 0 then return r[1], r[2] end
  return r[2], r[8], r[6]
end

describe("examples/ingress/canary.lua", function()
  it("passes its selftest", function()
    support.load(PATH).selftest()
    assert.is_function(entry())
  end)

  it("sends about the configured share of clients to the canary, each client always to one side", function()
    local e = entry()
    local canary = 0
    for i = 1, 2000 do
      local client = "10." .. (i % 7) .. "." .. math.floor(i / 256) .. "." .. (i % 256)
      local host, sandbox = call(e, client, { "Host", "app-1-8080.gw" })
      if sandbox == "app-1-canary" then
        assert.equals("10.0.1.1", host)
        canary = canary + 1
      else
        assert.equals("app-1", sandbox)
      end
      assert.equals(sandbox, select(2, call(e, client, { "Host", "app-1-8080.gw" })))
    end
    assert.truthy(canary > 100 and canary < 300, canary .. " of 2000 went to the canary")
  end)

  it("only moves clients to the canary as the percentage grows", function()
    local low = entry({ canaries = { ["app-1"] = { sandbox = "app-1-canary", percent = 10 } } })
    local high = entry({ canaries = { ["app-1"] = { sandbox = "app-1-canary", percent = 50 } } })
    for i = 1, 500 do
      local client = "192.0.2." .. i
      if select(2, call(low, client, { "Host", "app-1-80.gw" })) == "app-1-canary" then
        assert.equals("app-1-canary", select(2, call(high, client, { "Host", "app-1-80.gw" })))
      end
    end
  end)

  it("obeys the override header and removes it", function()
    local e = entry()
    for i = 1, 20 do
      local client = "10.0.0." .. i
      local _, sandbox, removed = call(e, client, { "Host", "app-1-80.gw", "X-Sandgate-Canary", "always" })
      assert.equals("app-1-canary", sandbox)
      assert.same({ "opensandbox-ingress-to", "open-sandbox-ingress", "opensandbox-secure-access",
                    "opensandbox-access-renew", "x-sandgate-canary" }, removed)
      assert.equals("app-1", select(2, call(e, client, { "Host", "app-1-80.gw", "x-sandgate-canary", "never" })))
    end
  end)

  it("checks credentials against the sandbox asked for", function()
    local e = entry({ canaries = { ["app-2"] = { sandbox = "app-2-next", percent = 100 } } })
    assert.same({ 401, "signature: signature required for this sandbox" }, { call(e, "10.0.0.1", { "Host", "app-2-80.gw" }) })
    assert.equals("app-2-next", select(2, call(e, "10.0.0.1",
      { "Host", "app-2-80.gw", "OpenSandbox-Secure-Access", "tok-2" })))
  end)

  it("keeps a request on the stable sandbox when the canary is not ready or unknown", function()
    local e = entry({ canaries = {
      ["app-3"] = { sandbox = "app-3-canary", percent = 100 },
      ["app-1"] = { sandbox = "gone", percent = 100 },
    } })
    assert.equals("app-3", select(2, call(e, "10.0.0.1", { "Host", "app-3-80.gw" })))
    assert.equals("app-1", select(2, call(e, "10.0.0.1", { "Host", "app-1-80.gw" })))
  end)

  it("leaves other sandboxes and errors alone", function()
    local e = entry()
    assert.equals("app-3", select(2, call(e, "10.0.0.1", { "Host", "app-3-80.gw" })))
    assert.same({ 404, "sandbox not found: nope" }, { call(e, "10.0.0.1", { "Host", "nope-80.gw" }) })
  end)

  it("refuses a bad canaries config", function()
    local ok, err = pcall(entry, { canaries = { ["app-1"] = { sandbox = "x", percent = 101 } } })
    assert.is_false(ok)
    -- The error names the script's line that raised it and the hook.
    assert.matches('^examples/ingress/canary%.lua:%d+: in load%(%): canaries%[app%-1%] must be '
      .. '{sandbox = "id", percent = 0%-100}$', err)
  end)
end)
