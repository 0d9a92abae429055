//! Reading container logs in the CRI log format:
//! `<RFC3339Nano time> <stdout|stderr> <F|P> <content>` per line.

use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::wait;

/// One parsed log record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogLine {
    /// Timestamp as written by containerd.
    pub time: String,
    /// `stdout` or `stderr`.
    pub stream: String,
    /// `P`: the record continues in the next one (line longer than the limit).
    pub partial: bool,
    /// Payload without the trailing newline.
    pub content: String,
}

/// Parses one CRI log line.
pub fn parse_line(line: &str) -> Result<LogLine> {
    let mut parts = line.splitn(4, ' ');
    let (Some(time), Some(stream), Some(tag)) = (parts.next(), parts.next(), parts.next()) else {
        bail!("malformed CRI log line {line:?}");
    };
    let content = parts.next().unwrap_or("");
    if stream != "stdout" && stream != "stderr" {
        bail!("unknown stream {stream:?} in {line:?}");
    }
    let partial = match tag {
        "F" => false,
        "P" => true,
        other => bail!("unknown tag {other:?} in {line:?}"),
    };
    if !time.contains('T') {
        bail!("bad timestamp {time:?} in {line:?}");
    }
    Ok(LogLine {
        time: time.into(),
        stream: stream.into(),
        partial,
        content: content.into(),
    })
}

/// Reads and parses a whole log file; a missing file is an empty log.
pub fn read_log(path: &Path) -> Result<Vec<LogLine>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
    };
    text.lines()
        .filter(|l| !l.is_empty())
        .map(parse_line)
        .collect()
}

/// Reassembles the text of one stream: partial records are joined, full ones end a line.
pub fn stream_text(lines: &[LogLine], stream: &str) -> String {
    let mut out = String::new();
    for l in lines.iter().filter(|l| l.stream == stream) {
        out.push_str(&l.content);
        if !l.partial {
            out.push('\n');
        }
    }
    out
}

/// Waits until `stream` of the log at `path` contains `needle`; returns all records.
pub async fn wait_for(
    path: &Path,
    stream: &str,
    needle: &str,
    timeout: Duration,
) -> Result<Vec<LogLine>> {
    wait::until(
        &format!("{needle:?} on {stream} in {}", path.display()),
        timeout,
        || async {
            let lines = read_log(path)?;
            Ok(stream_text(&lines, stream)
                .contains(needle)
                .then_some(lines))
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_line_reads_full_record() {
        let sut = parse_line("2024-01-02T03:04:05.123456789Z stdout F hello world").unwrap();
        assert_eq!(sut.stream, "stdout");
        assert!(!sut.partial);
        assert_eq!(sut.content, "hello world");
    }

    #[test]
    fn parse_line_rejects_unknown_stream() {
        assert!(parse_line("2024-01-02T03:04:05Z stdin F x").is_err());
        assert!(parse_line("garbage").is_err());
    }

    #[test]
    fn stream_text_joins_partial_records() {
        let lines = vec![
            parse_line("2024-01-02T03:04:05Z stdout P ab").unwrap(),
            parse_line("2024-01-02T03:04:05Z stderr F err").unwrap(),
            parse_line("2024-01-02T03:04:05Z stdout F cd").unwrap(),
        ];
        assert_eq!(stream_text(&lines, "stdout"), "abcd\n");
        assert_eq!(stream_text(&lines, "stderr"), "err\n");
    }
}
