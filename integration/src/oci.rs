//! Writing OCI image-layout archives that `ctr images import` accepts.
//!
//! An [`Image`] is one uncompressed tar layer built from a list of [`Entry`]s plus a small
//! linux/amd64 image config. [`Image::write_archive`] writes the image layout (`oci-layout`,
//! `index.json`, `blobs/sha256/...`) as a tar file; its index names the image through
//! `io.containerd.image.name` (the full name, which containerd uses) and
//! `org.opencontainers.image.ref.name` (the tag, as the OCI image layout convention has it).
//!
//! Archives are reproducible: fixed timestamps, entries in the order given.
//!
//! ```no_run
//! use integration::oci::{container_disk, Image};
//! # fn main() -> anyhow::Result<()> {
//! container_disk("example.org/disks/tiny:1", "/path/to/tiny.qcow2".as_ref(), "tiny.qcow2")
//!     .write_archive("/tmp/tiny.tar".as_ref())?;
//! # Ok(()) }
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::io::{self, BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

pub const MEDIA_TYPE_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const MEDIA_TYPE_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const MEDIA_TYPE_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const MEDIA_TYPE_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
pub const ANNOTATION_REF_NAME: &str = "org.opencontainers.image.ref.name";
pub const ANNOTATION_CONTAINERD_NAME: &str = "io.containerd.image.name";

/// uid/gid of the `qemu` user in KubeVirt containerDisks (`ADD --chown=107:107`).
pub const CONTAINER_DISK_UID: u64 = 107;
/// Directory holding the disk inside a containerDisk image.
pub const CONTAINER_DISK_DIR: &str = "/disk";

/// Modification time recorded in layers, so archives are reproducible (2000-01-01T00:00:00Z).
const MTIME: u64 = 946_684_800;
const CREATED: &str = "2000-01-01T00:00:00Z";

/// What an [`Entry`] holds.
#[derive(Debug, Clone)]
pub enum Source {
    /// A regular file whose contents are read from this host file when the archive is written.
    HostFile(PathBuf),
    /// A regular file with these contents.
    Bytes(Vec<u8>),
    /// A symbolic link to this target.
    Symlink(String),
    /// A directory.
    Dir,
    /// A named pipe (what a hostile image might put where a disk is expected).
    Fifo,
}

/// One file, link or directory in the image's layer.
#[derive(Debug, Clone)]
pub struct Entry {
    /// Absolute path inside the image, e.g. `/disk/tiny.qcow2`.
    pub path: String,
    pub source: Source,
    pub uid: u64,
    pub gid: u64,
    /// Permission bits (e.g. `0o444`); the file type comes from `source`.
    pub mode: u32,
}

impl Entry {
    /// A regular file (root-owned, 0644) read from `host` when the archive is written.
    pub fn host_file(path: &str, host: impl Into<PathBuf>) -> Entry {
        Entry::new(path, Source::HostFile(host.into()), 0o644)
    }
    /// A regular file (root-owned, 0644) with these contents.
    pub fn bytes(path: &str, data: impl Into<Vec<u8>>) -> Entry {
        Entry::new(path, Source::Bytes(data.into()), 0o644)
    }
    /// A symbolic link (root-owned, 0777).
    pub fn symlink(path: &str, target: &str) -> Entry {
        Entry::new(path, Source::Symlink(target.to_string()), 0o777)
    }
    /// A directory (root-owned, 0755).
    pub fn dir(path: &str) -> Entry {
        Entry::new(path, Source::Dir, 0o755)
    }
    /// A named pipe (root-owned, 0644).
    pub fn fifo(path: &str) -> Entry {
        Entry::new(path, Source::Fifo, 0o644)
    }
    fn new(path: &str, source: Source, mode: u32) -> Entry {
        Entry { path: path.to_string(), source, uid: 0, gid: 0, mode }
    }
    pub fn owner(mut self, uid: u64, gid: u64) -> Entry {
        self.uid = uid;
        self.gid = gid;
        self
    }
    pub fn mode(mut self, mode: u32) -> Entry {
        self.mode = mode;
        self
    }
}

/// The parts of the OCI image config's `config` object that tests need.
#[derive(Debug, Clone, Default)]
pub struct RunConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<String>,
    pub working_dir: Option<String>,
    pub labels: BTreeMap<String, String>,
}

/// An image to be written as an OCI image-layout archive.
#[derive(Debug, Clone)]
pub struct Image {
    /// Full name, e.g. `example.org/disks/tiny:1`.
    pub name: String,
    pub entries: Vec<Entry>,
    pub config: RunConfig,
}

