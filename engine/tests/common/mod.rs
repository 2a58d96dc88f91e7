//! Test helpers shared by several integration tests.
#![allow(dead_code)] // each test crate uses a different subset

#[path = "../modes/mod.rs"]
pub mod modes;
pub mod nodes;
#[path = "../scratch/mod.rs"]
pub mod scratch;

use std::io;
use std::sync::{Arc, Mutex};

use mirrorlog_engine::log::sim::{SimFile, SimStorage};
use mirrorlog_engine::log::Storage;

pub type Hook = Arc<dyn Fn(&str, &str) -> io::Result<()> + Send + Sync>;

/// `SimStorage` with a hook run before every directory operation
/// (`create`, `open`, `remove`, `rename` (with the source name), `sync_dir`
/// (with "")). The hook may call into the log or return an error to inject.
#[derive(Clone)]
pub struct Hooked {
    inner: SimStorage,
    hook: Arc<Mutex<Option<Hook>>>,
}

impl Hooked {
    pub fn new(inner: SimStorage) -> Hooked {
        Hooked {
            inner,
            hook: Arc::new(Mutex::new(None)),
        }
    }

    pub fn set_hook(&self, h: impl Fn(&str, &str) -> io::Result<()> + Send + Sync + 'static) {
        *self.hook.lock().unwrap() = Some(Arc::new(h));
    }

    fn call(&self, op: &str, name: &str) -> io::Result<()> {
        let h = self.hook.lock().unwrap().clone();
        match h {
            Some(h) => h(op, name),
            None => Ok(()),
        }
    }
}

impl Storage for Hooked {
    type File = SimFile;

    fn list(&self) -> io::Result<Vec<String>> {
        self.inner.list()
    }
    fn create(&self, name: &str, prefix: &[u8], len: usize) -> io::Result<()> {
        self.call("create", name)?;
        self.inner.create(name, prefix, len)
    }
    fn open(&self, name: &str) -> io::Result<SimFile> {
        self.call("open", name)?;
        self.inner.open(name)
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        self.call("remove", name)?;
        self.inner.remove(name)
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        self.call("rename", from)?;
        self.inner.rename(from, to)
    }
    fn sync_dir(&self) -> io::Result<()> {
        self.call("sync_dir", "")?;
        self.inner.sync_dir()
    }
    fn describe(&self, name: &str) -> String {
        self.inner.describe(name)
    }
}
