//! Errors that stages return, classified by what the caller can do about them.

use std::time::Duration;

use crate::id::StageName;

/// The class of a stage error, by what the caller can do about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Trying again may succeed: a dropped connection, a timeout, an overloaded server.
    Retryable,
    /// The configuration is wrong: a missing model file, an unsupported format.
    Config,
    /// The data or the stage is broken beyond repair for this session.
    Fatal,
}

/// A failure inside a stage.
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub struct StageError {
    class: ErrorClass,
    message: String,
    retry_after: Option<Duration>,
    #[source]
    source: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl StageError {
    /// Creates an error that trying again may fix.
    pub fn retryable(message: impl Into<String>) -> Self {
        StageError { class: ErrorClass::Retryable, message: message.into(), retry_after: None, source: None }
    }

    /// Creates an error in the stage's configuration.
    pub fn config(message: impl Into<String>) -> Self {
        StageError { class: ErrorClass::Config, message: message.into(), retry_after: None, source: None }
    }

    /// Creates an error that ends the session.
    pub fn fatal(message: impl Into<String>) -> Self {
        StageError { class: ErrorClass::Fatal, message: message.into(), retry_after: None, source: None }
    }

    /// Attaches the underlying error.
    #[must_use]
    pub fn with_source(mut self, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        self.source = Some(Box::new(source));
        self
    }

    /// Sets how long the server asked the client to wait before trying again.
    #[must_use]
    pub fn with_retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Returns the classification.
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// Returns whether trying again may succeed.
    pub fn is_retryable(&self) -> bool {
        self.class == ErrorClass::Retryable
    }

    /// Returns the delay the server asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Returns the message without the source chain.
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// The error that ended a session.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// A stage returned an error; the session was stopped.
    #[error("stage {stage} failed: {source}")]
    Stage {
        /// The failing stage.
        stage: StageName,
        /// Its error.
        #[source]
        source: StageError,
    },
    /// A stage panicked; the session was stopped.
    #[error("stage {stage} panicked: {message}")]
    Panic {
        /// The stage that panicked.
        stage: StageName,
        /// The panic message, when it was a string.
        message: String,
    },
}

impl SessionError {
    /// Returns the name of the stage that ended the session.
    pub fn stage(&self) -> &StageName {
        match self {
            SessionError::Stage { stage, .. } | SessionError::Panic { stage, .. } => stage,
        }
    }
}
