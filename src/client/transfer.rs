//! Attachments for apps: uploading a file (resuming where the server is) and
//! downloading one (resuming from a `.part` file), with progress.
//!
//! An upload is `upload_begin` (the server says how many bytes it already
//! has), the rest of the bytes on a unidirectional stream of their own, and
//! `upload_finish`. After a dropped connection the app reconnects, resumes
//! its session and calls [`Client::upload`] again: it sends only what the
//! server does not have yet. Downloads resume the same way from the bytes
//! already in `<dest>.part`, and only a file whose SHA-256 matches its id is
//! renamed to `dest`.

use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};

use super::{Client, ClientError};
use crate::protocol::{
    self, DownloadReady, ErrorCode, Request, StreamHeader, UploadSlot, Uploaded, upload_stop,
};

/// Bytes read from a file or a stream at a time.
const CHUNK: usize = 256 * 1024;
/// How long `upload_finish` is retried while the server is still writing the
/// last bytes of the stream (the stream and the request travel separately).
const FINISH_PATIENCE: Duration = Duration::from_secs(10);

/// Why a transfer failed.
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    #[error(transparent)]
    Client(#[from] ClientError),
    #[error("{what}: {source}")]
    Io { what: String, source: io::Error },
    #[error("the server stopped the upload stream: {0}")]
    Stopped(&'static str),
    #[error("the transfer broke off: {0}")]
    Stream(String),
    #[error(
        "the downloaded file's SHA-256 is {computed}, not its id {expected}; the partial file was deleted"
    )]
    Checksum { expected: String, computed: String },
}

impl TransferError {
    /// The server's error code, if the server refused a request.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            TransferError::Client(e) => e.code(),
            _ => None,
        }
    }
}

fn io_err(what: impl std::fmt::Display) -> impl FnOnce(io::Error) -> TransferError {
    let what = what.to_string();
    move |source| TransferError::Io { what, source }
}

fn stop_reason(code: u64) -> &'static str {
    match u32::try_from(code).unwrap_or(0) {
        upload_stop::BAD_HEADER => "bad stream header",
        upload_stop::REFUSED => "no such upload of this user",
        upload_stop::WRONG_OFFSET => "the offset is not what the server has; begin again",
        upload_stop::TOO_MANY_BYTES => "more bytes than the upload's size; the upload was deleted",
        upload_stop::FAILED => "the server could not write the bytes",
        upload_stop::SUPERSEDED => "another stream of this upload took over",
        _ => "unknown reason",
    }
}

/// SHA-256 (hex) and size of a file. Blocking.
fn hash_file(path: &Path) -> Result<(String, u64), TransferError> {
    let mut file =
        std::fs::File::open(path).map_err(io_err(format!("reading {}", path.display())))?;
    let size = file
        .metadata()
        .map_err(io_err(format!("reading {}", path.display())))?
        .len();
    let sha = crate::attachment::hash_reader(&mut file)
        .map_err(io_err(format!("reading {}", path.display())))?;
    Ok((sha, size))
}

async fn hash_file_async(path: &Path) -> Result<(String, u64), TransferError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || hash_file(&path))
        .await
        .map_err(|e| TransferError::Stream(e.to_string()))?
}

/// `<dest>.part`: where a download collects its bytes.
pub fn part_path(dest: &Path) -> PathBuf {
    let mut name = dest.file_name().unwrap_or_default().to_os_string();
    name.push(".part");
    dest.with_file_name(name)
}

impl Client {
    /// Starts (or resumes) an upload of a file of `size` bytes with this SHA-256.
    pub async fn upload_begin(&self, size: u64, sha256: &str) -> Result<UploadSlot, ClientError> {
        self.call(Request::UploadBegin {
            size,
            sha256: sha256.into(),
        })
        .await
    }

    /// Completes an upload whose bytes have all arrived.
    pub async fn upload_finish(&self, upload: u64) -> Result<Uploaded, ClientError> {
        self.call(Request::UploadFinish { upload }).await
    }

    /// Sends bytes of upload `upload`, starting at file offset `offset`, on a
    /// stream of their own; returns once the server has received them all
    /// (or stopped the stream). `progress(sent)` counts the bytes of `data`.
    pub async fn upload_stream(
        &self,
        upload: u64,
        offset: u64,
        mut data: impl tokio::io::AsyncRead + Unpin,
        mut progress: impl FnMut(u64),
    ) -> Result<u64, TransferError> {
        let broke = |e: &dyn std::fmt::Display| TransferError::Stream(e.to_string());
        let mut out = self.inner.conn.open_uni().await.map_err(|e| broke(&e))?;
        let header = protocol::encode_stream_header(&StreamHeader {
            stream: "upload".into(),
            id: upload,
            offset: Some(offset),
        });
        let stopped = |e: quinn::WriteError| match e {
            quinn::WriteError::Stopped(code) => TransferError::Stopped(stop_reason(code.into())),
            other => TransferError::Stream(other.to_string()),
        };
        out.write_all(&header).await.map_err(stopped)?;
        let mut buf = vec![0u8; CHUNK];
        let mut sent = 0u64;
        loop {
            let n = data
                .read(&mut buf)
                .await
                .map_err(io_err("reading the file to upload"))?;
            if n == 0 {
                break;
            }
            out.write_all(&buf[..n]).await.map_err(stopped)?;
            sent += n as u64;
            progress(sent);
        }
        out.finish().map_err(|e| broke(&e))?;
        match out.stopped().await {
            Ok(None) => Ok(sent),
            Ok(Some(code)) => Err(TransferError::Stopped(stop_reason(code.into()))),
            Err(e) => Err(broke(&e)),
        }
    }

