-- The semantics of the OpenSandbox egress policy API (GET/POST/PUT/PATCH/DELETE
-- /policy), as pure functions on policy documents held as JSON text.
--
-- The C side owns HTTP, auth, persistence and the policy VM. It calls:
--
--   api.get(doc_text, enforcement)                   -> status, body
--   api.replace(body_text, max_rules, enforcement)   -> status, body, new_doc_text
--   api.patch(cur_doc_text, body_text, max_rules, enforcement)
--                                                    -> status, body, new_doc_text
--   api.delete(cur_doc_text, body_text, enforcement) -> status, body, new_doc_text
--   api.mode(doc)                                    -> "allow_all"|"deny_all"|"enforcing"
--   api.normalize(doc_text)                          -> canonical doc text | nil, err
--
-- status is the HTTP status (number). For 200, body is the JSON object
-- OpenSandbox's sidecar writes, followed by "\n" as Go's json.Encoder.Encode
-- writes it: send it as is (application/json). For any other status, body is
-- the one-line message WITHOUT the newline: the C side appends it, as Go's
-- http.Error (Fprintln) does, and sends text/plain. new_doc_text
-- is the canonical JSON of the new document, or nil when nothing changes (all
-- errors, and a DELETE that matched nothing). max_rules <= 0 or nil means no
-- limit (OpenSandbox's default is 4096, OPENSANDBOX_EGRESS_MAX_RULES).
--
-- The reference is alibaba/OpenSandbox components/egress (policy_server.go,
-- policy_patch.go, pkg/policy/policy.go). What clients can see follows it:
--
--   * Bodies are trimmed as by Go's strings.TrimSpace (Unicode white space).
--     POST/PUT with an empty body resets to deny-all; "null" and "{}" are a
--     deny-all document (answered like any other successful replace).
--   * Documents are normalized as ParsePolicy does: defaultAction and every
--     action trimmed and lower-cased, "" or missing means "deny"; targets are
--     trimmed and otherwise kept as written (case, trailing dot, CIDR text).
--     Field names match case-insensitively, as encoding/json does; unknown
--     fields are dropped.
--   * A missing or null egress stays distinct from []: GET shows
--     "egress":null for the first (Go's nil slice) and "egress":[] for the
--     second. The canonical document omits egress in the first case.
--   * GET's policy object has Go's field order: egress, then defaultAction.
--   * PATCH: the rules are keyed by strings.ToLower(target) WITHOUT trimming
--     (policy_patch.go mergeKey); patch rules come first (first of duplicates
--     wins), then the current rules whose key was not seen -- which also drops
--     later duplicates among the current rules. The merged document is then
--     normalized and validated; errors say "invalid merged policy: ...".
--   * DELETE: each target is trimmed and lower-cased, "" ignored, and removes
--     every rule whose lower-cased target is equal. No trailing-dot folding
--     and no address canonicalization: "example.com." does not remove
--     "example.com", "10.0.0.1/8" does not remove "10.0.0.0/8".
--   * The rule limit counts the rules of the resulting document (after
--     validation, as OpenSandbox checks it after ParsePolicy); DELETE has none.
--
-- Deliberate differences, all in what is rejected and how errors read:
--   * Validation is rules.compile's (stricter than OpenSandbox, which accepts
--     any non-address string as a domain and any defaultAction), so messages
--     for bad documents are rules.compile's "invalid policy: <where>: <what>".
--   * JSON syntax errors are reported with cjson's wording, and type errors
--     (a number where a string goes, ...) with ours; Go's encoding/json words
--     them differently. Statuses and message prefixes are OpenSandbox's.
--   * cjson decodes [] and {} alike; only the top-level value is told apart
--     (by its first character), so "egress":{} is taken as an empty list where
--     Go rejects it.
--   * When a key occurs in several case variants ("egress" and "Egress"), the
--     exact spelling wins (Go takes the last one in the text); Go's Unicode
--     case folding of field names (U+017F for s, U+212A for k) is not done.
local rules = require "sandgate.rules"

local cjson = require("cjson.safe").new()
-- Go rejects hex numbers, NaN and Infinity; so do we (this is a private
-- instance, the shared module is not touched).
cjson.decode_invalid_numbers(false)

local byte, sub, find, lower, format, gsub =
  string.byte, string.sub, string.find, string.lower, string.format, string.gsub
local concat = table.concat
local type, pairs, pcall, tostring = type, pairs, pcall, tostring

local NULL = cjson.null

local M = {}

-- Go's strings.TrimSpace --------------------------------------------------

-- The byte length of the Go white-space rune (unicode.IsSpace) that starts at
-- i, or nil. ASCII \t \n \v \f \r and space, U+0085, U+00A0, U+1680,
-- U+2000-U+200A, U+2028, U+2029, U+202F, U+205F, U+3000.
local function space_at(s, i)
  local b = byte(s, i)
  if b == 32 or (b and b >= 9 and b <= 13) then return 1 end
  if b == 0xC2 then
    local c = byte(s, i + 1)
    if c == 0x85 or c == 0xA0 then return 2 end
  elseif b == 0xE1 then
    local c, d = byte(s, i + 1, i + 2)
    if c == 0x9A and d == 0x80 then return 3 end
  elseif b == 0xE2 then
    local c, d = byte(s, i + 1, i + 2)
    if c == 0x80 and d and ((d >= 0x80 and d <= 0x8A) or d == 0xA8 or d == 0xA9 or d == 0xAF) then
      return 3
    end
    if c == 0x81 and d == 0x9F then return 3 end
  elseif b == 0xE3 then
    local c, d = byte(s, i + 1, i + 2)
    if c == 0x80 and d == 0x80 then return 3 end
  end
  return nil
end

-- The byte length of the Go white-space rune that ends at j, or nil. A lead
-- byte (0xC2, 0xE1-0xE3) is never a continuation byte, so a match found by
-- looking back is always a whole rune.
local function space_before(s, j)
  local b = byte(s, j)
  if b == 32 or (b >= 9 and b <= 13) then return 1 end
  if b < 0x80 then return nil end
  if j >= 2 and space_at(s, j - 1) == 2 then return 2 end
  if j >= 3 and space_at(s, j - 2) == 3 then return 3 end
  return nil
end

local function go_trim(s)
  local i, j = 1, #s
  while i <= j do
    local n = space_at(s, i)
    if not n then break end
    i = i + n
  end
  while j >= i do
    local n = space_before(s, j)
    if not n then break end
    j = j - n
  end
  if i == 1 and j == #s then return s end
  return sub(s, i, j)
end
M.trim = go_trim

-- JSON output (Go's encoding/json, HTML-safe) -------------------------------

local ESC = {
  [8] = "\\b", [9] = "\\t", [10] = "\\n", [12] = "\\f", [13] = "\\r",
  [34] = '\\"', [92] = "\\\\", [60] = "\\u003c", [62] = "\\u003e", [38] = "\\u0026",
}
for b = 0, 31 do
  if not ESC[b] then ESC[b] = format("\\u%04x", b) end
end

-- The length of the valid UTF-8 sequence at i (b is its first byte, >= 0x80)
-- and its code point, or nil (Go's utf8.DecodeRuneInString rules: no
-- overlong forms, no surrogates, nothing above U+10FFFF).
local function utf8_at(s, i, b)
  local c = byte(s, i + 1)
  if not c then return nil end
  if b >= 0xC2 and b <= 0xDF then
    if c >= 0x80 and c <= 0xBF then return 2, (b - 0xC0) * 64 + (c - 0x80) end
    return nil
  end
  local lo, hi = 0x80, 0xBF
  if b == 0xE0 then lo = 0xA0 elseif b == 0xED then hi = 0x9F
  elseif b == 0xF0 then lo = 0x90 elseif b == 0xF4 then hi = 0x8F end
  if c < lo or c > hi then return nil end
  local d = byte(s, i + 2)
  if not d or d < 0x80 or d > 0xBF then return nil end
  if b >= 0xE0 and b <= 0xEF then
    return 3, ((b - 0xE0) * 64 + (c - 0x80)) * 64 + (d - 0x80)
  end
  if b >= 0xF0 and b <= 0xF4 then
    local e = byte(s, i + 3)
    if not e or e < 0x80 or e > 0xBF then return nil end
    return 4, 0x10000 -- the exact value is not needed above the BMP
  end
  return nil
end

-- A JSON string literal, byte for byte as Go's json.Marshal writes it:
-- control characters, quote, backslash and <, >, & escaped; invalid UTF-8
-- replaced by \ufffd; U+2028 and U+2029 escaped.
local function enc_string(s)
  if not find(s, '[%z\1-\31"\\<>&\128-\255]') then return '"' .. s .. '"' end
  local out, n, start, i, len = {}, 0, 1, 1, #s
  while i <= len do
    local b = byte(s, i)
    local rep, size
    if b < 0x80 then
      rep, size = ESC[b], 1
    else
      local cp
      size, cp = utf8_at(s, i, b)
      if not size then
        rep, size = "\\ufffd", 1
      elseif cp == 0x2028 or cp == 0x2029 then
        rep = format("\\u%04x", cp)
      end
    end
    if rep then
      n = n + 1; out[n] = sub(s, start, i - 1)
      n = n + 1; out[n] = rep
      start = i + size
    end
    i = i + size
  end
  n = n + 1; out[n] = sub(s, start)
  return '"' .. concat(out) .. '"'
end
M.encode_string = enc_string

-- Internal documents ------------------------------------------------------
--
-- A normalized policy is { default = "allow"|"deny", egress = nil | list of
-- { action = "allow"|"deny", target = <trimmed target> } }; egress nil is
-- Go's nil slice (missing or null in the JSON), {} is an empty list.

local function mode_of(pol)
  local n = pol.egress and #pol.egress or 0
  if n > 0 then return "enforcing" end
  if pol.default == "allow" then return "allow_all" end
  if pol.default == "deny" then return "deny_all" end
  return "enforcing"
end

local function encode_rules(egress)
  local parts = {}
  for i = 1, #egress do
    local r = egress[i]
    parts[i] = '{"action":' .. enc_string(r.action) .. ',"target":' .. enc_string(r.target) .. "}"
  end
  return "[" .. concat(parts, ",") .. "]"
end

-- The canonical document text: defaultAction, then egress (left out when it
-- is nil, so that a reload keeps GET's null).
local function encode_doc(pol)
  if pol.egress == nil then
    return '{"defaultAction":' .. enc_string(pol.default) .. "}"
  end
  return '{"defaultAction":' .. enc_string(pol.default) .. ',"egress":' .. encode_rules(pol.egress) .. "}"
end

-- The policy object as OpenSandbox shows it (Go struct order).
local function encode_go_policy(pol)
  local egress = pol.egress and encode_rules(pol.egress) or "null"
  return '{"egress":' .. egress .. ',"defaultAction":' .. enc_string(pol.default) .. "}"
end

-- policyStatusResponse: status, mode, enforcementMode, reason, policy, each
-- omitted when empty (omitempty), then json.Encoder's newline.
local function status_body(mode, enforcement, reason, policy_json)
  local parts = { '{"status":"ok"' }
  if mode and mode ~= "" then parts[#parts + 1] = ',"mode":' .. enc_string(mode) end
  if enforcement and enforcement ~= "" then
    parts[#parts + 1] = ',"enforcementMode":' .. enc_string(tostring(enforcement))
  end
  if reason then parts[#parts + 1] = ',"reason":' .. enc_string(reason) end
  if policy_json then parts[#parts + 1] = ',"policy":' .. policy_json end
  parts[#parts + 1] = "}\n"
  return concat(parts)
end

-- An error answer: the message without http.Error's newline, which the C
-- side adds.
local function fail(status, msg)
  return status, msg, nil
end

-- Decoding ----------------------------------------------------------------

-- The JSON type of a decoded value for messages. first is the first byte of
-- the text for a top-level value (cjson decodes [] and {} alike).
local function json_type(v, first)
  if v == NULL then return "null" end
  local t = type(v)
  if t == "table" then
    if first then return first == 91 and "array" or "object" end
    return v[1] ~= nil and "array" or "object"
  end
  if t == "boolean" then return "boolean" end
  return t
end

-- Decodes trimmed, non-empty text: value, first byte; or nil, message.
local function decode(text)
  local v, err = cjson.decode(text)
  if v == nil then return nil, "invalid JSON: " .. tostring(err) end
  return v, byte(text, 1)
end

-- obj[name], matched as encoding/json matches struct fields: the exact key,
-- else a key equal ignoring ASCII case (the smallest such key, so that the
-- choice does not depend on table order).
local function field(obj, name, lname)
  local v = obj[name]
  if v ~= nil then return v end
  local best
  for k in pairs(obj) do
    if type(k) == "string" and #k == #name and lower(k) == lname and (best == nil or k < best) then
      best = k
    end
  end
  if best ~= nil then return obj[best] end
  return nil
end

-- An action as ParsePolicy leaves it: trimmed, lower-cased, "" and
-- null/missing -> "deny". Other types are passed on for rules.compile to
-- reject.
local function norm_action(v)
  if v == nil or v == NULL then return "deny" end
  if type(v) ~= "string" then return v end
  local a = lower(go_trim(v))
  if a == "" then return "deny" end
  return a
end

local function norm_target(v)
  if type(v) == "string" then return go_trim(v) end
  return v
end

local function is_sequence(t)
  local n = #t
  for k in pairs(t) do
    if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then return false end
  end
  return true
end

-- Normalizes and validates a decoded document (ParsePolicy then
-- rules.compile). Returns a normalized policy, or nil and the message
-- ("invalid policy: ..."). first: the first byte of the text, if the value
-- is a top-level one.
local function from_decoded(v, first)
  if v == nil or v == NULL then return { default = "deny" } end
  if type(v) == "table" and (first == 91 or (first == nil and v[1] ~= nil)) then
    return nil, "invalid policy: document: expected an object, got array"
  end
  local doc = v
  local egress
  if type(v) == "table" then
    local raw = field(v, "egress", "egress")
    if raw == NULL then raw = nil end
    egress = raw
    if type(raw) == "table" and is_sequence(raw) then
      egress = {}
      for i = 1, #raw do
        local r = raw[i]
        if type(r) == "table" and r[1] == nil then
          r = {
            action = norm_action(field(r, "action", "action")),
            target = norm_target(field(r, "target", "target")),
          }
        end
        egress[i] = r
      end
    end
    doc = { defaultAction = norm_action(field(v, "defaultAction", "defaultaction")), egress = egress }
  end
  local ok, err = pcall(rules.compile, doc)
  if not ok then return nil, tostring(err) end
  -- Valid: every action is "allow"/"deny" and every target a string.
  return { default = doc.defaultAction, egress = egress }
end

-- Parses document text (trimmed here). nil, "" and white space are the
-- deny-all policy. Returns a normalized policy, or nil and the message.
local function parse_doc(text)
  if text == nil then return { default = "deny" } end
  if type(text) ~= "string" then return nil, "invalid policy: document: expected JSON text" end
  text = go_trim(text)
  if text == "" then return { default = "deny" } end
  local v, first = decode(text)
  if v == nil then return nil, "invalid policy: " .. first end
  return from_decoded(v, first)
end

local function over_limit(pol, max_rules)
  local n = pol.egress and #pol.egress or 0
  if type(max_rules) == "number" and max_rules > 0 and n > max_rules then
    return format("egress rule total count %d exceeds limit %d", n, max_rules)
  end
  return nil
end

-- The API -----------------------------------------------------------------

-- api.mode(doc): the mode of a document given as JSON text or as a decoded
-- table ({ defaultAction = ..., egress = ... }); nil is deny-all. For text
-- that is not a valid document it returns nil and the message.
function M.mode(doc)
  if doc == nil or doc == NULL then return "deny_all" end
  if type(doc) == "table" then
    local pol = { default = norm_action(field(doc, "defaultAction", "defaultaction")) }
    local egress = field(doc, "egress", "egress")
    if type(egress) == "table" then pol.egress = egress end
    return mode_of(pol)
  end
  local pol, err = parse_doc(doc)
  if not pol then return nil, err end
  return mode_of(pol)
end

-- api.count(doc_text): the number of rules in a document (0 when it is not
-- a valid one), for the rule-count gauge of /metrics.
function M.count(doc_text)
  local pol = parse_doc(doc_text)
  return pol and pol.egress and #pol.egress or 0
end

-- api.normalize(doc_text): the canonical text of a document, or nil and the
-- "invalid policy: ..." message. For documents that did not come through the
-- API (startup file, persisted state).
function M.normalize(doc_text)
  local pol, err = parse_doc(doc_text)
  if not pol then return nil, err end
  return encode_doc(pol)
end

-- GET /policy: 200 and the body; 500 and "internal error: ..." if doc_text
-- is not a valid document, which the C side should never hold.
function M.get(doc_text, enforcement)
  local pol, err = parse_doc(doc_text)
  if not pol then return fail(500, "internal error: current policy: " .. err) end
  return 200, status_body(mode_of(pol), enforcement, nil, encode_go_policy(pol)), nil
end

local RESET_BODY = status_body("deny_all", nil, "policy reset to default deny-all")
local DENY_ALL_DOC = encode_doc({ default = "deny" })

-- POST and PUT /policy: replace the document.
function M.replace(body_text, max_rules, enforcement)
  local raw = go_trim(body_text or "")
  if raw == "" then return 200, RESET_BODY, DENY_ALL_DOC end
  local pol, err = parse_doc(raw)
  if not pol then return fail(400, err) end
  local over = over_limit(pol, max_rules)
  if over then return fail(413, over) end
  return 200, status_body(mode_of(pol), enforcement), encode_doc(pol)
end

-- The current document for PATCH and DELETE, or the 500 answer.
local function current(cur_doc_text)
  local pol, err = parse_doc(cur_doc_text)
  if not pol then return nil, "internal error: current policy: " .. err end
  return pol
end

-- The body of PATCH and DELETE: a non-empty JSON array. Returns the decoded
-- array, or nil, 400 and the message (`what` names the body in it: "patch
-- rules", "delete targets"). A JSON null counts as an empty array, as Go
-- unmarshals it into a nil slice.
local function array_body(body_text, what)
  local raw = go_trim(body_text or "")
  if raw == "" then return nil, 400, "empty body" end
  local v, first = decode(raw)
  if v == nil then return nil, 400, "invalid " .. what .. ": " .. first end
  if v ~= NULL and (type(v) ~= "table" or first ~= 91) then
    return nil, 400, "invalid " .. what .. ": expected an array, got " .. json_type(v, first)
  end
  if v == NULL or #v == 0 then return nil, 400, "invalid " .. what .. ": empty array" end
  return v
end

-- PATCH /policy: merge a JSON array of rules into the current document.
function M.patch(cur_doc_text, body_text, max_rules, enforcement)
  local v, status, msg = array_body(body_text, "patch rules")
  if not v then return fail(status, msg) end

  -- Unmarshal into []EgressRule: elements are objects (null is a zero
  -- rule), action and target strings (null leaves "").
  local patch = {}
  for i = 1, #v do
    local r = v[i]
    local action, target
    if r ~= NULL then
      if type(r) ~= "table" or r[1] ~= nil then
        return fail(400, format("invalid patch rules: [%d]: expected an object, got %s", i - 1, json_type(r)))
      end
      action, target = field(r, "action", "action"), field(r, "target", "target")
      if action ~= nil and action ~= NULL and type(action) ~= "string" then
        return fail(400, format("invalid patch rules: [%d].action: expected a string, got %s", i - 1, json_type(action)))
      end
      if target ~= nil and target ~= NULL and type(target) ~= "string" then
        return fail(400, format("invalid patch rules: [%d].target: expected a string, got %s", i - 1, json_type(target)))
      end
    end
    if action == NULL then action = nil end
    if target == NULL then target = nil end
    patch[i] = { action = action or "", target = target or "" }
  end

  local base, err = current(cur_doc_text)
  if not base then return fail(500, err) end

  -- mergeEgressRules: patch first, then the base; the first rule of each
  -- key (strings.ToLower(target), untrimmed) wins.
  local merged, n, seen = {}, 0, {}
  for i = 1, #patch do
    local r = patch[i]
    local key = lower(r.target)
    if not seen[key] then
      seen[key] = true
      n = n + 1
      merged[n] = r
    end
  end
  local base_egress = base.egress or {}
  for i = 1, #base_egress do
    local r = base_egress[i]
    local key = lower(r.target)
    if not seen[key] then
      seen[key] = true
      n = n + 1
      merged[n] = r
    end
  end

  local pol
  pol, err = from_decoded({ defaultAction = base.default, egress = merged })
  if not pol then
    return fail(400, "invalid merged policy: " .. (gsub(err, "^invalid policy: ", "")))
  end
  local over = over_limit(pol, max_rules)
  if over then return fail(413, over) end
  return 200, status_body(mode_of(pol), enforcement), encode_doc(pol)
end

-- DELETE /policy: remove the rules whose targets are listed.
function M.delete(cur_doc_text, body_text, enforcement)
  local v, status, msg = array_body(body_text, "delete targets")
  if not v then return fail(status, msg) end

  local remove = {}
  for i = 1, #v do
    local t = v[i]
    if type(t) == "string" then
      local key = lower(go_trim(t))
      if key ~= "" then remove[key] = true end
    elseif t ~= NULL then
      return fail(400, format("invalid delete targets: [%d]: expected a string, got %s", i - 1, json_type(t)))
    end
  end

  local base, err = current(cur_doc_text)
  if not base then return fail(500, err) end

  local kept, n, removed = {}, 0, 0
  local base_egress = base.egress or {}
  for i = 1, #base_egress do
    local r = base_egress[i]
    if remove[lower(r.target)] then
      removed = removed + 1
    else
      n = n + 1
      kept[n] = r
    end
  end
  if removed == 0 then
    return 200, status_body(mode_of(base), enforcement, "no matching targets found"), nil
  end

  local pol
  pol, err = from_decoded({ defaultAction = base.default, egress = kept })
  if not pol then return fail(500, "internal error: " .. err) end
  return 200, status_body(mode_of(pol), enforcement), encode_doc(pol)
end

-- GET /policy/explain --------------------------------------------------------

local EXPLAIN_PARAMS = { name = true, qtype = true, client = true, transport = true }

local function url_decode(s)
  s = gsub(s, "+", " ")
  return (gsub(s, "%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

-- api.explain_args(query): the parameters of GET /policy/explain from its
-- raw query string (percent-decoded, '+' as a space as forms send it):
-- name (required), qtype, client, transport (nil when absent; the C side
-- checks their values and applies the defaults A, 127.0.0.1, udp). Returns
-- name, qtype, client, transport, or nil and the 400 message.
function M.explain_args(query)
  local args = {}
  for pair in string.gmatch(query or "", "[^&]+") do
    local k, v = string.match(pair, "^([^=]*)=?(.*)$")
    k = url_decode(k)
    if not EXPLAIN_PARAMS[k] then
      return nil, format("unknown parameter %s (GET /policy/explain?name=NAME"
        .. "[&qtype=A][&client=IP][&transport=udp|tcp])", enc_string(k))
    end
    if args[k] ~= nil then return nil, format("parameter %s given twice", k) end
    args[k] = url_decode(v)
  end
  if args.name == nil then
    return nil, "missing name (GET /policy/explain?name=NAME[&qtype=A][&client=IP][&transport=udp|tcp])"
  end
  return args.name, args.qtype, args.client, args.transport
end

-- The entry point of the C side: one call per /policy request, by method.
-- Returns status, body and the new document (nil when nothing changes), or
-- nil for a method /policy does not serve.
local handlers = {
  GET = function(cur, _, _, e) return M.get(cur, e) end,
  POST = function(_, body, max, e) return M.replace(body, max, e) end,
  PATCH = function(cur, body, max, e) return M.patch(cur, body, max, e) end,
  DELETE = function(cur, body, _, e) return M.delete(cur, body, e) end,
}
handlers.PUT = handlers.POST

function M.handle(method, cur_doc_text, body_text, max_rules, enforcement)
  local h = handlers[method]
  if not h then return nil end
  return h(cur_doc_text, body_text, max_rules, enforcement)
end

return M
