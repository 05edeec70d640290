//! Reading a request body as JSON, bounded whether it has a Content-Length or
//! is chunked.

use bytes::BytesMut;
use futures::{Stream, StreamExt};
use serde_json::Value;
use warp::Buf;

use crate::mcp::error::RequestError;

/// How much of an oversized body is read and dropped before answering 413, so
/// the client sees the status instead of a connection reset.
const DRAIN_LIMIT: usize = 64 * 1024 * 1024;

pub async fn read_json<S, B>(mut body: S, limit: usize) -> Result<Value, RequestError>
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut collected = BytesMut::new();
    while let Some(chunk) = body.next().await {
        let mut chunk =
            chunk.map_err(|e| RequestError::Parse(format!("reading the body failed: {e}")))?;
        if collected.len() + chunk.remaining() > limit {
            drain(&mut body).await;
            return Err(RequestError::BodyTooLarge(limit));
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            collected.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    serde_json::from_slice(&collected).map_err(|e| RequestError::Parse(e.to_string()))
}

async fn drain<S, B>(body: &mut S)
where
    S: Stream<Item = Result<B, warp::Error>> + Unpin,
    B: Buf,
{
    let mut drained = 0usize;
    while let Some(Ok(chunk)) = body.next().await {
        drained += chunk.remaining();
        if drained > DRAIN_LIMIT {
            break;
        }
    }
}
