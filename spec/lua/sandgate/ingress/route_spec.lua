local route = require "sandgate.ingress.route"
local backends = require "sandgate.ingress.backends"
local crypto = require "sandgate.crypto"

-- OSEP-0011's test vector.
local KEY, KEY_ID, EXPIRES, EXPIRES_B36, SIG = "my-test-secret", "a", 2000000000, "x2qxvk", "0ff8cd39a"
local BEFORE = EXPIRES - 1000

-- A request as the host builds it.
local function request(target, headers)
  target = target or "/"
  local q = target:find("?", 1, true)
  headers = headers or {}
  return {
    method = "GET", target = target,
    path = q and target:sub(1, q - 1) or target,
    query = q and target:sub(q + 1) or nil,
    headers = headers, host = headers.host, client = "10.0.0.2",
  }
end

local ROUTES = {
  ["sbx-001"] = { host = "10.0.0.1", token = "tok-001" },
  open = "10.0.0.2",
  ["my-sandbox-2"] = "10.0.0.3",
  starting = { host = "10.0.0.4", ready = false },
  ["sec"] = { host = "10.0.0.5", token = "annot-token" },
}

local function router(mode, opts)
  opts = opts or {}
  return route.new({
    mode = mode,
    backends = backends.routes(ROUTES),
    keys = opts.keys == nil and { a = KEY, b = "other-secret" } or opts.keys,
    now = opts.now or BEFORE,
  })
end

-- A shallow copy of a router answer (the router reuses its tables).
local function copy(r)
  local out = {}
  for k, v in pairs(r) do
    if type(v) == "table" then
      local t = {}
      for k2, v2 in pairs(v) do t[k2] = v2 end
      v = t
    end
    out[k] = v
  end
  return out
end

local function ok_answer(host, port, path, extra)
  local r = { host = host, port = port, path = path, keep_host = false }
  for k, v in pairs(extra or {}) do r[k] = v end
  return r
end

