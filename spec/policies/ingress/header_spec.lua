-- The shipped header-mode script, loaded and called exactly as the C core
-- does (support.policy.ingress).
local route = require "sandgate.ingress.route"
local support = require "support.policy"
local cjson = require "cjson"

local PATH = "policies/ingress/header.lua"
local ALWAYS = { "opensandbox-ingress-to", "open-sandbox-ingress", "opensandbox-secure-access",
                 "opensandbox-access-renew" }


local CFG = {
  mode = "header",
  routes = {
    open = "10.0.0.2",
    ["my-sandbox-2"] = { host = "10.0.0.3" },
    ["sbx-001"] = { host = "10.0.0.1", token = "tok-001" },
    starting = { host = "10.0.0.4", ready = false },
  },
  -- "my-test-secret", as OSEP-0011's test vector.
  keys = { a = "bXktdGVzdC1zZWNyZXQ=" },
  now = 2000000000 - 60,
}

local function entry(overrides)
  local cfg = {}
  for k, v in pairs(CFG) do cfg[k] = v end
  for k, v in pairs(overrides or {}) do cfg[k] = v end
  return support.ingress(PATH, cfg)
end

local function call(e, target, headers)
  return e("GET", target or "/", "10.9.8.7", headers)
end

describe("policies/ingress/header.lua", function()
  local e
  before_each(function() e = entry() end)

  it("has the hooks the host calls, and passes its selftest", function()
    local hooks = support.load(PATH)
    assert.is_function(hooks.route)
    assert.is_function(hooks.load)
    assert.is_function(hooks.selftest)
    hooks.selftest()
  end)

  it("routes by OpenSandbox-Ingress-To, path and query untouched", function()
    assert.same({ 0, "10.0.0.2", 8080, "/a%2Fb?x=%20&&y=?", nil, ALWAYS, false, "open" },
      call(e, "/a%2Fb?x=%20&&y=?", { "Host", "gw.example.com", "OpenSandbox-Ingress-To", "open-8080" }))
    assert.same({ 0, "10.0.0.3", 3000, "/", nil, ALWAYS, false, "my-sandbox-2" },
      call(e, "/", { "opensandbox-ingress-to", "my-sandbox-2-3000" }))
  end)

  it("falls back to the deprecated header, then to the first label of Host", function()
    assert.equals("my-sandbox-2", call(e, "/", { "OPEN-SANDBOX-INGRESS", "my-sandbox-2-1", "Host", "open-2" })[8])
    assert.same({ 0, "10.0.0.2", 2, "/", nil, ALWAYS, false, "open" },
      call(e, "/", { "Host", "open-2.sandbox.example.com:28888" }))
    -- The new header wins over the deprecated one.
    assert.equals(5, call(e, "/", { "open-sandbox-ingress", "open-4", "OpenSandbox-Ingress-To", "open-5" })[3])
  end)

  it("answers every routing error with OpenSandbox's status and message", function()
    local cases = {
      { {}, 400, "missing header 'Opensandbox-Ingress-To' or 'Host'" },
      { { "Host", "gateway.example.com" }, 400, "invalid ingress route: invalid host: gateway.example.com" },
      { { "Host", "open-0.gw" }, 400, 'invalid ingress route: invalid port format: invalid port "0"' },
      { { "Host", "open-65536.gw" }, 400, 'invalid ingress route: invalid port format: invalid port "65536"' },
      { { "Host", "open-08x.gw" }, 400, "invalid ingress route: invalid port format: port must not have leading zeros" },
      { { "Host", "open-.gw" }, 400, 'invalid ingress route: invalid port format: invalid port ""' },
      { { "Host", "nope-80.gw" }, 404, "sandbox not found: nope" },
      { { "Host", "starting-80.gw" }, 503, "sandbox not ready: starting" },
      { { "Host", "sbx-001-80.gw" }, 401, "signature: signature required for this sandbox" },
      { { "Host", "sbx-001-80.gw", "OpenSandbox-Secure-Access", "bad" }, 401, "signature: secure access header mismatch" },
      { { "Host", "sbx-001-8080-x2qxvk-1ff8cd39a.gw" }, 401, "signature: unauthorized: signature mismatch" },
      { { "Host", "sbx-001-8080-x2qxvk-0ff8cd39z.gw" }, 401, "signature: unauthorized: unknown signed_key_id" },
    }
    for _, c in ipairs(cases) do
      assert.same({ c[2], c[3] }, call(e, "/", c[1]), table.concat(c[1], " "))
    end
  end)

  it("accepts the OSEP-0011 test vector until its expiry, not after", function()
    local token = { "OpenSandbox-Ingress-To", "sbx-001-8080-x2qxvk-0ff8cd39a" }
    assert.same({ 0, "10.0.0.1", 8080, "/v1?q", nil, ALWAYS, false, "sbx-001" }, call(e, "/v1?q", token))
    assert.equals(0, call(entry({ now = 2000000000 }), "/", token)[1])
    assert.same({ 401, "signature: access expired" }, call(entry({ now = 2000000001 }), "/", token))
    assert.same({ 503, "signature: ingress verifier not configured" }, call(entry({ keys = cjson.null }), "/", token))
  end)

  it("accepts the sandbox's token header instead", function()
    assert.equals("sbx-001", call(e, "/", { "Host", "sbx-001-80.gw", "opensandbox-secure-access", "tok-001" })[8])
  end)

  it("routes through the DNS template when there is no routes table", function()
    local d = entry({ routes = cjson.null, dns_template = "{id}.sandboxes.default.svc.cluster.local" })
    assert.same({ 0, "sbx-9.sandboxes.default.svc.cluster.local", 80, "/", nil, ALWAYS, false, "sbx-9" },
      call(d, "/", { "Host", "sbx-9-80.gw" }))
    assert.same({ 404, "sandbox not found: a_b" }, call(d, "/", { "Host", "a_b-80.gw" }))
  end)

  it("knows no sandbox before load", function()
    local hooks = support.load(PATH)
    local r = hooks.route({ headers = { host = "open-80" }, target = "/", path = "/" })
    assert.same({ 404, "sandbox not found: open" }, { r.status, r.message })
  end)

  it("mints what it accepts", function()
    local token = route.mint("my-test-secret", "a", "my-sandbox-2", 9000, 2000000000)
    local d = entry({ routes = { ["my-sandbox-2"] = { host = "10.0.0.3", token = "t" } } })
    assert.equals("my-sandbox-2", call(d, "/", { "Host", token .. ".gw" })[8])
  end)
end)
