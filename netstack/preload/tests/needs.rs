//! What the built library asks of a container image: the shim checks an
//! image for exactly this list (`heteropod_shim::fastpath::LIBRARY_NEEDS`)
//! before it preloads the library there.

use std::process::Command;

#[test]
fn the_library_needs_only_libc() {
    let exe = std::env::current_exe().expect("test executable");
    let lib = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target dir")
        .join("libheterosocket.so");
    assert!(lib.exists(), "{} missing", lib.display());
    let out = Command::new("readelf")
        .arg("-d")
        .arg(&lib)
        .output()
        .expect("readelf (binutils)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let needed: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.contains("(NEEDED)"))
        .filter_map(|l| l.split('[').nth(1)?.split(']').next().map(str::to_string))
        // The glibc loader itself (checked apart, and already loaded).
        .filter(|n| !n.starts_with("ld-linux"))
        .collect();
    assert_eq!(needed, ["libc.so.6"]);
}
