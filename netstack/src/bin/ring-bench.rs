//! `ring-bench [ITERATIONS]`: bare ring round trip between two spinning threads.
//! Prints `ring_rtt_us p50=<f> p99=<f> n=<n>` and, with `--json`, a JSON object.

use std::io::Write;

use anyhow::Result;

fn main() -> Result<()> {
    let mut iterations = 100_000usize;
    let mut json = false;
    for a in std::env::args().skip(1) {
        if a == "--json" {
            json = true;
        } else {
            iterations = a.parse()?;
        }
    }
    if std::env::var_os("HETERONET_BENCH_MUX").is_some() {
        for mode in [
            heteronet::NotifyMode::Elastic,
            heteronet::NotifyMode::BusyPoll,
        ] {
            let mut s = heteronet::bench::mux_rtt(iterations / 10, 64, mode)?;
            let (p50, p99) = heteronet::bench::percentiles_us(&mut s);
            let gbps = heteronet::bench::mux_throughput(2 << 30, mode)?;
            writeln!(
                std::io::stdout(),
                "mux_{mode:?} rtt_us p50={p50:.2} p99={p99:.2} echo_gbps={gbps:.2}"
            )?;
        }
    }
    let mut samples = heteronet::bench::ring_rtt(iterations)?;
    let (p50, p99) = heteronet::bench::percentiles_us(&mut samples);
    if json {
        writeln!(
            std::io::stdout(),
            "{}",
            serde_json::json!({ "ring": { "p50": p50, "p99": p99, "n": samples.len() } })
        )?;
    } else {
        writeln!(
            std::io::stdout(),
            "ring_rtt_us p50={p50:.3} p99={p99:.3} n={}",
            samples.len()
        )?;
    }
    Ok(())
}
