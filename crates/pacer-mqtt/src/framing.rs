//! Reading and writing MQTT packets on a byte stream, with buffers sized to the traffic.
//!
//! tokio-util's `Framed` keeps 8 KiB for reading and 8 KiB for writing per connection, which
//! is most of what an idle device costs. Here the read buffer grows while reads fill it and
//! shrinks back when they do not, and the write buffer is dropped after large flushes.

use bytes::BytesMut;
use rmqtt_codec::error::{DecodeError, EncodeError};
use rmqtt_codec::{MqttCodec, MqttPacket};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_util::codec::{Decoder, Encoder};

/// Smallest and largest amount read at once.
const MIN_READ: usize = 512;
const MAX_READ: usize = 64 * 1024;

pub struct Transport<S> {
    io: S,
    codec: MqttCodec,
    read_buf: BytesMut,
    write_buf: BytesMut,
    /// How much the next read asks for.
    read_size: usize,
    eof: bool,
    /// A decode error happened: the codec cannot find packet boundaries any more, and
    /// decoding the same bytes again would only return the same error.
    broken: bool,
}

pub type Item = Result<(MqttPacket, u32), DecodeError>;

impl<S: AsyncRead + AsyncWrite + Unpin> Transport<S> {
    pub fn new(io: S, codec: MqttCodec) -> Self {
        Transport {
            io,
            codec,
            read_buf: BytesMut::new(),
            write_buf: BytesMut::new(),
            read_size: MIN_READ,
            eof: false,
            broken: false,
        }
    }

    pub fn codec_mut(&mut self) -> &mut MqttCodec {
        &mut self.codec
    }

    /// A packet already in the buffer, without reading. After a decode error: None.
    pub fn next_buffered(&mut self) -> Option<Item> {
        if self.broken {
            return None;
        }
        match self.codec.decode(&mut self.read_buf) {
            Ok(Some(item)) => Some(Ok(item)),
            Ok(None) => None,
            Err(e) => {
                // Some errors (a packet above the maximum size, a broken length) leave the
                // bytes in the buffer: decoding again would return the same error at once,
                // and a caller reading until None would spin without ever yielding.
                self.broken = true;
                self.read_buf = BytesMut::new();
                Some(Err(e))
            }
        }
    }

    /// The next packet; None when the peer closed the connection, or after a decode error.
    pub async fn next(&mut self) -> Option<Item> {
        loop {
            if let Some(item) = self.next_buffered() {
                return Some(item);
            }
            if self.eof || self.broken {
                return None;
            }
            self.read_buf.reserve(self.read_size);
            let spare = self.read_buf.capacity() - self.read_buf.len();
            match self.io.read_buf(&mut self.read_buf).await {
                Ok(0) => {
                    self.eof = true;
                }
                Ok(n) => {
                    // Reads that fill the buffer ask for more next time; small ones for less.
                    self.read_size =
                        if n >= spare { (self.read_size * 2).min(MAX_READ) } else { (n * 2).clamp(MIN_READ, MAX_READ) };
                }
                Err(e) => return Some(Err(DecodeError::from(e))),
            }
        }
    }

    /// Encodes a packet into the write buffer.
    pub fn feed(&mut self, packet: MqttPacket) -> Result<(), EncodeError> {
        self.codec.encode(packet, &mut self.write_buf)
    }

    pub async fn flush(&mut self) -> std::io::Result<()> {
        self.io.write_all(&self.write_buf).await?;
        self.io.flush().await?;
        if self.write_buf.capacity() > 4 * MIN_READ {
            self.write_buf = BytesMut::new();
        } else {
            self.write_buf.clear();
        }
        if self.read_buf.is_empty() && self.read_buf.capacity() > MIN_READ {
            // Nothing half-read: give the memory of a burst back.
            self.read_buf = BytesMut::new();
        }
        Ok(())
    }

    pub async fn send(&mut self, packet: MqttPacket) -> std::io::Result<()> {
        self.feed(packet).map_err(std::io::Error::other)?;
        self.flush().await
    }

    /// Reads and drops whatever the peer still sends, until it closes or reading fails.
    pub async fn discard_until_closed(&mut self) {
        let mut scratch = [0u8; 1024];
        while !self.eof {
            match self.io.read(&mut scratch).await {
                Ok(0) | Err(_) => self.eof = true,
                Ok(_) => {}
            }
        }
    }

    /// Closes the writing side; reading continues until the peer closes.
    pub async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}
