//! Masking: the one place that decides what of a plugin's bytes may leave the
//! host. Every outbound channel (stdout, stderr, log lines, task output and
//! errors, trap messages, execution records, CLI errors) passes through here.
//!
//! A [`MaskSet`] belongs to one execution (and one to each task, for what
//! it hands to later tasks). `access::get_secret` adds every value it
//! reveals *before* the plugin receives it, together with the forms common
//! tools produce: base64 (standard and URL-safe, with and without padding),
//! the value inside a larger base64 document at each of the three byte
//! alignments (HTTP Basic auth's `base64("user:" + password)`, as GitHub
//! Actions masks it), hex (lower and upper case), the JSON-string-escaped
//! form, and each line of a multi-line value. Every match becomes the fixed
//! string `***`, whatever the secret's length.
//!
//! Percent-encoding is decoded, not listed (encoders differ in which bytes they
//! escape, and in hex case): a decoding pass percent-decodes the text (`%XX` in
//! either case; `+` read both as itself and as a space) and searches it for the
//! values, so whichever bytes an encoder escapes (Python, JavaScript, Java, Go,
//! PHP all differ) the span is masked. A stream holds back a trailing run of
//! the bytes an encoded value is made of, when it holds an escape (at most
//! three times the longest value), until a byte that ends it, so no encoding is
//! split between two passes.
//!
//! Values (and lines) shorter than [`MIN_MASK_LEN`] bytes are masked only as
//! whole tokens (not touching another letter or digit), and their encodings
//! are not masked: masking every `a1` inside other words would garble output
//! and still not hide a two-character secret.
//!
//! Out of reach, by design: transformations the host cannot know (the value
//! reversed, split with separators, XOR-ed, hashed, encrypted), and a
//! percent-encoding no encoder writes, with a literal space or quote among its
//! escapes. Inside a larger base64 document the one or two characters at each
//! edge of the value's span, which also carry bits of its neighbours, stay
//! visible.

use aho_corasick::{AhoCorasick, AhoCorasickKind, MatchKind};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
use std::borrow::Cow;
use std::sync::{Arc, RwLock};
use zeroize::Zeroizing;

use crate::secret::SecretValue;

/// What every masked occurrence becomes.
pub const MASK: &str = "***";
/// Values shorter than this many bytes are masked only as whole tokens.
pub const MIN_MASK_LEN: usize = 4;
/// Above this many patterns the matcher filters start positions and runs an
/// anchored DFA; below, a contiguous NFA with its own prefilter is faster to
/// build and to run (see `benches/mask.rs`).
const LARGE_SET: usize = 400;
/// Above this many patterns, each at least `GRAM + MEDIUM_MIN_STRIDE - 1`
/// bytes long, the matcher filters positions too (with a contiguous NFA,
/// which builds in microseconds): 120 patterns of ten 24-byte values scan
/// at twice the prefiltered NFA's rate.
const MEDIUM_SET: usize = 40;
const MEDIUM_MIN_STRIDE: usize = 8;

/// The compiled matcher for one snapshot of the mask set.
#[derive(Debug)]
pub struct Matcher {
    ac: Option<AhoCorasick>,
    /// Per pattern id: mask only as a whole token.
    whole_token: Vec<bool>,
    /// The patterns, sorted, for prefix checks on held-back bytes.
    sorted: Vec<Zeroizing<Vec<u8>>>,
    /// Which bytes start some pattern.
    first_bytes: [bool; 256],
    max_len: usize,
    /// For filtered sets: which positions could start a pattern, checked
    /// before the (anchored) automaton runs there.
    starts: Option<Box<StartFilter>>,
    /// The values themselves (those long enough to mask inside words), for
    /// the decoding pass: text is percent-decoded and searched for them,
    /// so any encoder's choice of escaped bytes and hex case is caught.
    plain: Option<Plain>,
    /// Longest such value: an encoded one is at most three times longer.
    max_value_len: usize,
}

/// The decoding pass's automaton over the values, built the first time a
/// text holds a `%` or a `+`: most tasks print none, and each execution
/// would otherwise pay for a second automaton it never runs.
struct Plain {
    values: Vec<Zeroizing<Vec<u8>>>,
    ac: std::sync::OnceLock<AhoCorasick>,
}

impl std::fmt::Debug for Plain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Plain(***)")
    }
}

impl Plain {
    fn automaton(&self) -> &AhoCorasick {
        self.ac.get_or_init(|| {
            // A contiguous NFA, never the DFA the builder picks for a few
            // patterns: a DFA's build grows with the values' length (a 100
            // KiB value took 56 s), the NFA's stays linear.
            AhoCorasick::builder()
                .match_kind(MatchKind::LeftmostLongest)
                .kind(Some(AhoCorasickKind::ContiguousNFA))
                .start_kind(aho_corasick::StartKind::Both)
                .build(self.values.iter().map(|v| v.as_slice()))
                .expect("masking patterns are plain byte strings")
        })
    }
}

/// Large sets have no byte rare enough for a prefilter, and an unanchored
/// automaton over them visits every byte with a cache miss or two. This
/// filter asks, per position, one cheap question instead: does some pattern
/// start with these four bytes (a 256 Ki-bit set of their hashes) or, for
/// patterns shorter than four bytes, with this byte? Only where it says yes
/// does an anchored leftmost-longest search run. The first position where
/// that search matches gives exactly the match an unanchored leftmost-longest
/// search would: the smallest start, then the longest pattern there.
struct StartFilter {
    grams: Vec<u64>,
    short_first: [bool; 256],
    /// Some pattern is shorter than [`GRAM`] bytes.
    has_short: bool,
    /// When every pattern is at least `GRAM + stride - 1` bytes long: the
    /// grams at the first `stride` offsets of every pattern. An occurrence
    /// then covers one of every `stride` consecutive positions with a gram
    /// of this set, so the scan looks at one position in `stride` and
    /// checks the starts before it only where it hits.
    inside: Option<(Vec<u64>, usize)>,
}

impl std::fmt::Debug for StartFilter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StartFilter")
    }
}

/// Bytes of a pattern's start that the filter looks at.
const GRAM: usize = 4;

/// Bits in the filter's set: 256 Ki bits (32 KiB, an L1 data cache), so
/// that a few thousand patterns leave most positions a clear "no".
const FILTER_BITS_LOG2: u32 = 18;

/// Bits in the strided scan's set: 1 Mi bits (128 KiB, an L2 cache), as it
/// holds `stride` grams per pattern.
const INSIDE_BITS_LOG2: u32 = 20;

/// The longest stride: beyond it the set fills faster than the scan speeds up.
const MAX_STRIDE: usize = 21;

