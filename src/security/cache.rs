//! Values the authentication looks up (registered clients, their keys, the
//! Organization a client acts for), kept for a short while so that a token
//! request or a request with a bearer token does not go to the database or
//! over HTTP each time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use std::sync::{Mutex, MutexGuard};

/// Expired entries are dropped once the map holds this many: keys can come
/// from unauthenticated requests (the client id a token request claims).
const PRUNE_ABOVE: usize = 4096;

pub struct TtlCache<V> {
    ttl: Duration,
    map: Mutex<HashMap<String, (Instant, V)>>,
}

impl<V: Clone> TtlCache<V> {
    /// Held for a lookup or an insert, never across an await: a std lock,
    /// not tokio's (every authenticated request takes it).
    fn map(&self) -> MutexGuard<'_, HashMap<String, (Instant, V)>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn new(ttl: Duration) -> Self {
        TtlCache {
            ttl,
            map: Mutex::new(HashMap::new()),
        }
    }

    /// The cached value of `key`, or `load`'s (then cached) when there is
    /// none or it is older than the TTL. A failed load is not cached.
    pub async fn get_or_load<E>(&self, key: &str, load: impl AsyncFnOnce() -> Result<V, E>) -> Result<V, E> {
        if let Some((at, v)) = self.map().get(key)
            && at.elapsed() < self.ttl
        {
            return Ok(v.clone());
        }
        let v = load().await?;
        let mut map = self.map();
        if map.len() >= PRUNE_ABOVE {
            let ttl = self.ttl;
            map.retain(|_, (at, _)| at.elapsed() < ttl);
        }
        map.insert(key.to_string(), (Instant::now(), v.clone()));
        Ok(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_value_is_loaded_once_within_its_ttl() {
        let cache = TtlCache::new(Duration::from_secs(60));
        let mut loads = 0;
        for _ in 0..3 {
            let v = cache
                .get_or_load("k", async || {
                    loads += 1;
                    Ok::<_, ()>(7)
                })
                .await;
            assert_eq!(v, Ok(7));
        }
        assert_eq!(loads, 1);
        let failed = cache.get_or_load("other", async || Err::<i32, _>("down")).await;
        assert_eq!(failed, Err("down"));
    }

    #[tokio::test]
    async fn expired_entries_are_pruned_when_the_map_is_large() {
        let cache = TtlCache::new(Duration::ZERO);
        for i in 0..PRUNE_ABOVE + 10 {
            let _ = cache.get_or_load(&i.to_string(), async || Ok::<_, ()>(i)).await;
        }
        assert!(cache.map().len() <= PRUNE_ABOVE);
    }
}
