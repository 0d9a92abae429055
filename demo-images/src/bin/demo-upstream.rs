//! `demo-upstream --listen ADDR`: the server behind the demo's proxy.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use heteropod_demo_images::{args, upstream};

const USAGE: &str = "demo-upstream [--listen 127.0.0.1:8080]";

fn main() {
    let args = args::from_env_or_exit(&["listen"], USAGE);
    let listen: SocketAddr = args
        .get("listen", SocketAddr::from(([127, 0, 0, 1], 8080)))
        .unwrap_or_else(|e| exit(&e));
    let listener =
        TcpListener::bind(listen).unwrap_or_else(|e| exit(&format!("bind {listen}: {e}")));
    println!("demo-upstream: listening on {listen}");
    let stats = Arc::new(upstream::UpstreamStats::default());
    if let Err(e) = upstream::serve(listener, stats, |line| println!("{line}")) {
        exit(&format!("accept on {listen}: {e}"));
    }
}

fn exit(msg: &str) -> ! {
    eprintln!("demo-upstream: {msg}");
    std::process::exit(1)
}