fn gram_hash(b: &[u8]) -> usize {
    hash_gram(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

fn hash_gram(gram: u32) -> usize {
    hash_bits(gram, FILTER_BITS_LOG2)
}

fn hash_bits(gram: u32, bits: u32) -> usize {
    (gram.wrapping_mul(0x9E37_79B1) >> (32 - bits)) as usize
}

fn gram_at(buf: &[u8], i: usize) -> u32 {
    u32::from_le_bytes(buf[i..i + GRAM].try_into().expect("four bytes"))
}

impl StartFilter {
    fn new<'p>(patterns: impl Iterator<Item = &'p [u8]> + Clone) -> Self {
        let mut f = StartFilter {
            grams: vec![0; 1 << (FILTER_BITS_LOG2 - 6)],
            short_first: [false; 256],
            has_short: false,
            inside: None,
        };
        for p in patterns.clone() {
            if p.len() >= GRAM {
                let h = gram_hash(p);
                f.grams[h >> 6] |= 1 << (h & 63);
            } else {
                f.short_first[p[0] as usize] = true;
                f.has_short = true;
            }
        }
        let shortest = patterns.clone().map(<[u8]>::len).min().unwrap_or(0);
        let stride = (shortest + 1).saturating_sub(GRAM).min(MAX_STRIDE);
        if stride > 1 {
            let mut inside = vec![0u64; 1 << (INSIDE_BITS_LOG2 - 6)];
            for p in patterns {
                for k in 0..stride {
                    let h = hash_bits(gram_at(p, k), INSIDE_BITS_LOG2);
                    inside[h >> 6] |= 1 << (h & 63);
                }
            }
            f.inside = Some((inside, stride));
        }
        f
    }

    /// With [`StartFilter::inside`]: the first position at or after `from`
    /// where a pattern could start, looking at one position in `stride`
    /// (`None` without it).
    fn next_strided(&self, buf: &[u8], from: usize) -> Option<Option<usize>> {
        let (inside, stride) = self.inside.as_ref()?;
        let stride = *stride;
        let end = buf.len().saturating_sub(GRAM - 1);
        // An occurrence at `p >= from` has its first `stride` grams at
        // p..p + stride, which holds exactly one scanned position; the
        // starts a hit at `i` stands for are the `stride` positions up to it
        // (from `from` on), those of earlier hits having been checked.
        let test = |i: usize| {
            let h = hash_bits(gram_at(buf, i), INSIDE_BITS_LOG2);
            inside[h >> 6] & (1 << (h & 63)) != 0
        };
        let mut i = from + stride - 1;
        while i < end {
            // Four strides per step, their loads independent: the set lives
            // in L2, and one miss at a time would set the pace.
            if i + 3 * stride < end && !(test(i) | test(i + stride) | test(i + 2 * stride) | test(i + 3 * stride)) {
                i += 4 * stride;
                continue;
            }
            if test(i) {
                let lo = (i + 1 - stride).max(from);
                if let Some(c) = (lo..=i).find(|&c| self.hit(gram_at(buf, c))) {
                    return Some(Some(c));
                }
            }
            i += stride;
        }
        // Past the last full stride: the starts not yet looked at, where a
        // pattern could still fit.
        let lo = (i + 1 - stride).max(from);
        Some((lo..end).find(|&c| self.hit(gram_at(buf, c))))
    }

    fn hit(&self, gram: u32) -> bool {
        let h = hash_gram(gram);
        self.grams[h >> 6] & (1 << (h & 63)) != 0
    }

    /// The first position at or after `from` where a pattern could start.
    fn next_candidate(&self, buf: &[u8], from: usize) -> Option<usize> {
        if let Some(found) = self.next_strided(buf, from) {
            return found;
        }
        let end = buf.len().saturating_sub(GRAM - 1);
        let mut i = from;
        if !self.has_short {
            // Four positions per 8-byte load, tested together: the common
            // case (nothing here) costs four independent hashes and loads.
            while i + 8 <= buf.len() {
                let w = u64::from_le_bytes(buf[i..i + 8].try_into().expect("8 bytes"));
                let any = self.hit(w as u32)
                    | self.hit((w >> 8) as u32)
                    | self.hit((w >> 16) as u32)
                    | self.hit((w >> 24) as u32);
                if any {
                    break;
                }
                i += 4;
            }
        }
        for i in i..end {
            if self.hit(u32::from_le_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]))
                || self.short_first[buf[i] as usize]
            {
                return Some(i);
            }
        }
        // The last bytes can only start a short pattern (or the start of a
        // longer one, which no search over `buf` can match).
        (from.max(end)..buf.len()).find(|&i| self.short_first[buf[i] as usize])
    }
}

/// The secrets one execution has revealed, and the matcher over them.
/// Cheap to share: writers take a snapshot of the compiled matcher.
#[derive(Debug, Default)]
pub struct MaskSet {
    inner: RwLock<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The values added so far.
    values: Vec<Zeroizing<Vec<u8>>>,
    /// (pattern, whole-token-only), deduplicated.
    patterns: Vec<(Zeroizing<Vec<u8>>, bool)>,
    /// Built on first use after a change, so a task that reads secrets but
    /// prints nothing never pays for building the automaton.
    compiled: Option<Arc<Matcher>>,
}

impl Default for Matcher {
    fn default() -> Self {
        Matcher {
            ac: None,
            whole_token: Vec::new(),
            sorted: Vec::new(),
            first_bytes: [false; 256],
            max_len: 0,
            starts: None,
            plain: None,
            max_value_len: 0,
        }
    }
}

/// The forms of `value` to mask, each with its whole-token flag.
fn forms(value: &str) -> Vec<(Zeroizing<Vec<u8>>, bool)> {
    // Forms may repeat (an alphanumeric value is its own JSON form, a
    // length divisible by 3 pads nothing): `MaskSet::add_to` keeps the first.
    let mut out: Vec<(Zeroizing<Vec<u8>>, bool)> = Vec::new();
    let mut push = |s: Vec<u8>, whole: bool| out.push((Zeroizing::new(s), whole));
    if value.is_empty() {
        return Vec::new();
    }
    if value.len() < MIN_MASK_LEN {
        push(value.as_bytes().to_vec(), true);
        return out;
    }
    let b = value.as_bytes();
    push(b.to_vec(), false);
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE, &URL_SAFE_NO_PAD] {
        push(engine.encode(b).into_bytes(), false);
    }
    for (alphabet, shift) in [STANDARD_NO_PAD, URL_SAFE_NO_PAD].iter().flat_map(|e| (0..3).map(move |k| (e, k))) {
        if let Some(inner) = base64_inner(alphabet, b, shift) {
            push(inner, false);
        }
    }
    let hex = hex::encode(b);
    push(hex.to_uppercase().into_bytes(), false);
    push(hex.into_bytes(), false);
    let json = serde_json::to_string(value).expect("a string always encodes as JSON");
    push(json.as_bytes()[1..json.len() - 1].to_vec(), false);
    if value.contains('\n') {
        for line in value.split('\n') {
            let line = line.trim_end_matches('\r');
            if !line.trim().is_empty() {
                push(line.as_bytes().to_vec(), line.len() < MIN_MASK_LEN);
            }
        }
    }
    out
}

