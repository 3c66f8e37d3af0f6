//! Micro-benchmarks of the per-event hot path: decode + validate, projection apply, state
//! encode/decode, dedupe lookup + insert, and sled batch commits. `cargo bench --bench micro`.

use std::hint::black_box;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use tally_state::{CommitBatch, DedupeEntry, Store, StoreOptions};
use tally_topology::{Inventory, Ledger, Projection, SourceRef};

const INVENTORY: &[u8] = br#"{"event_id":"mkt-evt-8f11a","schema_version":1,"sku":"1231241","seller_id":"seller-42","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":100,"event_time":"2026-06-19T18:23:11Z"}"#;
const LEDGER: &[u8] = br#"{"event_id":"e-1","schema_version":1,"account_id":"acc-1","type":"deposited","amount_minor":1000,"currency":"EUR","event_time":"2026-06-19T18:23:11Z","correlation_id":"c-1","causation_id":null}"#;

fn projection<P: Projection>(c: &mut Criterion, name: &str, key: &[u8], value: &[u8]) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode+validate", |b| {
        b.iter(|| P::decode(Some(black_box(key)), black_box(value)).unwrap())
    });
    let ev = P::decode(Some(key), value).unwrap();
    let src = SourceRef {
        partition: 0,
        offset: 1,
    };
    let state = P::apply(None, &ev, src).unwrap();
    g.bench_function("apply", |b| {
        b.iter(|| P::apply(Some(black_box(&state)), black_box(&ev), src).unwrap())
    });
    g.bench_function("fingerprint", |b| b.iter(|| P::fingerprint(black_box(&ev))));
    let mut buf = Vec::new();
    g.bench_function("encode_state", |b| {
        b.iter(|| P::encode_state(black_box(&state), &mut buf))
    });
    P::encode_state(&state, &mut buf);
    g.bench_function("decode_state", |b| {
        b.iter(|| P::decode_state(black_box(&buf)).unwrap())
    });
    let mut out = Vec::new();
    g.bench_function("render_output", |b| {
        b.iter(|| P::render(black_box(&state), &mut out).unwrap())
    });
    g.finish();
}

fn projections(c: &mut Criterion) {
    projection::<Inventory>(c, "inventory", b"1231241", INVENTORY);
    projection::<Ledger>(c, "ledger", b"acc-1", LEDGER);
}

fn stores(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut seed = CommitBatch::default();
    for i in 0..100_000u64 {
        seed.put_dedupe(
            format!("evt-{i}").as_bytes(),
            DedupeEntry {
                fingerprint: i,
                event_time_ms: i as i64,
            },
        );
    }
    store.commit(seed).unwrap();
    let mut g = c.benchmark_group("store");
    g.throughput(Throughput::Elements(1));
    let mut i = 0u64;
    g.bench_function("dedupe_lookup_hit", |b| {
        b.iter(|| {
            i = (i + 7919) % 100_000;
            store.dedupe(format!("evt-{i}").as_bytes()).unwrap()
        })
    });
    g.bench_function("dedupe_lookup_miss", |b| {
        b.iter(|| store.dedupe(black_box(b"no-such-event")).unwrap())
    });
    for n in [100usize, 1_000, 10_000] {
        g.throughput(Throughput::Elements(n as u64));
        let state = vec![7u8; 200];
        let mut next = 1_000_000u64;
        g.bench_function(format!("commit_batch_{n}_keys_plus_dedupe"), |b| {
            b.iter_batched(
                || {
                    let mut batch = CommitBatch::default();
                    for _ in 0..n {
                        next += 1;
                        batch.put_state(format!("sku-{}", next % 100_000).as_bytes(), &state);
                        batch.put_dedupe(
                            format!("evt-{next}").as_bytes(),
                            DedupeEntry {
                                fingerprint: next,
                                event_time_ms: next as i64,
                            },
                        );
                    }
                    batch
                },
                |batch| store.commit(batch).unwrap(),
                BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, projections, stores);
criterion_main!(benches);
