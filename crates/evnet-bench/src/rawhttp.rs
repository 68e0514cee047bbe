//! A minimal HTTP/1.1 keep-alive client for the load generator: one
//! connection, one request at a time, bodies framed by `Content-Length`.
//!
//! It exists so the benchmark can also measure the server with a client
//! that costs a few microseconds per request: on a 2-core machine a
//! full-featured client (reqwest) takes about as much CPU per request as the
//! server does. It speaks only what `evnet server` answers (a status line,
//! headers, a `Content-Length` body); anything else is an error.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug)]
pub enum RawError {
    Io(std::io::Error),
    Protocol(String),
}

impl std::fmt::Display for RawError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RawError::Io(e) => write!(f, "I/O: {e}"),
            RawError::Protocol(m) => write!(f, "HTTP: {m}"),
        }
    }
}

impl From<std::io::Error> for RawError {
    fn from(e: std::io::Error) -> Self {
        RawError::Io(e)
    }
}

/// Largest response head or body accepted.
const MAX_RESPONSE: usize = 16 << 20;

pub struct RawConn {
    stream: TcpStream,
    host: String,
    buf: Vec<u8>,
    req: Vec<u8>,
}

impl RawConn {
    pub async fn connect(addr: SocketAddr) -> Result<Self, RawError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(RawConn {
            stream,
            host: addr.to_string(),
            buf: Vec::with_capacity(8192),
            req: Vec::with_capacity(512),
        })
    }

    /// Sends one request and reads the whole answer: (status, body).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        auth: Option<&str>,
        body: Option<&[u8]>,
    ) -> Result<(u16, Vec<u8>), RawError> {
        self.req.clear();
        self.req.extend_from_slice(
            format!("{method} {path} HTTP/1.1\r\nhost: {}\r\n", self.host).as_bytes(),
        );
        if let Some(a) = auth {
            self.req.extend_from_slice(b"authorization: ");
            self.req.extend_from_slice(a.as_bytes());
            self.req.extend_from_slice(b"\r\n");
        }
        if let Some(b) = body {
            self.req.extend_from_slice(
                format!(
                    "content-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    b.len()
                )
                .as_bytes(),
            );
            self.req.extend_from_slice(b);
        } else {
            self.req.extend_from_slice(b"\r\n");
        }
        self.stream.write_all(&self.req).await?;
        self.read_response().await
    }

    async fn read_response(&mut self) -> Result<(u16, Vec<u8>), RawError> {
        self.buf.clear();
        let head_end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i + 4;
            }
            if self.buf.len() > MAX_RESPONSE {
                return Err(RawError::Protocol("response head too large".into()));
            }
            self.fill().await?;
        };
        let head = std::str::from_utf8(&self.buf[..head_end])
            .map_err(|_| RawError::Protocol("head is not UTF-8".into()))?;
        let mut lines = head.split("\r\n");
        let status_line = lines.next().unwrap_or_default();
        let status: u16 = status_line
            .split(' ')
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| RawError::Protocol(format!("bad status line {status_line:?}")))?;
        let mut length = None;
        for line in lines {
            if let Some((name, value)) = line.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse::<usize>().ok();
                } else if name.eq_ignore_ascii_case("transfer-encoding") {
                    return Err(RawError::Protocol(format!(
                        "unsupported transfer-encoding {}",
                        value.trim()
                    )));
                }
            }
        }
        let length = length.ok_or_else(|| RawError::Protocol("no content-length".into()))?;
        if length > MAX_RESPONSE {
            return Err(RawError::Protocol("body too large".into()));
        }
        while self.buf.len() < head_end + length {
            self.fill().await?;
        }
        if self.buf.len() > head_end + length {
            return Err(RawError::Protocol(
                "bytes after the response to a single request".into(),
            ));
        }
        Ok((status, self.buf[head_end..].to_vec()))
    }

    async fn fill(&mut self) -> Result<(), RawError> {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(RawError::Protocol("connection closed mid-response".into()));
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    /// A scripted server: reads one request head (+ body), answers `reply`.
    async fn serve_once(reply: &'static [u8]) -> (SocketAddr, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut got = vec![];
            let mut chunk = [0u8; 1024];
            while find(&got, b"\r\n\r\n").is_none() {
                let n = s.read(&mut chunk).await.unwrap();
                got.extend_from_slice(&chunk[..n]);
            }
            // The test bodies are short and sent with the head.
            for piece in reply.chunks(7) {
                s.write_all(piece).await.unwrap();
                s.flush().await.unwrap();
            }
            got
        });
        (addr, task)
    }

    #[tokio::test]
    async fn reads_a_content_length_body_split_across_reads() {
        let (addr, server) = serve_once(b"HTTP/1.1 201 Created\r\ncontent-type: application/json\r\ncontent-length: 11\r\n\r\n{\"id\":\"x\"}\n").await;
        let mut c = RawConn::connect(addr).await.unwrap();
        let (status, body) = c
            .request("POST", "/v1/enis", Some("Bearer t"), Some(b"{}"))
            .await
            .unwrap();
        assert_eq!(status, 201);
        assert_eq!(body, b"{\"id\":\"x\"}\n");
        let sent = String::from_utf8(server.await.unwrap()).unwrap();
        assert!(sent.starts_with("POST /v1/enis HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("authorization: Bearer t\r\n"), "{sent}");
        assert!(sent.contains("content-length: 2\r\n"), "{sent}");
    }

    #[tokio::test]
    async fn refuses_chunked_and_missing_lengths() {
        let (addr, _s) = serve_once(
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n",
        )
        .await;
        let mut c = RawConn::connect(addr).await.unwrap();
        assert!(matches!(
            c.request("GET", "/", None, None).await,
            Err(RawError::Protocol(_))
        ));
        let (addr, _s) = serve_once(b"HTTP/1.1 200 OK\r\n\r\n").await;
        let mut c = RawConn::connect(addr).await.unwrap();
        assert!(matches!(
            c.request("GET", "/", None, None).await,
            Err(RawError::Protocol(_))
        ));
    }
}
