fn main() {
    // The ring tests run under the loom model checker with RUSTFLAGS="--cfg heteronet_loom".
    println!("cargo::rustc-check-cfg=cfg(heteronet_loom)");
}
