-- The few cryptographic primitives the ingress plane needs, from OpenSSL's
-- libcrypto through the FFI: SHA-256, a constant-time comparison, hex and a
-- strict base64 decoder.
--
--   crypto.sha256(bytes)        -> 32 raw bytes
--   crypto.hex(bytes)           -> lower-case hex
--   crypto.equal(a, b)          -> true when a == b, in time independent of
--                                  where they differ (CRYPTO_memcmp)
--   crypto.base64_decode(text)  -> bytes, or nil and the problem
--
-- Inside the server the binary links libcrypto, so its symbols resolve
-- through ffi.C; under plain luajit (busted, `sandgate check` run by hand)
-- the library is loaded by name.
local ffi = require "ffi"

local byte, char, sub, format = string.byte, string.char, string.sub, string.format
local concat = table.concat
local band, rshift, lshift, bor = bit.band, bit.rshift, bit.lshift, bit.bor
local type, tostring, pcall = type, tostring, pcall

-- Guarded: another module in the same state may already have declared them,
-- and LuaJIT refuses a redefinition.
pcall(ffi.cdef, [[
unsigned char *SHA256(const unsigned char *d, size_t n, unsigned char *md);
int CRYPTO_memcmp(const void *a, const void *b, size_t len);
]])

local function resolve()
  local ok = pcall(function() return ffi.C.SHA256 and ffi.C.CRYPTO_memcmp end)
  if ok then return ffi.C end
  local loaded, lib = pcall(ffi.load, "crypto")
  if not loaded then
    loaded, lib = pcall(ffi.load, "libcrypto.so.3")
  end
  if not loaded then
    error("sandgate.crypto: libcrypto is not available: " .. tostring(lib), 0)
  end
  return lib
end

local lib = resolve()

local M = {}

-- One output buffer for every digest: the digest is copied into a Lua
-- string before the next call can overwrite it.
local digest = ffi.new("unsigned char[32]")

function M.sha256(s)
  lib.SHA256(s, #s, digest)
  return ffi.string(digest, 32)
end

-- The first n hex digits of SHA-256(s), read from the digest buffer
-- without building the 32-byte string first (route signatures use 8).
local HEX = {}
for i = 0, 255 do HEX[i] = format("%02x", i) end

function M.sha256_hex_prefix(s, n)
  lib.SHA256(s, #s, digest)
  if n == 8 then
    return HEX[digest[0]] .. HEX[digest[1]] .. HEX[digest[2]] .. HEX[digest[3]]
  end
  local parts = {}
  for i = 0, rshift(n + 1, 1) - 1 do parts[i + 1] = HEX[digest[i]] end
  return sub(concat(parts), 1, n)
end

function M.hex(s)
  local parts = {}
  for i = 1, #s do parts[i] = HEX[byte(s, i)] end
  return concat(parts)
end

-- Constant time in the contents. The length is not secret (it is compared
-- first, like Go's subtle.ConstantTimeCompare); callers that must hide it
-- compare digests instead.
function M.equal(a, b)
  if type(a) ~= "string" or type(b) ~= "string" then return false end
  local n = #a
  if n ~= #b then return false end
  if n == 0 then return true end
  return lib.CRYPTO_memcmp(a, b, n) == 0
end

-- Base64 (RFC 4648 standard alphabet, with padding), strict: any byte
-- outside the alphabet, a missing or misplaced '=', or non-zero bits in the
-- last partial group is refused. Used at load time only (key material), so
-- clarity beats speed here.
local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_VALUE = {}
for i = 1, 64 do B64_VALUE[byte(B64, i)] = i - 1 end

function M.base64_decode(s)
  if type(s) ~= "string" then return nil, "not a string" end
  local n = #s
  if n % 4 ~= 0 then return nil, "length is not a multiple of 4" end
  local pad = 0
  if n > 0 and byte(s, n) == 61 then pad = byte(s, n - 1) == 61 and 2 or 1 end
  local out = {}
  for i = 1, n, 4 do
    local last = i + 3 == n
    local v = 0
    for j = 0, 3 do
      local c = byte(s, i + j)
      local d = B64_VALUE[c]
      if not d then
        if not (c == 61 and last and j >= 4 - pad) then
          return nil, format("invalid character at offset %d", i + j - 1)
        end
        d = 0
      end
      v = bor(lshift(v, 6), d)
    end
    local b1, b2, b3 = band(rshift(v, 16), 255), band(rshift(v, 8), 255), band(v, 255)
    if last and pad == 2 then
      if b2 ~= 0 or b3 ~= 0 then return nil, "non-canonical padding" end
      out[#out + 1] = char(b1)
    elseif last and pad == 1 then
      if b3 ~= 0 then return nil, "non-canonical padding" end
      out[#out + 1] = char(b1, b2)
    else
      out[#out + 1] = char(b1, b2, b3)
    end
  end
  return concat(out)
end

return M
