//! The load driver: a fixed number of requests spread over a few keep-alive
//! connections, each request timed and its answer checked.

use std::io::{self, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::proto::{expected_body, read_response, write_request};

const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the progress callback runs while requests are in flight.
pub const PROGRESS_EVERY: Duration = Duration::from_millis(100);

/// One keep-alive connection to the target.
pub struct Client {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
}

impl Client {
    /// Connects to `target`.
    pub fn connect(target: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect_timeout(&target, IO_TIMEOUT)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        let reader = BufReader::new(stream.try_clone()?);
        Ok(Self { stream, reader })
    }

    /// Sends request `n`; `Ok(true)` when the answer is the right one.
    pub fn request(&mut self, n: u64) -> io::Result<bool> {
        write_request(&mut self.stream, n)?;
        let (status, body) = read_response(&mut self.reader)?;
        Ok(status == 200 && body == expected_body(n))
    }
}

/// Tries request 0 on a fresh connection until it gets the right answer or `timeout`
/// passes: the path (and any listener mirroring on it) is then up.
pub fn warm_up(target: SocketAddr, timeout: Duration) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = match Client::connect(target).and_then(|mut c| c.request(0)) {
            Ok(true) => return Ok(()),
            Ok(false) => io::Error::new(io::ErrorKind::InvalidData, "wrong answer to request 0"),
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("{target} not answering after {timeout:?}: {last}"),
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The outcome of [`run`].
#[derive(Debug, Clone)]
pub struct Report {
    pub requests: u64,
    pub connections: usize,
    pub ok: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Sorted latencies of the requests answered correctly.
    pub latencies: Vec<Duration>,
}

impl Report {
    /// The `p`-th percentile (0..=100) of correct requests' latency.
    pub fn percentile(&self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        let rank = (p / 100.0 * self.latencies.len() as f64).ceil() as usize;
        self.latencies[rank.clamp(1, self.latencies.len()) - 1]
    }

    /// One JSON line for the demo.
    pub fn to_json(&self) -> String {
        let us = |d: Duration| d.as_secs_f64() * 1e6;
        let secs = self.elapsed.as_secs_f64();
        format!(
            "{{\"requests\":{},\"connections\":{},\"ok\":{},\"errors\":{},\"seconds\":{:.3},\
             \"rps\":{:.0},\"p50_us\":{:.1},\"p99_us\":{:.1},\"max_us\":{:.1}}}",
            self.requests,
            self.connections,
            self.ok,
            self.errors,
            secs,
            if secs > 0.0 {
                self.ok as f64 / secs
            } else {
                0.0
            },
            us(self.percentile(50.0)),
            us(self.percentile(99.0)),
            us(self.latencies.last().copied().unwrap_or_default()),
        )
    }
}

/// Sends requests 1..=`requests` to `target` over `connections` keep-alive connections
/// (each connection sends its next request when the previous answer is in). A failed
/// request counts as an error and its connection is replaced. `progress(done, errors)`
/// runs every [`PROGRESS_EVERY`] and once at the end.
pub fn run(
    target: SocketAddr,
    requests: u64,
    connections: usize,
    mut progress: impl FnMut(u64, u64),
) -> Report {
    let connections = connections.max(1);
    let next = AtomicU64::new(1);
    let (done, errors) = (AtomicU64::new(0), AtomicU64::new(0));
    let all = Mutex::new(Vec::with_capacity(requests as usize));
    let started = Instant::now();
    std::thread::scope(|s| {
        let workers: Vec<_> = (0..connections)
            .map(|_| {
                s.spawn(|| {
                    let mut mine = Vec::new();
                    let mut client: Option<Client> = None;
                    loop {
                        let n = next.fetch_add(1, Relaxed);
                        if n > requests {
                            break;
                        }
                        let t0 = Instant::now();
                        let c = match client.take().map_or_else(|| Client::connect(target), Ok) {
                            Ok(c) => client.insert(c),
                            Err(_) => {
                                errors.fetch_add(1, Relaxed);
                                done.fetch_add(1, Relaxed);
                                continue;
                            }
                        };
                        match c.request(n) {
                            Ok(true) => mine.push(t0.elapsed()),
                            Ok(false) => {
                                errors.fetch_add(1, Relaxed);
                            }
                            Err(_) => {
                                errors.fetch_add(1, Relaxed);
                                client = None;
                            }
                        }
                        done.fetch_add(1, Relaxed);
                    }
                    if let Ok(mut all) = all.lock() {
                        all.extend(mine);
                    }
                })
            })
            .collect();
        while !workers.iter().all(|w| w.is_finished()) {
            progress(done.load(Relaxed), errors.load(Relaxed));
            std::thread::sleep(PROGRESS_EVERY);
        }
    });
    let elapsed = started.elapsed();
    let (done, errors) = (done.load(Relaxed), errors.load(Relaxed));
    progress(done, errors);
    let mut latencies = all.into_inner().unwrap_or_default();
    latencies.sort_unstable();
    Report {
        requests: done,
        connections,
        ok: latencies.len() as u64,
        errors,
        elapsed,
        latencies,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::{self, ProxyStats};
    use crate::upstream::{self, UpstreamStats};
    use std::net::TcpListener;
    use std::sync::Arc;

    fn spawn_upstream() -> (SocketAddr, Arc<UpstreamStats>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stats = Arc::new(UpstreamStats::default());
        let s = stats.clone();
        std::thread::spawn(move || upstream::serve(l, s, |_| {}));
        (addr, stats)
    }

    fn spawn_proxy(upstream: SocketAddr) -> (SocketAddr, Arc<ProxyStats>) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        let stats = Arc::new(ProxyStats::default());
        let s = stats.clone();
        std::thread::spawn(move || proxy::serve(l, proxy::Upstream::Fixed(upstream), s, |_| {}));
        (addr, stats)
    }

    #[test]
    fn every_request_through_the_proxy_gets_its_answer() {
        let (up, up_stats) = spawn_upstream();
        let (px, px_stats) = spawn_proxy(up);
        warm_up(px, Duration::from_secs(5)).unwrap();
        let mut ticks = 0;
        let sut = run(px, 300, 3, |_, _| ticks += 1);
        assert_eq!((sut.requests, sut.ok, sut.errors), (300, 300, 0));
        assert!(ticks >= 1);
        assert!(sut.percentile(50.0) <= sut.percentile(99.0));
        assert_eq!(up_stats.requests.load(Relaxed), 301);
        assert!(px_stats.connections_total.load(Relaxed) >= 4);
        assert!(px_stats.bytes_downstream_to_upstream.load(Relaxed) > 0);
        assert!(sut.to_json().contains("\"ok\":300"));
    }

    #[test]
    fn a_dead_upstream_counts_errors_instead_of_hanging() {
        let dead = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = dead.local_addr().unwrap();
        drop(dead);
        let (px, px_stats) = spawn_proxy(addr);
        let sut = run(px, 20, 2, |_, _| {});
        assert_eq!((sut.requests, sut.ok, sut.errors), (20, 0, 20));
        assert!(px_stats.upstream_connect_failed.load(Relaxed) > 0);
        assert!(warm_up(px, Duration::from_millis(200)).is_err());
    }

    #[test]
    fn percentile_picks_by_rank() {
        let sut = Report {
            requests: 4,
            connections: 1,
            ok: 4,
            errors: 0,
            elapsed: Duration::from_secs(1),
            latencies: (1..=4).map(Duration::from_millis).collect(),
        };
        assert_eq!(sut.percentile(50.0), Duration::from_millis(2));
        assert_eq!(sut.percentile(99.0), Duration::from_millis(4));
    }
}