describe("sandgate.ingress.route", function()
  describe("ports", function()
    it("takes 1-65535 in decimal digits", function()
      assert.equals(1, route.parse_port("1"))
      assert.equals(8080, route.parse_port("8080"))
      assert.equals(65535, route.parse_port("65535"))
    end)

    it("refuses 0, 65536, leading zeros, signs, spaces, letters and empty", function()
      local cases = {
        ["0"] = 'invalid port "0"',
        ["65536"] = 'invalid port "65536"',
        ["99999"] = 'invalid port "99999"',
        ["123456"] = 'invalid port "123456"',
        ["08x"] = "port must not have leading zeros",
        ["08080"] = "port must not have leading zeros",
        ["00"] = "port must not have leading zeros",
        [""] = 'invalid port ""',
        ["+80"] = 'invalid port "+80"',
        ["-80"] = 'invalid port "-80"',
        [" 80"] = 'invalid port " 80"',
        ["80 "] = 'invalid port "80 "',
        ["8o"] = 'invalid port "8o"',
        ["8\n"] = 'invalid port "8\\x0a"',
      }
      for s, problem in pairs(cases) do
        local p, err = route.parse_port(s)
        assert.is_nil(p, s)
        assert.equals(problem, err, s)
      end
    end)
  end)

  describe("expiry (base 36)", function()
    it("decodes Go's FormatUint(n, 36)", function()
      assert.equals(2000000000, route.parse_expires("x2qxvk"))
      assert.equals(0, route.parse_expires("0"))
      assert.equals(35, route.parse_expires("z"))
      assert.equals("x2qxvk", route.encode_expires(2000000000))
      assert.equals("0", route.encode_expires(0))
      for _, n in ipairs({ 1, 35, 36, 1700000000, 4102444800 }) do
        assert.equals(n, route.parse_expires(route.encode_expires(n)))
      end
    end)

    it("takes up to 2^64-1 and no more", function()
      assert.truthy(route.parse_expires("3w5e11264sgsf"))
      assert.is_nil(route.parse_expires("3w5e11264sgsg"))
      assert.is_nil(route.parse_expires("zzzzzzzzzzzzz"))
      assert.is_nil(route.parse_expires("10000000000000"))
    end)

    it("refuses upper case, leading zeros, other characters and empty", function()
      for _, s in ipairs({ "X2QXVK", "0x2qxvk", "00", "x2-qx", "x2qxv_", "", "x2qxvk " }) do
        assert.is_nil(route.parse_expires(s), s)
      end
    end)
  end)

  it("recognizes signatures: 8 lower-case hex digits and a key id [0-9a-z]", function()
    assert.is_true(route.valid_signature("0ff8cd39a"))
    assert.is_true(route.valid_signature("abcdef12z"))
    assert.is_true(route.valid_signature("000000009"))
    assert.is_false(route.valid_signature("0ff8cd39"))
    assert.is_false(route.valid_signature("0ff8cd39ab"))
    assert.is_false(route.valid_signature("0FF8cd39a"))
    assert.is_false(route.valid_signature("0ff8cd3ga"))
    assert.is_false(route.valid_signature("0ff8cd39A"))
    assert.is_false(route.valid_signature("0ff8cd39-"))
  end)

  describe("signatures", function()
    it("matches the OSEP-0011 test vector", function()
      assert.equals("v1\nshort\nsbx-001\n8080\nx2qxvk\n", route.canonical("sbx-001", 8080, EXPIRES_B36))
      assert.equals(SIG, route.signature(KEY, KEY_ID, "sbx-001", 8080, EXPIRES_B36))
      assert.equals("sbx-001-8080-x2qxvk-0ff8cd39a", route.mint(KEY, KEY_ID, "sbx-001", 8080, EXPIRES))
    end)

    it("is the first 8 hex digits of SHA-256 over length-prefixed key and canonical string", function()
      local canonical = route.canonical("s", 1, "0")
      local inner = "\0\0\0\1k\0\0\0" .. string.char(#canonical) .. canonical
      assert.equals(crypto.hex(crypto.sha256(inner)):sub(1, 8), route.hex8("k", "s", 1, "0"))
    end)

    it("changes with every input", function()
      local base = route.signature(KEY, "a", "sbx-001", 8080, EXPIRES_B36)
      assert.are_not.equal(base, route.signature(KEY .. "x", "a", "sbx-001", 8080, EXPIRES_B36))
      assert.are_not.equal(base, route.signature(KEY, "a", "sbx-002", 8080, EXPIRES_B36))
      assert.are_not.equal(base, route.signature(KEY, "a", "sbx-001", 8081, EXPIRES_B36))
      assert.are_not.equal(base, route.signature(KEY, "a", "sbx-001", 8080, "x2qxvl"))
      assert.equals(base:sub(1, 8) .. "b", route.signature(KEY, "b", "sbx-001", 8080, EXPIRES_B36))
    end)
  end)

  describe("keyring", function()
    it("decodes base64 secrets by key id, with or without a base64: prefix", function()
      assert.same({ a = KEY, ["7"] = "ab" },
        route.keyring({ a = "bXktdGVzdC1zZWNyZXQ=", ["7"] = "base64:YWI=" }))
      assert.same({}, route.keyring(nil))
    end)

    it("names the bad key", function()
      local cases = {
        { { A = "YQ==" }, 'keys["A"]: a key id is exactly one character [0-9a-z]' },
        { { ab = "YQ==" }, 'keys["ab"]: a key id is exactly one character [0-9a-z]' },
        { { a = "YQ=" }, 'keys["a"]: the secret is not valid base64 (length is not a multiple of 4)' },
        { { a = "" }, 'keys["a"]: the secret is empty' },
        { { a = 5 }, 'keys["a"]: the secret must be a base64 string, got number' },
        { "a=YQ==", "keys must be an object of key id -> base64 secret, got string" },
      }
      for _, c in ipairs(cases) do
        local ok, err = pcall(route.keyring, c[1])
        assert.is_false(ok)
        assert.equals(c[2], err)
      end
    end)
  end)

  describe("header and Host tokens", function()
    it("splits an unsigned token on the last dash", function()
      assert.same({ id = "sbx", port = 8080 }, route.parse_token("sbx-8080"))
      assert.same({ id = "my-sandbox-2", port = 3000 }, route.parse_token("my-sandbox-2-3000"))
      assert.same({ id = "a-80-x2qxvk", port = 1 }, route.parse_token("a-80-x2qxvk-1"))
    end)

    it("reads a signed token from the right, the id keeping its dashes", function()
      assert.same({ id = "sbx-001", port = 8080, expires_b36 = "x2qxvk", expires = EXPIRES, signature = SIG },
        route.parse_token("sbx-001-8080-x2qxvk-0ff8cd39a"))
      assert.same({ id = "alpha-beta", port = 8080, expires_b36 = "1a2b3c",
                    expires = route.parse_expires("1a2b3c"), signature = "abcdef12k" },
        route.parse_token("alpha-beta-8080-1a2b3c-abcdef12k"))
      assert.same({ id = "s", port = 1, expires_b36 = "0", expires = 0, signature = "abcdef12k" },
        route.parse_token("s-1-0-abcdef12k"))
    end)

    it("falls back to the unsigned reading when the signed one does not hold", function()
      -- Bad expiry or port in the signed reading: the last segment is then
      -- the port, which a 9-character signature never is.
      assert.same({ nil, 'invalid ingress route: invalid port format: invalid port "abcdef12k"' },
        { route.parse_token("sbx-8080-X2QXVK-abcdef12k") })
      assert.same({ nil, "invalid ingress route: invalid port format: port must not have leading zeros" },
        { route.parse_token("sb-08080-0-012345678") })
      -- Three segments are never signed.
      assert.same({ id = "a-b", port = 80 }, route.parse_token("a-b-80"))
    end)

    it("refuses tokens without a sandbox id or port", function()
      local cases = {
        sandbox = "invalid ingress route: invalid host: sandbox",
        [""] = "invalid ingress route: invalid host: ",
        ["-8080"] = "invalid ingress route: invalid host: -8080",
        ["-a-8080"] = "invalid ingress route: invalid host: -a-8080",
        ["sbx-"] = 'invalid ingress route: invalid port format: invalid port ""',
        ["sbx-0"] = 'invalid ingress route: invalid port format: invalid port "0"',
        ["sbx-65536"] = 'invalid ingress route: invalid port format: invalid port "65536"',
        ["sbx-08x"] = "invalid ingress route: invalid port format: port must not have leading zeros",
        ["sbx-http"] = 'invalid ingress route: invalid port format: invalid port "http"',
      }
      for tok, msg in pairs(cases) do
        local p, err = route.parse_token(tok)
        assert.is_nil(p, tok)
        assert.equals(msg, err, tok)
      end
    end)

    it("takes OpenSandbox-Ingress-To, else OPEN-SANDBOX-INGRESS, else Host", function()
      local out = {}
      local function parse(h)
        assert.is_true(route.parse_header_route(h, out))
        return out.id .. ":" .. out.port
      end
      assert.equals("a:1", parse({ ["opensandbox-ingress-to"] = "a-1", ["open-sandbox-ingress"] = "b-2", host = "c-3.gw" }))
      assert.equals("b:2", parse({ ["open-sandbox-ingress"] = "b-2", host = "c-3.gw" }))
      assert.equals("c:3", parse({ host = "c-3.gw.example.com" }))
      -- An empty header counts as absent.
      assert.equals("c:3", parse({ ["opensandbox-ingress-to"] = "", ["open-sandbox-ingress"] = "", host = "c-3" }))
      -- Host's port, a scheme prefix, a repeated header.
      assert.equals("c:3", parse({ host = "c-3:28888" }))
      assert.equals("c:3", parse({ host = "c-3.gw:28888" }))
      assert.equals("a:1", parse({ ["opensandbox-ingress-to"] = "https://a-1.gw" }))
      assert.equals("a:1", parse({ ["opensandbox-ingress-to"] = "http://a-1" }))
      assert.equals("a:1", parse({ ["opensandbox-ingress-to"] = "a-1, b-2" }))
      assert.equals("sbx-001:8080", parse({ host = "sbx-001-8080-x2qxvk-0ff8cd39a.sandbox.example.com" }))
      assert.equals(SIG, out.signature)
    end)

    it("says what is missing", function()
      assert.same({ nil, "missing header 'Opensandbox-Ingress-To' or 'Host'" },
        { route.parse_header_route({}, {}) })
      assert.same({ nil, "missing header 'Opensandbox-Ingress-To' or 'Host'" },
        { route.parse_header_route({ host = "" }, {}) })
      assert.same({ nil, "invalid ingress route: invalid host: gateway.example.com" },
        { route.parse_header_route({ host = "gateway.example.com" }, {}) })
      assert.same({ nil, 'invalid ingress route: invalid port format: invalid port "x"' },
        { route.parse_header_route({ ["opensandbox-ingress-to"] = "sbx-x" }, {}) })
    end)
  end)

  describe("URI paths", function()
    it("reads /<id>/<port>/<rest>", function()
      local p = route.parse_uri("/sbx/8080/a/b")
      assert.equals("sbx", p.id)
      assert.equals(8080, p.port)
      assert.equals("/sbx/8080", p.prefix)
      assert.equals("/a/b", ("/sbx/8080/a/b"):sub(p.rest))
      assert.is_nil(p.signature)
      assert.is_nil(route.parse_uri("/sbx/8080").rest)
      assert.equals(10, route.parse_uri("/sbx/8080/").rest)
      assert.equals("my-sandbox-2", route.parse_uri("/my-sandbox-2/1/").id)
    end)

    it("notes the signed shape /<id>/<port>/<expires>/<signature>/<rest>", function()
      local path = "/sbx-001/8080/x2qxvk/0ff8cd39a/v1/status"
      local p = route.parse_uri(path)
      assert.equals("sbx-001", p.id)
      assert.equals(8080, p.port)
      assert.equals(EXPIRES_B36, p.expires_b36)
      assert.equals(EXPIRES, p.expires)
      assert.equals(SIG, p.signature)
      assert.equals("/v1/status", path:sub(p.signed_rest))
      assert.equals("/x2qxvk/0ff8cd39a/v1/status", path:sub(p.rest))
      assert.is_nil(route.parse_uri("/sbx-001/8080/x2qxvk/0ff8cd39a").signed_rest)
      assert.equals(SIG, route.parse_uri("/sbx-001/8080/x2qxvk/0ff8cd39a").signature)
      -- Not signed: too few segments, bad expiry, bad signature.
      assert.is_nil(route.parse_uri("/sbx/8080/x2qxvk").signature)
      assert.is_nil(route.parse_uri("/sbx/8080/X2QXVK/0ff8cd39a/").signature)
      assert.is_nil(route.parse_uri("/sbx/8080/x2qxvk/0ff8cd39/").signature)
    end)

    it("refuses paths without a sandbox id or port, in OpenSandbox's words", function()
      local F = "invalid ingress route: invalid URI path format: expected "
        .. "'/<sandbox-id>/<sandbox-port>/<path-to-request>', got: "
      local cases = {
        ["/"] = F .. "/",
        ["/sbx"] = F .. "/sbx",
        ["*"] = F .. "*",
        [""] = "missing URI path",
        ["//8080/x"] = "invalid ingress route: missing sandbox-id or sandbox-port in URI path",
        ["/sbx//x"] = 'invalid ingress route: invalid port format: invalid port ""',
        ["/sbx/0/x"] = 'invalid ingress route: invalid port format: invalid port "0"',
        ["/sbx/65536"] = 'invalid ingress route: invalid port format: invalid port "65536"',
        ["/sbx/08x/"] = "invalid ingress route: invalid port format: port must not have leading zeros",
        ["/sbx/%38080/"] = 'invalid ingress route: invalid port format: invalid port "%38080"',
      }
      for path, msg in pairs(cases) do
        local p, err = route.parse_uri(path)
        assert.is_nil(p, path)
        assert.equals(msg, err, path)
      end
    end)
  end)

  describe("router, header mode", function()
    it("forwards the target untouched to the sandbox's backend", function()
      local r = router("header")
      local target = "/a%2Fb/../c?x=%20&y=1&&z"
      assert.same(ok_answer("10.0.0.2", 8080, target, { sandbox = "open" }),
        copy(r:route(request(target, { ["opensandbox-ingress-to"] = "open-8080" }))))
      assert.same(ok_answer("10.0.0.3", 3000, "/", { sandbox = "my-sandbox-2" }),
        copy(r:route(request("/", { host = "my-sandbox-2-3000.gw.example.com" }))))
      assert.same(ok_answer("10.0.0.2", 1, "/x", { sandbox = "open" }),
        copy(r:route(request("/x", { ["open-sandbox-ingress"] = "open-1" }))))
    end)

    it("answers 400, 404 and 503 with OpenSandbox's messages", function()
      local r = router("header")
      local function answer(headers)
        local a = r:route(request("/", headers))
        return a.status, a.message
      end
      assert.same({ 400, "missing header 'Opensandbox-Ingress-To' or 'Host'" }, { answer({}) })
      assert.same({ 400, 'invalid ingress route: invalid port format: invalid port "65536"' },
        { answer({ host = "open-65536.gw" }) })
      assert.same({ 404, "sandbox not found: nope" }, { answer({ host = "nope-80.gw" }) })
      assert.same({ 503, "sandbox not ready: starting" }, { answer({ host = "starting-80.gw" }) })
    end)

    it("lets a sandbox without a token through whatever credentials come along", function()
      local r = router("header", { now = EXPIRES + 1 })
      -- Expired and badly signed, and a stray header: not checked.
      assert.equals("open", r:route(request("/", {
        host = "open-8080-x2qxvk-00000000z.gw", ["opensandbox-secure-access"] = "x" })).sandbox)
    end)

    describe("secure access", function()
      local r
      before_each(function() r = router("header") end)

      local function answer(headers)
        local a = r:route(request("/", headers))
        return a.status or a.sandbox, a.message
      end

      it("accepts the token header and refuses a wrong or empty one without looking further", function()
        assert.equals("sbx-001", answer({ host = "sbx-001-8080.gw", ["opensandbox-secure-access"] = "tok-001" }))
        assert.equals("sbx-001", answer({ host = "sbx-001-8080.gw", ["opensandbox-secure-access"] = " tok-001 " }))
        assert.same({ 401, "signature: secure access header mismatch" },
          { answer({ host = "sbx-001-8080.gw", ["opensandbox-secure-access"] = "tok-002" }) })
        assert.same({ 401, "signature: secure access header mismatch" },
          { answer({ host = "sbx-001-8080.gw", ["opensandbox-secure-access"] = "" }) })
        assert.same({ 401, "signature: secure access header mismatch" },
          { answer({ host = "sbx-001-8080.gw", ["opensandbox-secure-access"] = "tok-001, tok-001" }) })
        -- A valid signed route does not rescue a wrong header.
        assert.same({ 401, "signature: secure access header mismatch" },
          { answer({ host = "sbx-001-8080-x2qxvk-0ff8cd39a.gw", ["opensandbox-secure-access"] = "nope" }) })
        -- A good header needs no signature, even a bad one.
        assert.equals("sbx-001", answer({ host = "sbx-001-8080-x2qxvk-00000000a.gw",
                                          ["opensandbox-secure-access"] = "tok-001" }))
      end)

      it("accepts the OSEP-0011 test vector until it expires", function()
        local token = "sbx-001-8080-x2qxvk-0ff8cd39a"
        assert.equals("sbx-001", answer({ ["opensandbox-ingress-to"] = token }))
        r = router("header", { now = EXPIRES })
        assert.equals("sbx-001", answer({ ["opensandbox-ingress-to"] = token }))
        r = router("header", { now = EXPIRES + 1 })
        assert.same({ 401, "signature: access expired" }, { answer({ ["opensandbox-ingress-to"] = token }) })
        assert.same({ 401, "signature: access expired" }, { answer({ host = token .. ".gw" }) })
      end)

      it("refuses a tampered signature, another sandbox's, or an unknown key id", function()
        local function status(tok) return { answer({ ["opensandbox-ingress-to"] = tok }) } end
        assert.same({ 401, "signature: unauthorized: signature mismatch" }, status("sbx-001-8080-x2qxvk-0ff8cd39b"))
        assert.same({ 401, "signature: unauthorized: signature mismatch" }, status("sbx-001-8080-x2qxvk-1ff8cd39a"))
        assert.same({ 401, "signature: unauthorized: signature mismatch" }, status("sbx-001-8081-x2qxvk-0ff8cd39a"))
        assert.same({ 401, "signature: unauthorized: signature mismatch" }, status("sbx-001-8080-x2qxvl-0ff8cd39a"))
        assert.same({ 401, "signature: unauthorized: signature mismatch" }, status("sec-8080-x2qxvk-0ff8cd39a"))
        assert.same({ 401, "signature: unauthorized: unknown signed_key_id" }, status("sbx-001-8080-x2qxvk-0ff8cd39z"))
      end)

      it("checks signatures with the key the key id names", function()
        local tok = route.mint("other-secret", "b", "sbx-001", 8080, EXPIRES)
        assert.equals("sbx-001", answer({ ["opensandbox-ingress-to"] = tok }))
        -- Signed with b's secret but claiming key a.
        assert.same({ 401, "signature: unauthorized: signature mismatch" },
          { answer({ ["opensandbox-ingress-to"] = tok:sub(1, -2) .. "a" }) })
      end)

      it("requires a credential", function()
        assert.same({ 401, "signature: signature required for this sandbox" }, { answer({ host = "sbx-001-8080.gw" }) })
      end)

      it("answers 503 to a signed route when no keys are configured", function()
        r = router("header", { keys = {} })
        assert.same({ 503, "signature: ingress verifier not configured" },
          { answer({ host = "sbx-001-8080-x2qxvk-0ff8cd39a.gw" }) })
      end)

      it("compares every secret through crypto.equal", function()
        local s = spy.on(crypto, "equal")
        answer({ ["opensandbox-ingress-to"] = "sbx-001-8080-x2qxvk-1ff8cd39a" })
        assert.spy(s).was.called_with("0ff8cd39", "1ff8cd39")
        answer({ host = "sbx-001-8080.gw", ["opensandbox-secure-access"] = "tok" })
        assert.spy(s).was.called_with(crypto.sha256("tok"), crypto.sha256("tok-001"))
        assert.spy(s).was.called(2)
        crypto.equal:revert()
      end)
    end)
  end)

  describe("router, URI mode", function()
    local r
    before_each(function() r = router("uri") end)

    it("forwards /<rest>, raw, with the query byte for byte and X-Forwarded-Prefix", function()
      local cases = {
        { "/open/8080/a/b%2Fc", "/a/b%2Fc" },
        { "/open/8080/a%2F..%2Fb?q=%2F&x=a+b&&", "/a%2F..%2Fb?q=%2F&x=a+b&&" },
        { "/open/8080", "/" },
        { "/open/8080/", "/" },
        { "/open/8080?x=1", "/?x=1" },
        { "/open/8080/?", "/?" },
        { "/open/8080//double", "//double" },
        { "/open/8080/x?a=b?c=/d#e", "/x?a=b?c=/d#e" },
      }
      for _, c in ipairs(cases) do
        assert.same(ok_answer("10.0.0.2", 8080, c[2], {
          sandbox = "open", set_headers = { ["X-Forwarded-Prefix"] = "/open/8080" } }),
          copy(r:route(request(c[1]))), c[1])
      end
      assert.same({ ["X-Forwarded-Prefix"] = "/my-sandbox-2/3000" },
        r:route(request("/my-sandbox-2/3000/x")).set_headers)
    end)

    it("ignores the routing headers", function()
      assert.equals("/x", r:route(request("/open/80/x", { ["opensandbox-ingress-to"] = "other-1" })).path)
    end)

    it("answers 400, 404 and 503 with OpenSandbox's messages", function()
      local function answer(target)
        local a = r:route(request(target))
        return a.status, a.message
      end
      assert.same({ 400, "invalid ingress route: invalid URI path format: expected "
        .. "'/<sandbox-id>/<sandbox-port>/<path-to-request>', got: /" }, { answer("/?a=b") })
      assert.same({ 400, 'invalid ingress route: invalid port format: invalid port "x"' }, { answer("/open/x/") })
      assert.same({ 404, "sandbox not found: nope" }, { answer("/nope/80/") })
      assert.same({ 503, "sandbox not ready: starting" }, { answer("/starting/80/") })
    end)

    it("forwards a signed-looking path whole to a sandbox without a token", function()
      local a = r:route(request("/open/8080/x2qxvk/0ff8cd39a/api?q"))
      assert.equals("/x2qxvk/0ff8cd39a/api?q", a.path)
      assert.equals("/open/8080", a.set_headers["X-Forwarded-Prefix"])
    end)

    it("strips a verified signed prefix for a sandbox with a token", function()
      local a = copy(r:route(request("/sbx-001/8080/x2qxvk/0ff8cd39a/v1/status?x=%2F")))
      assert.same(ok_answer("10.0.0.1", 8080, "/v1/status?x=%2F", {
        sandbox = "sbx-001", set_headers = { ["X-Forwarded-Prefix"] = "/sbx-001/8080" } }), a)
      assert.equals("/", r:route(request("/sbx-001/8080/x2qxvk/0ff8cd39a")).path)
      -- The header credential wins, and the signed prefix still goes.
      assert.equals("/p", r:route(request("/sbx-001/8080/x2qxvk/00000000a/p",
        { ["opensandbox-secure-access"] = "tok-001" })).path)
      assert.equals("/only/legacy", r:route(request("/sbx-001/8080/only/legacy",
        { ["opensandbox-secure-access"] = "tok-001" })).path)
    end)

    it("refuses expired, tampered and missing credentials", function()
      local function answer(target, now)
        local a = router("uri", { now = now }):route(request(target))
        return a.status, a.message
      end
      assert.same({ 401, "signature: access expired" }, { answer("/sbx-001/8080/x2qxvk/0ff8cd39a/", EXPIRES + 1) })
      assert.same({ 401, "signature: unauthorized: signature mismatch" },
        { answer("/sbx-001/8080/x2qxvk/0ff8cd39b/") })
      assert.same({ 401, "signature: unauthorized: unknown signed_key_id" },
        { answer("/sbx-001/8080/x2qxvk/0ff8cd39c/") })
      assert.same({ 401, "signature: signature required for this sandbox" }, { answer("/sbx-001/8080/x") })
      assert.same({ 401, "signature: signature required for this sandbox" },
        { answer("/sbx-001/8080/X2QXVK/0ff8cd39a/") })
    end)
  end)

  it("reuses its answer tables", function()
    local r = router("uri")
    local a = r:route(request("/open/80/a"))
    assert.equals(a, r:route(request("/open/80/b")))
    local f = r:route(request("/nope/80/"))
    assert.equals(f, r:route(request("/")))
  end)

  it("offers its route method as a plain hook, and can be reconfigured", function()
    local r = route.new({ mode = "uri", backends = backends.routes(nil) })
    local hook = r.hook
    assert.equals(404, hook(request("/open/80/")).status)
    r:configure({ backends = backends.routes({ open = "10.0.0.9" }), keys = {}, now = 1 })
    assert.equals("10.0.0.9", hook(request("/open/80/")).host)
    assert.equals(hook, r.hook)
  end)

  it("refuses a bad mode or provider", function()
    assert.has_error(function() route.new({ mode = "host", backends = backends.routes(nil) }) end,
      'route.new: mode must be "header" or "uri", got host')
    assert.has_error(function() route.new({ mode = "uri" }) end,
      "route: backends must be a provider with a lookup method")
  end)
end)