/// Digests of what [`Image::write_archive`] wrote, as `sha256:<hex>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    pub manifest: String,
    pub config: String,
    pub layer: String,
    pub layer_size: u64,
}

impl Image {
    pub fn new(name: &str) -> Image {
        Image { name: name.to_string(), entries: Vec::new(), config: RunConfig::default() }
    }

    pub fn entry(mut self, entry: Entry) -> Image {
        self.entries.push(entry);
        self
    }

    /// The tag part of the name (`1` for `example.org/disks/tiny:1`), `latest` without one.
    pub fn tag(&self) -> &str {
        let last = self.name.rsplit('/').next().unwrap_or(&self.name);
        match last.split_once(':') {
            Some((_, tag)) => tag,
            None => "latest",
        }
    }

    /// Write the image as an OCI image-layout tar archive at `out` (replaced atomically).
    pub fn write_archive(&self, out: &Path) -> Result<Written> {
        let dir = match out.parent() {
            Some(p) if !p.as_os_str().is_empty() => p,
            _ => Path::new("."),
        };
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;

        // The layer goes to a temporary file first: its digest must be known before the
        // manifest can be written, and disk images are too big to keep in memory.
        let mut layer = tempfile::tempfile_in(dir)
            .with_context(|| format!("creating a temporary layer file in {}", dir.display()))?;
        let (layer_digest, layer_size) = {
            let mut hw = HashingWriter::new(BufWriter::new(&mut layer));
            self.write_layer(&mut hw).with_context(|| format!("writing the layer of {}", self.name))?;
            let (digest, size, mut inner) = hw.finish();
            inner.flush().context("writing the layer")?;
            (digest, size)
        };
        layer.seek(SeekFrom::Start(0)).context("rewinding the layer")?;

        let config = serde_json::to_vec(&self.config_json(&layer_digest))?;
        let config_digest = sha256_digest(&config);
        let manifest = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_MANIFEST,
            "config": { "mediaType": MEDIA_TYPE_CONFIG, "digest": config_digest, "size": config.len() },
            "layers": [ { "mediaType": MEDIA_TYPE_LAYER, "digest": layer_digest, "size": layer_size } ],
        }))?;
        let manifest_digest = sha256_digest(&manifest);
        let index = serde_json::to_vec(&json!({
            "schemaVersion": 2,
            "mediaType": MEDIA_TYPE_INDEX,
            "manifests": [ {
                "mediaType": MEDIA_TYPE_MANIFEST,
                "digest": manifest_digest,
                "size": manifest.len(),
                "platform": { "architecture": "amd64", "os": "linux" },
                "annotations": {
                    ANNOTATION_CONTAINERD_NAME: self.name,
                    ANNOTATION_REF_NAME: self.tag(),
                },
            } ],
        }))?;

        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a temporary archive in {}", dir.display()))?;
        {
            let mut ar = tar::Builder::new(BufWriter::new(tmp.as_file()));
            append_bytes(&mut ar, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
            append_bytes(&mut ar, "index.json", &index)?;
            append_dir(&mut ar, "blobs/", 0, 0, 0o755)?;
            append_dir(&mut ar, "blobs/sha256/", 0, 0, 0o755)?;
            append_bytes(&mut ar, &blob_path(&config_digest), &config)?;
            append_bytes(&mut ar, &blob_path(&manifest_digest), &manifest)?;
            let mut h = file_header(layer_size, 0, 0, 0o644);
            ar.append_data(&mut h, blob_path(&layer_digest), &mut layer).context("copying the layer")?;
            ar.into_inner().context("finishing the archive")?.flush().context("writing the archive")?;
        }
        tmp.persist(out).with_context(|| format!("renaming the archive to {}", out.display()))?;

        Ok(Written { manifest: manifest_digest, config: config_digest, layer: layer_digest, layer_size })
    }

    /// The layer: every entry, after any parent directories not listed (root-owned, 0755).
    fn write_layer<W: Write>(&self, w: W) -> Result<()> {
        let mut ar = tar::Builder::new(w);
        let mut dirs_done = BTreeSet::new();
        let listed_dirs: BTreeSet<String> = self
            .entries
            .iter()
            .filter(|e| matches!(e.source, Source::Dir))
            .map(|e| relative(&e.path))
            .collect::<Result<_>>()?;
        for e in &self.entries {
            let rel = relative(&e.path)?;
            // Implicit parents, the way `COPY` makes them.
            let mut parent = String::new();
            for comp in rel.split('/').collect::<Vec<_>>().split_last().map(|(_, p)| p).unwrap_or(&[]) {
                parent = if parent.is_empty() { comp.to_string() } else { format!("{parent}/{comp}") };
                if !listed_dirs.contains(&parent) && dirs_done.insert(parent.clone()) {
                    append_dir(&mut ar, &format!("{parent}/"), 0, 0, 0o755)?;
                }
            }
            match &e.source {
                Source::Dir => {
                    if dirs_done.insert(rel.clone()) {
                        append_dir(&mut ar, &format!("{rel}/"), e.uid, e.gid, e.mode)?;
                    }
                }
                Source::Bytes(data) => {
                    let mut h = file_header(data.len() as u64, e.uid, e.gid, e.mode);
                    ar.append_data(&mut h, &rel, data.as_slice()).with_context(|| format!("adding {}", e.path))?;
                }
                Source::HostFile(host) => {
                    let f = File::open(host).with_context(|| format!("opening {}", host.display()))?;
                    let len = f.metadata().with_context(|| format!("stat {}", host.display()))?.len();
                    let mut h = file_header(len, e.uid, e.gid, e.mode);
                    // `take` guards against the file growing while it is copied.
                    ar.append_data(&mut h, &rel, f.take(len))
                        .with_context(|| format!("adding {} from {}", e.path, host.display()))?;
                }
                Source::Fifo => {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Fifo);
                    set_common(&mut h, 0, e.uid, e.gid, e.mode);
                    ar.append_data(&mut h, &rel, std::io::empty())
                        .with_context(|| format!("adding fifo {}", e.path))?;
                }
                Source::Symlink(target) => {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Symlink);
                    set_common(&mut h, 0, e.uid, e.gid, e.mode);
                    ar.append_link(&mut h, &rel, target).with_context(|| format!("adding link {}", e.path))?;
                }
            }
        }
        ar.into_inner().context("finishing the layer")?;
        Ok(())
    }

    fn config_json(&self, diff_id: &str) -> Value {
        let c = &self.config;
        let mut config = serde_json::Map::new();
        if !c.env.is_empty() {
            config.insert("Env".into(), json!(c.env));
        }
        if !c.entrypoint.is_empty() {
            config.insert("Entrypoint".into(), json!(c.entrypoint));
        }
        if !c.cmd.is_empty() {
            config.insert("Cmd".into(), json!(c.cmd));
        }
        if let Some(wd) = &c.working_dir {
            config.insert("WorkingDir".into(), json!(wd));
        }
        if !c.labels.is_empty() {
            config.insert("Labels".into(), json!(c.labels));
        }
        json!({
            "created": CREATED,
            "architecture": "amd64",
            "os": "linux",
            "config": config,
            // Uncompressed layer: its diff ID is its digest.
            "rootfs": { "type": "layers", "diff_ids": [ diff_id ] },
            "history": [ { "created": CREATED, "created_by": "integration::oci" } ],
        })
    }
}

