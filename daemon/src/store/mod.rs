//! The state store: one sled database under the state dir, seen by the rest of the product only
//! through typed trees. No other module touches sled.
//!
//! Records are JSON behind a schema version (`{"v": 1, "r": {...}}`), so a newer build can read
//! and upgrade what an older one wrote, and an older build refuses what it cannot understand
//! rather than misreading it. Writes that the product treats as durable ([`TypedTree::put`],
//! [`TypedTree::remove`]) are flushed to disk before they return.

mod lock;

use std::marker::PhantomData;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use ulid::Ulid;

pub use lock::{InstanceLock, LOCK_FILE};

/// Version of the store's layout (trees, key formats). Bump it with a migration in [`MIGRATIONS`].
pub const STORE_SCHEMA: u32 = 1;

/// Store-level migrations: `(from_schema, step)`; each step moves the store to `from_schema + 1`.
type Migration = fn(&sled::Db) -> Result<(), StoreError>;
const MIGRATIONS: &[(u32, Migration)] = &[];

const DB_DIR: &str = "db";
/// The file sled 0.34 keeps its log and pages in, inside [`DB_DIR`].
const SLED_LOG_FILE: &str = "db";
const META_SCHEMA_KEY: &[u8] = b"store_schema";
const META_INSTANCE_KEY: &[u8] = b"instance";

/// The named trees. Each owner module defines its record types against one of these.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TreeName {
    Calls,
    Transcripts,
    Summaries,
    Campaigns,
    Leads,
    Outbox,
    /// Messages a store write owes upstream, written in the same atomic write and moved into
    /// the outbox (atomically) once the uplink takes them: a crash between the two loses none.
    OwedUpstream,
    Audit,
    /// Request ids of remote commands already seen, until they expire (replay protection).
    CommandIds,
    Meta,
}

impl TreeName {
    pub const ALL: [TreeName; 10] = [
        TreeName::Calls,
        TreeName::Transcripts,
        TreeName::Summaries,
        TreeName::Campaigns,
        TreeName::Leads,
        TreeName::Outbox,
        TreeName::OwedUpstream,
        TreeName::Audit,
        TreeName::CommandIds,
        TreeName::Meta,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TreeName::Calls => "calls",
            TreeName::Transcripts => "transcripts",
            TreeName::Summaries => "summaries",
            TreeName::Campaigns => "campaigns",
            TreeName::Leads => "leads",
            TreeName::Outbox => "outbox",
            TreeName::OwedUpstream => "owed_upstream",
            TreeName::Audit => "audit",
            TreeName::CommandIds => "command_ids",
            TreeName::Meta => "meta",
        }
    }
}

/// A record type stored in one tree.
pub trait Record: Serialize + DeserializeOwned {
    const TREE: TreeName;
    /// Schema version written with every record of this type.
    const SCHEMA: u32;

    /// Upgrades a record written with an older schema. The default refuses, which is right
    /// until the first schema change of the type.
    fn upgrade(from_schema: u32, raw: serde_json::Value) -> Result<Self, String> {
        let _ = raw;
        Err(format!("no upgrade from schema {from_schema}"))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("another edgevoiced{} holds the store in {}; stop it first (systemctl stop edgevoice) or use another --state-dir",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default(), path.display())]
    Locked { path: PathBuf, holder: Option<u32> },
    #[error("state dir {} is not writable ({source}); create it and give it to the daemon's user (e.g. chown edgevoice:edgevoice) or pass --state-dir", path.display())]
    NotWritable {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("store in {}: {context}: {}", path.display(), sled_reason(source))]
    Sled {
        path: PathBuf,
        context: &'static str,
        #[source]
        source: sled::Error,
    },
    #[error("store in {}: write refused: {} MiB free, below the {} MiB kept free (daemon.min_free_disk_mb); free some disk space and writes resume by themselves", path.display(), free / MIB, reserve / MIB)]
    DiskFull {
        path: PathBuf,
        free: u64,
        reserve: u64,
    },
    #[error("store in {} has schema {found}, newer than this edgevoice understands ({supported}); install the newer edgevoice again", path.display())]
    NewerStore {
        path: PathBuf,
        found: u32,
        supported: u32,
    },
    #[error("record {key} in tree {tree} cannot be read: {reason}")]
    BadRecord {
        tree: &'static str,
        key: String,
        reason: String,
    },
    #[error("cannot encode a record for tree {tree}: {source}")]
    Encode {
        tree: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

const MIB: u64 = 1 << 20;

/// sled's I/O errors print as Rust debug text, and the error sled keeps after a failed write
/// is a copy whose text *is* that debug text; an operator wants the OS's words.
fn sled_reason(error: &sled::Error) -> String {
    let sled::Error::Io(io) = error else {
        return error.to_string();
    };
    if io.raw_os_error().is_some() {
        return io.to_string();
    }
    // `Os { code: 28, kind: StorageFull, message: "No space left on device" }`
    let text = io.to_string();
    let field = |name: &str| {
        let start = text.find(name)? + name.len();
        Some(&text[start..])
    };
    let code = field("code: ").and_then(|t| t.split(',').next());
    let message = field("message: \"").and_then(|t| t.split('"').next());
    match (message, code) {
        (Some(message), Some(code)) => format!("{message} (os error {code})"),
        _ => text,
    }
}

#[derive(Serialize, Deserialize)]
struct Envelope<T> {
    v: u32,
    r: T,
}

/// Identity of this installation, created on first open and never changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    pub device_id: String,
    pub created_at_ms: u64,
}

/// What `edgevoice store info` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreInfo {
    pub path: PathBuf,
    pub size_on_disk: u64,
    pub schema: u32,
    pub device_id: String,
    pub trees: Vec<(String, usize)>,
}

