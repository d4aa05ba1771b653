//! Masking of secret values in the log lines a worker sends.
//!
//! A task can print a secret as it is, but also in the forms programs
//! commonly turn it into: base64 (standard and URL-safe alphabets, with and
//! without padding, and inside a longer base64 text such as the
//! `user:password` of an HTTP Basic header) and percent-encoding (as URL
//! components and form values are written). [`Masker`] replaces every such
//! form with `***`.
//!
//! Values shorter than [`MIN_SECRET_BYTES`] are not masked. Replacing every
//! `1` or `ab` in a log would garble it beyond use while protecting nothing:
//! such a value is guessed in a few thousand tries, and the pattern of `***`
//! in otherwise ordinary text would show where it sits anyway. The job
//! says so in the attempt's log instead. The empty string is never masked.

/// Shortest secret value that is masked.
pub const MIN_SECRET_BYTES: usize = 4;

/// What replaces a secret.
const MASK: &str = "***";

/// Shortest piece of a longer base64 text that is masked: shorter pieces
/// would match ordinary base64 output by chance.
const MIN_BASE64_CORE: usize = 6;

/// The secret forms to replace, longest first.
#[derive(Debug, Clone, Default)]
pub struct Masker {
    patterns: Vec<String>,
}

impl Masker {
    /// Builds the patterns for `secrets`; returns the masker and the values
    /// that were too short to mask (for a warning that names no value).
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a str>) -> (Self, usize) {
        let mut patterns = Vec::new();
        let mut too_short = 0;
        for secret in secrets {
            if secret.is_empty() {
                continue;
            }
            if secret.len() < MIN_SECRET_BYTES {
                too_short += 1;
                continue;
            }
            patterns.push(secret.to_owned());
            // Lines are masked one at a time: each line of a multi-line
            // secret (a PEM key) is a secret of its own.
            patterns.extend(
                secret
                    .lines()
                    .map(|l| l.trim_end_matches('\r'))
                    .filter(|l| l.len() >= MIN_SECRET_BYTES)
                    .map(str::to_owned),
            );
            patterns.extend(percent_forms(secret));
            patterns.extend(base64_forms(secret.as_bytes()));
        }
        patterns.sort_by(|a, b| b.len().cmp(&a.len()).then_with(|| a.cmp(b)));
        patterns.dedup();
        (Self { patterns }, too_short)
    }

    /// Whether there is anything to mask.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `text` with every secret form replaced by `***`.
    pub fn mask(&self, text: &str) -> String {
        let mut out = text.to_owned();
        for p in &self.patterns {
            if out.contains(p.as_str()) {
                out = out.replace(p.as_str(), MASK);
            }
        }
        out
    }
}

/// Percent-encoded forms: RFC 3986 components (upper- and lowercase hex),
/// form values (`+` for space), and the common "safe" sets that leave `/`
/// (Python's `quote`) or `!'()*` (JavaScript's `encodeURIComponent`) alone.
fn percent_forms(secret: &str) -> Vec<String> {
    let encode = |keep: &str, plus: bool, lower: bool| {
        let mut out = String::with_capacity(secret.len() * 3);
        for &b in secret.as_bytes() {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || keep.as_bytes().contains(&b) {
                out.push(char::from(b));
            } else if plus && b == b' ' {
                out.push('+');
            } else if lower {
                out.push_str(&format!("%{b:02x}"));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    };
    [
        encode("", false, false),
        encode("", false, true),
        encode("", true, false),
        encode("/", false, false),
        encode("!'()*", false, false),
    ]
    .into_iter()
    .filter(|form| form != secret)
    .collect()
}

const STANDARD: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
const URL_SAFE: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/// Base64 without padding.
fn base64(bytes: &[u8], alphabet: &[u8; 64]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |n, (i, &b)| n | (u32::from(b) << (16 - 8 * i)));
        for i in 0..=chunk.len() {
            out.push(char::from(alphabet[((n >> (18 - 6 * i)) & 63) as usize]));
        }
    }
    out
}

