//! A blocking HTTP/1.1 client on one kept-alive connection, as lean as the
//! direct pipe's client (a blocking write and a blocking read): the warm
//! latency figures compare mcpod with the pipe, not an async client's own
//! hand-offs between tasks with the pipe. Content-Length and chunked bodies.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;

pub struct Http1 {
    host: String,
    writer: TcpStream,
    reader: BufReader<TcpStream>,
}

pub struct Reply {
    pub status: u16,
    /// Header names in lower case.
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

impl Http1 {
    /// Connects to `url`'s host and port (`http://host:port`), with `TCP_NODELAY`.
    pub fn connect(url: &str) -> Http1 {
        let host = url.trim_start_matches("http://").trim_end_matches('/');
        let stream = TcpStream::connect(host).expect("connect to mcpod");
        stream.set_nodelay(true).unwrap();
        Http1 {
            host: host.to_string(),
            writer: stream.try_clone().unwrap(),
            reader: BufReader::with_capacity(64 * 1024, stream),
        }
    }

    /// POSTs a JSON body to `path` with extra headers and reads the whole reply.
    pub fn post(&mut self, path: &str, headers: &[(&str, &str)], body: &str) -> Reply {
        let mut request = format!(
            "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
            self.host,
            body.len()
        );
        for (name, value) in headers {
            request.push_str(&format!("{name}: {value}\r\n"));
        }
        request.push_str("\r\n");
        request.push_str(body);
        self.writer.write_all(request.as_bytes()).unwrap();
        self.read_reply()
    }

    fn read_reply(&mut self) -> Reply {
        let status_line = self.line();
        let status = status_line
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("not an HTTP status line: {status_line:?}"));
        let mut headers = vec![];
        loop {
            let line = self.line();
            if line.is_empty() {
                break;
            }
            let (name, value) = line.split_once(':').expect("a header line");
            headers.push((name.trim().to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut reply = Reply {
            status,
            headers,
            body: String::new(),
        };
        let body = if let Some(length) = reply.header("content-length") {
            let mut body = vec![0; length.parse().unwrap()];
            self.reader.read_exact(&mut body).unwrap();
            body
        } else if reply.header("transfer-encoding") == Some("chunked") {
            self.chunked_body()
        } else {
            vec![] // 202 and 204 carry no body
        };
        reply.body = String::from_utf8(body).unwrap();
        reply
    }

    fn chunked_body(&mut self) -> Vec<u8> {
        let mut body = vec![];
        loop {
            let size = usize::from_str_radix(self.line().split(';').next().unwrap(), 16).unwrap();
            if size == 0 {
                while !self.line().is_empty() {} // trailers
                return body;
            }
            let start = body.len();
            body.resize(start + size, 0);
            self.reader.read_exact(&mut body[start..]).unwrap();
            assert!(self.line().is_empty(), "a chunk ends with CRLF");
        }
    }

    /// One line without its CRLF.
    fn line(&mut self) -> String {
        let mut line = String::new();
        let read = self.reader.read_line(&mut line).unwrap();
        assert!(read > 0, "mcpod closed the connection");
        line.truncate(line.trim_end_matches(['\r', '\n']).len());
        line
    }
}