pub struct Store {
    db: sled::Db,
    /// sled's log file. sled 0.34 "flushes" with sync_file_range, which survives a killed
    /// process but not a power cut (no device cache flush, no metadata); an fdatasync on this
    /// file after each flush makes durable writes durable.
    log_file: std::fs::File,
    path: PathBuf,
    ids: Mutex<ulid::Generator>,
    instance: InstanceInfo,
    /// Free space (bytes) kept on the store's filesystem: below it writes are refused
    /// before they reach sled, which after a failed write of its own refuses everything
    /// until it is reopened. 0: no check.
    reserve_bytes: AtomicU64,
    /// The last write's failure, until a write succeeds again.
    write_failure: Mutex<Option<String>>,
    /// sled failed a write itself (I/O error, corruption): it refuses every write from then on
    /// until the database is reopened.
    broken: std::sync::atomic::AtomicBool,
    _lock: InstanceLock,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").field("path", &self.path).finish()
    }
}

impl Store {
    /// Opens (creating if needed) the store in `state_dir`, taking the instance lock and
    /// running migrations. Fails with a one-line error if the dir is not writable, another
    /// process holds it, or it was written by a newer edgevoice.
    pub fn open(state_dir: &Path) -> Result<Self, StoreError> {
        let not_writable = |source| StoreError::NotWritable {
            path: state_dir.to_owned(),
            source,
        };
        std::fs::create_dir_all(state_dir).map_err(not_writable)?;
        check_writable(state_dir).map_err(not_writable)?;
        let lock = InstanceLock::acquire(state_dir)?;
        let path = state_dir.join(DB_DIR);
        let sled_err = |context| {
            let path = path.clone();
            move |source| StoreError::Sled {
                path,
                context,
                source,
            }
        };
        let db = open_sled(&path).map_err(sled_err("open"))?;
        let log_file = std::fs::File::open(path.join(SLED_LOG_FILE)).map_err(|source| {
            StoreError::NotWritable {
                path: path.clone(),
                source,
            }
        })?;
        migrate(&db, &path)?;
        let meta = db
            .open_tree(TreeName::Meta.as_str())
            .map_err(sled_err("open meta tree"))?;
        let instance = match meta.get(META_INSTANCE_KEY).map_err(sled_err("read meta"))? {
            Some(raw) => serde_json::from_slice(&raw).map_err(|e| StoreError::BadRecord {
                tree: "meta",
                key: "instance".into(),
                reason: e.to_string(),
            })?,
            None => {
                let info = InstanceInfo {
                    device_id: Ulid::from_datetime(SystemTime::now())
                        .to_string()
                        .to_lowercase(),
                    created_at_ms: now_ms(),
                };
                let raw = serde_json::to_vec(&info).map_err(|source| StoreError::Encode {
                    tree: "meta",
                    source,
                })?;
                meta.insert(META_INSTANCE_KEY, raw)
                    .map_err(sled_err("write meta"))?;
                db.flush().map_err(sled_err("flush"))?;
                info
            }
        };
        Ok(Self {
            db,
            log_file,
            path,
            ids: Mutex::new(ulid::Generator::new()),
            instance,
            reserve_bytes: AtomicU64::new(0),
            write_failure: Mutex::new(None),
            broken: std::sync::atomic::AtomicBool::new(false),
            _lock: lock,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn instance(&self) -> &InstanceInfo {
        &self.instance
    }

    /// A typed handle on the tree that holds `R`.
    pub fn tree<R: Record>(&self) -> Result<TypedTree<'_, R>, StoreError> {
        let tree = self
            .db
            .open_tree(R::TREE.as_str())
            .map_err(|source| StoreError::Sled {
                path: self.path.clone(),
                context: "open tree",
                source,
            })?;
        Ok(TypedTree {
            store: self,
            tree,
            _record: PhantomData,
        })
    }

    /// A new id that sorts by creation time (a ULID, strictly increasing within this process),
    /// for keys that are listed newest-first.
    pub fn new_id(&self) -> Ulid {
        let mut ids = self.ids.lock().unwrap_or_else(|p| p.into_inner());
        match ids.generate() {
            Ok(id) => id,
            // More than 2^80 ids in one millisecond cannot happen; fall back to a fresh one.
            Err(_) => Ulid::from_datetime(SystemTime::now()),
        }
    }

    /// Keeps `bytes` free on the store's filesystem (see [`StoreError::DiskFull`]).
    pub fn set_reserve(&self, bytes: u64) {
        self.reserve_bytes.store(bytes, Ordering::Relaxed);
    }

    /// Bytes available to the daemon on the store's filesystem.
    pub fn free_bytes(&self) -> Option<u64> {
        let st = nix::sys::statvfs::statvfs(&self.path).ok()?;
        Some(st.blocks_available().saturating_mul(st.fragment_size()))
    }

    /// Why the last write failed, while no write has succeeded since.
    pub fn write_failure(&self) -> Option<String> {
        self.write_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// `Err(DiskFull)` when the store's filesystem is below the reserve: for the store's own
    /// writes and for whatever else the daemon writes there (call recordings).
    pub fn check_room(&self) -> Result<(), StoreError> {
        let reserve = self.reserve_bytes.load(Ordering::Relaxed);
        if reserve == 0 {
            return Ok(());
        }
        match self.free_bytes() {
            Some(free) if free < reserve => Err(StoreError::DiskFull {
                path: self.path.clone(),
                free,
                reserve,
            }),
            _ => Ok(()),
        }
    }

    /// Whether the filesystem has room for the daemon to go on writing: at least the reserve,
    /// and never less than a few MiB (with the reserve at 0).
    pub fn has_room(&self) -> bool {
        const FLOOR: u64 = 4 * MIB;
        let reserve = self.reserve_bytes.load(Ordering::Relaxed);
        self.free_bytes()
            .is_some_and(|free| free >= reserve.max(FLOOR))
    }

    /// Runs a write: refused up front when the disk is below the reserve, and its outcome
    /// remembered for [`Store::write_failure`].
    fn write<T>(
        &self,
        check_room: bool,
        f: impl FnOnce() -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let result = match check_room {
            true => self.check_room().and_then(|()| f()),
            false => f(),
        };
        let mut failure = self.write_failure.lock().unwrap_or_else(|p| p.into_inner());
        match &result {
            Ok(_) => *failure = None,
            Err(e) => {
                if let StoreError::Sled { source, .. } = e {
                    if matches!(
                        source,
                        sled::Error::Io(_)
                            | sled::Error::Corruption { .. }
                            | sled::Error::ReportableBug(_)
                    ) {
                        self.broken.store(true, Ordering::Release);
                    }
                }
                *failure = Some(e.to_string());
            }
        }
        result
    }

    /// Whether sled failed a write of its own: nothing will be written until the store is
    /// reopened (the daemon restarts for that once the disk has room).
    pub fn is_broken(&self) -> bool {
        self.broken.load(Ordering::Acquire)
    }

    pub fn size_on_disk(&self) -> u64 {
        self.db.size_on_disk().unwrap_or(0)
    }

    pub fn info(&self) -> StoreInfo {
        let trees = TreeName::ALL
            .iter()
            .map(|t| {
                let len = self.db.open_tree(t.as_str()).map(|t| t.len()).unwrap_or(0);
                (t.as_str().to_owned(), len)
            })
            .collect();
        StoreInfo {
            path: self.path.clone(),
            size_on_disk: self.size_on_disk(),
            schema: STORE_SCHEMA,
            device_id: self.instance.device_id.clone(),
            trees,
        }
    }

    /// Applies every write and removal in `writes`, across trees, atomically (all or none,
    /// also across a crash) and flushes before returning. Writes that only remove are not
    /// held to the reserve (they free space).
    pub fn apply(&self, writes: Writes) -> Result<(), StoreError> {
        if writes.per_tree.is_empty() {
            return Ok(());
        }
        let sled_err = |context| {
            move |source| StoreError::Sled {
                path: self.path.clone(),
                context,
                source,
            }
        };
        let trees = writes
            .per_tree
            .iter()
            .map(|(name, _)| self.db.open_tree(name.as_str()))
            .collect::<Result<Vec<_>, _>>()
            .map_err(sled_err("open tree"))?;
        self.write(writes.puts > 0, || {
            use sled::transaction::{TransactionError, Transactional as _};
            trees
                .as_slice()
                .transaction(|tx| {
                    for (i, (_, batch)) in writes.per_tree.iter().enumerate() {
                        tx[i].apply_batch(batch)?;
                    }
                    Ok::<(), sled::transaction::ConflictableTransactionError<()>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Storage(source) => sled_err("write transaction")(source),
                    TransactionError::Abort(()) => sled_err("write transaction")(
                        sled::Error::Unsupported("transaction aborted".to_owned()),
                    ),
                })?;
            self.flush()
        })
    }

    /// Flushes everything written so far to stable storage.
    pub fn flush(&self) -> Result<(), StoreError> {
        self.db.flush().map_err(|source| StoreError::Sled {
            path: self.path.clone(),
            context: "flush",
            source,
        })?;
        self.log_file
            .sync_data()
            .map_err(|source| StoreError::Sled {
                path: self.path.clone(),
                context: "fdatasync",
                source: source.into(),
            })
    }
}

/// Opens sled, waiting briefly for its own file lock: a `Db` dropped in this process releases
/// the lock only when sled's flusher thread exits. Our instance lock is already held, so no
/// other daemon can be the holder.
fn open_sled(path: &Path) -> Result<sled::Db, sled::Error> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new().path(path).open() {
            // sled reports its lock failure as ErrorKind::Other with this text.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return other,
        }
    }
}

fn check_writable(dir: &Path) -> std::io::Result<()> {
    let probe = dir.join(".write-test");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(&probe)
}

fn migrate(db: &sled::Db, path: &Path) -> Result<(), StoreError> {
    let sled_err = |context| {
        move |source| StoreError::Sled {
            path: path.to_owned(),
            context,
            source,
        }
    };
    let meta = db
        .open_tree(TreeName::Meta.as_str())
        .map_err(sled_err("open meta tree"))?;
    let found = match meta.get(META_SCHEMA_KEY).map_err(sled_err("read schema"))? {
        Some(raw) => {
            let bytes: [u8; 4] = raw.as_ref().try_into().map_err(|_| StoreError::BadRecord {
                tree: "meta",
                key: "store_schema".into(),
                reason: format!("{} bytes, expected 4", raw.len()),
            })?;
            u32::from_be_bytes(bytes)
        }
        None => STORE_SCHEMA,
    };
    if found > STORE_SCHEMA {
        return Err(StoreError::NewerStore {
            path: path.to_owned(),
            found,
            supported: STORE_SCHEMA,
        });
    }
    let mut schema = found;
    for (from, step) in MIGRATIONS {
        if *from == schema {
            step(db)?;
            schema += 1;
            meta.insert(META_SCHEMA_KEY, &schema.to_be_bytes())
                .map_err(sled_err("write schema"))?;
            db.flush().map_err(sled_err("flush"))?;
            tracing::info!(from, to = schema, "store migrated");
        }
    }
    meta.insert(META_SCHEMA_KEY, &schema.to_be_bytes())
        .map_err(sled_err("write schema"))?;
    db.flush().map_err(sled_err("flush"))?;
    Ok(())
}

/// Milliseconds since the Unix epoch, the timestamp unit of every record.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// The tree holding records of type `R`.
pub struct TypedTree<'s, R> {
    store: &'s Store,
    tree: sled::Tree,
    _record: PhantomData<fn() -> R>,
}

