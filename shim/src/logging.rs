//! Logs go through `tracing` to the `log` FIFO containerd reads in the bundle
//! directory; `log` records from the shim crates are bridged into `tracing`.

use std::{fs::OpenOptions, io::Write, os::unix::fs::OpenOptionsExt, sync::Mutex};

use nix::fcntl::{fcntl, FcntlArg, OFlag};
use tracing::Level;

/// The level to log at: debug when containerd asks for it, else the config's
/// `log_level`, else info.
pub fn level(debug: bool, configured: Option<&str>) -> Level {
    if debug {
        return Level::DEBUG;
    }
    match configured {
        Some("error") => Level::ERROR,
        Some("warn") => Level::WARN,
        Some("debug") => Level::DEBUG,
        Some("trace") => Level::TRACE,
        _ => Level::INFO,
    }
}

/// Installs the subscriber. Without a reader on the FIFO, logs are dropped
/// rather than blocking the shim.
pub fn init(level: Level) {
    let writer: Box<dyn Write + Send> = match OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("log")
    {
        Ok(file) => {
            if let Ok(flags) = fcntl(&file, FcntlArg::F_GETFL) {
                let flags = OFlag::from_bits_retain(flags) - OFlag::O_NONBLOCK;
                let _ = fcntl(&file, FcntlArg::F_SETFL(flags));
            }
            Box::new(file)
        }
        Err(_) => Box::new(std::io::sink()),
    };
    let _ = tracing_subscriber::fmt()
        .with_writer(Mutex::new(writer))
        .with_ansi(false)
        .with_target(false)
        .with_max_level(level)
        .try_init();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_flag_wins_over_the_config() {
        assert_eq!(level(true, Some("error")), Level::DEBUG);
        assert_eq!(level(false, Some("warn")), Level::WARN);
        assert_eq!(level(false, None), Level::INFO);
    }
}
