//! Listeners appearing and disappearing are followed by the mirrors.

mod relay_common;

use std::io::ErrorKind;
use std::net::{SocketAddr, TcpListener};

use relay_common::*;

#[test]
fn closed_listener_makes_new_connects_refused() {
    let pod = Pod::new();
    let addr: SocketAddr = "127.0.0.1:18100".parse().unwrap();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let server = spawn_in_ns(&pod.dpu_path(), move || {
        let l = TcpListener::bind(addr).unwrap();
        l.set_nonblocking(true).unwrap();
        // Serve echo until told to stop, then close the listener.
        loop {
            if stop_rx.try_recv().is_ok() {
                return;
            }
            if let Ok((c, _)) = l.accept() {
                c.set_nonblocking(false).unwrap();
                std::thread::spawn(move || echo(c));
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
    });
    wait_echo(&pod.cpu_path(), addr);
    stop_tx.send(()).unwrap();
    server.join().unwrap();
    eventually(20, "connects to be refused", || {
        (try_echo(&pod.cpu_path(), addr) == Err(ErrorKind::ConnectionRefused)).then_some(())
    });
    // And the port is free again in the CPU half.
    in_ns(&pod.cpu_path(), move || {
        TcpListener::bind(addr).map(|_| ()).unwrap()
    });
}

#[test]
fn listener_opened_later_is_mirrored_and_served() {
    let pod = Pod::new();
    let addr: SocketAddr = "127.0.0.1:18101".parse().unwrap();
    assert_eq!(
        try_echo(&pod.dpu_path(), addr),
        Err(ErrorKind::ConnectionRefused)
    );
    echo_server(&pod.cpu_path(), "127.0.0.1:18101");
    wait_echo(&pod.dpu_path(), addr);
}

#[test]
fn mirrors_are_not_reflected_back() {
    let pod = Pod::new();
    echo_server(&pod.cpu_path(), "127.0.0.1:18102");
    wait_echo(&pod.dpu_path(), "127.0.0.1:18102".parse().unwrap());
    std::thread::sleep(std::time::Duration::from_millis(500));
    // The CPU relay holds no mirror of its own listener: only the real server is there.
    let cpu = pod.cpu.stats_json().expect("cpu stats");
    let dpu = pod.dpu.stats_json().expect("dpu stats");
    assert_eq!(cpu["relay"]["mirrors_active"], 0, "{cpu}");
    assert_eq!(dpu["relay"]["mirrors_active"], 1, "{dpu}");
}

#[test]
fn sigusr1_logs_the_counters() {
    let pod = Pod::new();
    echo_server(&pod.dpu_path(), "127.0.0.1:18103");
    wait_echo(&pod.cpu_path(), "127.0.0.1:18103".parse().unwrap());
    let pid = nix::unistd::Pid::from_raw(pod.cpu.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::SIGUSR1).unwrap();
    eventually(10, "counters in the log", || {
        let log = pod.cpu.log_text();
        (log.contains("counters") && log.contains("mirror_accepts")).then_some(())
    });
    let stats = pod.cpu.stats_json().expect("stats");
    assert!(
        stats["mux"]["streams_total"].as_u64().unwrap() >= 1,
        "{stats}"
    );
    assert!(
        stats["relay"]["bytes_tcp_to_stream"].as_u64().unwrap() >= 4,
        "{stats}"
    );
    // Its own CPU time, for a relay measured where it runs (a DPU, a guest).
    let cpu = stats["relay"]["cpu_us"].as_u64().unwrap();
    assert!(cpu > 0, "{stats}");
    let later = pod.cpu.stats_json().expect("stats")["relay"]["cpu_us"].as_u64();
    assert!(later >= Some(cpu), "CPU time went backwards");
}