impl<R: Record> TypedTree<'_, R> {
    fn err(&self, context: &'static str) -> impl Fn(sled::Error) -> StoreError + '_ {
        move |source| StoreError::Sled {
            path: self.store.path.clone(),
            context,
            source,
        }
    }

    fn encode(record: &R) -> Result<Vec<u8>, StoreError> {
        serde_json::to_vec(&Envelope {
            v: R::SCHEMA,
            r: record,
        })
        .map_err(|source| StoreError::Encode {
            tree: R::TREE.as_str(),
            source,
        })
    }

    fn decode(key: &[u8], raw: &[u8]) -> Result<R, StoreError> {
        let bad = |reason: String| StoreError::BadRecord {
            tree: R::TREE.as_str(),
            key: display_key(key),
            reason,
        };
        let env: Envelope<serde_json::Value> =
            serde_json::from_slice(raw).map_err(|e| bad(e.to_string()))?;
        match env.v.cmp(&R::SCHEMA) {
            std::cmp::Ordering::Equal => {
                serde_json::from_value(env.r).map_err(|e| bad(e.to_string()))
            }
            std::cmp::Ordering::Less => R::upgrade(env.v, env.r).map_err(bad),
            std::cmp::Ordering::Greater => Err(bad(format!(
                "written with schema {} by a newer edgevoice (this one reads {})",
                env.v,
                R::SCHEMA
            ))),
        }
    }

    /// Writes `record` under `key` and flushes it to disk before returning.
    pub fn put(&self, key: impl AsRef<[u8]>, record: &R) -> Result<(), StoreError> {
        let raw = Self::encode(record)?;
        self.store.write(true, || {
            self.tree
                .insert(key.as_ref(), raw)
                .map_err(self.err("write"))?;
            self.store.flush()
        })
    }

    /// Writes `record` without waiting for the disk: for data that may be lost in a crash.
    pub fn put_lazy(&self, key: impl AsRef<[u8]>, record: &R) -> Result<(), StoreError> {
        let raw = Self::encode(record)?;
        self.store.write(true, || {
            self.tree
                .insert(key.as_ref(), raw)
                .map(|_| ())
                .map_err(self.err("write"))
        })
    }

    /// Writes `record` under `key` only if the key is absent, atomically, and flushes before
    /// returning; false (nothing written) when the key was already there.
    pub fn insert_new(&self, key: impl AsRef<[u8]>, record: &R) -> Result<bool, StoreError> {
        let raw = Self::encode(record)?;
        self.store.write(true, || {
            let swapped = self
                .tree
                .compare_and_swap(key.as_ref(), None as Option<&[u8]>, Some(raw))
                .map_err(self.err("write"))?;
            match swapped {
                Ok(()) => {
                    self.store.flush()?;
                    Ok(true)
                }
                Err(_) => Ok(false),
            }
        })
    }

    pub fn get(&self, key: impl AsRef<[u8]>) -> Result<Option<R>, StoreError> {
        let key = key.as_ref();
        match self.tree.get(key).map_err(self.err("read"))? {
            Some(raw) => Ok(Some(Self::decode(key, &raw)?)),
            None => Ok(None),
        }
    }

    /// Removes `key` and flushes before returning; true if it was there.
    /// Removals free space: they are not held to the reserve.
    pub fn remove(&self, key: impl AsRef<[u8]>) -> Result<bool, StoreError> {
        self.store.write(false, || {
            let existed = self
                .tree
                .remove(key.as_ref())
                .map_err(self.err("remove"))?
                .is_some();
            self.store.flush()?;
            Ok(existed)
        })
    }

    pub fn len(&self) -> usize {
        self.tree.len()
    }

    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    /// Up to `limit` records, newest key first (keys from [`Store::new_id`] sort by time).
    /// A record that cannot be decoded is returned as an error in its place, not skipped.
    pub fn newest(&self, limit: usize) -> Vec<Result<(Vec<u8>, R), StoreError>> {
        self.tree
            .iter()
            .rev()
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(self.err("scan"))?;
                Ok((k.to_vec(), Self::decode(&k, &v)?))
            })
            .collect()
    }

    /// Up to `limit` records newest first as JSON values, an unreadable one as
    /// `{"error": …}` in its place: what listings (CLI, control socket) show.
    pub fn newest_json(&self, limit: usize) -> Vec<serde_json::Value> {
        self.newest_json_before(None, limit)
    }

    /// [`Self::newest_json`] of the records whose keys sort before `before` (the next page).
    pub fn newest_json_before(
        &self,
        before: Option<&[u8]>,
        limit: usize,
    ) -> Vec<serde_json::Value> {
        let range = match before {
            Some(key) => self.tree.range(..key.to_vec()),
            None => self.tree.range::<Vec<u8>, _>(..),
        };
        range
            .rev()
            .take(limit)
            .map(|item| {
                let (k, v) = item.map_err(self.err("scan"))?;
                Ok((k.to_vec(), Self::decode(&k, &v)?))
            })
            .collect::<Vec<Result<(Vec<u8>, R), StoreError>>>()
            .into_iter()
            .map(
                |item| match item.map(|(_, rec)| serde_json::to_value(rec)) {
                    Ok(Ok(v)) => v,
                    Ok(Err(e)) => serde_json::json!({ "error": e.to_string() }),
                    Err(e) => serde_json::json!({ "error": e.to_string() }),
                },
            )
            .collect()
    }

    /// All records in key order.
    pub fn iter(&self) -> impl Iterator<Item = Result<(Vec<u8>, R), StoreError>> + '_ {
        self.tree.iter().map(move |item| {
            let (k, v) = item.map_err(self.err("scan"))?;
            Ok((k.to_vec(), Self::decode(&k, &v)?))
        })
    }

    /// Applies every write and removal in `batch` atomically (all or none, also across a
    /// crash) and flushes before returning.
    /// A batch that only removes is not held to the reserve (it frees space).
    pub fn apply(&self, batch: Batch<R>) -> Result<(), StoreError> {
        self.store.write(batch.writes > 0, || {
            self.tree
                .apply_batch(batch.inner)
                .map_err(self.err("write batch"))?;
            self.store.flush()
        })
    }
}

