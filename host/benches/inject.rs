//! Destination-bound secrets on the way out, run with
//! `cargo bench -p keyhole-host --bench inject`: finding and substituting
//! placeholders in a 10 MiB request body (with 10 placeholders in it, and
//! with none), and scrubbing a 10 MiB response of the injected value,
//! against a plain copy of the same bytes.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use keyhole::names::SecretName;
use keyhole::network::inject::{BoundSecrets, Parts, scrub};
use keyhole::network::{Destination, Host, Scheme};
use keyhole::secret::SecretValue;
use std::time::Duration;

const MIB: usize = 1 << 20;

fn body(placeholder: Option<&str>) -> Vec<u8> {
    let line = b"{\"event\":\"invoice.paid\",\"amount\":4200,\"customer\":\"cus_0123456789\"}\n";
    let mut out = Vec::with_capacity(10 * MIB + 1024);
    let mut n = 0;
    while out.len() < 10 * MIB {
        out.extend_from_slice(line);
        n += 1;
        if let Some(p) = placeholder
            && n % 15_000 == 0
        {
            out.extend_from_slice(p.as_bytes());
        }
    }
    out
}

fn inject(c: &mut Criterion) {
    let bound = BoundSecrets::default();
    let to = "https://api.example.com".parse().unwrap();
    let p =
        bound.placeholder(&SecretName::new("TOKEN").unwrap(), SecretValue::new("tok_live_0123456789".into()), vec![to]);
    let dest = Destination { scheme: Scheme::Https, host: Host::parse("api.example.com"), port: 443 };
    let with = body(Some(&p));
    let without = body(None);
    let mut g = c.benchmark_group("inject-10MiB");
    g.throughput(Throughput::Bytes(with.len() as u64));
    g.sample_size(10).measurement_time(Duration::from_secs(5));
    g.bench_function("copy", |b| b.iter(|| std::hint::black_box(with.clone())));
    for (label, body) in [("10-placeholders", &with), ("no-placeholder", &without)] {
        g.bench_function(label, |b| {
            b.iter(|| {
                let mut parts = Parts { path_and_query: "/v1/events".into(), headers: Vec::new(), body: body.clone() };
                bound.inject(&dest, &mut parts).unwrap()
            })
        });
    }
    let mut parts = Parts {
        path_and_query: "/".into(),
        headers: vec![("authorization".into(), p.clone().into_bytes())],
        body: Vec::new(),
    };
    let injected = bound.inject(&dest, &mut parts).unwrap();
    g.bench_function("scrub-response", |b| b.iter(|| scrub(&injected, &without)));
    g.finish();
}

criterion_group!(benches, inject);
criterion_main!(benches);