    /// Uploads a file: hashes it, asks the server how much it already has,
    /// sends the rest and finishes. After a dropped connection, call it
    /// again on a new (resumed) connection to go on where the server is.
    /// `progress(done, total)` reports bytes the server has.
    pub async fn upload(
        &self,
        path: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<Uploaded, TransferError> {
        let (sha, size) = hash_file_async(path).await?;
        let slot = self.upload_begin(size, &sha).await?;
        progress(slot.received, size);
        if slot.received < size {
            let mut file = tokio::fs::File::open(path)
                .await
                .map_err(io_err(format!("reading {}", path.display())))?;
            file.seek(io::SeekFrom::Start(slot.received))
                .await
                .map_err(io_err(format!("reading {}", path.display())))?;
            let rest = file.take(size - slot.received);
            let start = slot.received;
            self.upload_stream(slot.upload, start, rest, |sent| {
                progress(start + sent, size)
            })
            .await?;
        }
        // The stream's last bytes may still be on their way to the disk
        // when this request arrives: the server then says `incomplete`.
        let deadline = tokio::time::Instant::now() + FINISH_PATIENCE;
        loop {
            match self.upload_finish(slot.upload).await {
                Err(e)
                    if e.code() == Some(ErrorCode::Incomplete)
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(e) => return Err(e.into()),
                Ok(done) => {
                    progress(size, size);
                    return Ok(done);
                }
            }
        }
    }

    /// Asks for attachment `id` from `offset`; the result and the stream of
    /// bytes (with what was read past its header).
    async fn download_stream(
        &self,
        id: &str,
        offset: u64,
    ) -> Result<(DownloadReady, super::DataStream), ClientError> {
        let request = Request::Download {
            id: id.into(),
            offset,
        };
        self.call_with_stream(request, "a download").await
    }

    /// Downloads attachment `id` to `dest`: resumes from `<dest>.part` if an
    /// earlier try left one, checks the SHA-256 against the id, and only
    /// then renames the file to `dest`. `progress(done, total)` as bytes
    /// arrive. Returns the file's size.
    pub async fn download(
        &self,
        id: &str,
        dest: &Path,
        mut progress: impl FnMut(u64, u64),
    ) -> Result<u64, TransferError> {
        let part = part_path(dest);
        let have = tokio::fs::metadata(&part)
            .await
            .map(|m| m.len())
            .unwrap_or(0);
        let (ready, (mut recv, leftover)) = match self.download_stream(id, have).await {
            // A part file longer than the file: not this file's; start over.
            Err(e) if have > 0 && e.code() == Some(ErrorCode::BadRequest) => {
                let _ = tokio::fs::remove_file(&part).await;
                self.download_stream(id, 0).await?
            }
            other => other?,
        };
        let what = format!("writing {}", part.display());
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&part)
            .await
            .map_err(io_err(&what))?;
        if ready.offset == 0 && have > 0 {
            file.set_len(0).await.map_err(io_err(&what))?;
        }
        let mut done = ready.offset;
        progress(done, ready.size);
        let mut next = Some(leftover).filter(|b| !b.is_empty());
        loop {
            let chunk = match next.take() {
                Some(bytes) => bytes,
                None => match recv.read_chunk(CHUNK, true).await {
                    Ok(Some(chunk)) => chunk.bytes,
                    Ok(None) => break,
                    Err(e) => {
                        let _ = file.sync_data().await;
                        return Err(TransferError::Stream(e.to_string()));
                    }
                },
            };
            if done + chunk.len() as u64 > ready.size {
                return Err(TransferError::Stream(format!(
                    "the server sent more than the {} bytes it announced",
                    ready.size
                )));
            }
            file.write_all(&chunk).await.map_err(io_err(&what))?;
            done += chunk.len() as u64;
            progress(done, ready.size);
        }
        file.sync_all().await.map_err(io_err(&what))?;
        drop(file);
        if done != ready.size {
            return Err(TransferError::Stream(format!(
                "the stream ended after {done} of {} bytes; call download again to resume",
                ready.size
            )));
        }
        let (computed, _) = hash_file_async(&part).await?;
        if !computed.eq_ignore_ascii_case(id) {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(TransferError::Checksum {
                expected: id.to_string(),
                computed,
            });
        }
        tokio::fs::rename(&part, dest)
            .await
            .map_err(io_err(format!("renaming to {}", dest.display())))?;
        Ok(ready.size)
    }
}