/// Writes and removals for one tree that land together or not at all ([`TypedTree::apply`]).
pub struct Batch<R> {
    inner: sled::Batch,
    /// Puts in it (removals only free space).
    writes: usize,
    _record: PhantomData<fn() -> R>,
}

impl<R> Default for Batch<R> {
    fn default() -> Self {
        Self {
            inner: sled::Batch::default(),
            writes: 0,
            _record: PhantomData,
        }
    }
}

impl<R: Record> Batch<R> {
    pub fn put(&mut self, key: impl AsRef<[u8]>, record: &R) -> Result<(), StoreError> {
        self.inner
            .insert(key.as_ref(), TypedTree::<R>::encode(record)?);
        self.writes += 1;
        Ok(())
    }

    pub fn remove(&mut self, key: impl AsRef<[u8]>) {
        self.inner.remove(key.as_ref());
    }
}

/// Writes and removals across trees that land together or not at all ([`Store::apply`]):
/// a record and what it owes elsewhere (an outbox message, an audit line) as one fact.
#[derive(Default)]
pub struct Writes {
    per_tree: Vec<(TreeName, sled::Batch)>,
    puts: usize,
}

impl Writes {
    fn batch(&mut self, tree: TreeName) -> &mut sled::Batch {
        let at = match self.per_tree.iter().position(|(t, _)| *t == tree) {
            Some(at) => at,
            None => {
                self.per_tree.push((tree, sled::Batch::default()));
                self.per_tree.len() - 1
            }
        };
        &mut self.per_tree[at].1
    }

