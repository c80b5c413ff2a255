//! [`SnapshotBuf`]: the bytes of a snapshot as openraft moves them around.
//!
//! A snapshot the node built is shared (`Bytes`) by the current snapshot, the snapshot
//! store and the upload, and openraft reads it to send it to a follower; reading it
//! through a `Cursor<Vec<u8>>` meant copying the whole snapshot each time, and a
//! partition's snapshot holds its untiered tail (up to hundreds of MB). This type reads
//! shared bytes in place, and only a snapshot being received is written into a buffer of
//! its own.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Snapshot bytes with a position: read in place when shared, copied on the first write.
#[derive(Debug, Default)]
pub struct SnapshotBuf {
    shared: Bytes,
    /// Set from the first write on; then it holds all the bytes.
    owned: Option<Vec<u8>>,
    pos: u64,
}

impl SnapshotBuf {
    /// Reads `bytes` without copying them.
    pub fn shared(bytes: Bytes) -> Self {
        SnapshotBuf {
            shared: bytes,
            owned: None,
            pos: 0,
        }
    }

    /// All the bytes, whatever the position.
    pub fn into_bytes(self) -> Bytes {
        self.owned.map_or(self.shared, Bytes::from)
    }

    fn as_slice(&self) -> &[u8] {
        self.owned.as_deref().unwrap_or(&self.shared)
    }

    fn owned(&mut self) -> &mut Vec<u8> {
        self.owned.get_or_insert_with(|| self.shared.to_vec())
    }
}

impl AsyncRead for SnapshotBuf {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let data = this.as_slice();
        let start = usize::try_from(this.pos).map_or(data.len(), |p| p.min(data.len()));
        let n = buf.remaining().min(data.len() - start);
        buf.put_slice(&data[start..start + n]);
        this.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for SnapshotBuf {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let pos = usize::try_from(this.pos)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "position beyond memory"))?;
        let v = this.owned();
        if v.len() < pos {
            v.resize(pos, 0);
        }
        let overlap = buf.len().min(v.len() - pos);
        v[pos..pos + overlap].copy_from_slice(&buf[..overlap]);
        v.extend_from_slice(&buf[overlap..]);
        this.pos += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl AsyncSeek for SnapshotBuf {
    fn start_seek(self: Pin<&mut Self>, position: SeekFrom) -> io::Result<()> {
        let this = self.get_mut();
        let len = this.as_slice().len() as u64;
        let target = match position {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => len.checked_add_signed(d),
            SeekFrom::Current(d) => this.pos.checked_add_signed(d),
        };
        this.pos = target
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(())
    }

    fn poll_complete(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<u64>> {
        Poll::Ready(Ok(self.pos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

    #[tokio::test]
    async fn reads_shared_bytes_and_seeks() {
        let mut b = SnapshotBuf::shared(Bytes::from_static(b"hello world"));
        let mut out = String::new();
        b.read_to_string(&mut out).await.expect("read");
        assert_eq!(out, "hello world");
        assert_eq!(b.seek(SeekFrom::Start(6)).await.expect("seek"), 6);
        let mut five = [0u8; 5];
        b.read_exact(&mut five).await.expect("read");
        assert_eq!(&five, b"world");
        assert_eq!(b.seek(SeekFrom::End(-5)).await.expect("seek"), 6);
        assert_eq!(b.seek(SeekFrom::Current(-1)).await.expect("seek"), 5);
        assert!(b.seek(SeekFrom::Current(-6)).await.is_err());
        // Reading past the end reads nothing.
        b.seek(SeekFrom::Start(100)).await.expect("seek");
        assert_eq!(b.read(&mut five).await.expect("read"), 0);
    }

    #[tokio::test]
    async fn writes_like_a_cursor_over_a_vec() {
        // openraft writes received chunks at their offsets, possibly again.
        let mut b = SnapshotBuf::default();
        b.write_all(b"abcdef").await.expect("write");
        b.seek(SeekFrom::Start(2)).await.expect("seek");
        b.write_all(b"XY").await.expect("write");
        b.seek(SeekFrom::Start(8)).await.expect("seek");
        b.write_all(b"Z").await.expect("write");
        assert_eq!(&b.into_bytes()[..], b"abXYef\0\0Z");
        // A shared buffer is copied on its first write and left as it was.
        let shared = Bytes::from_static(b"1234");
        let mut b = SnapshotBuf::shared(shared.clone());
        b.seek(SeekFrom::End(0)).await.expect("seek");
        b.write_all(b"5").await.expect("write");
        assert_eq!(&b.into_bytes()[..], b"12345");
        assert_eq!(&shared[..], b"1234");
    }
}
