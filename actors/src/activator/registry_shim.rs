//! TEMPORARY stand-in for `crate::registry` (CONTRACT.md) until the foundation lands on `main`; removed at
//! the merge. Same method names and semantics as the contract for what the activator uses: an entry whose
//! actor has stopped counts as absent (the real registry removes it through a monitor).

#![allow(missing_docs)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use ractor::{ActorCell, ActorId, ActorStatus};
use tokio::sync::broadcast;

#[derive(Clone, Debug)]
pub struct RegistryEntry<V> {
    pub key: String,
    pub actor: ActorCell,
    pub value: V,
    pub registered_at: SystemTime,
}

#[derive(Clone, Debug)]
pub enum RegistryEvent<V> {
    Registered(RegistryEntry<V>),
    Updated(RegistryEntry<V>),
    Removed(RegistryEntry<V>),
}

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("key {key:?} already registered by {holder}")]
    Duplicate { key: String, holder: ActorId },
    #[error("key {key:?} not registered")]
    NotFound { key: String },
}

struct Inner<V> {
    map: Mutex<HashMap<String, RegistryEntry<V>>>,
    tx: broadcast::Sender<RegistryEvent<V>>,
}

#[derive(Clone)]
pub struct Registry<V: Clone + Send + Sync + 'static> {
    inner: Arc<Inner<V>>,
}

fn alive(cell: &ActorCell) -> bool {
    !matches!(
        cell.get_status(),
        ActorStatus::Stopping | ActorStatus::Stopped
    )
}

impl<V: Clone + Send + Sync + 'static> Registry<V> {
    pub fn new(_name: impl Into<String>) -> Self {
        Self {
            inner: Arc::new(Inner {
                map: Mutex::new(HashMap::new()),
                tx: broadcast::channel(1024).0,
            }),
        }
    }

    pub fn register(
        &self,
        key: impl Into<String>,
        actor: ActorCell,
        value: V,
    ) -> Result<(), RegistryError> {
        let key = key.into();
        let mut map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(old) = map.get(&key) {
            if alive(&old.actor) {
                return Err(RegistryError::Duplicate {
                    key,
                    holder: old.actor.get_id(),
                });
            }
            let old = map.remove(&key).expect("present");
            let _ = self.inner.tx.send(RegistryEvent::Removed(old));
        }
        let entry = RegistryEntry {
            key: key.clone(),
            actor,
            value,
            registered_at: SystemTime::now(),
        };
        map.insert(key, entry.clone());
        let _ = self.inner.tx.send(RegistryEvent::Registered(entry));
        Ok(())
    }

    pub fn unregister(&self, key: &str) -> Option<RegistryEntry<V>> {
        let mut map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        let old = map.remove(key)?;
        let _ = self.inner.tx.send(RegistryEvent::Removed(old.clone()));
        Some(old)
    }

    pub fn update(&self, key: &str, f: impl FnOnce(&mut V)) -> Result<(), RegistryError> {
        let mut map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        let entry = map.get_mut(key).ok_or_else(|| RegistryError::NotFound {
            key: key.to_string(),
        })?;
        f(&mut entry.value);
        let _ = self.inner.tx.send(RegistryEvent::Updated(entry.clone()));
        Ok(())
    }

    pub fn lookup(&self, key: &str) -> Option<RegistryEntry<V>> {
        let map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        map.get(key).filter(|e| alive(&e.actor)).cloned()
    }

    pub fn select_prefix(&self, prefix: &str) -> Vec<RegistryEntry<V>> {
        let map = self.inner.map.lock().unwrap_or_else(|e| e.into_inner());
        map.values()
            .filter(|e| e.key.starts_with(prefix) && alive(&e.actor))
            .cloned()
            .collect()
    }

    pub fn watch(&self) -> broadcast::Receiver<RegistryEvent<V>> {
        self.inner.tx.subscribe()
    }
}
