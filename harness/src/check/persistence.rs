//! A failure persistence that delegates to the configured one and records
//! the seeds it loaded and saved, so the report can show how to replay a
//! failure.

use std::any::Any;
use std::fmt::{self, Debug};
use std::sync::{Arc, Mutex, PoisonError};

use proptest::test_runner::{FailurePersistence, PersistedSeed};

/// Record of the loads and saves of one check's persistence.
#[derive(Debug, Default)]
pub(crate) struct PersistenceLog {
    /// Seeds loaded from the regression file; proptest runs them first.
    pub(crate) loaded: u32,
    /// The seed line of the failure proptest saved, such as `cc 1a2b…`.
    pub(crate) saved: Option<String>,
    /// Set when the executor was unavailable. Such a failure is unrelated
    /// to the input, so it must not end up in the regression file.
    pub(crate) suppress_save: bool,
}

/// Wraps the configured persistence and shares a [`PersistenceLog`] with
/// the check that installed it. Clones share the log.
#[derive(Clone)]
pub(crate) struct RecordingPersistence {
    inner: Box<dyn FailurePersistence>,
    log: Arc<Mutex<PersistenceLog>>,
}

impl RecordingPersistence {
    pub(crate) fn new(inner: Box<dyn FailurePersistence>) -> (Self, Arc<Mutex<PersistenceLog>>) {
        let log = Arc::new(Mutex::new(PersistenceLog::default()));
        let persistence = RecordingPersistence {
            inner,
            log: Arc::clone(&log),
        };
        (persistence, log)
    }
}

/// Locks the log; a poisoned lock still holds valid counters.
pub(crate) fn lock(log: &Mutex<PersistenceLog>) -> std::sync::MutexGuard<'_, PersistenceLog> {
    log.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Debug for RecordingPersistence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The report shows this as the place failures are stored, so it
        // prints as the wrapped persistence.
        Debug::fmt(&self.inner, f)
    }
}

impl FailurePersistence for RecordingPersistence {
    fn load_persisted_failures2(&self, source_file: Option<&'static str>) -> Vec<PersistedSeed> {
        let seeds = self.inner.load_persisted_failures2(source_file);
        lock(&self.log).loaded = u32::try_from(seeds.len()).unwrap_or(u32::MAX);
        seeds
    }

    fn save_persisted_failure2(
        &mut self,
        source_file: Option<&'static str>,
        seed: PersistedSeed,
        shrunken_value: &dyn Debug,
    ) {
        let mut log = lock(&self.log);
        if log.suppress_save {
            return;
        }
        log.saved = Some(seed.to_string());
        drop(log);
        self.inner
            .save_persisted_failure2(source_file, seed, shrunken_value);
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(self.clone())
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other
            .as_any()
            .downcast_ref::<Self>()
            .is_some_and(|other| FailurePersistence::eq(&*self.inner, &*other.inner))
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

#[cfg(test)]
mod tests {
    use proptest::test_runner::MapFailurePersistence;

    use super::*;

    const SOURCE: Option<&str> = Some("tests/example.rs");

    fn some_seed() -> PersistedSeed {
        "cc 0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"
            .parse()
            .expect("a valid ChaCha seed line")
    }

    #[test]
    fn save_records_the_seed_line_and_delegates() {
        let (mut persistence, log) =
            RecordingPersistence::new(Box::new(MapFailurePersistence::default()));

        persistence.save_persisted_failure2(SOURCE, some_seed(), &"input");

        assert_eq!(lock(&log).saved, Some(some_seed().to_string()));
        assert_eq!(
            persistence.load_persisted_failures2(SOURCE),
            vec![some_seed()]
        );
        assert_eq!(lock(&log).loaded, 1);
    }

    #[test]
    fn suppressed_save_stores_nothing() {
        let (mut persistence, log) =
            RecordingPersistence::new(Box::new(MapFailurePersistence::default()));
        lock(&log).suppress_save = true;

        persistence.save_persisted_failure2(SOURCE, some_seed(), &"input");

        assert_eq!(lock(&log).saved, None);
        assert!(persistence.load_persisted_failures2(SOURCE).is_empty());
    }

    #[test]
    fn clones_share_the_log() {
        let (persistence, log) =
            RecordingPersistence::new(Box::new(MapFailurePersistence::default()));
        let mut clone = persistence.box_clone();

        clone.save_persisted_failure2(SOURCE, some_seed(), &"input");

        assert!(lock(&log).saved.is_some());
    }
}
