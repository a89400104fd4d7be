"""JsonCanonicalizer: re-write JSON as it arrives, in `json.dumps(..., ensure_ascii=False)` form.

Tool-call arguments stream as fragments whose concatenation must equal the final arguments text.
The model's JSON may use any spacing or escapes, so the fragments cannot be the raw text if the
final text is to be canonical. This scanner turns raw JSON into canonical JSON one character at a
time (no backtracking: linear in the input), so the fragments and the one-piece parse agree for
any chunking. Differences from json.dumps(json.loads(text)): duplicate keys are kept (json.loads
keeps the last), raw control characters inside strings are accepted (and escaped), and a lone
surrogate escape stays an escape; NaN/Infinity are rejected.
"""

from __future__ import annotations

import json

_WS = " \t\n\r"
_TOKEN_CHARS = frozenset("0123456789+-.eEtruefalsn")
_SIMPLE_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r",
                   "t": "\t"}
_HEX = frozenset("0123456789abcdefABCDEF")

# What the scanner expects next, outside strings and number/literal tokens.
_VALUE, _VALUE_OR_CLOSE, _KEY, _KEY_OR_CLOSE, _COLON, _COMMA_OR_CLOSE = range(6)


def _encode_char(ch: str) -> str:
    """One decoded character as json.dumps(ensure_ascii=False) writes it inside a string."""
    if ch == '"':
        return '\\"'
    if ch == "\\":
        return "\\\\"
    code = ord(ch)
    if code < 0x20:
        return {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\b": "\\b", "\f": "\\f"}.get(
            ch, f"\\u{code:04x}")
    if 0xD800 <= code < 0xE000:  # a lone surrogate: keep it an escape (it cannot be UTF-8)
        return f"\\u{code:04x}"
    return ch


def _canonical_token(token: str) -> str:
    """A number or literal token in canonical form; ValueError if it is not JSON."""
    if token in ("true", "false", "null"):
        return token
    if token[0] not in "-0123456789":
        raise ValueError(f"invalid JSON token {token[:20]!r}")
    value = json.loads(token)  # raises ValueError (JSONDecodeError) on a bad number
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"invalid JSON token {token[:20]!r}")
    return json.dumps(value)


