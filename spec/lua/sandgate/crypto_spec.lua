local crypto = require "sandgate.crypto"

describe("sandgate.crypto", function()
  it("computes SHA-256 (FIPS 180-2 vectors)", function()
    assert.equals("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
      crypto.hex(crypto.sha256("")))
    assert.equals("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
      crypto.hex(crypto.sha256("abc")))
    assert.equals(32, #crypto.sha256("abc"))
    -- Bytes, not C strings: a NUL does not end the input.
    assert.are_not.equal(crypto.sha256("a\0b"), crypto.sha256("a"))
  end)

  it("gives a hex prefix of the digest", function()
    assert.equals("ba7816bf", crypto.sha256_hex_prefix("abc", 8))
    assert.equals("ba781", crypto.sha256_hex_prefix("abc", 5))
  end)

  it("hex-encodes every byte value", function()
    assert.equals("00ff7f0a", crypto.hex("\0\255\127\n"))
    assert.equals("", crypto.hex(""))
  end)

  it("compares strings", function()
    assert.is_true(crypto.equal("secret", "secret"))
    assert.is_true(crypto.equal("", ""))
    assert.is_false(crypto.equal("secret", "secreT"))
    assert.is_false(crypto.equal("Secret", "secret"))
    assert.is_false(crypto.equal("secret", "secret2"))
    assert.is_false(crypto.equal("a\0x", "a\0y"))
    assert.is_false(crypto.equal(nil, "x"))
    assert.is_false(crypto.equal("x", 1))
  end)

  describe("base64_decode", function()
    it("decodes standard base64 with padding", function()
      assert.equals("my-test-secret", crypto.base64_decode("bXktdGVzdC1zZWNyZXQ="))
      assert.equals("a", crypto.base64_decode("YQ=="))
      assert.equals("ab", crypto.base64_decode("YWI="))
      assert.equals("abc", crypto.base64_decode("YWJj"))
      assert.equals("", crypto.base64_decode(""))
      assert.equals("\251\255\191", crypto.base64_decode("+/+/"))
    end)

    it("refuses anything else, naming the problem", function()
      local cases = {
        { "YQ", "length is not a multiple of 4" },
        { "YQ=", "length is not a multiple of 4" },
        { "Y===", "invalid character at offset 1" },
        { "Y-Q=", "invalid character at offset 1" },
        { "YQ==YQ==", "invalid character at offset 2" },
        { "YR==", "non-canonical padding" },
        { "YWJ=", "non-canonical padding" },
        { "YW J", "invalid character at offset 2" },
      }
      for _, c in ipairs(cases) do
        local out, err = crypto.base64_decode(c[1])
        assert.is_nil(out, c[1])
        assert.equals(c[2], err, c[1])
      end
      assert.is_nil(crypto.base64_decode(42))
    end)
  end)
end)