/// Shortest stable inner part of a shifted base64 form worth masking: a
/// shorter one would also match unrelated base64 text.
const MIN_BASE64_INNER: usize = 6;

/// The base64 characters that depend only on `value` when it sits `shift`
/// bytes (0, 1 or 2) into a larger encoded document: the characters before
/// and after also carry bits of its neighbours.
fn base64_inner(alphabet: &base64::engine::GeneralPurpose, value: &[u8], shift: usize) -> Option<Vec<u8>> {
    let mut shifted = vec![0u8; shift];
    shifted.extend_from_slice(value);
    let encoded = alphabet.encode(&shifted).into_bytes();
    // Characters wholly inside the value: from the first one that starts at
    // or after bit `8 * shift`, to the last one that ends at or before the
    // value's last bit.
    let first = (8 * shift).div_ceil(6);
    let end = (8 * shifted.len()) / 6;
    let inner = encoded.get(first..end)?.to_vec();
    (inner.len() >= MIN_BASE64_INNER).then_some(inner)
}

impl MaskSet {
    /// An empty set: masks nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a revealed value (and its encodings) to the set.
    pub fn add(&self, value: &SecretValue) {
        Self::add_to(&[self], value);
    }

    /// Adds a revealed value to each of `sets`, encoding its forms at most
    /// once (the read path adds to the execution's and the task's set).
    pub fn add_to(sets: &[&MaskSet], value: &SecretValue) {
        let mut encoded: Option<Vec<(Zeroizing<Vec<u8>>, bool)>> = None;
        for set in sets {
            let mut inner = set.inner.write().unwrap_or_else(|p| p.into_inner());
            // A value read again (pinned reads, several tasks) is already in
            // the set with all its forms: skip re-encoding it.
            if inner.values.iter().any(|v| v.as_slice() == value.expose().as_bytes()) {
                continue;
            }
            inner.values.push(Zeroizing::new(value.expose().as_bytes().to_vec()));
            let before = inner.patterns.len();
            for f in encoded.get_or_insert_with(|| forms(value.expose())).iter() {
                if !inner.patterns.iter().any(|(p, _)| *p == f.0) {
                    inner.patterns.push(f.clone());
                }
            }
            if inner.patterns.len() != before {
                inner.compiled = None;
            }
        }
    }

    /// The matcher for everything added so far.
    pub fn matcher(&self) -> Arc<Matcher> {
        if let Some(m) = &self.inner.read().unwrap_or_else(|p| p.into_inner()).compiled {
            return m.clone();
        }
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let inner = &mut *guard;
        inner.compiled.get_or_insert_with(|| Arc::new(Matcher::build(&inner.patterns, &inner.values))).clone()
    }

    /// Masks a complete text.
    pub fn mask<'a>(&self, text: &'a str) -> Cow<'a, str> {
        self.matcher().mask_str(text)
    }
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

impl Matcher {
    fn build(patterns: &[(Zeroizing<Vec<u8>>, bool)], values: &[Zeroizing<Vec<u8>>]) -> Self {
        // A few dozen patterns already defeat the prefilter; when every one
        // is long enough for a wide stride, the filter is faster.
        let shortest = patterns.iter().map(|(p, _)| p.len()).min().unwrap_or(0);
        let filtered =
            patterns.len() > LARGE_SET || (patterns.len() > MEDIUM_SET && shortest + 1 >= GRAM + MEDIUM_MIN_STRIDE);
        Self::build_with(patterns, values, filtered)
    }

    /// [`Matcher::build_sized`], plus the decoding pass over `values`.
    fn build_with(patterns: &[(Zeroizing<Vec<u8>>, bool)], values: &[Zeroizing<Vec<u8>>], filtered: bool) -> Self {
        let mut m = Self::build_sized(patterns, filtered);
        let long: Vec<Zeroizing<Vec<u8>>> = values.iter().filter(|v| v.len() >= MIN_MASK_LEN).cloned().collect();
        if !long.is_empty() {
            m.max_value_len = long.iter().map(|v| v.len()).max().unwrap_or(0);
            m.plain = Some(Plain { values: long, ac: std::sync::OnceLock::new() });
        }
        m
    }

    /// `filtered`: use the start filter and an anchored automaton (see
    /// [`StartFilter`]), a DFA for a large set.
    fn build_sized(patterns: &[(Zeroizing<Vec<u8>>, bool)], filtered: bool) -> Self {
        if patterns.is_empty() {
            return Matcher::default();
        }
        // Small sets (the usual task reads a handful of secrets): a
        // contiguous NFA builds in microseconds (a DFA takes tens, paid by
        // every task that prints after reading a secret) and with the
        // prefilter scans at GB/s. Large sets defeat the prefilter: there a
        // `StartFilter` picks candidate positions and an anchored DFA, which
        // pays for its build, runs only at them; see `benches/mask.rs`.
        let kind = if patterns.len() > LARGE_SET { AhoCorasickKind::DFA } else { AhoCorasickKind::ContiguousNFA };
        let start = if filtered { aho_corasick::StartKind::Anchored } else { aho_corasick::StartKind::Unanchored };
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .kind(Some(kind))
            .start_kind(start)
            .build(patterns.iter().map(|(p, _)| p.as_slice()))
            .expect("masking patterns are plain byte strings");
        let starts = filtered.then(|| Box::new(StartFilter::new(patterns.iter().map(|(p, _)| p.as_slice()))));
        let mut sorted: Vec<_> = patterns.iter().map(|(p, _)| p.clone()).collect();
        sorted.sort_by(|a, b| a.as_slice().cmp(b.as_slice()));
        let mut first_bytes = [false; 256];
        for p in &sorted {
            first_bytes[p[0] as usize] = true;
        }
        Matcher {
            ac: Some(ac),
            whole_token: patterns.iter().map(|(_, w)| *w).collect(),
            max_len: sorted.iter().map(|p| p.len()).max().unwrap_or(0),
            sorted,
            first_bytes,
            starts,
            plain: None,
            max_value_len: 0,
        }
    }

    /// The leftmost-longest match in `buf[from..]`.
    fn find(&self, ac: &AhoCorasick, buf: &[u8], from: usize) -> Option<aho_corasick::Match> {
        let Some(starts) = &self.starts else {
            return ac.find(aho_corasick::Input::new(buf).span(from..buf.len()));
        };
        let mut at = from;
        while let Some(i) = starts.next_candidate(buf, at) {
            let input = aho_corasick::Input::new(buf).span(i..buf.len()).anchored(aho_corasick::Anchored::Yes);
            if let Some(m) = ac.find(input) {
                return Some(m);
            }
            at = i + 1;
        }
        None
    }

