//! How pot's messages cross a libp2p stream: one CBOR value per request and per response
//! (RFC 8949, through the same serde types as the HTTP protocol), each side closing its half
//! of the stream after writing. Sizes are checked on both sides: a writer refuses to send more
//! than the limit, and a reader stops at one byte past it and refuses the message, naming the
//! limit, before parsing anything.

use std::io;
use std::marker::PhantomData;

use futures::prelude::*;
use libp2p::StreamProtocol;
use serde::de::DeserializeOwned;
use serde::Serialize;

/// A request as read. A request that is too large or not the protocol's message is still
/// delivered, as its refusal: libp2p's request-response drops requests whose reading fails
/// without telling the application who sent them, and a node must know whom to hold it
/// against (and the sender should learn why it got no answer).
#[derive(Clone, Debug, PartialEq)]
pub enum Inbound<T> {
    /// The message.
    Message(T),
    /// Why the bytes were refused.
    Refused(String),
}

/// A request-response codec for one protocol's typed messages.
pub struct CborCodec<Req, Resp> {
    request_limit: usize,
    response_limit: usize,
    _types: PhantomData<fn() -> (Req, Resp)>,
}

impl<Req, Resp> CborCodec<Req, Resp> {
    /// A codec that reads and writes requests of at most `request_limit` bytes and responses
    /// of at most `response_limit`.
    pub fn new(request_limit: usize, response_limit: usize) -> Self {
        Self {
            request_limit,
            response_limit,
            _types: PhantomData,
        }
    }
}

impl<Req, Resp> Clone for CborCodec<Req, Resp> {
    fn clone(&self) -> Self {
        Self::new(self.request_limit, self.response_limit)
    }
}

/// Encode `v`, refusing more than `limit` bytes.
pub fn encode<T: Serialize>(v: &T, limit: usize, what: &str) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    ciborium::into_writer(v, &mut out).map_err(|e| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what}: cannot encode ({e})"),
        )
    })?;
    if out.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{what} of {} bytes is over the protocol's limit of {limit}",
                out.len()
            ),
        ));
    }
    Ok(out)
}

/// Decode one whole message of at most `limit` bytes: a longer one, trailing bytes after the
/// value, or bytes that are not the message are refused, each with its reason.
pub fn decode<T: DeserializeOwned>(bytes: &[u8], limit: usize, what: &str) -> io::Result<T> {
    let bad = |why: String| io::Error::new(io::ErrorKind::InvalidData, format!("{what}: {why}"));
    if bytes.len() > limit {
        return Err(bad(format!(
            "more than the protocol's limit of {limit} bytes"
        )));
    }
    let mut rest = bytes;
    let v: T = ciborium::from_reader(&mut rest)
        .map_err(|e| bad(format!("not a well-formed message ({e})")))?;
    if !rest.is_empty() {
        return Err(bad(format!("{} bytes after the message", rest.len())));
    }
    Ok(v)
}

/// Read to the end of the stream, at most `limit` bytes (one more shows that there is more).
async fn read_limited<T: AsyncRead + Unpin + Send>(
    io: &mut T,
    limit: usize,
) -> io::Result<Vec<u8>> {
    let mut buf = Vec::new();
    io.take(limit as u64 + 1).read_to_end(&mut buf).await?;
    Ok(buf)
}

impl<Req, Resp> libp2p::request_response::Codec for CborCodec<Req, Resp>
where
    Req: Serialize + DeserializeOwned + Send,
    Resp: Serialize + DeserializeOwned + Send,
{
    type Protocol = StreamProtocol;
    type Request = Inbound<Req>;
    type Response = Resp;

    async fn read_request<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Inbound<Req>>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, self.request_limit).await?;
        Ok(
            match decode(&bytes, self.request_limit, &format!("{p} request")) {
                Ok(m) => Inbound::Message(m),
                Err(e) => Inbound::Refused(e.to_string()),
            },
        )
    }

    async fn read_response<T>(&mut self, p: &StreamProtocol, io: &mut T) -> io::Result<Resp>
    where
        T: AsyncRead + Unpin + Send,
    {
        let bytes = read_limited(io, self.response_limit).await?;
        decode(&bytes, self.response_limit, &format!("{p} response"))
    }

    async fn write_request<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        req: Inbound<Req>,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let Inbound::Message(req) = req else {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "a refusal is an answer, not a request",
            ));
        };
        let bytes = encode(&req, self.request_limit, &format!("{p} request"))?;
        io.write_all(&bytes).await?;
        io.close().await
    }

    async fn write_response<T>(
        &mut self,
        p: &StreamProtocol,
        io: &mut T,
        resp: Resp,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        let bytes = encode(&resp, self.response_limit, &format!("{p} response"))?;
        io.write_all(&bytes).await?;
        io.close().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::message::JobMsg;

    #[test]
    fn messages_round_trip_and_damaged_or_oversized_ones_are_refused_with_the_reason() {
        let m = JobMsg::example();
        let bytes = encode(&m, 1 << 20, "job").unwrap();
        let back: JobMsg = decode(&bytes, 1 << 20, "job").unwrap();
        assert_eq!(back, m);
        // Over the limit on either side.
        let e = encode(&m, bytes.len() - 1, "job").unwrap_err();
        assert!(e.to_string().contains("over the protocol's limit"), "{e}");
        let e = decode::<JobMsg>(&bytes, bytes.len() - 1, "job").unwrap_err();
        assert!(e.to_string().contains("limit"), "{e}");
        // Cut short, trailing bytes, another message's bytes.
        for cut in [0, 1, bytes.len() / 2, bytes.len() - 1] {
            let e = decode::<JobMsg>(&bytes[..cut], 1 << 20, "job").unwrap_err();
            assert!(e.to_string().starts_with("job: not a well-formed"), "{e}");
        }
        let mut long = bytes.clone();
        long.push(0);
        let e = decode::<JobMsg>(&long, 1 << 20, "job").unwrap_err();
        assert!(e.to_string().contains("1 bytes after the message"), "{e}");
        let other = encode(&"a string", 100, "x").unwrap();
        assert!(decode::<JobMsg>(&other, 100, "job").is_err());
    }
}
