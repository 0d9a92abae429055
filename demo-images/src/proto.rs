//! The request/response exchange: minimal HTTP/1.1 with keep-alive. Request `n` is
//! `GET /r/<n>`; its answer is a 200 whose body only the right request gets
//! ([`expected_body`]), so the app can tell a served request from a wrong one.
//! Input is bounded: long lines, many headers or big bodies are errors, not allocations.

use std::io::{self, BufRead, Read, Write};

/// Longest accepted request or header line.
pub const MAX_LINE: usize = 8 * 1024;
/// Most header lines in one message.
pub const MAX_HEADERS: usize = 64;
/// Largest accepted response body.
pub const MAX_BODY: usize = 64 * 1024;

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// The body the upstream sends for request `n`: the number and a hash of it.
pub fn expected_body(n: u64) -> String {
    // A multiplicative hash: cheap, and different for every n that fits in 32 bits.
    let check = n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32;
    format!("ok {n} {check:08x}\n")
}

/// Writes request `n` in one write (one segment on the wire).
pub fn write_request(w: &mut impl Write, n: u64) -> io::Result<()> {
    w.write_all(format!("GET /r/{n} HTTP/1.1\r\nHost: upstream\r\n\r\n").as_bytes())
}

/// Writes a response with `status` and `body` in one write.
pub fn write_response(w: &mut impl Write, status: &str, body: &str) -> io::Result<()> {
    let msg = format!(
        "HTTP/1.1 {status}\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    w.write_all(msg.as_bytes())
}

/// Reads one line (without CRLF), at most [`MAX_LINE`] bytes; `None` at EOF.
fn read_line(r: &mut impl BufRead) -> io::Result<Option<String>> {
    let mut buf = Vec::new();
    let n = Read::take(&mut *r, MAX_LINE as u64 + 1).read_until(b'\n', &mut buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() != Some(&b'\n') {
        return Err(if n > MAX_LINE {
            invalid("line too long")
        } else {
            io::Error::new(io::ErrorKind::UnexpectedEof, "connection closed mid-line")
        });
    }
    buf.pop();
    if buf.last() == Some(&b'\r') {
        buf.pop();
    }
    String::from_utf8(buf)
        .map(Some)
        .map_err(|_| invalid("line is not UTF-8"))
}

/// Reads a message head: the start line and the header lines up to the blank line.
/// `None` when the peer closed the connection before a new message.
pub fn read_head(r: &mut impl BufRead) -> io::Result<Option<(String, Vec<String>)>> {
    let Some(start) = read_line(r)? else {
        return Ok(None);
    };
    let mut headers = Vec::new();
    loop {
        let line = read_line(r)?
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in headers"))?;
        if line.is_empty() {
            return Ok(Some((start, headers)));
        }
        if headers.len() == MAX_HEADERS {
            return Err(invalid("too many headers"));
        }
        headers.push(line);
    }
}

/// The request number of a `GET /r/<n> HTTP/1.x` start line.
pub fn parse_request_line(line: &str) -> Option<u64> {
    let mut parts = line.split(' ');
    let (Some("GET"), Some(path), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if !version.starts_with("HTTP/1.") {
        return None;
    }
    path.strip_prefix("/r/")?.parse().ok()
}

/// Reads one response; returns its status code and body.
pub fn read_response(r: &mut impl BufRead) -> io::Result<(u16, String)> {
    let (start, headers) =
        read_head(r)?.ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "no response"))?;
    let status = start
        .strip_prefix("HTTP/1.1 ")
        .and_then(|s| s.get(..3))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {start:?}")))?;
    let len = headers
        .iter()
        .find_map(|h| {
            let (k, v) = h.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .ok_or_else(|| invalid("response without a valid Content-Length"))?;
    if len > MAX_BODY {
        return Err(invalid(format!("body of {len} bytes is too big")));
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    let body = String::from_utf8(body).map_err(|_| invalid("body is not UTF-8"))?;
    Ok((status, body))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    #[test]
    fn request_round_trips_through_the_parser() {
        let mut wire = Vec::new();
        write_request(&mut wire, 42).unwrap();
        let (start, headers) = read_head(&mut Cursor::new(wire)).unwrap().unwrap();
        assert_eq!(parse_request_line(&start), Some(42));
        assert_eq!(headers, ["Host: upstream"]);
    }

    #[test]
    fn response_round_trips_and_bodies_differ() {
        let mut wire = Vec::new();
        write_response(&mut wire, "200 OK", &expected_body(7)).unwrap();
        let (status, body) = read_response(&mut Cursor::new(wire)).unwrap();
        assert_eq!(status, 200);
        assert_eq!(body, expected_body(7));
        assert_ne!(expected_body(7), expected_body(8));
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert_eq!(parse_request_line("POST /r/1 HTTP/1.1"), None);
        assert_eq!(parse_request_line("GET /r/x HTTP/1.1"), None);
        assert_eq!(parse_request_line("GET /r/1"), None);
        let long = format!("GET /{} HTTP/1.1\r\n\r\n", "a".repeat(MAX_LINE * 2));
        assert!(read_head(&mut Cursor::new(long)).is_err());
        let big = format!(
            "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n",
            MAX_BODY + 1
        );
        assert!(read_response(&mut Cursor::new(big)).is_err());
        assert!(read_response(&mut Cursor::new("HTTP/1.1 200 OK\r\n\r\n")).is_err());
        assert!(read_response(&mut Cursor::new("garbage\r\n\r\n")).is_err());
        let headers = "x: y\r\n".repeat(MAX_HEADERS + 1);
        assert!(read_head(&mut Cursor::new(format!(
            "GET /r/1 HTTP/1.1\r\n{headers}\r\n"
        )))
        .is_err());
    }
}
