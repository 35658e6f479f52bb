//! Shared helpers for felix-rs integration tests.

pub mod tshark {
    //! Reading tshark's `-T json` output.
    //!
    //! tshark writes one JSON object per protocol tree node, and a node with
    //! several children of the same field (two BGP messages in one frame,
    //! two path attributes, two communities) becomes an object with
    //! *repeated keys*, in tree order. `serde_json::Value` keeps only one of
    //! them, so [`Node`] keeps every key, in document order, and [`parse`]
    //! is a reader of its own.

    use std::path::Path;
    use std::process::Command;

    /// One JSON value with objects kept as ordered lists of entries.
    #[derive(Clone, Debug, PartialEq)]
    pub enum Node {
        /// Strings, and numbers, booleans and null in their JSON spelling
        /// (tshark writes field values as strings anyway).
        Value(String),
        Array(Vec<Node>),
        Object(Vec<(String, Node)>),
    }

    impl Node {
        /// The entries of an object (nothing for other values).
        pub fn entries(&self) -> &[(String, Node)] {
            match self {
                Node::Object(e) => e,
                _ => &[],
            }
        }

        /// The first direct child named `key`.
        pub fn get(&self, key: &str) -> Option<&Node> {
            self.entries()
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v)
        }

        /// Every direct child named `key`, in order.
        pub fn get_all<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
            self.entries()
                .iter()
                .filter(move |(k, _)| k == key)
                .map(|(_, v)| v)
        }

        /// Every node named `key` anywhere below this one, depth first in
        /// document order (a match's own children are searched too).
        pub fn find_all<'a>(&'a self, key: &str) -> Vec<&'a Node> {
            let mut out = Vec::new();
            self.find_into(key, &mut out);
            out
        }

        fn find_into<'a>(&'a self, key: &str, out: &mut Vec<&'a Node>) {
            match self {
                Node::Object(entries) => {
                    for (k, v) in entries {
                        if k == key {
                            out.push(v);
                        }
                        v.find_into(key, out);
                    }
                }
                Node::Array(items) => items.iter().for_each(|v| v.find_into(key, out)),
                Node::Value(_) => {}
            }
        }

        /// The first node named `key` anywhere below this one.
        pub fn find(&self, key: &str) -> Option<&Node> {
            self.find_all(key).into_iter().next()
        }

        pub fn as_str(&self) -> Option<&str> {
            match self {
                Node::Value(s) => Some(s),
                _ => None,
            }
        }

        /// A direct child's value as text.
        pub fn str_of(&self, key: &str) -> Option<&str> {
            self.get(key).and_then(Node::as_str)
        }

        /// A direct child's value as a number; tshark writes some integer
        /// fields in decimal and some (flags, types) in `0x` hex.
        pub fn num_of(&self, key: &str) -> Option<u64> {
            self.str_of(key).and_then(parse_number)
        }
    }

    /// Parses tshark's decimal or `0x`-prefixed hexadecimal integers.
    pub fn parse_number(s: &str) -> Option<u64> {
        match s.strip_prefix("0x") {
            Some(hex) => u64::from_str_radix(hex, 16).ok(),
            None => s.parse().ok(),
        }
    }

    /// Parses tshark's byte strings (`ff:ff:00`, or `ff ff 00` / `ffff00`).
    pub fn parse_bytes(s: &str) -> Option<Vec<u8>> {
        let digits: Vec<u8> = s.bytes().filter(|c| !matches!(c, b':' | b' ')).collect();
        let pairs = digits.chunks_exact(2);
        if !pairs.remainder().is_empty() {
            return None;
        }
        pairs
            .map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok())
            .collect()
    }

    /// Parses JSON text into a [`Node`], keeping repeated keys.
    pub fn parse(text: &str) -> Result<Node, String> {
        let mut p = Parser {
            s: text.as_bytes(),
            pos: 0,
        };
        let v = p.value()?;
        p.ws();
        if p.pos != p.s.len() {
            return Err(p.error("trailing characters"));
        }
        Ok(v)
    }

    /// A small recursive-descent JSON reader (RFC 8259); serde_json's
    /// `Value` cannot hold repeated keys.
    struct Parser<'a> {
        s: &'a [u8],
        pos: usize,
    }

    impl Parser<'_> {
        fn error(&self, what: &str) -> String {
            format!("JSON: {what} at byte {}", self.pos)
        }

        fn ws(&mut self) {
            while self
                .s
                .get(self.pos)
                .is_some_and(|c| c.is_ascii_whitespace())
            {
                self.pos += 1;
            }
        }

        fn next(&mut self) -> Result<u8, String> {
            let c = *self
                .s
                .get(self.pos)
                .ok_or_else(|| self.error("unexpected end"))?;
            self.pos += 1;
            Ok(c)
        }

        fn expect(&mut self, want: u8) -> Result<(), String> {
            self.ws();
            if self.next()? == want {
                Ok(())
            } else {
                self.pos -= 1;
                Err(self.error(&format!("expected {:?}", want as char)))
            }
        }

        fn value(&mut self) -> Result<Node, String> {
            self.ws();
            match self.s.get(self.pos) {
                Some(b'{') => self.object(),
                Some(b'[') => self.array(),
                Some(b'"') => Ok(Node::Value(self.string()?)),
                Some(_) => {
                    let start = self.pos;
                    while self.s.get(self.pos).is_some_and(|c| {
                        c.is_ascii_alphanumeric() || matches!(c, b'-' | b'+' | b'.')
                    }) {
                        self.pos += 1;
                    }
                    let word = std::str::from_utf8(&self.s[start..self.pos])
                        .map_err(|_| self.error("bad literal"))?;
                    let number = word.parse::<f64>().is_ok()
                        && word.starts_with(|c: char| c == '-' || c.is_ascii_digit());
                    if number || matches!(word, "true" | "false" | "null") {
                        Ok(Node::Value(word.to_owned()))
                    } else {
                        Err(self.error("bad literal"))
                    }
                }
                None => Err(self.error("unexpected end")),
            }
        }

        fn object(&mut self) -> Result<Node, String> {
            self.expect(b'{')?;
            let mut entries = Vec::new();
            self.ws();
            if self.s.get(self.pos) == Some(&b'}') {
                self.pos += 1;
                return Ok(Node::Object(entries));
            }
            loop {
                self.ws();
                let key = self.string()?;
                self.expect(b':')?;
                entries.push((key, self.value()?));
                self.ws();
                match self.next()? {
                    b',' => continue,
                    b'}' => return Ok(Node::Object(entries)),
                    _ => return Err(self.error("expected ',' or '}'")),
                }
            }
        }

        fn array(&mut self) -> Result<Node, String> {
            self.expect(b'[')?;
            let mut items = Vec::new();
            self.ws();
            if self.s.get(self.pos) == Some(&b']') {
                self.pos += 1;
                return Ok(Node::Array(items));
            }
            loop {
                items.push(self.value()?);
                self.ws();
                match self.next()? {
                    b',' => continue,
                    b']' => return Ok(Node::Array(items)),
                    _ => return Err(self.error("expected ',' or ']'")),
                }
            }
        }

        fn hex4(&mut self) -> Result<u32, String> {
            let digits = self
                .s
                .get(self.pos..self.pos + 4)
                .ok_or_else(|| self.error("short \\u escape"))?;
            let v = std::str::from_utf8(digits)
                .ok()
                .and_then(|d| u32::from_str_radix(d, 16).ok())
                .ok_or_else(|| self.error("bad \\u escape"))?;
            self.pos += 4;
            Ok(v)
        }

        fn string(&mut self) -> Result<String, String> {
            self.expect(b'"')?;
            let mut out = Vec::new();
            loop {
                match self.next()? {
                    b'"' => {
                        return String::from_utf8(out)
                            .map_err(|_| self.error("string is not UTF-8"))
                    }
                    b'\\' => {
                        let c = match self.next()? {
                            b'"' => '"',
                            b'\\' => '\\',
                            b'/' => '/',
                            b'b' => '\u{8}',
                            b'f' => '\u{c}',
                            b'n' => '\n',
                            b'r' => '\r',
                            b't' => '\t',
                            b'u' => {
                                let mut cp = self.hex4()?;
                                if (0xd800..0xdc00).contains(&cp)
                                    && self.s.get(self.pos..self.pos + 2) == Some(&b"\\u"[..])
                                {
                                    self.pos += 2;
                                    let low = self.hex4()?;
                                    cp = 0x10000
                                        + ((cp - 0xd800) << 10)
                                        + (low.wrapping_sub(0xdc00) & 0x3ff);
                                }
                                char::from_u32(cp).unwrap_or('\u{fffd}')
                            }
                            _ => return Err(self.error("bad escape")),
                        };
                        let mut buf = [0u8; 4];
                        out.extend_from_slice(c.encode_utf8(&mut buf).as_bytes());
                    }
                    c => out.push(c),
                }
            }
        }
    }

    /// Whether a `tshark` binary can be run.
    pub fn available() -> bool {
        Command::new("tshark")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    }

    /// One packet of tshark's JSON output: its frame number and the
    /// `_source.layers` object.
    #[derive(Clone, Debug)]
    pub struct Packet {
        pub frame: u64,
        pub layers: Node,
    }

    impl Packet {
        /// The top-level entries named `protocol` (one per PDU: a frame with
        /// three BGP messages has three `bgp` entries).
        pub fn protocol<'a>(&'a self, protocol: &'a str) -> impl Iterator<Item = &'a Node> + 'a {
            self.layers.get_all(protocol)
        }
    }

    /// Runs `tshark -r FILE -T json` with the display filter and extra
    /// arguments given, in a private, empty configuration directory (so a
    /// user's preferences cannot change the dissection), and returns the
    /// packets. `config_dir` must be a writable directory.
    pub fn read_json(
        capture: &Path,
        display_filter: &str,
        extra_args: &[&str],
        config_dir: &Path,
    ) -> Result<Vec<Packet>, String> {
        let out = Command::new("tshark")
            .env("WIRESHARK_CONFIG_DIR", config_dir)
            .env("XDG_CONFIG_HOME", config_dir)
            .env("HOME", config_dir)
            .arg("-n")
            .arg("-r")
            .arg(capture)
            .args(["-Y", display_filter, "-T", "json"])
            .args(extra_args)
            .output()
            .map_err(|e| format!("running tshark: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "tshark failed on {}: {}",
                capture.display(),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        let text = String::from_utf8(out.stdout)
            .map_err(|e| format!("tshark output is not UTF-8: {e}"))?;
        let root = parse(&text).map_err(|e| format!("tshark {e}"))?;
        let Node::Array(packets) = root else {
            return Err("tshark JSON is not an array".to_owned());
        };
        packets
            .into_iter()
            .map(|p| {
                let layers = p
                    .get("_source")
                    .and_then(|s| s.get("layers"))
                    .cloned()
                    .ok_or("packet without _source.layers")?;
                let frame = layers
                    .get("frame")
                    .and_then(|f| f.num_of("frame.number"))
                    .ok_or("packet without frame.number")?;
                Ok(Packet { frame, layers })
            })
            .collect()
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::tshark::{parse, parse_bytes, parse_number, Node};

    #[test]
    fn json_keeps_repeated_keys_in_order() {
        let n =
            parse(r#"{"a": "1", "b": {"c": [true, null, -2.5e3]}, "a": "x\"\u00e9\ud83d\ude00"}"#)
                .unwrap();
        let a: Vec<&str> = n.get_all("a").filter_map(Node::as_str).collect();
        assert_eq!(a, ["1", "x\"\u{e9}\u{1f600}"]);
        assert_eq!(
            n.find("c"),
            Some(&Node::Array(vec![
                Node::Value("true".into()),
                Node::Value("null".into()),
                Node::Value("-2.5e3".into())
            ]))
        );
        assert!(parse("{\"a\": }").is_err());
        assert!(parse("[1, 2] x").is_err());
        assert!(parse("{}").is_ok_and(|n| n.entries().is_empty()));
    }

    #[test]
    fn numbers_and_bytes() {
        assert_eq!(parse_number("0x90"), Some(0x90));
        assert_eq!(parse_number("4200000001"), Some(4_200_000_001));
        assert_eq!(parse_number("x"), None);
        assert_eq!(parse_bytes("20:fd:00"), Some(vec![0x20, 0xfd, 0]));
        assert_eq!(parse_bytes("abc"), None);
        assert_eq!(parse_bytes("zz"), None);
    }
}
