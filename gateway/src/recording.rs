//! The recorder of a session's records: its start and end, and the
//! transcripts and audio the user consented to.
//!
//! The session calls a [`TranscriptRecorder`] when it starts and ends, for
//! each final transcript when the start message asked for transcripts to be
//! stored, and for clips of the client's audio when it asked for audio to be
//! stored. [`StoreRecorder`] writes to a [`Store`], which checks each write
//! against the user's recorded consent, so a start message's consent flags
//! can narrow what is stored but never widen it. [`NoRecorder`] stores nothing.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::future::BoxFuture;
use mentis_pipeline::{PrivacyTier, TurnId};
use tokio::sync::Semaphore;

use crate::session::SessionContext;
use crate::store::{SessionId, Store, StoreError, StoreOutcome, TenantId, Timestamp, UserId};

/// A clip of the client's audio, as the session collected it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AudioClip {
    /// The tenant.
    pub tenant: String,
    /// The session id.
    pub session: String,
    /// The format of `data`, such as `pcm16/16000/1` (sample format, rate, channels).
    pub format: String,
    /// The audio bytes.
    pub data: Vec<u8>,
}

/// Receives the records a session may store. Methods that return nothing
/// must not wait on storage: an implementation that writes spawns the write.
pub trait TranscriptRecorder: Send + Sync + fmt::Debug + 'static {
    /// Records that a session started on `tier`; the session waits for it
    /// before sending its ready event. Returns whether the session's
    /// transcripts and audio can be recorded: `false` (such as when the
    /// store is down) makes the session send none. By default, records nothing and returns `true`.
    fn session_started<'a>(&'a self, session: &'a SessionContext, tier: PrivacyTier) -> BoxFuture<'a, bool> {
        let _ = (session, tier);
        Box::pin(async { true })
    }

    /// Records that a session whose start returned `true` ended.
    fn session_ended<'a>(&'a self, session: &'a SessionContext) -> BoxFuture<'a, ()> {
        let _ = session;
        Box::pin(async {})
    }

    /// Hands over a final transcript of the user.
    fn final_transcript(&self, session: &SessionContext, turn: TurnId, text: &str);

    /// Returns whether [`TranscriptRecorder::audio_clip`] stores anything,
    /// so a session buffers audio only when it does.
    fn stores_audio(&self) -> bool {
        false
    }

    /// Hands over a clip of the client's audio.
    fn audio_clip(&self, clip: AudioClip) {
        let _ = clip;
    }
}

/// Stores nothing.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoRecorder;

impl TranscriptRecorder for NoRecorder {
    fn final_transcript(&self, _session: &SessionContext, _turn: TurnId, _text: &str) {}
}

/// Store writes of transcripts and audio that may be in flight at once over
/// all sessions. A turn produces one transcript, so this is reached only
/// when the store stalls; further writes are dropped and counted, so a slow
/// store cannot pile up memory.
pub const MAX_PENDING_WRITES: usize = 256;

/// Writes session records to a [`Store`].
#[derive(Debug, Clone)]
pub struct StoreRecorder {
    store: Arc<dyn Store>,
    pending: Arc<Semaphore>,
    dropped: Arc<AtomicU64>,
}

impl StoreRecorder {
    /// Records into `store`.
    pub fn new(store: Arc<dyn Store>) -> Self {
        StoreRecorder { store, pending: Arc::new(Semaphore::new(MAX_PENDING_WRITES)), dropped: Arc::new(AtomicU64::new(0)) }
    }

    /// Returns the number of writes dropped because [`MAX_PENDING_WRITES`] were in flight.
    pub fn dropped_writes(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Runs `write` on its own task unless too many writes are in flight.
    fn spawn_write<F>(&self, what: &'static str, tenant: String, session: String, write: F)
    where
        F: Future<Output = Result<StoreOutcome, StoreError>> + Send + 'static,
    {
        let Ok(permit) = Arc::clone(&self.pending).try_acquire_owned() else {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            // Logged at powers of two, so a long stall does not flood the log.
            if dropped.is_power_of_two() {
                tracing::warn!(tenant, session, what, dropped, limit = MAX_PENDING_WRITES, "store writes are backed up; a record was not stored");
            }
            return;
        };
        tokio::spawn(async move {
            let _permit = permit;
            match write.await {
                Ok(StoreOutcome::Stored) => tracing::debug!(tenant, session, what, "record stored"),
                Ok(StoreOutcome::NotConsented) => {
                    tracing::debug!(tenant, session, what, "record not stored: the user's consent does not cover it");
                }
                Err(error) => tracing::warn!(tenant, session, what, %error, "storing a record failed"),
            }
        });
    }
}

/// The store's ids of a session, or the reason they are invalid.
fn store_ids(session: &SessionContext) -> Result<(TenantId, UserId, SessionId), StoreError> {
    Ok((TenantId::new(session.tenant.id())?, UserId::new(session.claims.user.as_str())?, SessionId::new(session.id.as_str())?))
}

impl TranscriptRecorder for StoreRecorder {
    fn session_started<'a>(&'a self, session: &'a SessionContext, tier: PrivacyTier) -> BoxFuture<'a, bool> {
        Box::pin(async move {
            let started = match store_ids(session) {
                Ok((tenant, user, id)) => self.store.start_session(&tenant, &user, &id, tier, Timestamp::now()).await,
                Err(error) => Err(error),
            };
            match started {
                Ok(()) => true,
                Err(error) => {
                    // The session runs on, but records nothing: without its
                    // row, no transcript could be tied to the user.
                    tracing::warn!(%error, "cannot record the session start; its transcripts and audio are not stored");
                    false
                }
            }
        })
    }

    fn session_ended<'a>(&'a self, session: &'a SessionContext) -> BoxFuture<'a, ()> {
        Box::pin(async move {
            let ended = match store_ids(session) {
                Ok((tenant, _, id)) => self.store.end_session(&tenant, &id, Timestamp::now()).await,
                Err(error) => Err(error),
            };
            match ended {
                Ok(()) => {}
                // The user was deleted while the session ran.
                Err(StoreError::NotFound { .. }) => tracing::debug!("the session's record was deleted before it ended"),
                Err(error) => tracing::warn!(%error, "cannot record the session end"),
            }
        })
    }

    fn final_transcript(&self, session: &SessionContext, turn: TurnId, text: &str) {
        let (tenant, _, id) = match store_ids(session) {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, turn = turn.0, "cannot store a transcript");
                return;
            }
        };
        let store = Arc::clone(&self.store);
        let text = text.to_owned();
        let at = Timestamp::now();
        let write = async move { store.store_transcript(&tenant, &id, &text, at).await };
        self.spawn_write("transcript", session.tenant.id().to_owned(), session.id.clone(), write);
    }

    fn stores_audio(&self) -> bool {
        true
    }

    fn audio_clip(&self, clip: AudioClip) {
        let ids = TenantId::new(clip.tenant.as_str()).and_then(|tenant| Ok((tenant, SessionId::new(clip.session.as_str())?)));
        let (tenant, id) = match ids {
            Ok(ids) => ids,
            Err(error) => {
                tracing::warn!(%error, "cannot store an audio clip");
                return;
            }
        };
        let store = Arc::clone(&self.store);
        let at = Timestamp::now();
        let (tenant_label, session_label) = (clip.tenant, clip.session);
        let (format, data) = (clip.format, clip.data);
        let write = async move { store.store_audio(&tenant, &id, &format, &data, at).await };
        self.spawn_write("audio", tenant_label, session_label, write);
    }
}