    /// Masks a complete buffer into `out`: every form a value is listed
    /// in, then any percent-encoding of it ([`Matcher::decoded_spans`]).
    pub fn mask_all(&self, buf: &[u8], out: &mut Vec<u8>) {
        let mut first = Vec::with_capacity(buf.len());
        self.mask_into(buf, &mut None, true, &mut first);
        self.mask_decoded(&first, out);
    }

    /// Copies `buf` to `out` with every span that percent-decodes to a
    /// value replaced by the mask.
    fn mask_decoded(&self, buf: &[u8], out: &mut Vec<u8>) {
        let mut at = 0;
        for (s, e) in self.decoded_spans(buf) {
            out.extend_from_slice(&buf[at..s]);
            out.extend_from_slice(MASK.as_bytes());
            at = e;
        }
        out.extend_from_slice(&buf[at..]);
    }

    /// The spans of `buf` (sorted, disjoint) that are a value written with
    /// at least one percent-escape (either hex case) or `+` for a space,
    /// whichever bytes the encoder chose to escape: the text is decoded
    /// (once reading `+` as itself, once as a space) and searched for the
    /// values themselves.
    fn decoded_spans(&self, buf: &[u8]) -> Vec<(usize, usize)> {
        let Some(plain) = &self.plain else { return Vec::new() };
        if memchr::memchr2(b'%', b'+', buf).is_none() {
            return Vec::new();
        }
        let plain = plain.automaton();
        let mut spans = Vec::new();
        for plus_is_space in [false, true] {
            let mut push = |s: usize, e: usize, len: usize| {
                let encoded = e - s != len || (plus_is_space && buf[s..e].contains(&b'+'));
                // What no encoder writes (a literal space or quote among
                // escapes) is left to the listed forms, so that a stream
                // cut at such a byte masks exactly what the whole text does.
                if encoded && buf[s..e].iter().all(|&b| url_ish(b)) {
                    spans.push((s, e));
                }
            };
            let d = Decoded::new(buf, plus_is_space);
            for m in plain.find_iter(&d.bytes) {
                push(d.from[m.start()], d.at(m.end(), buf.len()), m.end() - m.start());
            }
            // A `%` that is text, not an escape, right before a value that
            // begins with one or two hex digits (`50%` then `a/%40aa`) is
            // decoded with them: try the value starting at either digit.
            // After the escape the decoding is the same, since a hex digit
            // starts no escape of its own. Each try writes the digits over
            // the decoded escape (and the byte before it) in one copy of the
            // decoded text, and its anchored search stops where no value
            // goes on: nothing is copied per escape, and no later try reads
            // what an earlier one wrote (it starts further on).
            let mut alt: Option<Vec<u8>> = None;
            for &k in &d.escapes {
                // `alt[i + 1]` is `d.bytes[i]`; made only when there is an escape.
                let alt = alt.get_or_insert_with(|| [&[0], &d.bytes[..]].concat());
                let p = d.from[k];
                for digits in [&buf[p + 2..p + 3], &buf[p + 1..p + 3]] {
                    let start = k + 2 - digits.len();
                    alt[start..k + 2].copy_from_slice(digits);
                    let input =
                        aho_corasick::Input::new(&alt[..]).span(start..alt.len()).anchored(aho_corasick::Anchored::Yes);
                    if let Some(m) = plain.find(input) {
                        // Every value in `plain` is longer than the digits.
                        push(p + 3 - digits.len(), d.at(m.end() - 1, buf.len()), m.len());
                    }
                }
            }
        }
        spans.sort_unstable();
        let mut merged: Vec<(usize, usize)> = Vec::with_capacity(spans.len());
        for (s, e) in spans {
            match merged.last_mut() {
                Some(last) if s < last.1 => last.1 = last.1.max(e),
                _ => merged.push((s, e)),
            }
        }
        merged
    }

    /// Masks a complete text.
    pub fn mask_str<'a>(&self, text: &'a str) -> Cow<'a, str> {
        if self.ac.is_none() {
            return Cow::Borrowed(text);
        }
        let mut out = Vec::with_capacity(text.len());
        self.mask_all(text.as_bytes(), &mut out);
        // Replacing whole UTF-8 sequences with ASCII keeps the text valid,
        // except where a pattern ends inside a character; fall back to lossy.
        match String::from_utf8(out) {
            Ok(s) if s == text => Cow::Borrowed(text),
            Ok(s) => Cow::Owned(s),
            Err(e) => Cow::Owned(String::from_utf8_lossy(e.as_bytes()).into_owned()),
        }
    }

    /// Masks `buf` into `out` and returns how many bytes of `buf` were
    /// consumed. Unless `eof`, bytes at the end that could begin a secret
    /// (or a whole-token match that needs the next byte) are not consumed;
    /// the caller keeps them and passes them again with more input.
    /// `prev` is the last byte consumed before `buf`, for token boundaries.
    pub fn mask_into(&self, buf: &[u8], prev: &mut Option<u8>, eof: bool, out: &mut Vec<u8>) -> usize {
        let Some(ac) = &self.ac else {
            out.extend_from_slice(buf);
            *prev = buf.last().copied().or(*prev);
            return buf.len();
        };
        // Bytes from `hold` on could begin a pattern that runs past the end
        // of `buf` (whole-text masking might then match there, or match a
        // longer pattern): they wait for more input. Recomputed after each
        // match, since a match may consume them.
        let hold_from = |pos: usize| if eof { buf.len() } else { buf.len() - self.possible_prefix_len(&buf[pos..]) };
        let (mut pos, mut search, mut hold) = (0, 0, hold_from(0));
        while let Some(m) = self.find(ac, buf, search) {
            if m.start() >= hold {
                break;
            }
            search = m.end();
            if self.whole_token[m.pattern().as_usize()] {
                let before = if m.start() == 0 { *prev } else { Some(buf[m.start() - 1]) };
                if m.end() == buf.len() && !eof {
                    // Cannot tell yet whether the token ends here.
                    out.extend_from_slice(&buf[pos..m.start()]);
                    if m.start() > pos {
                        *prev = Some(buf[m.start() - 1]);
                    }
                    return m.start();
                }
                let after = buf.get(m.end()).copied();
                if before.is_some_and(is_word) || after.is_some_and(is_word) {
                    // Not a token here: a longer secret may still start
                    // inside it, so search again from the next byte.
                    search = m.start() + 1;
                    continue;
                }
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(MASK.as_bytes());
            pos = m.end();
            *prev = Some(buf[m.end() - 1]);
            hold = hold_from(pos);
        }
        let emit = &buf[pos..hold.max(pos)];
        out.extend_from_slice(emit);
        if let Some(&b) = emit.last() {
            *prev = Some(b);
        }
        hold.max(pos)
    }

    /// Length of the longest suffix of `tail` that is a prefix of a pattern
    /// (0 if none): those bytes must wait for more input.
    fn possible_prefix_len(&self, tail: &[u8]) -> usize {
        let window = self.max_len.saturating_sub(1).min(tail.len());
        let start = tail.len() - window;
        for i in start..tail.len() {
            if !self.first_bytes[tail[i] as usize] {
                continue;
            }
            // With the start filter, four bytes that start no pattern
            // need no search.
            if let Some(f) = &self.starts
                && tail.len() - i >= GRAM
                && !f.hit(gram_at(tail, i))
            {
                continue;
            }
            let q = &tail[i..];
            let at = self.sorted.partition_point(|p| p.as_slice() < q);
            if self.sorted.get(at).is_some_and(|p| p.starts_with(q)) {
                return tail.len() - i;
            }
        }
        0
    }
}

