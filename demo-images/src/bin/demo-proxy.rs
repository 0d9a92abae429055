//! `demo-proxy --listen ADDR --upstream ADDR|original [--inbound-listen ADDR]`: the
//! Envoy-like TCP proxy sidecar. `--upstream original` makes it a transparent mesh
//! sidecar (each captured connection goes where it was going); `--inbound-listen` adds
//! the inbound capture port, whose connections go to 127.0.0.1 at their original port.

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use heteropod_demo_images::{args, proxy};
use proxy::Upstream;

const USAGE: &str = "demo-proxy [--listen 127.0.0.1:15001] [--upstream 127.0.0.1:8080|original] \
                     [--inbound-listen 0.0.0.0:15006]";

fn main() {
    let args = args::from_env_or_exit(&["listen", "upstream", "inbound-listen"], USAGE);
    let listen: SocketAddr = args
        .get("listen", SocketAddr::from(([127, 0, 0, 1], 15001)))
        .unwrap_or_else(|e| exit(&e));
    let upstream: Upstream = args
        .get(
            "upstream",
            Upstream::Fixed(SocketAddr::from(([127, 0, 0, 1], 8080))),
        )
        .unwrap_or_else(|e| exit(&e));
    let inbound: Option<SocketAddr> = args.raw("inbound-listen").map(|a| {
        a.parse()
            .unwrap_or_else(|_| exit(&format!("--inbound-listen: cannot parse {a:?}")))
    });
    let stats = Arc::new(proxy::ProxyStats::default());
    if let Some(addr) = inbound {
        let l = bind(addr);
        println!("demo-proxy: inbound on {addr}, to 127.0.0.1 at each original port");
        let stats = stats.clone();
        std::thread::spawn(move || {
            if let Err(e) = proxy::serve(l, Upstream::OriginalPortLocal, stats, |line| {
                println!("inbound {line}")
            }) {
                exit(&format!("accept on {addr}: {e}"));
            }
        });
    }
    let listener = bind(listen);
    println!("demo-proxy: listening on {listen}, upstream {upstream:?}");
    if let Err(e) = proxy::serve(listener, upstream, stats, |line| println!("{line}")) {
        exit(&format!("accept on {listen}: {e}"));
    }
}

fn bind(addr: SocketAddr) -> TcpListener {
    TcpListener::bind(addr).unwrap_or_else(|e| exit(&format!("bind {addr}: {e}")))
}

fn exit(msg: &str) -> ! {
    eprintln!("demo-proxy: {msg}");
    std::process::exit(1)
}
