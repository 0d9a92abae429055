//! Links the unwinder (libgcc_eh) statically into libheterosocket.so, so that
//! preloading it needs nothing from the container image beyond glibc itself
//! (images without libgcc_s.so.1, such as distroless or busybox ones, are
//! common; with `--as-needed` the linker then drops libgcc_s).
fn main() {
    println!("cargo:rustc-link-lib=static:+verbatim=libgcc_eh.a");
    if let Ok(out) = std::process::Command::new("cc")
        .arg("-print-file-name=libgcc_eh.a")
        .output()
    {
        let path = String::from_utf8_lossy(&out.stdout);
        if let Some(dir) = std::path::Path::new(path.trim()).parent() {
            println!("cargo:rustc-link-search=native={}", dir.display());
        }
    }
}
