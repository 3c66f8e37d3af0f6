use std::time::Instant;
fn main() {
    for (mode, cache, batch) in [
        ("small", 16u64, true),
        ("small", 16, false),
        ("ht", 16, false),
        ("ht", 256, false),
        ("ht", 256, true),
    ] {
        let dir = std::env::temp_dir().join(format!(
            "probe-{mode}-{cache}-{batch}-{}",
            std::process::id()
        ));
        let mut cfg = sled::Config::new()
            .path(&dir)
            .cache_capacity(cache * 1024 * 1024)
            .flush_every_ms(Some(1000));
        if mode == "ht" {
            cfg = cfg.mode(sled::Mode::HighThroughput);
        }
        let db = cfg.open().unwrap();
        let n = 200_000u64;
        let t = Instant::now();
        let val = [7u8; 120];
        for chunk in 0..(n / 10_000) {
            if batch {
                let mut b = sled::Batch::default();
                for i in chunk * 10_000..(chunk + 1) * 10_000 {
                    let h = i.wrapping_mul(0x9E3779B97F4A7C15);
                    b.insert(format!("devt-{h:x}").as_bytes(), &val[..17]);
                    b.insert(format!("ssku-{}", h % 8000).as_bytes(), &val[..]);
                }
                db.apply_batch(b).unwrap();
            } else {
                for i in chunk * 10_000..(chunk + 1) * 10_000 {
                    let h = i.wrapping_mul(0x9E3779B97F4A7C15);
                    db.insert(format!("devt-{h:x}").as_bytes(), &val[..17])
                        .unwrap();
                    db.insert(format!("ssku-{}", h % 8000).as_bytes(), &val[..])
                        .unwrap();
                }
            }
        }
        let el = t.elapsed();
        println!(
            "{mode} cache={cache}MiB batch={batch}: {:.2} us/event (2 inserts)",
            el.as_secs_f64() * 1e6 / n as f64
        );
        drop(db);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
