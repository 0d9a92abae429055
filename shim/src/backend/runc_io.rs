//! Process stdio for runc: FIFOs handed to the process directly, /dev/null for
//! missing streams, or a console socket for a terminal.

use std::{fs::File, process::Stdio as ProcStdio};

use async_trait::async_trait;

use crate::{
    error::{Error, Result},
    io::{self as stdio_io, Console, ConsoleSocket, Stdio},
};

/// Process stdio for runc: the FIFOs themselves, /dev/null where none is given.
#[derive(Debug)]
pub(super) struct DirectIo {
    stdin: Option<String>,
    stdout: Option<String>,
    stderr: Option<String>,
}

impl DirectIo {
    pub(super) fn new(stdio: &Stdio) -> DirectIo {
        // With a terminal the pty carries all stdio; runc itself gets /dev/null.
        let keep = |p: &str| {
            (!stdio.terminal)
                .then(|| Stdio::path(p).map(str::to_string))
                .flatten()
        };
        DirectIo {
            stdin: keep(&stdio.stdin),
            stdout: keep(&stdio.stdout),
            stderr: keep(&stdio.stderr),
        }
    }
}

#[async_trait]
impl runc::io::Io for DirectIo {
    async fn set(&self, cmd: &mut runc::Command) -> std::io::Result<()> {
        let to_io = |e: Error| std::io::Error::other(e.to_string());
        let stdin: ProcStdio = match &self.stdin {
            Some(path) => stdio_io::open_fifo_reader(path).map_err(to_io)?.into(),
            None => ProcStdio::null(),
        };
        let mut out = Vec::with_capacity(2);
        for p in [&self.stdout, &self.stderr] {
            out.push(match p {
                Some(path) => stdio_io::open_fifo_writer(path)
                    .await
                    .map_err(to_io)?
                    .into(),
                None => ProcStdio::null(),
            });
        }
        let stderr = out.pop().unwrap_or_else(ProcStdio::null);
        let stdout = out.pop().unwrap_or_else(ProcStdio::null);
        cmd.stdin(stdin);
        cmd.stdout(stdout);
        cmd.stderr(stderr);
        Ok(())
    }

    async fn close_after_start(&self) {}
}

/// After create/exec: the console (if any) and the stdin holder.
pub(super) async fn attach_stdio(
    socket: Option<ConsoleSocket>,
    stdio: &Stdio,
) -> Result<(Option<File>, Option<Console>)> {
    match socket {
        Some(socket) => {
            let master =
                tokio::time::timeout(std::time::Duration::from_secs(10), socket.receive_master())
                    .await
                    .map_err(|_| {
                        Error::DeadlineExceeded("runtime never sent the console".into())
                    })??;
            Ok((None, Some(Console::start(master, stdio).await?)))
        }
        None => Ok((stdio_io::hold_stdin(stdio), None)),
    }
}
