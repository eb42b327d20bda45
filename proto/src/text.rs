//! Output as text that can be stored and shown: build and app output is arbitrary bytes, and
//! PostgreSQL's text type takes neither NUL nor invalid UTF-8. Both are escaped, never dropped:
//! NUL as `\0`, each byte that is not part of valid UTF-8 as `\xNN`.

/// `bytes` as a string with NUL and invalid UTF-8 escaped.
pub fn escape_bytes(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        push_valid(&mut out, chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
    out
}

/// `text` with NUL escaped (a `str` is valid UTF-8 already).
pub fn escape_str(text: &str) -> std::borrow::Cow<'_, str> {
    match text.contains('\0') {
        false => std::borrow::Cow::Borrowed(text),
        true => {
            let mut out = String::with_capacity(text.len() + 8);
            push_valid(&mut out, text);
            std::borrow::Cow::Owned(out)
        }
    }
}

fn push_valid(out: &mut String, valid: &str) {
    let mut rest = valid;
    while let Some(i) = rest.find('\0') {
        out.push_str(&rest[..i]);
        out.push_str("\\0");
        rest = &rest[i + 1..];
    }
    out.push_str(rest);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_and_invalid_utf8_are_escaped_and_everything_else_kept() {
        assert_eq!(escape_bytes(b"plain \xc3\xa9 text"), "plain é text");
        assert_eq!(escape_bytes(b"a\0b\0"), "a\\0b\\0");
        assert_eq!(escape_bytes(b"bad \xff\xfe end"), "bad \\xff\\xfe end");
        assert_eq!(escape_bytes(b"cut \xe2\x82"), "cut \\xe2\\x82");
        assert_eq!(escape_bytes(b"\x1b[31mred\x1b[0m\t"), "\x1b[31mred\x1b[0m\t");
        assert_eq!(escape_str("x\0y"), "x\\0y");
        assert!(matches!(escape_str("clean"), std::borrow::Cow::Borrowed(_)));
    }
}
