//! `demo-app --target ADDR --requests N --connections K [--dir DIR]`: drives N requests
//! through the proxy and prints one JSON line with the count and latency percentiles.
//!
//! With `--dir` (a directory shared with the demo) it waits for the path to answer,
//! writes `DIR/ready`, waits for `DIR/go`, keeps `DIR/progress` ("done errors") current
//! while running, writes `DIR/result.json`, then stays up so its CPU time can still be
//! read. Without `--dir` it starts at once and exits when done.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use heteropod_demo_images::{args, load};

const USAGE: &str = "demo-app [--target 127.0.0.1:15001] [--requests 2000] [--connections 4] \
                     [--dir DIR] [--warmup-timeout-s 60]";
const GO_POLL: Duration = Duration::from_millis(10);

fn main() {
    let args = args::from_env_or_exit(
        &[
            "target",
            "requests",
            "connections",
            "dir",
            "warmup-timeout-s",
        ],
        USAGE,
    );
    let parsed = (|| -> Result<_, String> {
        Ok((
            args.get("target", SocketAddr::from(([127, 0, 0, 1], 15001)))?,
            args.get("requests", 2000u64)?,
            args.get("connections", 4usize)?,
            args.get("warmup-timeout-s", 60u64)?,
        ))
    })();
    let (target, requests, connections, warmup) = parsed.unwrap_or_else(|e| exit(&e));
    let dir = args.raw("dir").map(PathBuf::from);

    if let Err(e) = load::warm_up(target, Duration::from_secs(warmup)) {
        exit(&format!("warm-up: {e}"));
    }
    eprintln!("demo-app: {target} answers");
    if let Some(dir) = &dir {
        write_atomic(dir, "ready", "ready\n");
        while !dir.join("go").exists() {
            std::thread::sleep(GO_POLL);
        }
    }
    eprintln!("demo-app: {requests} requests over {connections} connections to {target}");
    let report = load::run(target, requests, connections, |done, errors| {
        if let Some(dir) = &dir {
            write_atomic(dir, "progress", &format!("{done} {errors}\n"));
        }
    });
    let json = report.to_json();
    println!("{json}");
    let Some(dir) = &dir else {
        std::process::exit(i32::from(report.errors > 0));
    };
    write_atomic(dir, "result.json", &format!("{json}\n"));
    // Stay up: the demo reads this container's CPU time after the run.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// Writes `dir/name` through a rename, so the reader never sees half a file.
fn write_atomic(dir: &Path, name: &str, text: &str) {
    let tmp = dir.join(format!(".{name}.tmp"));
    let res = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, dir.join(name)));
    if let Err(e) = res {
        exit(&format!("write {}: {e}", dir.join(name).display()));
    }
}

fn exit(msg: &str) -> ! {
    eprintln!("demo-app: {msg}");
    std::process::exit(1)
}
