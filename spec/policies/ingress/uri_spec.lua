-- The shipped URI-mode script, loaded and called exactly as the C core
-- does (support.policy.ingress).
local support = require "support.policy"

local PATH = "policies/ingress/uri.lua"
local ALWAYS = { "opensandbox-ingress-to", "open-sandbox-ingress", "opensandbox-secure-access",
                 "opensandbox-access-renew" }


local CFG = {
  mode = "uri",
  routes = {
    open = "10.0.0.2",
    ["my-sandbox-2"] = "10.0.0.3",
    ["sbx-001"] = { host = "10.0.0.1", token = "tok-001" },
    starting = { host = "10.0.0.4", ready = false },
  },
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
  return e("GET", target, "10.9.8.7", headers)
end

local function ok(host, port, path, prefix, sandbox)
  return { 0, host, port, path, { "X-Forwarded-Prefix", prefix }, ALWAYS, false, sandbox }
end

describe("policies/ingress/uri.lua", function()
  local e
  before_each(function() e = entry() end)

  it("has the hooks the host calls, and passes its selftest", function()
    local hooks = support.load(PATH)
    assert.is_function(hooks.route)
    assert.is_function(hooks.load)
    assert.is_function(hooks.selftest)
    hooks.selftest()
  end)

  it("forwards /<rest> raw, the query byte for byte, with X-Forwarded-Prefix", function()
    assert.same(ok("10.0.0.2", 8080, "/a/b%2Fc?q=%2F&x=a+b&&?", "/open/8080", "open"),
      call(e, "/open/8080/a/b%2Fc?q=%2F&x=a+b&&?"))
    assert.same(ok("10.0.0.3", 3000, "/", "/my-sandbox-2/3000", "my-sandbox-2"), call(e, "/my-sandbox-2/3000"))
    assert.same(ok("10.0.0.3", 3000, "/?", "/my-sandbox-2/3000", "my-sandbox-2"), call(e, "/my-sandbox-2/3000?"))
    assert.same(ok("10.0.0.3", 1, "/%2e%2e/x", "/my-sandbox-2/1", "my-sandbox-2"), call(e, "/my-sandbox-2/1/%2e%2e/x"))
  end)

  it("ignores the header-mode routing headers but still removes them", function()
    assert.same(ok("10.0.0.2", 80, "/", "/open/80", "open"),
      call(e, "/open/80/", { "OpenSandbox-Ingress-To", "my-sandbox-2-1", "Host", "my-sandbox-2-1" }))
  end)

  it("answers every routing error with OpenSandbox's status and message", function()
    local F = "invalid ingress route: invalid URI path format: expected "
      .. "'/<sandbox-id>/<sandbox-port>/<path-to-request>', got: "
    local cases = {
      { "/", 400, F .. "/" },
      { "/open", 400, F .. "/open" },
      { "//80/", 400, "invalid ingress route: missing sandbox-id or sandbox-port in URI path" },
      { "/open/0/", 400, 'invalid ingress route: invalid port format: invalid port "0"' },
      { "/open/65536/", 400, 'invalid ingress route: invalid port format: invalid port "65536"' },
      { "/open/08x/", 400, "invalid ingress route: invalid port format: port must not have leading zeros" },
      { "/open//x", 400, 'invalid ingress route: invalid port format: invalid port ""' },
      { "/nope/80/", 404, "sandbox not found: nope" },
      { "/starting/80/", 503, "sandbox not ready: starting" },
      { "/sbx-001/80/", 401, "signature: signature required for this sandbox" },
      { "/sbx-001/8080/x2qxvk/1ff8cd39a/", 401, "signature: unauthorized: signature mismatch" },
      { "/sbx-001/8080/x2qxvk/0ff8cd39z/", 401, "signature: unauthorized: unknown signed_key_id" },
    }
    for _, c in ipairs(cases) do
      assert.same({ c[2], c[3] }, call(e, c[1]), c[1])
    end
    assert.same({ 401, "signature: secure access header mismatch" },
      call(e, "/sbx-001/8080/x2qxvk/0ff8cd39a/", { "OpenSandbox-Secure-Access", "nope" }))
  end)

  it("strips a signed prefix that verifies, until the expiry", function()
    local target = "/sbx-001/8080/x2qxvk/0ff8cd39a/v1/status?x=%2F"
    assert.same(ok("10.0.0.1", 8080, "/v1/status?x=%2F", "/sbx-001/8080", "sbx-001"), call(e, target))
    assert.equals(0, call(entry({ now = 2000000000 }), target)[1])
    assert.same({ 401, "signature: access expired" }, call(entry({ now = 2000000001 }), target))
  end)

  it("forwards a signed-looking path whole to a sandbox that needs no credential", function()
    assert.same(ok("10.0.0.2", 8080, "/x2qxvk/0ff8cd39a/v1", "/open/8080", "open"),
      call(e, "/open/8080/x2qxvk/0ff8cd39a/v1"))
  end)

  it("accepts the sandbox's token header on an unsigned path", function()
    assert.same(ok("10.0.0.1", 80, "/only/legacy", "/sbx-001/80", "sbx-001"),
      call(e, "/sbx-001/80/only/legacy", { "opensandbox-secure-access", "tok-001" }))
  end)
end)
