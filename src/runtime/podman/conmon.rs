//! A container's stdio through its conmon's attach socket: the socket `podman
//! attach` and `podman start -a` themselves use on the host,
//! `<StaticDir>/attach`. It is a `SOCK_SEQPACKET` socket: every packet conmon
//! sends starts with one byte naming the stream (2 stdout, 3 stderr), and every
//! packet a client sends is bytes for the container's stdin; shutting down the
//! writing side closes the container's stdin.
//!
//! Why: the libpod attach endpoint relays each message through the Podman
//! service (one more process, two more copies and wake-ups each way). On this
//! socket a round trip to `cat` takes ≈25 µs, through the service ≈80–100 µs,
//! and every warm MCP request pays it. The service's endpoint stays the
//! fallback wherever the socket cannot be reached (a remote Podman, mcpod in a
//! container of its own).

use std::io::{self, Read};
use std::net::Shutdown;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::StreamExt;
use socket2::{Domain, SockAddr, Socket, Type};
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWrite, Interest};

use crate::runtime::Output;

/// The first byte of a packet of the container's stdout (libpod's `AttachPipeStdout`).
const STDOUT: u8 = 2;
/// The first byte of a packet of the container's stderr (`AttachPipeStderr`).
const STDERR: u8 = 3;
/// conmon reads an attach client's stdin in 32 KiB packets (`CONN_SOCK_BUF_SIZE`);
/// a longer packet would be cut, so writes are split at this size.
const MAX_STDIN_PACKET: usize = 32 * 1024;
/// conmon sends at most 8 KiB of output and its stream byte per packet; the
/// buffer is larger so that no packet can ever be truncated.
const READ_BUFFER: usize = 64 * 1024;

/// An open attach socket; [`split`] it into the container's output and stdin.
pub struct AttachSocket(Arc<AsyncFd<Socket>>);

/// Connects to the attach socket at `path` (the container must be initialised:
/// conmon creates the socket before the container's process runs).
pub fn connect(path: &Path) -> io::Result<AttachSocket> {
    // The path is usually longer than a socket address holds (108 bytes):
    // connect through a descriptor of it, as Podman does.
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH)
        .open(path)?;
    let by_descriptor = format!("/proc/self/fd/{}", handle.as_raw_fd());
    let socket = Socket::new(Domain::UNIX, Type::from(libc::SOCK_SEQPACKET), None)?;
    // A Unix socket connects at once or fails; it is made non-blocking after.
    socket.connect(&SockAddr::unix(by_descriptor)?)?;
    socket.set_nonblocking(true)?;
    // Readable only: registered for writability too, the socket would wake
    // mcpod each time conmon takes a packet off it (an edge of free space),
    // once per request for nothing. Stdin waits for space only when full.
    // SAFETY: the socket owns its descriptor, keeps it open while the AsyncFd
    // holds it, and always reports that same descriptor.
    let registered = unsafe { AsyncFd::register_with_interest(socket, Interest::READABLE) }
        .map_err(io::Error::from)?;
    Ok(AttachSocket(Arc::new(registered)))
}

impl AttachSocket {
    /// The container's output, until conmon closes the socket (the container
    /// exited), and its stdin.
    pub fn split(self) -> (BoxStream<'static, io::Result<Output>>, Stdin) {
        let output = output(self.0.clone());
        let stdin = Stdin {
            socket: self.0,
            full: None,
        };
        (output, stdin)
    }
}

/// Reads packets until the socket ends; each one becomes an [`Output`].
fn output(socket: Arc<AsyncFd<Socket>>) -> BoxStream<'static, io::Result<Output>> {
    let state = Some((socket, vec![0u8; READ_BUFFER]));
    futures::stream::unfold(state, |state| async move {
        let (socket, mut buffer) = state?;
        match next_packet(&socket, &mut buffer).await {
            Ok(Some(output)) => Some((Ok(output), Some((socket, buffer)))),
            Ok(None) => None,
            // The stream ends after its error.
            Err(e) => Some((Err(e), None)),
        }
    })
    .boxed()
}

/// The next packet with any bytes in it, or `None` at the end of the socket.
async fn next_packet(socket: &AsyncFd<Socket>, buffer: &mut [u8]) -> io::Result<Option<Output>> {
    loop {
        let mut ready = socket.readable().await?;
        let read = match ready.try_io(|socket| socket.get_ref().read(buffer)) {
            Ok(read) => read?,
            Err(_would_block) => continue,
        };
        if read == 0 {
            return Ok(None);
        }
        if read == 1 {
            continue; // a stream byte without data
        }
        let bytes = Bytes::copy_from_slice(&buffer[1..read]);
        return Ok(Some(match buffer[0] {
            STDERR => Output::Stderr(bytes),
            STDOUT => Output::Stdout(bytes),
            // Not sent for a container without a terminal; kept rather than lost.
            _ => Output::Stdout(bytes),
        }));
    }
}

/// The container's stdin over the attach socket.
pub struct Stdin {
    socket: Arc<AsyncFd<Socket>>,
    /// While the socket is full: a duplicate of its descriptor registered for
    /// writability, dropped (deregistered) once a packet goes again.
    full: Option<AsyncFd<Socket>>,
}

