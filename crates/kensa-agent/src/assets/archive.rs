//! Unpacking a verified asset archive: tar or gzip-compressed tar, recognized by content (gzip
//! magic bytes, or `ustar` at offset 257), not by URL — other formats are refused, as in
//! Sensu (`asset/expander.go`). Blocking: call it from `spawn_blocking`.
//!
//! Safety: `tar`'s `unpack` refuses entries whose path would land outside the target
//! directory (`..`, absolute paths, links pointing out); setuid/setgid bits are dropped; and
//! the decompressed stream is capped at [`MAX_UNPACKED_BYTES`], so a small "zip bomb" cannot
//! fill the disk.

use std::fs::File;
use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::Path;

/// The most an archive may decompress to (headers included).
pub const MAX_UNPACKED_BYTES: u64 = 2 << 30;

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const USTAR_OFFSET: usize = 257;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Tar,
    TarGz,
}

/// Unpacks the archive at `archive` into the directory `target` (created if missing).
pub fn unpack(archive: &Path, target: &Path) -> Result<(), String> {
    let mut file = File::open(archive).map_err(|err| format!("cannot open download: {err}"))?;
    let format = sniff(&mut file)?;
    std::fs::create_dir_all(target)
        .map_err(|err| format!("cannot create {}: {err}", target.display()))?;
    let reader = BufReader::new(file);
    let result = match format {
        Format::Tar => unpack_tar(Capped::new(reader), target),
        Format::TarGz => unpack_tar(Capped::new(flate2::read::GzDecoder::new(reader)), target),
    };
    result.map_err(|err| format!("cannot unpack archive: {err}"))
}

fn sniff(file: &mut File) -> Result<Format, String> {
    let mut head = [0u8; USTAR_OFFSET + 5];
    let mut read = 0;
    while read < head.len() {
        match file.read(&mut head[read..]) {
            Ok(0) => break,
            Ok(n) => read += n,
            Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(format!("cannot read download: {err}")),
        }
    }
    file.seek(SeekFrom::Start(0))
        .map_err(|err| format!("cannot read download: {err}"))?;
    if read >= 2 && head[..2] == GZIP_MAGIC {
        return Ok(Format::TarGz);
    }
    if read == head.len() && &head[USTAR_OFFSET..] == b"ustar" {
        return Ok(Format::Tar);
    }
    Err("unsupported archive type (expected tar or tar.gz)".to_owned())
}

fn unpack_tar(reader: impl Read, target: &Path) -> io::Result<()> {
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(false);
    archive.set_overwrite(true);
    archive.unpack(target)
}

/// Fails the read once more than [`MAX_UNPACKED_BYTES`] came through.
struct Capped<R> {
    inner: R,
    total: u64,
}

impl<R> Capped<R> {
    fn new(inner: R) -> Self {
        Capped { inner, total: 0 }
    }
}

impl<R: Read> Read for Capped<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.total += n as u64;
        if self.total > MAX_UNPACKED_BYTES {
            return Err(io::Error::other(format!(
                "archive unpacks to more than {} MiB",
                MAX_UNPACKED_BYTES >> 20
            )));
        }
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_bytes(entries: &[(&str, &[u8], u32)]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        for (path, data, mode) in entries {
            let mut header = tar::Header::new_gnu();
            header.set_size(data.len() as u64);
            header.set_mode(*mode);
            header.set_cksum();
            builder.append_data(&mut header, path, *data).unwrap();
        }
        builder.into_inner().unwrap()
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        encoder.write_all(bytes).unwrap();
        encoder.finish().unwrap()
    }

    #[test]
    fn tar_and_tar_gz_unpack_with_their_modes_and_anything_else_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let tar = tar_bytes(&[("bin/hello", b"#!/bin/sh\necho hi\n", 0o755)]);
        let cases: [(&str, Vec<u8>, Option<&str>); 3] = [
            ("plain.tar", tar.clone(), None),
            ("compressed.tgz", gzip(&tar), None),
            (
                "notes.zip",
                b"PK\x03\x04 not a tar".to_vec(),
                Some("unsupported archive type"),
            ),
        ];
        for (name, bytes, error) in cases {
            let archive = dir.path().join(name);
            std::fs::write(&archive, bytes).unwrap();
            let target = dir.path().join(format!("{name}.out"));
            match (unpack(&archive, &target), error) {
                (Ok(()), None) => {
                    let script = target.join("bin/hello");
                    let mode = std::fs::metadata(&script).unwrap().permissions().mode();
                    assert_eq!(mode & 0o111, 0o111, "{name}: executable bits kept");
                }
                (Err(err), Some(expected)) => assert!(err.contains(expected), "{name}: {err}"),
                (result, _) => panic!("{name}: unexpected {result:?}"),
            }
        }
    }

    #[test]
    fn entries_escaping_the_target_are_not_written() {
        let dir = tempfile::tempdir().unwrap();
        // `tar::Builder` refuses `..` itself, so write the name into the header directly.
        let mut header = tar::Header::new_gnu();
        header.as_gnu_mut().unwrap().name[..13].copy_from_slice(b"../escaped.sh");
        header.set_size(3);
        header.set_mode(0o644);
        header.set_cksum();
        let mut builder = tar::Builder::new(Vec::new());
        builder.append(&header, &b"bad"[..]).unwrap();
        let archive = dir.path().join("evil.tar");
        std::fs::write(&archive, builder.into_inner().unwrap()).unwrap();
        let target = dir.path().join("out");
        let _ = unpack(&archive, &target);
        assert!(!dir.path().join("escaped.sh").exists());
    }
}