/// A KubeVirt-style containerDisk: `FROM scratch` plus the disk at `/disk/<disk_name>`, owned
/// 107:107 (qemu) and read-only (0444).
pub fn container_disk(name: &str, disk: &Path, disk_name: &str) -> Image {
    Image::new(name)
        .entry(Entry::dir(CONTAINER_DISK_DIR).owner(CONTAINER_DISK_UID, CONTAINER_DISK_UID).mode(0o555))
        .entry(
            Entry::host_file(&format!("{CONTAINER_DISK_DIR}/{disk_name}"), disk)
                .owner(CONTAINER_DISK_UID, CONTAINER_DISK_UID)
                .mode(0o444),
        )
}

/// `sha256:<hex>` of `data`.
pub fn sha256_digest(data: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(data)))
}

/// Path of a blob inside an image layout: `blobs/sha256/<hex>`.
pub fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// `/a/b` → `a/b`; rejects empty paths and `..`.
fn relative(path: &str) -> Result<String> {
    let rel = path.trim_start_matches('/').trim_end_matches('/');
    if rel.is_empty() || rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") {
        bail!("bad path in image: {path:?}");
    }
    Ok(rel.to_string())
}

fn set_common(h: &mut tar::Header, size: u64, uid: u64, gid: u64, mode: u32) {
    h.set_size(size);
    h.set_uid(uid);
    h.set_gid(gid);
    h.set_mode(mode);
    h.set_mtime(MTIME);
}

fn file_header(size: u64, uid: u64, gid: u64, mode: u32) -> tar::Header {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Regular);
    set_common(&mut h, size, uid, gid, mode);
    h
}