/// `buf` percent-decoded from the left, with where each decoded byte came
/// from.
struct Decoded {
    bytes: Vec<u8>,
    /// Per decoded byte, its first byte in `buf`.
    from: Vec<usize>,
    /// The decoded bytes that were a `%XX` escape.
    escapes: Vec<usize>,
}

impl Decoded {
    fn new(buf: &[u8], plus_is_space: bool) -> Self {
        let hex = |b: u8| (b as char).to_digit(16).map(|d| d as u8);
        let mut d =
            Decoded { bytes: Vec::with_capacity(buf.len()), from: Vec::with_capacity(buf.len()), escapes: Vec::new() };
        let mut i = 0;
        while i < buf.len() {
            d.from.push(i);
            match buf[i] {
                b'%' if i + 2 < buf.len() => match (hex(buf[i + 1]), hex(buf[i + 2])) {
                    (Some(h), Some(l)) => {
                        d.escapes.push(d.bytes.len());
                        d.bytes.push(h << 4 | l);
                        i += 3;
                        continue;
                    }
                    _ => d.bytes.push(b'%'),
                },
                b'+' if plus_is_space => d.bytes.push(b' '),
                b => d.bytes.push(b),
            }
            i += 1;
        }
        d
    }

    /// Where in `buf` (of length `len`) decoded byte `k` starts.
    fn at(&self, k: usize, len: usize) -> usize {
        self.from.get(k).copied().unwrap_or(len)
    }
}

/// Streaming masker for one output channel: feed it writes as they come; it
/// releases at once every byte that cannot be part of a secret.
///
/// Two stages: the listed forms (held back only while they could begin
/// one), then the decoding pass, which holds back a trailing run of the
/// bytes an encoded value is made of ([`url_ish`]) that holds an escape,
/// until a byte that ends it arrives, so no encoded value is split between
/// two passes.
#[derive(Debug, Default)]
pub struct StreamMasker {
    pending: Vec<u8>,
    prev: Option<u8>,
    /// Released by the first stage, waiting for the decoding pass.
    encoded: Vec<u8>,
}

/// Bytes a percent-encoded value can consist of (what some encoder leaves
/// unescaped, `%` and `+`); any other byte ends one.
fn url_ish(b: u8) -> bool {
    b.is_ascii_graphic() && !matches!(b, b'"' | b'<' | b'>' | b'\\' | b'^' | b'`' | b'{' | b'|' | b'}' | b'[' | b']')
}

impl StreamMasker {
    /// Masks `input` (appended to any held-back bytes) into `out`.
    pub fn push(&mut self, m: &Matcher, input: &[u8], out: &mut Vec<u8>) {
        // With nothing waiting for the decoding pass, the first stage writes
        // straight into `out`, and only what that pass must hold back or
        // mask is moved out again: a write is copied once, not three times.
        let direct = self.encoded.is_empty();
        let mark = out.len();
        if direct {
            self.first_stage(m, input, out);
        } else {
            let mut encoded = std::mem::take(&mut self.encoded);
            self.first_stage(m, input, &mut encoded);
            self.encoded = encoded;
        }
        if !direct {
            self.release(m, false, out);
        } else if m.plain.is_some() {
            let (cut, spans) = self.cut(m, &out[mark..], false);
            if spans.is_empty() {
                self.encoded.extend_from_slice(&out[mark + cut..]);
                out.truncate(mark + cut);
            } else {
                self.encoded = out.split_off(mark);
                self.release(m, false, out);
            }
        }
    }

    /// The first stage over the held-back bytes and `input`, into `dest`.
    /// Held-back bytes (a possible start of a pattern, at most the longest
    /// pattern's length) are searched again with only as much of `input`
    /// as a pattern could span; from there on the search runs on `input`
    /// itself, so a write is not copied to be searched.
    fn first_stage(&mut self, m: &Matcher, input: &[u8], dest: &mut Vec<u8>) {
        let mut input = input;
        if !self.pending.is_empty() {
            let held = self.pending.len();
            let seam = input.len().min(m.max_len.max(1));
            self.pending.extend_from_slice(&input[..seam]);
            let used = m.mask_into(&self.pending, &mut self.prev, false, dest);
            if used < held || seam == input.len() {
                // The rest joins what waits, and is searched from there.
                self.pending.drain(..used);
                if seam < input.len() {
                    self.pending.extend_from_slice(&input[seam..]);
                    let used = m.mask_into(&self.pending, &mut self.prev, false, dest);
                    self.pending.drain(..used);
                }
                return;
            }
            // What still waits lies within `input`: go on from there.
            self.pending.clear();
            input = &input[used - held..];
        }
        let used = m.mask_into(input, &mut self.prev, false, dest);
        self.pending.extend_from_slice(&input[used..]);
    }

    /// Where the decoding pass may release `encoded` up to (the last byte
    /// that ends an encoded run, or everything at `eof` or when the run is
    /// longer than any encoded value), and the decoded spans that start
    /// before it (empty when the cut is 0).
    fn cut(&self, m: &Matcher, encoded: &[u8], eof: bool) -> (usize, Vec<(usize, usize)>) {
        let run = encoded.iter().rev().take_while(|&&b| url_ish(b)).count();
        // A run that, with the bytes the first stage still holds after it,
        // has no `%` or `+` is literal text: had it begun an encoding of a
        // value, it would begin the value itself, which the first stage
        // would still be holding. Only a run with an escape waits.
        let escape = |b: &u8| *b == b'%' || *b == b'+';
        let tail = &encoded[encoded.len() - run..];
        let mut next = self.pending.iter().take_while(|&&b| url_ish(b));
        let run = if tail.iter().any(escape) || next.any(escape) { run } else { 0 };
        let longest = 3 * m.max_value_len;
        let mut cut = if eof { encoded.len() } else { encoded.len() - run.min(longest) };
        if cut == 0 {
            return (0, Vec::new());
        }
        let mut spans = m.decoded_spans(encoded);
        // A span that starts before the cut is released whole.
        if let Some(&(_, e)) = spans.iter().rev().find(|(s, _)| *s < cut) {
            cut = cut.max(e);
        }
        spans.retain(|(s, _)| *s < cut);
        (cut, spans)
    }

