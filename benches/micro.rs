//! Micro-benchmarks of the per-event hot path: decode + validate, projection apply, state
//! encode/decode, dedupe lookup + insert, and sled batch commits. `cargo bench --bench micro`.
//! It also counts heap allocations per call, and writes both tables (time and allocations per
//! call) to `benches/report/micro.md`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{criterion_group, BatchSize, Criterion, Throughput};
use tally_state::{CommitBatch, DedupeEntry, Store, StoreOptions};
use tally_topology::{Guard, Inventory, Ledger, Projection, SourceRef};

const INVENTORY: &[u8] = br#"{"event_id":"mkt-evt-8f11a","schema_version":1,"sku":"1231241","seller_id":"seller-42","location_id":"fc-1","bucket":"sellable","operation":"adjust","quantity":100,"event_time":"2026-06-19T18:23:11Z"}"#;
const LEDGER: &[u8] = br#"{"event_id":"e-1","schema_version":1,"account_id":"acc-1","type":"deposited","amount_minor":1000,"currency":"EUR","event_time":"2026-06-19T18:23:11Z","correlation_id":"c-1","causation_id":null}"#;

/// The system allocator, counting every allocation and reallocation of the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc(layout)
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.alloc_zeroed(layout)
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        System.realloc(ptr, layout, new_size)
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout)
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Mean allocations per call of `f` over `calls` calls, after one warm-up call.
fn allocations_per_call(calls: u64, mut f: impl FnMut()) -> f64 {
    f();
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    for _ in 0..calls {
        f();
    }
    (ALLOCATIONS.load(Ordering::Relaxed) - before) as f64 / calls as f64
}

/// A decoded event, its source and the state it yields on an empty key.
fn fixture<P: Projection>(key: &[u8], value: &[u8]) -> (P::Event, SourceRef, P::State) {
    let ev = P::decode(Some(key), value).unwrap();
    let src = SourceRef {
        partition: 0,
        offset: 1,
    };
    let state = P::apply(None, &ev, src, &guard::<P>()).unwrap();
    (ev, src, state)
}

/// The built-in contract's checks, as a flow guards them.
fn guard<P: Projection>() -> Guard {
    Guard::new(P::INVARIANTS.iter().copied(), false)
}

/// A store in a temporary directory holding dedupe entries `evt-0` .. `evt-{ids - 1}`.
fn seeded_store(ids: u64) -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), StoreOptions::default()).unwrap();
    let mut seed = CommitBatch::default();
    for i in 0..ids {
        seed.put_dedupe(
            format!("evt-{i}").as_bytes(),
            DedupeEntry {
                fingerprint: i,
                event_time_ms: i as i64,
                offset: 0,
            },
        );
    }
    store.commit(seed).unwrap();
    (dir, store)
}

fn projection_allocations<P: Projection>(name: &str, key: &[u8], value: &[u8]) -> Vec<String> {
    let (ev, src, state) = fixture::<P>(key, value);
    let (mut buf, mut out) = (Vec::new(), Vec::new());
    P::encode_state(&state, &mut buf);
    let encoded = buf.clone();
    let mut folded = state.clone();
    let guard = guard::<P>();
    let n = 10_000;
    [
        (
            "decode+validate",
            allocations_per_call(n, || {
                black_box(P::decode(Some(key), black_box(value)).unwrap());
            }),
        ),
        (
            "apply (copy of the state)",
            allocations_per_call(n, || {
                black_box(P::apply(Some(&state), black_box(&ev), src, &guard).unwrap());
            }),
        ),
        (
            "apply_in_place (the hot path)",
            allocations_per_call(n, || {
                P::apply_in_place(&mut folded, black_box(&ev), src, &guard).unwrap();
            }),
        ),
        (
            "fingerprint",
            allocations_per_call(n, || {
                black_box(P::fingerprint(black_box(&ev)));
            }),
        ),
        (
            "encode_state (reused buffer)",
            allocations_per_call(n, || P::encode_state(black_box(&state), &mut buf)),
        ),
        (
            "decode_state",
            allocations_per_call(n, || {
                black_box(P::decode_state(black_box(&encoded)).unwrap());
            }),
        ),
        (
            "render_output (reused buffer)",
            allocations_per_call(n, || P::render(black_box(&state), &mut out).unwrap()),
        ),
    ]
    .into_iter()
    .map(|(op, a)| format!("| {name} {op} | {a:.2} |"))
    .collect()
}

/// Counts allocations per call of each hot-path step and writes the table next to the e2e report.
fn allocations(_: &mut Criterion) {
    let mut rows = projection_allocations::<Inventory>("inventory", b"1231241", INVENTORY);
    rows.extend(projection_allocations::<Ledger>("ledger", b"acc-1", LEDGER));
    let (_dir, store) = seeded_store(10_000);
    let mut i = 0u64;
    let ids: Vec<String> = (0..10_000).map(|i| format!("evt-{i}")).collect();
    let hit = allocations_per_call(10_000, || {
        i = (i + 7919) % 10_000;
        black_box(store.dedupe(ids[i as usize].as_bytes()).unwrap());
    });
    let miss = allocations_per_call(10_000, || {
        black_box(store.dedupe(b"no-such-event").unwrap());
    });
    let state = [7u8; 200];
    let mut next = 1_000_000u64;
    let commit = allocations_per_call(20, || {
        let mut batch = CommitBatch::default();
        for _ in 0..1_000 {
            next += 1;
            batch.put_state(&next.to_be_bytes(), &state);
            batch.put_dedupe(
                &next.to_le_bytes(),
                DedupeEntry {
                    fingerprint: next,
                    event_time_ms: 0,
                    offset: 0,
                },
            );
        }
        store.commit(batch).unwrap();
    }) / 1_000.0;
    rows.push(format!("| store dedupe lookup, hit | {hit:.2} |"));
    rows.push(format!("| store dedupe lookup, miss | {miss:.2} |"));
    rows.push(format!(
        "| store commit, per event (1 state + 1 dedupe entry, 1,000 per batch) | {commit:.2} |"
    ));
    *ALLOCATION_ROWS.lock().unwrap_or_else(|p| p.into_inner()) = rows;
}

