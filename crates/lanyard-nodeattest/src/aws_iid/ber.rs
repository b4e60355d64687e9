//! A small, strict-enough BER/DER reader for the PKCS #7 signatures AWS attaches to
//! instance identity documents: single-byte tags, definite lengths up to 4 bytes,
//! and indefinite lengths (for constructed values, as streaming encoders emit them).
//! Nesting is bounded so hostile input cannot exhaust the stack.

/// Deepest nesting accepted.
pub(crate) const MAX_DEPTH: usize = 32;

/// Why BER input could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BerError {
    /// The input ended inside a value.
    #[error("the encoding ends early")]
    Truncated,
    /// A form this reader does not accept.
    #[error("unsupported encoding: {0}")]
    Unsupported(&'static str),
    /// Nesting deeper than accepted.
    #[error("the encoding is nested too deeply")]
    TooDeep,
    /// A value is not what the structure requires.
    #[error("{0}")]
    Unexpected(String),
}

/// Tag bytes used here (class and constructed bit included).
pub(crate) mod tag {
    pub const INTEGER: u8 = 0x02;
    pub const OCTET_STRING: u8 = 0x04;
    pub const OCTET_STRING_CONSTRUCTED: u8 = 0x24;
    pub const OID: u8 = 0x06;
    pub const SEQUENCE: u8 = 0x30;
    pub const SET: u8 = 0x31;
    pub const CONTEXT_0: u8 = 0xA0;
}

/// One element: its tag, its content bytes, and the whole encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Element<'a> {
    pub tag: u8,
    /// Content bytes (for indefinite lengths: without the end-of-contents octets).
    pub content: &'a [u8],
    /// The element's complete encoding (header, content, end-of-contents).
    pub raw: &'a [u8],
    /// Whether the length was indefinite.
    pub indefinite: bool,
    depth: usize,
}

fn read_at(input: &[u8], depth: usize) -> Result<(Element<'_>, &[u8]), BerError> {
    if depth > MAX_DEPTH {
        return Err(BerError::TooDeep);
    }
    let (&tag, rest) = input.split_first().ok_or(BerError::Truncated)?;
    if tag & 0x1F == 0x1F {
        return Err(BerError::Unsupported("multi-byte tags"));
    }
    let (&len0, mut rest) = rest.split_first().ok_or(BerError::Truncated)?;
    let header_len;
    if len0 == 0x80 {
        if tag & 0x20 == 0 {
            return Err(BerError::Unsupported(
                "indefinite length on a primitive value",
            ));
        }
        // Walk the children up to the end-of-contents octets.
        let start = rest;
        let mut consumed = 0usize;
        loop {
            if rest.len() >= 2 && rest[0] == 0 && rest[1] == 0 {
                let content = &start[..consumed];
                let total = 2 + consumed + 2;
                let raw = &input[..total];
                return Ok((
                    Element {
                        tag,
                        content,
                        raw,
                        indefinite: true,
                        depth,
                    },
                    &input[total..],
                ));
            }
            let (child, after) = read_at(rest, depth + 1)?;
            consumed += child.raw.len();
            rest = after;
        }
    }
    let len = if len0 < 0x80 {
        header_len = 2;
        usize::from(len0)
    } else {
        let n = usize::from(len0 & 0x7F);
        if n > 4 {
            return Err(BerError::Unsupported("lengths over 4 bytes"));
        }
        if rest.len() < n {
            return Err(BerError::Truncated);
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        header_len = 2 + n;
        len
    };
    if rest.len() < len {
        return Err(BerError::Truncated);
    }
    let total = header_len + len;
    Ok((
        Element {
            tag,
            content: &rest[..len],
            raw: &input[..total],
            indefinite: false,
            depth,
        },
        &input[total..],
    ))
}

/// Read one element from the front of `input`.
pub(crate) fn read(input: &[u8]) -> Result<(Element<'_>, &[u8]), BerError> {
    read_at(input, 0)
}

impl<'a> Element<'a> {
    /// The children of a constructed element, in order.
    pub fn children(&self) -> Result<Vec<Element<'a>>, BerError> {
        if self.tag & 0x20 == 0 {
            return Err(BerError::Unexpected(format!(
                "tag 0x{:02x} is not a constructed value",
                self.tag
            )));
        }
        let mut out = Vec::new();
        let mut rest = self.content;
        while !rest.is_empty() {
            let (child, after) = read_at(rest, self.depth + 1)?;
            out.push(child);
            rest = after;
        }
        Ok(out)
    }

    /// Require tag `want`.
    pub fn expect(self, want: u8, what: &str) -> Result<Self, BerError> {
        if self.tag == want {
            Ok(self)
        } else {
            Err(BerError::Unexpected(format!(
                "expected {what} (tag 0x{want:02x}), found tag 0x{:02x}",
                self.tag
            )))
        }
    }

    /// The bytes of an OCTET STRING, primitive or (BER) constructed from pieces.
    pub fn octets(&self) -> Result<Vec<u8>, BerError> {
        match self.tag {
            tag::OCTET_STRING => Ok(self.content.to_vec()),
            tag::OCTET_STRING_CONSTRUCTED => {
                let mut out = Vec::new();
                for c in self.children()? {
                    out.extend(c.octets()?);
                }
                Ok(out)
            }
            t => Err(BerError::Unexpected(format!(
                "expected an OCTET STRING, found tag 0x{t:02x}"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn reads_definite_and_indefinite_lengths() {
        // SEQUENCE { INTEGER 5, OCTET STRING "ab" }
        let der = [0x30, 0x07, 0x02, 0x01, 0x05, 0x04, 0x02, b'a', b'b'];
        let (e, rest) = read(&der).unwrap();
        assert!(rest.is_empty() && !e.indefinite);
        let kids = e.children().unwrap();
        assert_eq!(kids[0].content, [5]);
        assert_eq!(kids[1].octets().unwrap(), b"ab");
        // The same with an indefinite length and a constructed OCTET STRING.
        let ber = [
            0x30, 0x80, 0x02, 0x01, 0x05, 0x24, 0x80, 0x04, 0x01, b'a', 0x04, 0x01, b'b', 0, 0, 0,
            0, 0xFF,
        ];
        let (e, rest) = read(&ber).unwrap();
        assert_eq!(rest, [0xFF]);
        assert!(e.indefinite);
        assert_eq!(e.raw.len(), ber.len() - 1);
        let kids = e.children().unwrap();
        assert_eq!(kids[1].octets().unwrap(), b"ab");
        // Long-form length.
        let mut long = vec![0x04, 0x81, 200];
        long.extend(vec![7u8; 200]);
        assert_eq!(read(&long).unwrap().0.content.len(), 200);
    }

    #[test]
    fn refuses_bad_input_without_panicking() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x05, 0x02],
            &[0x1F, 0x01, 0x00],
            &[0x04, 0x80, 0x00, 0x00],
            &[0x04, 0x85, 1, 1, 1, 1, 1],
            &[0x04, 0x82, 0xFF],
            &[0x30, 0x80, 0x02, 0x01],
            &[0x30, 0x80],
        ] {
            assert!(read(bad).is_err(), "{bad:?}");
        }
        // Nesting bomb.
        let mut deep = Vec::new();
        for _ in 0..100 {
            deep.extend([0x30, 0x80]);
        }
        assert_eq!(read(&deep).unwrap_err(), BerError::TooDeep);
        let (e, _) = read(&[0x02, 0x01, 0x00]).unwrap();
        assert!(e.children().is_err());
        assert!(e.octets().is_err());
        assert!(e.expect(tag::SEQUENCE, "a SEQUENCE").is_err());
    }
}