/// The secret's base64 on its own (padded and not), and the characters that
/// stay the same wherever it starts inside a longer base64 text: the secret
/// after 0, 1 or 2 other bytes, less the characters those bytes (or the
/// ones after it) share.
fn base64_forms(secret: &[u8]) -> Vec<String> {
    let mut out = Vec::new();
    for alphabet in [STANDARD, URL_SAFE] {
        let whole = base64(secret, alphabet);
        let pad = (3 - secret.len() % 3) % 3;
        out.push(format!("{whole}{}", "=".repeat(pad)));
        out.push(whole);
        for offset in 0..3usize {
            let mut shifted = vec![0u8; offset];
            shifted.extend_from_slice(secret);
            let encoded = base64(&shifted, alphabet);
            let start = (8 * offset).div_ceil(6);
            let end = 8 * (offset + secret.len()) / 6;
            if end >= start + MIN_BASE64_CORE {
                out.push(encoded[start..end].to_owned());
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn masker(secrets: &[&str]) -> Masker {
        Masker::new(secrets.iter().copied()).0
    }

    #[test]
    fn our_base64_matches_the_standard_vectors() {
        for (plain, encoded) in [
            ("", ""),
            ("f", "Zg"),
            ("fo", "Zm8"),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg"),
            ("fooba", "Zm9vYmE"),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes(), STANDARD), encoded);
        }
        assert_eq!(base64(&[0xfb, 0xff], STANDARD), "+/8");
        assert_eq!(base64(&[0xfb, 0xff], URL_SAFE), "-_8");
    }

    #[test]
    fn plain_base64_and_url_encoded_forms_are_masked() {
        let secret = "p@ss w/rd+?~x";
        let m = masker(&[secret]);
        let lines = [
            format!("raw {secret} end"),
            // printf %s 'p@ss w/rd+?~x' | base64
            "std cEBzcyB3L3JkKz9+eA== end".to_owned(),
            "nopad cEBzcyB3L3JkKz9+eA end".to_owned(),
            "urlsafe cEBzcyB3L3JkKz9-eA== end".to_owned(),
            "pct p%40ss%20w%2Frd%2B%3F~x end".to_owned(),
            "lower p%40ss%20w%2frd%2b%3f~x end".to_owned(),
            "form p%40ss+w%2Frd%2B%3F~x end".to_owned(),
            "python p%40ss%20w/rd%2B%3F~x end".to_owned(),
        ];
        for line in lines {
            let masked = m.mask(&line);
            let (head, _) = line.split_once(' ').unwrap();
            assert_eq!(masked, format!("{head} *** end"), "{line}");
        }
    }

    #[test]
    fn a_secret_inside_a_longer_base64_text_is_masked() {
        // `Authorization: Basic base64("admin:hunter2-secret")`.
        let secret = "hunter2-secret";
        let m = masker(&[secret]);
        for prefix in ["", "a", "ad", "admin:"] {
            let text = format!("{prefix}{secret}");
            let encoded = base64(text.as_bytes(), STANDARD);
            let masked = m.mask(&format!("Authorization: Basic {encoded}="));
            assert!(masked.contains(MASK), "{prefix:?}: {masked}");
            let visible: String = masked
                .chars()
                .filter(|c| c.is_ascii_alphanumeric())
                .collect();
            // What is left visible is at most a few characters either side.
            assert!(
                visible.len() <= "AuthorizationBasic".len() + prefix.len().div_ceil(3) * 4 + 2,
                "{prefix:?}: {masked}"
            );
        }
    }

    #[test]
    fn empty_and_short_values_are_not_masked_and_are_counted() {
        let (m, too_short) = Masker::new(["", "a", "abc", "abcd"]);
        assert_eq!(too_short, 2);
        assert_eq!(m.mask("a abc b"), "a abc b");
        assert_eq!(m.mask("xabcdx"), "x***x");
        let (m, _) = Masker::new([""]);
        assert!(m.is_empty());
        assert_eq!(m.mask("anything"), "anything");
    }

    #[test]
    fn each_line_of_a_multi_line_secret_is_masked() {
        let m = masker(&["-----BEGIN KEY-----\r\nMIIEabcdef\n-----END KEY-----"]);
        assert_eq!(m.mask("MIIEabcdef"), "***");
        assert_eq!(m.mask("-----END KEY-----"), "***");
    }

    #[test]
    fn longer_forms_are_replaced_before_the_shorter_ones_inside_them() {
        let m = masker(&["secret", "secret-and-more"]);
        assert_eq!(m.mask("x secret-and-more y secret"), "x *** y ***");
    }
}