impl AsyncWrite for Stdin {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        // A packet is sent whole or not at all; the caller writes the rest.
        let packet = &buf[..buf.len().min(MAX_STDIN_PACKET)];
        loop {
            match self.socket.get_ref().send(packet) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                sent => {
                    self.full = None;
                    return Poll::Ready(sent);
                }
            }
            if self.full.is_none() {
                // Registering reports the socket writable at once if it
                // already is again, so no edge is missed in between.
                let duplicate = self.socket.get_ref().try_clone()?;
                // SAFETY: as for the socket itself (see `connect`).
                let registered =
                    unsafe { AsyncFd::register_with_interest(duplicate, Interest::WRITABLE) };
                self.full = Some(registered.map_err(io::Error::from)?);
            }
            let full = self.full.as_ref().expect("registered above");
            ready!(full.poll_write_ready(cx))?.clear_ready();
        }
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(())) // nothing is buffered here
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.socket.get_ref().shutdown(Shutdown::Write) {
            Err(e) if e.kind() != io::ErrorKind::NotConnected => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::StreamExt;
    use std::time::Duration;
    use tokio::io::AsyncWriteExt;

    /// A conmon stand-in: a seqpacket listener that echoes stdin packets back
    /// as stdout packets and sends one stderr packet first.
    fn fake_conmon(dir: &Path) -> std::path::PathBuf {
        let path = dir.join("attach");
        let listener = Socket::new(Domain::UNIX, Type::from(libc::SOCK_SEQPACKET), None).unwrap();
        listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        listener.listen(1).unwrap();
        std::thread::spawn(move || {
            let (client, _) = listener.accept().unwrap();
            client.send(b"\x03starting\n").unwrap();
            let mut packet = vec![0u8; 64 * 1024];
            loop {
                let read = (&client).read(&mut packet).unwrap();
                if read == 0 {
                    client.send(b"\x02bye\n").unwrap();
                    return; // stdin closed: the "container" exits
                }
                let mut reply = vec![STDOUT];
                reply.extend_from_slice(&packet[..read]);
                client.send(&reply).unwrap();
            }
        });
        path
    }

    #[tokio::test]
    async fn stdin_packets_out_and_tagged_output_in_until_the_socket_ends() {
        let dir = tempfile::tempdir().unwrap();
        let path = fake_conmon(dir.path());
        let (mut output, mut stdin) = connect(&path).unwrap().split();
        assert_eq!(
            output.next().await.unwrap().unwrap(),
            Output::Stderr(Bytes::from_static(b"starting\n"))
        );
        stdin.write_all(b"{\"id\":1}\n").await.unwrap();
        assert_eq!(
            output.next().await.unwrap().unwrap(),
            Output::Stdout(Bytes::from_static(b"{\"id\":1}\n"))
        );
        // A message longer than one packet arrives whole, in order, in packets
        // no longer than conmon reads.
        let long = vec![b'x'; MAX_STDIN_PACKET * 2 + 10];
        stdin.write_all(&long).await.unwrap();
        let mut echoed = vec![];
        while echoed.len() < long.len() {
            match output.next().await.unwrap().unwrap() {
                Output::Stdout(bytes) => {
                    assert!(bytes.len() <= MAX_STDIN_PACKET);
                    echoed.extend_from_slice(&bytes);
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(echoed, long);
        stdin.shutdown().await.unwrap();
        assert_eq!(
            output.next().await.unwrap().unwrap(),
            Output::Stdout(Bytes::from_static(b"bye\n"))
        );
        assert!(
            output.next().await.is_none(),
            "the output ends with the socket"
        );
    }

    #[tokio::test]
    async fn a_full_socket_makes_stdin_wait_until_conmon_reads_again() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("attach");
        let listener = Socket::new(Domain::UNIX, Type::from(libc::SOCK_SEQPACKET), None).unwrap();
        listener.bind(&SockAddr::unix(&path).unwrap()).unwrap();
        listener.listen(1).unwrap();
        let (_output, mut stdin) = connect(&path).unwrap().split();
        let (conmon, _) = listener.accept().unwrap();
        // Nobody reads yet: writes stop when the socket is full.
        let packet = vec![b'x'; MAX_STDIN_PACKET];
        let mut written = 0;
        while tokio::time::timeout(Duration::from_millis(100), stdin.write_all(&packet))
            .await
            .is_ok()
        {
            written += packet.len();
            assert!(written < 64 << 20, "the socket never filled");
        }
        // conmon reads everything, in a thread of its own: the waiting write goes on.
        let (read_tx, read_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut buffer = vec![0u8; 64 * 1024];
            let mut total = 0;
            loop {
                match (&conmon).read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(read) => total += read,
                }
            }
            let _ = read_tx.send(total);
        });
        let last = vec![b'y'; 10];
        tokio::time::timeout(Duration::from_secs(10), stdin.write_all(&last))
            .await
            .expect("a write waiting for room goes once conmon reads")
            .unwrap();
        stdin.shutdown().await.unwrap();
        let total = tokio::task::spawn_blocking(move || read_rx.recv().unwrap())
            .await
            .unwrap();
        // The write cut off by the timeout may have sent its first packet or not.
        assert!(
            total >= written + last.len() && total <= written + packet.len() + last.len(),
            "read {total} bytes, {written} written before the socket filled"
        );
    }

    #[test]
    fn a_missing_socket_is_an_error_not_a_hang() {
        let dir = tempfile::tempdir().unwrap();
        let error = connect(&dir.path().join("attach")).err().unwrap();
        assert_eq!(error.kind(), io::ErrorKind::NotFound);
    }
}
