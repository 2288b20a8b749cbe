//! What this process read from Basiq and has not committed yet. A refresh decided in the
//! meantime must know it: a sweep that read `lastUsed` a second ago, while its plan waits
//! for the group commit, has made a refresh pointless. Entries live from the read to the
//! commit (or its failure), so the map holds only the users in flight.

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::domain::ConnectionId;
use crate::plan::ConnectionRow;
use crate::plan::Fresh;

#[derive(Default)]
pub struct FreshReads {
    map: Mutex<HashMap<ConnectionId, (u64, Fresh)>>,
    next: AtomicU64,
}

impl FreshReads {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ConnectionId, (u64, Fresh)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Keeps `reads` until the returned guard drops (after the commit).
    pub fn hold(&self, reads: Vec<(ConnectionId, Fresh)>) -> Held<'_> {
        let generation = self.next.fetch_add(1, Ordering::Relaxed);
        let ids = reads.iter().map(|(id, _)| id.clone()).collect();
        let mut map = self.lock();
        for (id, fresh) in reads {
            map.insert(id, (generation, fresh));
        }
        Held {
            reads: self,
            generation,
            ids,
        }
    }

    /// The row with what a read not yet committed says of it.
    pub fn overlay(&self, row: &ConnectionRow) -> ConnectionRow {
        match self.lock().get(&row.connection_id) {
            Some((_, fresh)) => fresh.overlay(row),
            None => row.clone(),
        }
    }
}

/// Removes its reads when dropped, unless a newer read replaced them.
pub struct Held<'a> {
    reads: &'a FreshReads,
    generation: u64,
    ids: Vec<ConnectionId>,
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        let mut map = self.reads.lock();
        for id in &self.ids {
            if map.get(id).is_some_and(|(g, _)| *g == self.generation) {
                map.remove(id);
            }
        }
    }
}
