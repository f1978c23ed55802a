//! Masking throughput on stdout-like text, run with
//! `cargo bench -p keyhole-host --bench mask`: the streaming masker with 1,
//! 10 and 100 secrets in the set (each with its encoded forms) against a
//! plain copy of the same bytes, fed in 64 KiB writes as a pipe would; the
//! same with percent-encoded text; and building the matcher for one value.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhole::mask::{MaskSet, Matcher, StreamMasker};
use keyhole::secret::SecretValue;
use std::time::Duration;

/// A deterministic pseudo-random generator (xorshift), so runs compare.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn word(&mut self, len: usize, alphabet: &[u8]) -> String {
        (0..len).map(|_| alphabet[(self.next() % alphabet.len() as u64) as usize] as char).collect()
    }
}

const ALNUM: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";

/// About 8 MiB of log-like lines: timestamps, levels, words, numbers, paths.
fn text(rng: &mut Rng) -> Vec<u8> {
    let levels = ["INFO", "DEBUG", "WARN", "ERROR"];
    let mut out = String::new();
    let mut i = 0u64;
    while out.len() < 8 << 20 {
        i += 1;
        let level = levels[(rng.next() % 4) as usize];
        let count = 4 + rng.next() % 8;
        let mut words = Vec::new();
        for _ in 0..count {
            let len = 2 + (rng.next() % 9) as usize;
            words.push(rng.word(len, ALNUM));
        }
        let (worker, item, took) = (rng.next() % 16, rng.next() % 100_000, rng.next() % 500);
        out.push_str(&format!(
            "2026-11-28T10:{:02}:{:02}.{:03}Z {level} worker-{worker} /api/v1/items/{item} {} took={took}ms\n",
            i % 60,
            (i / 60) % 60,
            i % 1000,
            words.join(" "),
        ));
    }
    out.into_bytes()
}

/// Masks `input` as a plugin's output stream, in 64 KiB writes as a pipe
/// delivers them.
fn stream(matcher: &Matcher, input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut s = StreamMasker::default();
    for chunk in input.chunks(64 * 1024) {
        s.push(matcher, chunk, &mut out);
    }
    s.finish(matcher, &mut out);
    out
}

fn throughput(c: &mut Criterion) {
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let input = text(&mut rng);
    let mut g = c.benchmark_group("mask");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.sample_size(20).measurement_time(Duration::from_secs(5));

    g.bench_function("plain-copy", |b| {
        b.iter(|| {
            let mut out = Vec::with_capacity(input.len());
            for chunk in input.chunks(64 * 1024) {
                out.extend_from_slice(chunk);
            }
            out
        })
    });
    for n in [1, 10, 100] {
        let set = MaskSet::new();
        for _ in 0..n {
            set.add(&SecretValue::new(rng.word(24, ALNUM)));
        }
        let matcher = set.matcher();
        g.bench_function(format!("{n}-secrets"), |b| b.iter(|| stream(&matcher, &input)));
    }
    g.finish();
}

/// The same log with a percent-encoded query on every line (`%XX` escapes
/// in either case, `+` for spaces), so the decoding pass runs on every
/// write: with 10 secrets of 24 bytes, and with one secret of 100 KiB.
fn encoded(c: &mut Criterion) {
    let mut rng = Rng(0x6a09e667f3bcc908);
    let mut input = Vec::new();
    for line in text(&mut rng).split_inclusive(|&b| b == b'\n') {
        input.extend_from_slice(&line[..line.len() - 1]);
        let q = rng.word(12, ALNUM);
        input.extend_from_slice(format!(" GET /s?q={}%2F{}+x%3d%e2%9c%93\n", &q[..6], &q[6..]).as_bytes());
    }
    let mut g = c.benchmark_group("mask-encoded");
    g.throughput(Throughput::Bytes(input.len() as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for (name, values) in [("10-secrets", vec![24; 10]), ("100KiB-secret", vec![100 << 10])] {
        let set = MaskSet::new();
        for len in values {
            set.add(&SecretValue::new(rng.word(len, ALNUM)));
        }
        let matcher = set.matcher();
        g.bench_function(name, |b| b.iter(|| stream(&matcher, &input)));
    }
    g.finish();
}

/// Building the matcher for one large value (a certificate bundle, a
/// kubeconfig): the first line a task prints after reading it waits for this.
fn build(c: &mut Criterion) {
    let mut rng = Rng(0x2545f4914f6cdd1d);
    let mut g = c.benchmark_group("mask-build");
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    for kib in [1, 100] {
        let value = SecretValue::new(rng.word(kib << 10, ALNUM));
        g.bench_function(format!("{kib}KiB-secret"), |b| {
            b.iter(|| {
                let set = MaskSet::new();
                set.add(&value);
                set.matcher()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, throughput, encoded, build);
criterion_main!(benches);