class JsonCanonicalizer:
    """Incremental JSON value scanner. `feed(text, pos)` consumes text[pos:] up to the end of the
    value and returns (canonical output, new pos); `done` turns True once the value is complete
    (characters after it are not consumed). Raises ValueError on invalid JSON."""

    def __init__(self, require_object: bool = False) -> None:
        self.require_object = require_object
        self.done = False
        self._stack: list[str] = []  # "o" (object) / "a" (array), innermost last
        self._expect = _VALUE
        self._token = ""  # a pending number or literal
        self._in_string = False
        self._string_is_key = False
        self._escape = ""  # "" none, "\\" after a backslash, "\\uXX.." a partial \u escape
        self._high_surrogate: int | None = None

    def feed(self, text: str, pos: int = 0) -> tuple[str, int]:
        out: list[str] = []
        n = len(text)
        while pos < n and not self.done:
            c = text[pos]
            if self._in_string:
                self._string_char(c, out)
            elif self._token:
                if c in _TOKEN_CHARS:
                    self._token += c
                else:  # the token ends here; the character is read again below
                    out.append(_canonical_token(self._token))
                    self._token = ""
                    self._value_done()
                    continue
            elif c not in _WS:
                self._structural_char(c, out)
            pos += 1
        return "".join(out), pos

    def _structural_char(self, c: str, out: list[str]) -> None:
        expect = self._expect
        if self.require_object and not self._stack and c != "{":
            raise ValueError("expected a JSON object")
        if expect in (_KEY, _KEY_OR_CLOSE):
            if c == '"':
                self._start_string(out, is_key=True)
            elif c == "}" and expect == _KEY_OR_CLOSE:
                self._close(c, out)
            else:
                raise ValueError(f"expected an object key, got {c!r}")
        elif expect == _COLON:
            if c != ":":
                raise ValueError(f"expected ':', got {c!r}")
            out.append(": ")
            self._expect = _VALUE
        elif expect == _COMMA_OR_CLOSE:
            if c == ",":
                out.append(", ")
                self._expect = _KEY if self._stack[-1] == "o" else _VALUE
            elif c in "}]":
                self._close(c, out)
            else:
                raise ValueError(f"expected ',' or a closing bracket, got {c!r}")
        elif c == "]" and expect == _VALUE_OR_CLOSE:
            self._close(c, out)
        else:
            self._start_value(c, out)

    def _start_value(self, c: str, out: list[str]) -> None:
        if c == "{":
            out.append(c)
            self._stack.append("o")
            self._expect = _KEY_OR_CLOSE
        elif c == "[":
            out.append(c)
            self._stack.append("a")
            self._expect = _VALUE_OR_CLOSE
        elif c == '"':
            self._start_string(out, is_key=False)
        elif c in _TOKEN_CHARS:
            self._token = c
        else:
            raise ValueError(f"unexpected {c!r} in JSON")

    def _close(self, c: str, out: list[str]) -> None:
        if self._stack.pop() != ("o" if c == "}" else "a"):
            raise ValueError(f"mismatched {c!r}")
        out.append(c)
        self._value_done()

    def _value_done(self) -> None:
        if self._stack:
            self._expect = _COMMA_OR_CLOSE
        else:
            self.done = True

    def _start_string(self, out: list[str], is_key: bool) -> None:
        out.append('"')
        self._in_string = True
        self._string_is_key = is_key

    def _string_char(self, c: str, out: list[str]) -> None:
        if self._escape == "":
            if c == '"':
                self._flush_surrogate(out)
                out.append('"')
                self._in_string = False
                if self._string_is_key:
                    self._expect = _COLON
                else:
                    self._value_done()
            elif c == "\\":
                self._escape = "\\"
            else:
                self._emit_char(c, out)
        elif self._escape == "\\":
            if c == "u":
                self._escape = "\\u"
            elif c in _SIMPLE_ESCAPES:
                self._escape = ""
                self._emit_char(_SIMPLE_ESCAPES[c], out)
            else:
                raise ValueError(f"invalid escape \\{c}")
        else:
            if c not in _HEX:
                raise ValueError("invalid \\u escape")
            self._escape += c
            if len(self._escape) == 6:
                code = int(self._escape[2:], 16)
                self._escape = ""
                self._unicode_escape(code, out)

    def _unicode_escape(self, code: int, out: list[str]) -> None:
        if 0xD800 <= code < 0xDC00:  # a high surrogate: wait for its low half
            self._flush_surrogate(out)
            self._high_surrogate = code
        elif 0xDC00 <= code < 0xE000 and self._high_surrogate is not None:
            high, self._high_surrogate = self._high_surrogate, None
            out.append(chr(0x10000 + ((high - 0xD800) << 10) + (code - 0xDC00)))
        else:
            self._emit_char(chr(code), out)

    def _emit_char(self, ch: str, out: list[str]) -> None:
        self._flush_surrogate(out)
        out.append(_encode_char(ch))

    def _flush_surrogate(self, out: list[str]) -> None:
        if self._high_surrogate is not None:
            out.append(f"\\u{self._high_surrogate:04x}")
            self._high_surrogate = None


def canonical_json(text: str, require_object: bool = False) -> str:
    """The whole of `text` (one JSON value, optional surrounding whitespace) in canonical form;
    ValueError if it is not exactly one valid value."""
    scanner = JsonCanonicalizer(require_object=require_object)
    out, pos = scanner.feed(text)
    if not scanner.done:
        if scanner._token and not scanner._stack:  # a bare number/literal ends with the text
            out += _canonical_token(scanner._token)
        else:
            raise ValueError("incomplete JSON")
    if text[pos:].strip(_WS):
        raise ValueError("extra data after JSON")
    return out
