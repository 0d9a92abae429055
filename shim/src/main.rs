//! `containerd-shim-heteropod-v1`: the containerd shim v2 binary of HeteroPod.
#![deny(unsafe_code)]

// One thread is enough for a shim that mostly waits on sockets and child exits,
// and it keeps the resident memory per Pod small.
#[tokio::main(flavor = "current_thread")]
async fn main() {
    containerd_shim::asynchronous::run::<heteropod_shim::Service>(
        "io.containerd.heteropod.v1",
        None,
    )
    .await;
}