/// The allocation table's rows, written with the timings once criterion is done.
static ALLOCATION_ROWS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Mean time per call (and per element, for batches) of every benchmark this run measured, read
/// back from criterion's estimates.
fn time_rows(since: std::time::SystemTime) -> Vec<String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/criterion");
    let mut rows = Vec::new();
    for group in std::fs::read_dir(&root).into_iter().flatten().flatten() {
        for bench in std::fs::read_dir(group.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let dir = bench.path().join("new");
            let estimates = dir.join("estimates.json");
            let fresh = std::fs::metadata(&estimates)
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since);
            let read = |f: &str| -> Option<serde_json::Value> {
                serde_json::from_slice(&std::fs::read(dir.join(f)).ok()?).ok()
            };
            let (Some(est), Some(meta), true) =
                (read("estimates.json"), read("benchmark.json"), fresh)
            else {
                continue;
            };
            let Some(ns) = est["mean"]["point_estimate"].as_f64() else {
                continue;
            };
            let elements = meta["throughput"]["Elements"]
                .as_f64()
                .unwrap_or(1.0)
                .max(1.0);
            let name = meta["full_id"].as_str().unwrap_or_default().to_string();
            rows.push((name, ns, ns / elements));
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter()
        .map(|(name, ns, per)| format!("| {name} | {ns:.0} ns | {per:.0} ns |"))
        .collect()
}

fn main() {
    let since = std::time::SystemTime::now();
    benches();
    Criterion::default().configure_from_args().final_summary();
    // `cargo test --benches` runs each benchmark once, measuring nothing worth a report.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let allocations = ALLOCATION_ROWS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .join("\n");
    let times = time_rows(since).join("\n");
    let report = format!(
        "# Micro-benchmarks of the hot path\n\n`cargo bench --bench micro` (criterion; the system \
         allocator, counting, not the binary's jemalloc).\n\n## Time per call\n\nMean of \
         criterion's samples; per element for a batch (a commit of N keys is N elements).\n\n\
         | benchmark | per call | per element |\n|---|---|---|\n{times}\n\n\
         ## Heap allocations per call\n\nCounted over 10,000 calls (store rows: includes sled's \
         own threads).\n\n| step | allocations per call |\n|---|---|\n{allocations}\n"
    );
    eprintln!("{report}");
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/report/micro.md");
    if let Err(e) = std::fs::write(&path, report) {
        eprintln!("cannot write {}: {e}", path.display());
    }
}

fn projection<P: Projection>(c: &mut Criterion, name: &str, key: &[u8], value: &[u8]) {
    let mut g = c.benchmark_group(name);
    g.throughput(Throughput::Elements(1));
    g.bench_function("decode+validate", |b| {
        b.iter(|| P::decode(Some(black_box(key)), black_box(value)).unwrap())
    });
    let (ev, src, state) = fixture::<P>(key, value);
    let guard = guard::<P>();
    g.bench_function("apply", |b| {
        b.iter(|| P::apply(Some(black_box(&state)), black_box(&ev), src, &guard).unwrap())
    });
    // The task folds into the state it holds: the same event applied again, no copy.
    let mut folded = state.clone();
    g.bench_function("apply_in_place", |b| {
        b.iter(|| P::apply_in_place(black_box(&mut folded), black_box(&ev), src, &guard).unwrap())
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
    // A task copies a state that an uncommitted batch still holds.
    g.bench_function("clone_state", |b| b.iter(|| black_box(&state).clone()));
    g.finish();
}

/// The state of a SKU stocked at three locations, as in the end-to-end workload.
fn three_locations(c: &mut Criterion) {
    let (_, src, mut state) = fixture::<Inventory>(b"1231241", INVENTORY);
    for loc in ["fc-2", "fc-3"] {
        let value = String::from_utf8_lossy(INVENTORY).replace("fc-1", loc);
        let ev = Inventory::decode(Some(b"1231241"), value.as_bytes()).unwrap();
        Inventory::apply_in_place(&mut state, &ev, src, &guard::<Inventory>()).unwrap();
    }
    let mut g = c.benchmark_group("inventory_3_locations");
    g.throughput(Throughput::Elements(1));
    let mut buf = Vec::new();
    g.bench_function("encode_state", |b| {
        b.iter(|| Inventory::encode_state(black_box(&state), &mut buf))
    });
    Inventory::encode_state(&state, &mut buf);
    g.bench_function("decode_state", |b| {
        b.iter(|| Inventory::decode_state(black_box(&buf)).unwrap())
    });
    g.bench_function("clone_state", |b| b.iter(|| black_box(&state).clone()));
    g.finish();
}

fn projections(c: &mut Criterion) {
    projection::<Inventory>(c, "inventory", b"1231241", INVENTORY);
    projection::<Ledger>(c, "ledger", b"acc-1", LEDGER);
    three_locations(c);
}

fn stores(c: &mut Criterion) {
    let (_dir, store) = seeded_store(100_000);
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
                                offset: 0,
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

criterion_group!(benches, allocations, projections, stores);