    /// Runs the decoding pass over what can be released ([`Self::cut`]).
    fn release(&mut self, m: &Matcher, eof: bool, out: &mut Vec<u8>) {
        if m.plain.is_none() {
            out.append(&mut self.encoded);
            return;
        }
        let (cut, spans) = self.cut(m, &self.encoded, eof);
        if cut == 0 {
            return;
        }
        let mut at = 0;
        for &(s, e) in &spans {
            out.extend_from_slice(&self.encoded[at..s]);
            out.extend_from_slice(MASK.as_bytes());
            at = e;
        }
        out.extend_from_slice(&self.encoded[at..cut]);
        self.encoded.drain(..cut);
    }

    /// Whether bytes are held back waiting for more input.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty() || !self.encoded.is_empty()
    }

    /// Flushes held-back bytes at end of stream.
    pub fn finish(&mut self, m: &Matcher, out: &mut Vec<u8>) {
        let pending = std::mem::take(&mut self.pending);
        m.mask_into(&pending, &mut self.prev, true, &mut self.encoded);
        self.release(m, true, out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(values: &[&str]) -> MaskSet {
        let s = MaskSet::new();
        for v in values {
            s.add(&SecretValue::new((*v).to_owned()));
        }
        s
    }

    #[test]
    fn masks_value_and_encodings_with_a_fixed_mask() {
        let s = set(&["hunter2!x"]);
        let b64 = STANDARD.encode("hunter2!x");
        let text = format!(
            "a hunter2!x b {b64} c {} d {} e {} f {}",
            hex::encode("hunter2!x"),
            hex::encode("hunter2!x").to_uppercase(),
            "hunter2%21x",
            URL_SAFE_NO_PAD.encode("hunter2!x")
        );
        assert_eq!(s.mask(&text), "a *** b *** c *** d *** e *** f ***");
    }

    #[test]
    fn json_escaped_and_multiline_forms() {
        let key = "-----BEGIN KEY-----\nMIIBOgIBAAJBAKj34GkxFhD9\n-----END KEY-----";
        let s = set(&[key, "quote\"back\\slash"]);
        assert_eq!(s.mask(r#"{"v":"quote\"back\\slash"}"#), r#"{"v":"***"}"#);
        assert_eq!(s.mask("line: MIIBOgIBAAJBAKj34GkxFhD9 end"), "line: *** end");
        let escaped = serde_json::to_string(key).unwrap();
        assert_eq!(s.mask(&escaped), "\"***\"");
    }

    #[test]
    fn short_values_only_as_whole_tokens() {
        let s = set(&["a1"]);
        assert_eq!(s.mask("a1 ba1 a1b (a1)"), "*** ba1 a1b (***)");
        // Text with nothing to mask comes back borrowed, not copied.
        assert!(matches!(s.mask("b2 c3"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_short_line_of_a_multiline_value_is_masked_only_as_a_token() {
        // `abc` is under MIN_MASK_LEN (a token only); `wxyz` is not.
        let s = set(&["abc\nwxyz\nlonger line"]);
        assert_eq!(s.mask("abc fabcd xwxyzx"), "*** fabcd x***x");
    }

    /// Percent-encoded values found by the decoding pass: each is one mask,
    /// side by side or apart, and the text between them stays.
    #[test]
    fn each_decoded_value_is_one_mask_and_the_text_between_stays() {
        let s = set(&["hunter2!x", "sw0rdf1sh"]);
        assert_eq!(s.mask("a=hunter2%21x&b=sw%30rdf1sh"), "a=***&b=***");
        assert_eq!(s.mask("hunter2%21xhunter2%21x"), "******");
        assert_eq!(s.mask("h%75nter2!xsw%30rdf1sh."), "******.");
    }

    /// The decoding pass claims only what holds an escape: a value written
    /// as itself is the first stage's (which masks it before this pass runs).
    #[test]
    fn the_decoding_pass_leaves_a_value_written_as_itself_to_the_listed_forms() {
        let s = set(&["hunter2!x"]);
        let m = s.matcher();
        assert_eq!(m.decoded_spans(b"a hunter2!x %41"), []);
        assert_eq!(m.decoded_spans(b"a hunter2%21x %41"), [(2, 13)]);
        assert_eq!(m.decoded_spans(b"a=b c hunter2!x+"), []);
        // Text of `+` alone is an escape too.
        assert_eq!(set(&["    "]).mask("++++"), "***");
    }

    /// Every way of cutting `text` into two writes masks it as the whole
    /// text does.
    fn assert_every_cut_masks_as_whole(s: &MaskSet, text: &str, whole: &str) {
        assert_eq!(s.mask(text), whole);
        for cut in 0..=text.len() {
            assert_eq!(stream(&s.matcher(), text, &[cut]), whole, "cut at {cut} of {text:?}");
        }
    }

    #[test]
    fn an_encoded_value_that_begins_a_longer_one_waits_for_it_in_a_stream() {
        // `%61` is an escape no encoder needs (`a`), so only the decoding
        // pass sees either value; the shorter one's span ends where the
        // first write does, and must not be released before the longer
        // one is ruled out.
        let s = set(&["abcd!efg", "abcd!efghij"]);
        assert_every_cut_masks_as_whole(&s, "x %61bcd%21efghij y", "x *** y");
        assert_every_cut_masks_as_whole(&s, "x %61bcd%21efg y", "x *** y");
    }

    #[test]
    fn a_percent_sign_of_text_right_before_an_encoded_value_does_not_hide_it() {
        // `%Aa` and `%40` read as escapes would swallow the value's first
        // one or two characters.
        let s = set(&["a/@aa", "0bcd!e"]);
        assert_every_cut_masks_as_whole(&s, "done 50%a/%40aa.", "done 50%***.");
        assert_every_cut_masks_as_whole(&s, "x=%40bcd%21e.", "x=%4***.");
    }

    #[test]
    fn a_literal_space_among_escapes_is_treated_alike_whole_and_streamed() {
        // No encoder leaves a space literal while escaping `!`: such a span
        // is left to the listed forms, in whole text and in every stream
        // alike, so where a write was cut never decides what is shown.
        let s = set(&["hunter 2!x"]);
        let text = "v=hunter 2%21x;";
        assert_every_cut_masks_as_whole(&s, text, &s.mask(text));
        assert_every_cut_masks_as_whole(&s, "v=hunter+2%21x;", "v=***;");
    }

    #[test]
    fn stream_masks_across_writes_and_releases_non_prefixes_at_once() {
        let s = set(&["supersecret"]);
        let m = s.matcher();
        let mut sm = StreamMasker::default();
        let mut out = Vec::new();
        sm.push(&m, b"hello super", &mut out);
        assert_eq!(out, b"hello ");
        assert!(sm.has_pending(), "`super` could begin the secret");
        sm.push(&m, b"secret and sup", &mut out);
        assert_eq!(out, b"hello *** and ");
        sm.push(&m, b"per", &mut out);
        assert_eq!(out, b"hello *** and supper");
        assert!(!sm.has_pending(), "`supper` begins no secret");
        // A run with an escape could be an encoding that diverged from
        // every listed form: it waits for a byte that ends it.
        sm.push(&m, b" x=super%73", &mut out);
        assert_eq!(out, b"hello *** and supper ");
        assert!(sm.has_pending(), "the encoded run waits");
        sm.push(&m, b"ecret ", &mut out);
        assert_eq!(out, b"hello *** and supper x=*** ");
        sm.push(&m, b"tail sup", &mut out);
        sm.finish(&m, &mut out);
        assert!(!sm.has_pending());
        assert_eq!(String::from_utf8(out).unwrap(), "hello *** and supper x=*** tail sup");
    }

    #[test]
    fn stream_whole_token_waits_for_the_next_byte() {
        let s = set(&["a1"]);
        let m = s.matcher();
        let mut sm = StreamMasker::default();
        let mut out = Vec::new();
        sm.push(&m, b"x a1", &mut out);
        sm.push(&m, b"b a", &mut out);
        sm.push(&m, b"1\n", &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "x a1b ***\n");
    }

    #[test]
    fn real_encoder_forms_and_shifted_base64_are_masked() {
        let secret = "pa$$ w0rd/it's(1)*~";
        let s = set(&[secret]);
        for e in ENCODERS {
            for flips in [&[][..], &[true; 24]] {
                let form = encode(secret, e, flips);
                assert_eq!(s.mask(&format!("q={form}&x")), "q=***&x", "{form}");
            }
        }
        for user in ["", "u", "us", "use"] {
            let doc = STANDARD.encode(format!("{user}:{secret}"));
            let masked = s.mask(&doc);
            assert!(masked.contains("***") && masked.len() < 16, "{user}: {doc} -> {masked}");
        }
    }

    #[test]
    fn a_value_that_is_a_prefix_of_another_waits_for_the_longer_one() {
        let s = set(&["dbuser", "dbuser:Pa55w0rd@db"]);
        let m = s.matcher();
        let mut sm = StreamMasker::default();
        let mut out = Vec::new();
        sm.push(&m, b"dbuser", &mut out);
        sm.push(&m, b":Pa55w0rd@db and dbuser alone", &mut out);
        sm.finish(&m, &mut out);
        assert_eq!(String::from_utf8(out).unwrap(), "*** and *** alone");
    }

    fn stream(m: &Matcher, text: &str, cuts: &[usize]) -> String {
        let mut sm = StreamMasker::default();
        let mut out = Vec::new();
        let mut last = 0;
        for &c in cuts {
            sm.push(m, &text.as_bytes()[last..c], &mut out);
            last = c;
        }
        sm.push(m, &text.as_bytes()[last..], &mut out);
        sm.finish(m, &mut out);
        String::from_utf8(out).unwrap()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// For random secrets (from a small alphabet, so that they overlap and
        /// prefix each other), text made of random filler and their forms, and
        /// random splits into writes: streaming equals masking the whole text
        /// at once, and no form of a secret of masking length survives.
        #[test]
        fn streaming_equals_whole_text_and_no_form_survives(
            secrets in proptest::collection::vec("[abc:@/+= ]{1,12}", 1..4),
            pieces in proptest::collection::vec((0usize..64, "[abcd :/+=%A-Z]{0,6}"), 0..12),
            cuts in proptest::collection::vec(0usize..4096, 0..10),
        ) {
            let s = set(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
            // The listed forms, and each secret as every encoder writes it.
            let encoded = |v: &String| ENCODERS.iter().map(|e| encode(v, e, &[true, false, true]).into_bytes()).collect::<Vec<_>>();
            let all: Vec<Vec<u8>> = secrets
                .iter()
                .flat_map(|v| forms(v).into_iter().map(|(f, _)| f.to_vec()).chain(encoded(v)))
                .collect();
            let mut text = String::new();
            for (i, filler) in &pieces {
                text.push_str(filler);
                text.push_str(std::str::from_utf8(&all[i % all.len()]).unwrap());
            }
            let whole = s.mask(&text).into_owned();
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
            cuts.sort_unstable();
            proptest::prop_assert_eq!(stream(&s.matcher(), &text, &cuts), whole.clone());
            // The filtered engine (start filter, anchored automaton) agrees.
            let large = {
                let inner = s.inner.read().unwrap();
                Matcher::build_with(&inner.patterns, &inner.values, true)
            };
            proptest::prop_assert_eq!(large.mask_str(&text).into_owned(), whole.clone());
            proptest::prop_assert_eq!(stream(&large, &text, &cuts), whole.clone());
            for v in secrets.iter().filter(|v| v.len() >= MIN_MASK_LEN && v.trim() == v.as_str()) {
                for f in forms(v).into_iter().map(|(f, _)| f.to_vec()).chain(encoded(v)) {
                    let f = std::str::from_utf8(&f).unwrap();
                    proptest::prop_assert!(!whole.contains(f), "{:?} survives in {:?} (text {:?})", f, whole, text);
                }
            }
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(256))]

        /// Sets whose every form is long enough for the strided scan
        /// (values of 5 to 40 bytes from a small alphabet, so that they share
        /// grams and start inside each other): the filtered engine masks
        /// exactly what the unanchored automaton masks, whole or streamed,
        /// wherever a value falls against the stride.
        #[test]
        fn the_strided_scan_finds_every_match_the_automaton_finds(
            secrets in proptest::collection::vec("[abAB01]{5,40}", 1..6),
            pieces in proptest::collection::vec((0usize..64, "[ab01 .]{0,23}"), 0..16),
            cuts in proptest::collection::vec(0usize..4096, 0..6),
        ) {
            let s = set(&secrets.iter().map(String::as_str).collect::<Vec<_>>());
            let all: Vec<Vec<u8>> = secrets.iter().flat_map(|v| forms(v).into_iter().map(|(f, _)| f.to_vec())).collect();
            let mut text = String::new();
            for (i, filler) in &pieces {
                text.push_str(filler);
                text.push_str(std::str::from_utf8(&all[i % all.len()]).unwrap());
            }
            let (small, large) = {
                let inner = s.inner.read().unwrap();
                (Matcher::build_with(&inner.patterns, &inner.values, false), Matcher::build_with(&inner.patterns, &inner.values, true))
            };
            proptest::prop_assert!(large.starts.as_ref().is_some_and(|f| f.inside.is_some()), "the strided scan is in use");
            let whole = small.mask_str(&text).into_owned();
            proptest::prop_assert_eq!(large.mask_str(&text).into_owned(), whole.clone());
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c % (text.len() + 1)).collect();
            cuts.sort_unstable();
            proptest::prop_assert_eq!(stream(&large, &text, &cuts), whole);
        }
    }

    /// How one encoder writes a byte it may leave alone: `safe` lists the
    /// punctuation it keeps (letters and digits always stay).
    struct Encoder {
        safe: &'static str,
        space_plus: bool,
        lower_hex: bool,
    }

    /// Python quote / quote_plus / urlencode, JavaScript encodeURIComponent
    /// and URLSearchParams, Java URLEncoder, Go QueryEscape / PathEscape,
    /// PHP urlencode / rawurlencode, each in both hex cases.
    const ENCODERS: &[Encoder] = &[
        Encoder { safe: "_.-~/", space_plus: false, lower_hex: false }, // Python quote
        Encoder { safe: "_.-~", space_plus: true, lower_hex: false },   // Python quote_plus / urlencode
        Encoder { safe: "-_.!~*'()", space_plus: false, lower_hex: false }, // encodeURIComponent
        Encoder { safe: "*-._", space_plus: true, lower_hex: false },   // URLSearchParams, Java URLEncoder
        Encoder { safe: "-_.~", space_plus: true, lower_hex: false },   // Go QueryEscape
        Encoder { safe: "-_.~$&+,/:;=@", space_plus: false, lower_hex: false }, // Go PathEscape
        Encoder { safe: "-_.", space_plus: true, lower_hex: false },    // PHP urlencode
        Encoder { safe: "-_.~", space_plus: false, lower_hex: true },   // rawurlencode, lower-case hex
    ];

    fn encode(value: &str, e: &Encoder, flips: &[bool]) -> String {
        let mut out = String::new();
        for (i, b) in value.bytes().enumerate() {
            let lower = e.lower_hex ^ flips.get(i).copied().unwrap_or(false);
            if b.is_ascii_alphanumeric() || e.safe.as_bytes().contains(&b) {
                out.push(b as char);
            } else if b == b' ' && e.space_plus {
                out.push('+');
            } else if lower {
                out.push_str(&format!("%{b:02x}"));
            } else {
                out.push_str(&format!("%{b:02X}"));
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        /// Any value, percent-encoded by any common library (with its hex
        /// case flipped at random bytes), inside form bodies, query strings
        /// and JSON, whole or written in random pieces: never survives.
        #[test]
        fn every_common_percent_encoding_is_masked(
            value in "[ -~]{4,24}",
            encoder in 0usize..8,
            flips in proptest::collection::vec(proptest::bool::ANY, 24),
            before in "[a-z=&?]{0,8}",
            after in "[a-z=&]{0,8}",
            cuts in proptest::collection::vec(0usize..4096, 0..6),
        ) {
            let s = set(&[value.as_str()]);
            let encoded = encode(&value, &ENCODERS[encoder], &flips);
            for text in [
                format!("{before}{encoded}{after}"),
                format!("POST body: password={encoded}&user=svc\n"),
                format!("{{\"url\": \"https://h/x?{before}={encoded}\"}}"),
            ] {
                let whole = s.mask(&text).into_owned();
                proptest::prop_assert!(!whole.contains(&encoded), "{:?} survives in {:?}", encoded, whole);
                let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (text.len() + 1)).collect();
                cuts.sort_unstable();
                proptest::prop_assert_eq!(stream(&s.matcher(), &text, &cuts), whole);
            }
        }
    }

    /// Past `LARGE_SET` patterns the anchored automaton is a DFA: it masks
    /// what the unanchored one does, values at every offset of the stride.
    #[test]
    fn a_large_set_masks_what_a_small_engine_masks() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut word = |len: usize| -> String {
            (0..len)
                .map(|_| {
                    rng ^= rng << 13;
                    rng ^= rng >> 7;
                    rng ^= rng << 17;
                    b"abAB01"[(rng % 6) as usize] as char
                })
                .collect()
        };
        let values: Vec<String> = (0..80).map(|i| word(12 + i % 20)).collect();
        let s = set(&values.iter().map(String::as_str).collect::<Vec<_>>());
        let (small, large) = {
            let inner = s.inner.read().unwrap();
            assert!(inner.patterns.len() > LARGE_SET, "{} patterns", inner.patterns.len());
            (Matcher::build_with(&inner.patterns, &inner.values, false), Matcher::build(&inner.patterns, &inner.values))
        };
        assert!(large.starts.as_ref().is_some_and(|f| f.inside.is_some()));
        let mut text = String::new();
        for (i, v) in values.iter().enumerate() {
            text.push_str(&word(i % 23));
            text.push_str(if i % 2 == 0 { v } else { &values[(i * 7) % values.len()] });
        }
        let whole = small.mask_str(&text).into_owned();
        assert!(whole.matches(MASK).count() >= values.len() / 2, "{whole}");
        assert_eq!(large.mask_str(&text), whole);
        assert_eq!(stream(&large, &text, &[7, 100, 101, 333]), whole);
    }

    /// The filtered engine tests four positions at once: two values that
    /// start one byte apart inside those four (`ABCDEFGH` at a position,
    /// `BCDEWXYZ`'s start at the next) must still stop it there, wherever
    /// the pair falls in the window.
    #[test]
    fn the_start_filter_stops_where_two_values_start_in_one_window() {
        let s = set(&["ABCDEFGH", "BCDEWXYZ"]);
        let large = {
            let inner = s.inner.read().unwrap();
            Matcher::build_with(&inner.patterns, &inner.values, true)
        };
        for pad in 0..4 {
            let before = ".".repeat(pad);
            let text = format!("{before}ABCDEFGH........");
            assert_eq!(large.mask_str(&text), format!("{before}***........"), "{pad} bytes before");
        }
    }

    #[test]
    fn a_mixed_encoding_no_single_encoder_writes_is_masked() {
        // Python's quote_plus of "p a*ss~w" keeps `~` and escapes `*`;
        // Java's URLEncoder keeps `*` and escapes `~`. Neither is a listed form.
        let s = set(&["p a*ss~w"]);
        for t in ["p+a%2Ass~w", "p+a*ss%7Ew", "p%20a%2ass%7ew", "p+a%2Ass%7Ew"] {
            assert_eq!(s.mask(&format!("x={t}&y=1")), "x=***&y=1", "{t}");
        }
        // A stream cut inside the encoded value.
        let m = s.matcher();
        assert_eq!(stream(&m, "x=p+a%2Ass~w&y=1\n", &[4, 7, 9]), "x=***&y=1\n");
    }

    #[test]
    fn empty_set_copies() {
        let s = MaskSet::new();
        assert!(matches!(s.mask("anything"), Cow::Borrowed(_)));
    }
}
