//! Accepted connections reach ttrpc only after passing their transport's
//! check (the peer's uid, or the key handshake). Each check runs in a task
//! of its own with a deadline, so a peer that stalls holds up no one; at most
//! [`MAX_PENDING`] run at once, further connections are closed at once.
use std::{future::Future, sync::Arc, time::Duration};

use tokio::sync::{mpsc, Semaphore};
use ttrpc::r#async::transport::{Listener, Socket};

/// Connections being checked at one time.
pub const MAX_PENDING: usize = 64;
/// How long a peer has to pass its check.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of descriptors) before the next.
pub const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

pub struct Gate {
    admitted: mpsc::Sender<Socket>,
    pending: Arc<Semaphore>,
    /// For logs: the listener's address.
    address: String,
}

impl Gate {
    /// The gate and the listener ttrpc serves from.
    pub fn new(address: String) -> (Gate, Listener) {
        let (tx, rx) = mpsc::channel::<Socket>(MAX_PENDING);
        let stream = futures::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|s| (Ok::<_, std::io::Error>(s), rx))
        });
        let gate = Gate {
            admitted: tx,
            pending: Arc::new(Semaphore::new(MAX_PENDING)),
            address,
        };
        (gate, Listener::new(stream))
    }

    /// Resolves once ttrpc dropped the listener (the server stopped).
    pub async fn closed(&self) {
        self.admitted.closed().await
    }

    /// Runs `check` for one accepted connection from `peer`; what passes is
    /// served, what fails is logged (with why) and closed.
    pub fn admit<F>(&self, peer: String, check: F)
    where
        F: Future<Output = Result<Socket, String>> + Send + 'static,
    {
        let Ok(permit) = self.pending.clone().try_acquire_owned() else {
            tracing::warn!(address = %self.address, %peer, "refused a connection: {MAX_PENDING} others are still being checked");
            return;
        };
        let tx = self.admitted.clone();
        let address = self.address.clone();
        tokio::spawn(async move {
            let verdict = match tokio::time::timeout(CHECK_TIMEOUT, check).await {
                Ok(v) => v,
                Err(_) => Err(format!("did not authenticate within {CHECK_TIMEOUT:?}")),
            };
            drop(permit);
            match verdict {
                Ok(socket) => {
                    let _ = tx.send(socket).await;
                }
                Err(why) => tracing::warn!(%address, %peer, "refused a connection: {why}"),
            }
        });
    }
}
