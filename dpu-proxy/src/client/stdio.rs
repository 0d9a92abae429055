//! Helpers that move a process's stdio and the agent's events through a
//! `DpuAgent`, for the shim's FIFOs (or anything async).
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{DpuAgent, Event, Stream, READ_CHUNK, WRITE_CHUNK};
use crate::error::{Error, Result};

/// While the agent does not answer, output is asked for again this often.
const UNREACHABLE_PAUSE: std::time::Duration = std::time::Duration::from_secs(1);

/// Copies one output stream into `to` until EOF; returns the bytes copied.
/// An unreachable agent is waited for (it may be restarting: its output
/// resumes at the same offset), so `to` stays open; the caller decides when
/// the process is lost and drops this future.
pub async fn copy_output<A, W>(
    agent: &A,
    id: &str,
    exec_id: &str,
    stream: Stream,
    mut to: W,
) -> Result<u64>
where
    A: DpuAgent + ?Sized,
    W: AsyncWrite + Unpin,
{
    let mut offset = 0u64;
    loop {
        let r = match agent
            .read_output(id, exec_id, stream, offset, READ_CHUNK)
            .await
        {
            Ok(r) => r,
            Err(Error::DpuUnreachable { .. }) => {
                tokio::time::sleep(UNREACHABLE_PAUSE).await;
                continue;
            }
            Err(e) => return Err(e),
        };
        if !r.data.is_empty() {
            to.write_all(&r.data)
                .await
                .map_err(Error::io("write process output"))?;
            to.flush()
                .await
                .map_err(Error::io("flush process output"))?;
        }
        offset = r.offset + r.data.len() as u64;
        if r.eof {
            return Ok(offset);
        }
    }
}

/// Copies `from` into the process's stdin until EOF, then closes it.
pub async fn copy_input<A, R>(agent: &A, id: &str, exec_id: &str, mut from: R) -> Result<u64>
where
    A: DpuAgent + ?Sized,
    R: AsyncRead + Unpin,
{
    let mut buf = vec![0u8; WRITE_CHUNK];
    let mut total = 0u64;
    loop {
        let n = from
            .read(&mut buf)
            .await
            .map_err(Error::io("read process input"))?;
        if n == 0 {
            break;
        }
        agent.write_input(id, exec_id, buf[..n].to_vec()).await?;
        total += n as u64;
    }
    agent.close_io(id, exec_id).await?;
    Ok(total)
}

/// Where a client is in the agent's event sequence.
#[derive(Debug, Default, Clone)]
pub struct EventCursor {
    pub after_seq: u64,
    pub instance: String,
}

impl EventCursor {
    /// Waits for the next events; after an agent restart (new instance) it
    /// returns everything the new agent kept.
    pub async fn next<A: DpuAgent + ?Sized>(&mut self, agent: &A) -> Result<Vec<Event>> {
        let r = agent.wait_events(self.after_seq, &self.instance).await?;
        self.instance = r.instance;
        if let Some(last) = r.events.last() {
            self.after_seq = last.seq;
        }
        Ok(r.events)
    }
}