    pub fn put<R: Record>(&mut self, key: impl AsRef<[u8]>, record: &R) -> Result<(), StoreError> {
        let raw = TypedTree::<R>::encode(record)?;
        self.batch(R::TREE).insert(key.as_ref(), raw);
        self.puts += 1;
        Ok(())
    }

    pub fn remove<R: Record>(&mut self, key: impl AsRef<[u8]>) {
        self.batch(R::TREE).remove(key.as_ref());
    }

    pub fn is_empty(&self) -> bool {
        self.per_tree.is_empty()
    }
}

/// A key for messages: a ULID when it is one, UTF-8 when printable, hex otherwise.
pub fn display_key(key: &[u8]) -> String {
    if let Ok(bytes) = <[u8; 16]>::try_from(key) {
        return Ulid::from_bytes(bytes).to_string();
    }
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) => s.to_owned(),
        _ => hex::encode(key),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Note {
        text: String,
    }
    impl Record for Note {
        const TREE: TreeName = TreeName::Audit;
        const SCHEMA: u32 = 2;
        fn upgrade(from: u32, raw: serde_json::Value) -> Result<Self, String> {
            match from {
                1 => Ok(Note {
                    text: raw
                        .get("body")
                        .and_then(|b| b.as_str())
                        .ok_or("schema 1 record without body")?
                        .to_owned(),
                }),
                _ => Err(format!("no upgrade from schema {from}")),
            }
        }
    }

    #[test]
    fn below_the_reserve_writes_are_refused_in_one_line_and_resume_with_room() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree::<Note>().unwrap();
        let note = Note { text: "x".into() };
        tree.put(b"a", &note).unwrap();
        store.set_reserve(u64::MAX);
        let refused = tree.put(b"b", &note).unwrap_err();
        let line = refused.to_string();
        assert!(
            matches!(refused, StoreError::DiskFull { .. })
                && line.contains("daemon.min_free_disk_mb")
                && !line.contains('\n'),
            "{line}"
        );
        assert_eq!(store.write_failure(), Some(line));
        let mut batch = Batch::default();
        batch.put(b"c", &note).unwrap();
        assert!(
            tree.apply(batch).is_err(),
            "a batch that writes is held too"
        );
        // Removing frees space: allowed.
        assert!(tree.remove(b"a").unwrap());
        let mut removals = Batch::<Note>::default();
        removals.remove(b"zz");
        tree.apply(removals).unwrap();
        assert_eq!(store.write_failure(), None, "a write went through");
        store.set_reserve(0);
        tree.put(b"b", &note).unwrap();
        assert_eq!(tree.get(b"b").unwrap(), Some(note));
        assert!(store.free_bytes().is_some_and(|b| b > 0));
    }

    #[test]
    fn sled_io_errors_read_as_the_os_says_them() {
        let full = std::io::Error::from_raw_os_error(28);
        // sled's copy of the error it keeps after a failed write: the original's debug text.
        let kept = std::io::Error::new(full.kind(), format!("{full:?}"));
        for source in [sled::Error::Io(full), sled::Error::Io(kept)] {
            let error = StoreError::Sled {
                path: "/var/lib/edgevoice/db".into(),
                context: "write",
                source,
            };
            assert_eq!(
                error.to_string(),
                "store in /var/lib/edgevoice/db: write: No space left on device (os error 28)"
            );
        }
    }

    #[test]
    fn put_get_and_reopen_keeps_records() {
        let dir = tempfile::tempdir().unwrap();
        let key = {
            let store = Store::open(dir.path()).unwrap();
            let key = store.new_id().to_bytes();
            store
                .tree::<Note>()
                .unwrap()
                .put(key, &Note { text: "hi".into() })
                .unwrap();
            key
        };
        let store = Store::open(dir.path()).unwrap();
        let got = store.tree::<Note>().unwrap().get(key).unwrap();
        assert_eq!(got, Some(Note { text: "hi".into() }));
    }

    #[test]
    fn device_id_is_created_once_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let first = Store::open(dir.path()).unwrap().instance().clone();
        let second = Store::open(dir.path()).unwrap().instance().clone();
        assert_eq!(first, second);
        assert_eq!(first.device_id.len(), 26);
    }

    #[test]
    fn second_open_of_the_same_dir_is_refused_with_the_holder_pid() {
        let dir = tempfile::tempdir().unwrap();
        let _first = Store::open(dir.path()).unwrap();
        let err = Store::open(dir.path()).unwrap_err();
        assert!(
            matches!(err, StoreError::Locked { holder: Some(p), .. } if p == std::process::id())
        );
        let msg = err.to_string();
        assert!(
            msg.contains("another edgevoiced") && msg.contains("--state-dir"),
            "{msg}"
        );
    }

    #[test]
    fn unwritable_state_dir_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-dir");
        std::fs::write(&file, b"x").unwrap();
        let err = Store::open(&file).unwrap_err();
        assert!(matches!(err, StoreError::NotWritable { .. }), "{err}");
        assert!(err.to_string().contains("not writable"), "{err}");
    }

    #[test]
    fn newest_lists_by_time_descending() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree::<Note>().unwrap();
        for i in 0..5 {
            tree.put_lazy(
                store.new_id().to_bytes(),
                &Note {
                    text: i.to_string(),
                },
            )
            .unwrap();
        }
        let texts: Vec<String> = tree
            .newest(3)
            .into_iter()
            .map(|r| r.unwrap().1.text)
            .collect();
        assert_eq!(texts, ["4", "3", "2"]);
    }

    #[test]
    fn older_schema_is_upgraded_and_newer_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let raw_tree = store.db.open_tree("audit").unwrap();
        raw_tree
            .insert(b"old", br#"{"v":1,"r":{"body":"legacy"}}"#.to_vec())
            .unwrap();
        raw_tree
            .insert(b"new", br#"{"v":3,"r":{"text":"future"}}"#.to_vec())
            .unwrap();
        raw_tree.insert(b"junk", b"\xff\x00".to_vec()).unwrap();
        let tree = store.tree::<Note>().unwrap();
        assert_eq!(tree.get(b"old").unwrap().unwrap().text, "legacy");
        let err = tree.get(b"new").unwrap_err().to_string();
        assert!(err.contains("newer edgevoice"), "{err}");
        let err = tree.get(b"junk").unwrap_err().to_string();
        assert!(err.contains("audit") && err.contains("junk"), "{err}");
    }

    #[test]
    fn store_written_by_a_newer_schema_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let meta = store.db.open_tree("meta").unwrap();
            meta.insert(META_SCHEMA_KEY, &(STORE_SCHEMA + 1).to_be_bytes())
                .unwrap();
            store.flush().unwrap();
        }
        let err = Store::open(dir.path()).unwrap_err();
        assert!(matches!(err, StoreError::NewerStore { .. }), "{err}");
    }

    #[test]
    fn remove_is_durable_and_reports_presence() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree::<Note>().unwrap();
        tree.put(b"k", &Note { text: "x".into() }).unwrap();
        assert!(tree.remove(b"k").unwrap());
        assert!(!tree.remove(b"k").unwrap());
        assert!(tree.is_empty());
    }

    #[test]
    fn batch_lands_whole_and_durably() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let tree = store.tree::<Note>().unwrap();
            tree.put(b"gone", &Note { text: "x".into() }).unwrap();
            let mut batch = Batch::default();
            batch.remove(b"gone");
            batch.put(b"a", &Note { text: "1".into() }).unwrap();
            batch.put(b"b", &Note { text: "2".into() }).unwrap();
            tree.apply(batch).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree::<Note>().unwrap();
        let texts: Vec<String> = tree.iter().map(|r| r.unwrap().1.text).collect();
        assert_eq!(texts, ["1", "2"]);
        tree.apply(Batch::default()).unwrap();
        assert_eq!(tree.len(), 2);
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Owed {
        what: String,
    }
    impl Record for Owed {
        const TREE: TreeName = TreeName::OwedUpstream;
        const SCHEMA: u32 = 1;
    }

    #[test]
    fn writes_across_trees_land_together_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store
                .tree::<Owed>()
                .unwrap()
                .put(b"old", &Owed { what: "x".into() })
                .unwrap();
            let mut writes = Writes::default();
            writes.put(b"n", &Note { text: "1".into() }).unwrap();
            writes.put(b"o", &Owed { what: "n".into() }).unwrap();
            writes.remove::<Owed>(b"old");
            store.apply(writes).unwrap();
            store.apply(Writes::default()).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let notes = store.tree::<Note>().unwrap();
        let owed = store.tree::<Owed>().unwrap();
        assert_eq!(notes.get(b"n").unwrap(), Some(Note { text: "1".into() }));
        assert_eq!(owed.get(b"o").unwrap(), Some(Owed { what: "n".into() }));
        assert_eq!(owed.get(b"old").unwrap(), None);
    }

    #[test]
    fn writes_across_trees_are_refused_whole_below_the_reserve() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        store.set_reserve(u64::MAX);
        let mut writes = Writes::default();
        writes.put(b"n", &Note { text: "1".into() }).unwrap();
        writes.put(b"o", &Owed { what: "n".into() }).unwrap();
        assert!(matches!(
            store.apply(writes),
            Err(StoreError::DiskFull { .. })
        ));
        assert!(store.tree::<Note>().unwrap().is_empty());
        assert!(store.tree::<Owed>().unwrap().is_empty());
        // Removals free space: allowed below the reserve.
        let mut removals = Writes::default();
        removals.remove::<Owed>(b"o");
        store.apply(removals).unwrap();
    }

    #[test]
    fn listings_page_by_key_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let tree = store.tree::<Note>().unwrap();
        for k in [b"a", b"b", b"c", b"d"] {
            let text = String::from_utf8(k.to_vec()).unwrap();
            tree.put(k, &Note { text }).unwrap();
        }
        let texts = |v: Vec<serde_json::Value>| -> Vec<String> {
            v.iter()
                .map(|n| n["text"].as_str().unwrap().to_owned())
                .collect()
        };
        assert_eq!(texts(tree.newest_json(2)), ["d", "c"]);
        assert_eq!(texts(tree.newest_json_before(Some(b"c"), 2)), ["b", "a"]);
        assert!(tree.newest_json_before(Some(b"a"), 2).is_empty());
    }

    #[test]
    fn info_lists_every_tree() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let info = store.info();
        assert_eq!(info.trees.len(), TreeName::ALL.len());
        assert_eq!(info.schema, STORE_SCHEMA);
    }

    #[test]
    fn display_key_shows_ulids_text_and_hex() {
        let id = Ulid::from_datetime(SystemTime::now());
        assert_eq!(display_key(&id.to_bytes()), id.to_string());
        assert_eq!(display_key(b"instance"), "instance");
        assert_eq!(display_key(&[0, 1]), "0001");
    }
}
