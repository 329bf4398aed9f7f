//! `exec --mask`: the token replaced by `***` in a stream, as it passes.
//! Bytes that cannot begin the token are passed on at once; only a tail
//! that is a prefix of the token (at most its length less one byte) is
//! held until the next bytes say whether it is the token, or the stream
//! ends — so a token written in pieces, with pauses between them, is still
//! masked, and interactive output is never held for more than that tail.

use zeroize::Zeroizing;

/// What a masked token is replaced by.
pub const MASK: &[u8] = b"***";

/// The masking state of one stream.
pub struct Masker {
    /// The token's bytes.
    needle: Zeroizing<Vec<u8>>,
    /// Bytes received but not passed on: always a proper prefix of the
    /// token (it may hold part of one).
    held: Zeroizing<Vec<u8>>,
}

impl Masker {
    pub fn new(token: &[u8]) -> Masker {
        Masker {
            needle: Zeroizing::new(token.to_vec()),
            held: Zeroizing::new(Vec::with_capacity(token.len())),
        }
    }

    /// Takes `data`, appends to `out` what can be passed on now.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<u8>) {
        let n = self.needle.len();
        if n == 0 {
            out.extend_from_slice(data);
            return;
        }
        let mut work = Zeroizing::new(Vec::with_capacity(self.held.len() + data.len()));
        work.extend_from_slice(&self.held);
        work.extend_from_slice(data);
        self.held.clear();
        let mut i = 0;
        while i + n <= work.len() {
            if work[i..i + n] == self.needle[..] {
                out.extend_from_slice(MASK);
                i += n;
            } else {
                out.push(work[i]);
                i += 1;
            }
        }
        // Fewer than n bytes left: hold the longest suffix that begins the
        // token, pass on what comes before it.
        let rest = &work[i..];
        let keep = (1..=rest.len())
            .rev()
            .find(|&k| rest[rest.len() - k..] == self.needle[..k])
            .unwrap_or(0);
        out.extend_from_slice(&rest[..rest.len() - keep]);
        self.held.extend_from_slice(&rest[rest.len() - keep..]);
    }

    /// The stream ended: what is held is not the token (it is shorter).
    pub fn finish(&mut self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.held);
        self.held.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `chunks` one by one; returns what was passed on after each,
    /// and all of it after the end.
    fn run(token: &str, chunks: &[&str]) -> (Vec<String>, String) {
        let mut m = Masker::new(token.as_bytes());
        let mut all = Vec::new();
        let mut each = Vec::new();
        for c in chunks {
            let mut out = Vec::new();
            m.push(c.as_bytes(), &mut out);
            each.push(String::from_utf8(out.clone()).unwrap());
            all.extend(out);
        }
        m.finish(&mut all);
        (each, String::from_utf8(all).unwrap())
    }

    #[test]
    fn tokens_are_masked_across_boundaries() {
        let t = "tok-SECRET";
        assert_eq!(run(t, &["a tok-SECRET b"]).1, "a *** b");
        assert_eq!(run(t, &["a tok-", "SEC", "RET b"]).1, "a *** b");
        // One byte at a time.
        let text = "xtok-SECRETy";
        let bytes: Vec<String> = text.chars().map(String::from).collect();
        let chunks: Vec<&str> = bytes.iter().map(String::as_str).collect();
        assert_eq!(run(t, &chunks).1, "x***y");
        // Repeated and adjacent tokens.
        assert_eq!(
            run(t, &["tok-SECRETtok-SECRET\n", "tok-SECRET"]).1,
            "******\n***"
        );
        assert_eq!(run("aa", &["aaa"]).1, "***a");
        // A false start, then the token.
        assert_eq!(run(t, &["tok-tok-SECRET"]).1, "tok-***");
        assert_eq!(run(t, &["tok-SE", "tok-SECRET"]).1, "tok-SE***");
    }

    #[test]
    fn only_a_possible_start_of_the_token_is_held() {
        let t = "tok-SECRET";
        let (each, _) = run(t, &["hello\n", "prompt> ", "x tok", "-SECRET!"]);
        assert_eq!(each, ["hello\n", "prompt> ", "x ", "***!"]);
        // Never the whole token, never more than len-1 bytes.
        let (each, _) = run(t, &["tok-SECRE"]);
        assert_eq!(each, [""]);
    }

    #[test]
    fn a_partial_prefix_at_the_end_is_passed_on() {
        assert_eq!(run("tok-SECRET", &["done tok-SEC"]).1, "done tok-SEC");
        assert_eq!(run("tok-SECRET", &["t"]).1, "t");
        assert_eq!(run("tok-SECRET", &[]).1, "");
        assert_eq!(run("", &["as is"]).1, "as is");
    }
}