fn append_bytes<W: Write>(ar: &mut tar::Builder<W>, path: &str, data: &[u8]) -> Result<()> {
    let mut h = file_header(data.len() as u64, 0, 0, 0o644);
    ar.append_data(&mut h, path, data).with_context(|| format!("adding {path}"))
}

fn append_dir<W: Write>(ar: &mut tar::Builder<W>, path: &str, uid: u64, gid: u64, mode: u32) -> Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Directory);
    set_common(&mut h, 0, uid, gid, mode);
    ar.append_data(&mut h, path, io::empty()).with_context(|| format!("adding {path}"))
}

/// Passes writes through while computing their SHA-256 and length.
struct HashingWriter<W> {
    inner: W,
    hasher: Sha256,
    len: u64,
}

impl<W: Write> HashingWriter<W> {
    fn new(inner: W) -> Self {
        HashingWriter { inner, hasher: Sha256::new(), len: 0 }
    }
    fn finish(self) -> (String, u64, W) {
        (format!("sha256:{}", hex::encode(self.hasher.finalize())), self.len, self.inner)
    }
}

impl<W: Write> Write for HashingWriter<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    /// Every member of an archive: path → (header, contents).
    fn members(data: &[u8]) -> Result<Vec<(String, tar::Header, Vec<u8>)>> {
        let mut ar = tar::Archive::new(data);
        let mut out = Vec::new();
        for e in ar.entries()? {
            let mut e = e?;
            let path = e.path()?.to_string_lossy().into_owned();
            let header = e.header().clone();
            let mut buf = Vec::new();
            e.read_to_end(&mut buf)?;
            out.push((path, header, buf));
        }
        Ok(out)
    }

    fn json_of(files: &HashMap<String, Vec<u8>>, path: &str) -> Value {
        serde_json::from_slice(files.get(path).unwrap_or_else(|| panic!("{path} missing"))).expect("valid JSON")
    }

    #[test]
    fn container_disk_archive_is_an_image_layout() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let disk = dir.path().join("tiny.qcow2");
        std::fs::write(&disk, b"QFI\xfb pretend disk")?;
        let out = dir.path().join("out/tiny.tar");
        let written = container_disk("example.org/disks/tiny:1", &disk, "tiny.qcow2").write_archive(&out)?;

        let outer = members(&std::fs::read(&out)?)?;
        let names: Vec<&str> = outer.iter().map(|(p, _, _)| p.as_str()).collect();
        assert_eq!(
            names,
            [
                "oci-layout",
                "index.json",
                "blobs/",
                "blobs/sha256/",
                blob_path(&written.config).as_str(),
                blob_path(&written.manifest).as_str(),
                blob_path(&written.layer).as_str(),
            ]
        );
        let files: HashMap<String, Vec<u8>> = outer.into_iter().map(|(p, _, d)| (p, d)).collect();

        // Every blob is stored under its own digest.
        for (path, data) in &files {
            if let Some(hex) = path.strip_prefix("blobs/sha256/").filter(|h| !h.is_empty()) {
                assert_eq!(sha256_digest(data), format!("sha256:{hex}"), "{path}");
            }
        }
        assert_eq!(json_of(&files, "oci-layout"), json!({"imageLayoutVersion": "1.0.0"}));

        let index = json_of(&files, "index.json");
        assert_eq!(index["schemaVersion"], 2);
        assert_eq!(index["mediaType"], MEDIA_TYPE_INDEX);
        let m = &index["manifests"][0];
        assert_eq!(m["digest"], written.manifest);
        assert_eq!(m["mediaType"], MEDIA_TYPE_MANIFEST);
        assert_eq!(m["size"], files[&blob_path(&written.manifest)].len());
        assert_eq!(m["annotations"][ANNOTATION_CONTAINERD_NAME], "example.org/disks/tiny:1");
        assert_eq!(m["annotations"][ANNOTATION_REF_NAME], "1");
        assert_eq!(m["platform"], json!({"architecture": "amd64", "os": "linux"}));

        let manifest = json_of(&files, &blob_path(&written.manifest));
        assert_eq!(manifest["config"]["digest"], written.config);
        assert_eq!(manifest["config"]["mediaType"], MEDIA_TYPE_CONFIG);
        assert_eq!(manifest["layers"][0]["digest"], written.layer);
        assert_eq!(manifest["layers"][0]["mediaType"], MEDIA_TYPE_LAYER);
        assert_eq!(manifest["layers"][0]["size"], written.layer_size);

        let config = json_of(&files, &blob_path(&written.config));
        assert_eq!(config["architecture"], "amd64");
        assert_eq!(config["os"], "linux");
        assert_eq!(config["rootfs"]["diff_ids"], json!([written.layer]));

        // The layer: /disk (107:107, 0555) then the disk (107:107, 0444) with its contents.
        let layer = members(&files[&blob_path(&written.layer)])?;
        assert_eq!(layer.len(), 2);
        let (path, h, _) = &layer[0];
        assert_eq!(path, "disk/");
        assert_eq!(h.entry_type(), tar::EntryType::Directory);
        assert_eq!((h.uid()?, h.gid()?, h.mode()?), (107, 107, 0o555));
        let (path, h, data) = &layer[1];
        assert_eq!(path, "disk/tiny.qcow2");
        assert_eq!(h.entry_type(), tar::EntryType::Regular);
        assert_eq!((h.uid()?, h.gid()?, h.mode()?), (107, 107, 0o444));
        assert_eq!(data.as_slice(), b"QFI\xfb pretend disk");
        Ok(())
    }

    #[test]
    fn layer_has_parents_links_and_config() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let mut image = Image::new("example.org/test/busybox")
            .entry(Entry::bytes("/bin/busybox", b"ELF".to_vec()).mode(0o755))
            .entry(Entry::symlink("/bin/sh", "busybox"))
            .entry(Entry::bytes("/etc/deep/dir/file", "x").owner(1, 2).mode(0o600));
        image.config.cmd = vec!["sh".into()];
        image.config.env = vec!["PATH=/bin".into()];
        let out = dir.path().join("bb.tar");
        let written = image.write_archive(&out)?;
        assert_eq!(image.tag(), "latest");

        let files: HashMap<String, Vec<u8>> =
            members(&std::fs::read(&out)?)?.into_iter().map(|(p, _, d)| (p, d)).collect();
        let layer = members(&files[&blob_path(&written.layer)])?;
        let summary: Vec<(String, tar::EntryType, u64, u32)> = layer
            .iter()
            .map(|(p, h, _)| (p.clone(), h.entry_type(), h.uid().unwrap_or(9999), h.mode().unwrap_or(0)))
            .collect();
        use tar::EntryType::{Directory as D, Regular as R, Symlink as L};
        assert_eq!(
            summary,
            [
                ("bin/".to_string(), D, 0, 0o755),
                ("bin/busybox".to_string(), R, 0, 0o755),
                ("bin/sh".to_string(), L, 0, 0o777),
                ("etc/".to_string(), D, 0, 0o755),
                ("etc/deep/".to_string(), D, 0, 0o755),
                ("etc/deep/dir/".to_string(), D, 0, 0o755),
                ("etc/deep/dir/file".to_string(), R, 1, 0o600),
            ]
        );
        assert_eq!(layer[2].1.link_name()?.as_deref(), Some(Path::new("busybox")));

        let config = json_of(&files, &blob_path(&written.config));
        assert_eq!(config["config"]["Cmd"], json!(["sh"]));
        assert_eq!(config["config"]["Env"], json!(["PATH=/bin"]));
        let index = json_of(&files, "index.json");
        assert_eq!(index["manifests"][0]["annotations"][ANNOTATION_REF_NAME], "latest");
        Ok(())
    }

    #[test]
    fn archives_are_reproducible() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let image = Image::new("example.org/a:b").entry(Entry::bytes("/f", "data"));
        let a = image.write_archive(&dir.path().join("a.tar"))?;
        let b = image.write_archive(&dir.path().join("b.tar"))?;
        assert_eq!(a, b);
        assert_eq!(std::fs::read(dir.path().join("a.tar"))?, std::fs::read(dir.path().join("b.tar"))?);
        Ok(())
    }

    #[test]
    fn bad_paths_are_rejected() -> Result<()> {
        let dir = tempfile::tempdir()?;
        let out = dir.path().join("bad.tar");
        for p in ["", "/", "/a/../b", "a//b"] {
            let result = Image::new("x:1").entry(Entry::bytes(p, "")).write_archive(&out);
            assert!(result.is_err(), "{p:?} accepted");
            assert!(!out.exists(), "archive left behind for {p:?}");
        }
        Ok(())
    }

    #[test]
    fn missing_host_file_names_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let err = Image::new("x:1")
            .entry(Entry::host_file("/f", "/nonexistent/host/file"))
            .write_archive(&dir.path().join("x.tar"))
            .expect_err("must fail");
        assert!(format!("{err:#}").contains("/nonexistent/host/file"), "{err:#}");
    }
}
