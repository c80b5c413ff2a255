//! [`SnapshotBuf`]: the bytes of a snapshot as openraft moves them around, and
//! [`SnapshotWriter`], which builds them.
//!
//! A partition's snapshot is mostly its untiered tail: the producers' batches, each
//! already in memory as shared `Bytes`. A snapshot is therefore a list of parts (its
//! header and the state's encoding, then the batches themselves) rather than one buffer
//! they are copied into, and it is written out, uploaded and sent to followers from those
//! parts. Only a snapshot being received is written into a buffer of its own.

use std::io::{self, SeekFrom};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncSeek, AsyncWrite, ReadBuf};

/// Shared parts smaller than this are copied into the current part instead of being
/// kept as parts of their own (a tail of many small batches would otherwise be a list
/// of many tiny parts).
const MIN_SHARED_PART: usize = 64 * 1024;

/// Builds a snapshot's parts: writes (`std::io::Write`) go into the current part, and
/// [`SnapshotWriter::push_shared`] adds bytes by reference.
#[derive(Debug, Default)]
pub struct SnapshotWriter {
    parts: Vec<Bytes>,
    current: Vec<u8>,
}

impl SnapshotWriter {
    /// A writer whose first part starts with `head`.
    pub fn with_head(head: Vec<u8>) -> Self {
        SnapshotWriter {
            parts: Vec::new(),
            current: head,
        }
    }

    /// Appends `bytes` without copying them (unless they are small).
    pub fn push_shared(&mut self, bytes: Bytes) {
        if bytes.len() < MIN_SHARED_PART {
            self.current.extend_from_slice(&bytes);
            return;
        }
        if !self.current.is_empty() {
            self.parts
                .push(Bytes::from(std::mem::take(&mut self.current)));
        }
        self.parts.push(bytes);
    }

    /// The parts, in order.
    pub fn finish(mut self) -> Vec<Bytes> {
        if !self.current.is_empty() {
            self.parts.push(Bytes::from(self.current));
        }
        self.parts
    }
}

impl io::Write for SnapshotWriter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.current.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The parts joined into one buffer: no copy when there is one part.
pub fn join_parts(parts: &[Bytes]) -> Bytes {
    match parts {
        [] => Bytes::new(),
        [one] => one.clone(),
        many => Bytes::from(many.concat()),
    }
}

/// Snapshot bytes with a position: read in place from shared parts, copied into one
/// buffer of its own on the first write.
#[derive(Debug, Default)]
pub struct SnapshotBuf {
    shared: Vec<Bytes>,
    /// Set from the first write on; then it holds all the bytes.
    owned: Option<Vec<u8>>,
    pos: u64,
}

impl SnapshotBuf {
    /// Reads `parts` (one after the other) without copying them.
    pub fn shared(parts: Vec<Bytes>) -> Self {
        SnapshotBuf {
            shared: parts,
            owned: None,
            pos: 0,
        }
    }

    /// All the bytes, whatever the position.
    pub fn into_bytes(self) -> Bytes {
        match self.owned {
            Some(v) => Bytes::from(v),
            None => join_parts(&self.shared),
        }
    }

    fn len(&self) -> u64 {
        match &self.owned {
            Some(v) => v.len() as u64,
            None => self.shared.iter().map(|p| p.len() as u64).sum(),
        }
    }

    /// The bytes from `pos` to the end of the part that holds it.
    fn rest_of_part(&self) -> &[u8] {
        if let Some(v) = &self.owned {
            let start = usize::try_from(self.pos).map_or(v.len(), |p| p.min(v.len()));
            return &v[start..];
        }
        let mut at = self.pos;
        for part in &self.shared {
            let len = part.len() as u64;
            if at < len {
                return &part[at as usize..];
            }
            at -= len;
        }
        &[]
    }

    fn owned(&mut self) -> &mut Vec<u8> {
        self.owned.get_or_insert_with(|| self.shared.concat())
    }
}

impl AsyncRead for SnapshotBuf {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let rest = this.rest_of_part();
        let n = buf.remaining().min(rest.len());
        buf.put_slice(&rest[..n]);
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
        let len = this.len();
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
        let mut b = SnapshotBuf::shared(vec![
            Bytes::from_static(b"hel"),
            Bytes::new(),
            Bytes::from_static(b"lo wor"),
            Bytes::from_static(b"ld"),
        ]);
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
        let mut b = SnapshotBuf::shared(vec![shared.clone()]);
        b.seek(SeekFrom::End(0)).await.expect("seek");
        b.write_all(b"5").await.expect("write");
        assert_eq!(&b.into_bytes()[..], b"12345");
        assert_eq!(&shared[..], b"1234");
    }

    #[test]
    fn the_writer_keeps_big_shared_parts_by_reference() {
        use std::io::Write;
        let big = Bytes::from(vec![7u8; MIN_SHARED_PART]);
        let mut w = SnapshotWriter::with_head(b"head".to_vec());
        w.write_all(b"+json").expect("write");
        w.push_shared(Bytes::from_static(b"small"));
        w.push_shared(big.clone());
        w.push_shared(Bytes::from_static(b"end"));
        let parts = w.finish();
        assert_eq!(parts.len(), 3);
        assert_eq!(&parts[0][..], b"head+jsonsmall");
        assert_eq!(parts[1].as_ptr(), big.as_ptr(), "not copied");
        assert_eq!(&parts[2][..], b"end");
        assert_eq!(join_parts(&parts).len(), 14 + MIN_SHARED_PART + 3);
    }
}
