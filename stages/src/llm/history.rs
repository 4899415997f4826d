//! The conversation an LLM stage answers from: a system prompt and one
//! exchange (user message, assistant reply) per turn.
//!
//! The history is shared between the LLM stage, which appends user messages
//! and replies, and the rest of the application, which cuts a reply back to
//! what was actually played when the user interrupts it (see
//! [`ConversationHistory::truncate_reply`]). Share it as a [`SharedHistory`].

use std::collections::VecDeque;
use std::fmt;
use std::sync::Arc;

use mentis_pipeline::TurnId;
use parking_lot::Mutex;

/// A history shared between the LLM stage and the application.
pub type SharedHistory = Arc<Mutex<ConversationHistory>>;

/// The author of a chat message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Instructions that frame the whole conversation.
    System,
    /// The person speaking.
    User,
    /// The model.
    Assistant,
}

impl Role {
    /// Returns the role name that chat templates expect.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One message of a chat prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// The author of the message.
    pub role: Role,
    /// The message text.
    pub content: String,
}

impl ChatMessage {
    /// Builds a message.
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        ChatMessage { role, content: content.into() }
    }
}

/// How much conversation a [`ConversationHistory`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HistoryLimits {
    /// Maximum number of exchanges (user message and reply) kept. When a new
    /// exchange would exceed it, the oldest one is dropped. At least 1, since
    /// the exchange of the current turn is always kept.
    pub max_exchanges: usize,
}

impl HistoryLimits {
    /// The default limit of exchanges. Spoken replies are a sentence or two,
    /// so 16 exchanges stay around a thousand tokens with a small system
    /// prompt (an estimate, at about 4 characters per token).
    pub const DEFAULT_MAX_EXCHANGES: usize = 16;
}

impl Default for HistoryLimits {
    fn default() -> Self {
        HistoryLimits { max_exchanges: HistoryLimits::DEFAULT_MAX_EXCHANGES }
    }
}

/// The state of the reply of an exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReplyState {
    /// The model is still generating, or has not started.
    Pending,
    /// The reply is complete as generated.
    Complete,
    /// The reply was cut to the part the user heard before interrupting.
    Truncated,
}

/// One user message and the assistant reply to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exchange {
    /// The turn of the user message.
    pub turn: TurnId,
    /// The user's message.
    pub user: String,
    /// The reply, empty while pending.
    pub reply: String,
    /// Whether the reply is pending, complete or truncated.
    pub state: ReplyState,
    /// Text reported as played before the reply was recorded; it replaces the
    /// reply once the reply arrives.
    played_early: Option<String>,
}

/// A failed history update.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryError {
    /// No exchange of the turn is in the history: it never started, or it
    /// was dropped to respect the limits.
    #[error(
        "{turn} is not in the conversation history: it never reached the LLM stage or was dropped as the \
         oldest exchange; check the turn id, or raise HistoryLimits::max_exchanges"
    )]
    UnknownTurn {
        /// The turn that was looked up.
        turn: TurnId,
    },
}

/// A system prompt and the exchanges of a conversation, oldest first.
#[derive(Debug, Clone)]
pub struct ConversationHistory {
    system_prompt: String,
    limits: HistoryLimits,
    exchanges: VecDeque<Exchange>,
}

impl ConversationHistory {
    /// Starts an empty conversation. An empty system prompt adds no system
    /// message. A `max_exchanges` of 0 is raised to 1.
    pub fn new(system_prompt: impl Into<String>, limits: HistoryLimits) -> Self {
        let limits = HistoryLimits { max_exchanges: limits.max_exchanges.max(1) };
        ConversationHistory { system_prompt: system_prompt.into(), limits, exchanges: VecDeque::new() }
    }

    /// Wraps the history for sharing between the LLM stage and the application.
    pub fn shared(self) -> SharedHistory {
        Arc::new(Mutex::new(self))
    }

    /// Returns the system prompt.
    pub fn system_prompt(&self) -> &str {
        &self.system_prompt
    }

    /// Replaces the system prompt; it applies from the next reply on.
    pub fn set_system_prompt(&mut self, system_prompt: impl Into<String>) {
        self.system_prompt = system_prompt.into();
    }

    /// Returns the limits.
    pub fn limits(&self) -> HistoryLimits {
        self.limits
    }

    /// Returns the exchanges, oldest first.
    pub fn exchanges(&self) -> impl ExactSizeIterator<Item = &Exchange> {
        self.exchanges.iter()
    }

    /// Returns the number of exchanges.
    pub fn len(&self) -> usize {
        self.exchanges.len()
    }

    /// Returns whether no exchange has started.
    pub fn is_empty(&self) -> bool {
        self.exchanges.is_empty()
    }

    /// Removes every exchange and keeps the system prompt.
    pub fn clear(&mut self) {
        self.exchanges.clear();
    }

    /// Starts an exchange with the user's message of `turn`, dropping the
    /// oldest exchanges beyond the limit.
    pub fn push_user(&mut self, turn: TurnId, text: impl Into<String>) {
        self.exchanges.push_back(Exchange {
            turn,
            user: text.into(),
            reply: String::new(),
            state: ReplyState::Pending,
            played_early: None,
        });
        while self.exchanges.len() > self.limits.max_exchanges {
            self.exchanges.pop_front();
        }
    }

    /// Records the reply of `turn`. When [`truncate_reply`](Self::truncate_reply)
    /// already reported the played text for this turn, that text is kept
    /// instead of `reply`.
    pub fn set_reply(&mut self, turn: TurnId, reply: impl Into<String>) -> Result<(), HistoryError> {
        let exchange = self.latest_mut(turn)?;
        match exchange.played_early.take() {
            Some(played) => {
                exchange.reply = played;
                exchange.state = ReplyState::Truncated;
            }
            None => {
                exchange.reply = reply.into();
                exchange.state = ReplyState::Complete;
            }
        }
        Ok(())
    }

    /// Cuts the reply of `turn` to `played_text`, the part of it that was
    /// played before the user interrupted.
    ///
    /// The played text replaces the reply as given, because speech synthesis
    /// may have normalised it; it is expected to be a prefix of the reply.
    /// Called before the reply is recorded (the LLM stage is still
    /// finishing), the played text is kept and wins when the reply arrives.
    pub fn truncate_reply(&mut self, turn: TurnId, played_text: impl Into<String>) -> Result<(), HistoryError> {
        let played_text = played_text.into();
        let exchange = self.latest_mut(turn)?;
        if exchange.state == ReplyState::Pending {
            exchange.played_early = Some(played_text);
            return Ok(());
        }
        if !exchange.reply.starts_with(&played_text) {
            tracing::debug!(turn = turn.0, "the played text is not a prefix of the reply; keeping the played text");
        }
        exchange.reply = played_text;
        exchange.state = ReplyState::Truncated;
        Ok(())
    }

    /// Returns the reply recorded for `turn`, if its exchange is kept and
    /// its reply is no longer pending.
    pub fn reply(&self, turn: TurnId) -> Option<&str> {
        let exchange = self.exchanges.iter().rev().find(|exchange| exchange.turn == turn)?;
        match exchange.state {
            ReplyState::Pending => None,
            ReplyState::Complete | ReplyState::Truncated => Some(&exchange.reply),
        }
    }

    /// Drops the oldest exchange unless it is the only one left; returns
    /// whether one was dropped. The LLM stage calls it while a prompt is too
    /// long for its context window.
    pub fn drop_oldest(&mut self) -> bool {
        if self.exchanges.len() <= 1 {
            return false;
        }
        self.exchanges.pop_front();
        true
    }

    /// Returns the conversation as chat messages: the system prompt (unless
    /// empty), then for each exchange the user message and the reply.
    ///
    /// A pending reply adds no message, so the last message of a conversation
    /// waiting for its reply is the user's. A reply that is empty (cut
    /// before anything was played) adds no message either, so two user
    /// messages can follow each other.
    pub fn messages(&self) -> Vec<ChatMessage> {
        let mut messages = Vec::with_capacity(1 + 2 * self.exchanges.len());
        if !self.system_prompt.is_empty() {
            messages.push(ChatMessage::new(Role::System, self.system_prompt.as_str()));
        }
        for exchange in &self.exchanges {
            messages.push(ChatMessage::new(Role::User, exchange.user.as_str()));
            if exchange.state != ReplyState::Pending && !exchange.reply.is_empty() {
                messages.push(ChatMessage::new(Role::Assistant, exchange.reply.as_str()));
            }
        }
        messages
    }

    /// Returns the most recent exchange of `turn`, because a turn with
    /// several final transcripts has one exchange per transcript.
    fn latest_mut(&mut self, turn: TurnId) -> Result<&mut Exchange, HistoryError> {
        self.exchanges
            .iter_mut()
            .rev()
            .find(|exchange| exchange.turn == turn)
            .ok_or(HistoryError::UnknownTurn { turn })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history() -> ConversationHistory {
        ConversationHistory::new("Be brief.", HistoryLimits::default())
    }

    #[test]
    fn messages_alternate_after_system_prompt() {
        let mut history = history();
        history.push_user(TurnId(1), "Hello.");
        history.set_reply(TurnId(1), "Hi there!").expect("turn 1 exists");
        history.push_user(TurnId(2), "How are you?");

        let messages = history.messages();
        let expected = vec![
            ChatMessage::new(Role::System, "Be brief."),
            ChatMessage::new(Role::User, "Hello."),
            ChatMessage::new(Role::Assistant, "Hi there!"),
            ChatMessage::new(Role::User, "How are you?"),
        ];
        assert_eq!(messages, expected);
    }

    #[test]
    fn empty_system_prompt_adds_no_message() {
        let mut history = ConversationHistory::new("", HistoryLimits::default());
        history.push_user(TurnId(1), "Hello.");
        assert_eq!(history.messages(), vec![ChatMessage::new(Role::User, "Hello.")]);
    }

    #[test]
    fn truncate_keeps_only_played_text() {
        let mut history = history();
        history.push_user(TurnId(1), "Tell me a story.");
        history.set_reply(TurnId(1), "Once upon a time there was a dragon who loved tea.").expect("turn 1 exists");

        history.truncate_reply(TurnId(1), "Once upon a time").expect("turn 1 exists");

        assert_eq!(history.reply(TurnId(1)), Some("Once upon a time"));
        let last = history.messages().pop().expect("messages");
        assert_eq!(last, ChatMessage::new(Role::Assistant, "Once upon a time"));
        let exchange = history.exchanges().next().expect("one exchange");
        assert_eq!(exchange.state, ReplyState::Truncated);
    }

    #[test]
    fn truncate_before_reply_wins() {
        let mut history = history();
        history.push_user(TurnId(3), "Count to ten.");
        history.truncate_reply(TurnId(3), "One, two").expect("turn 3 exists");
        assert_eq!(history.reply(TurnId(3)), None, "the reply is still pending");

        history.set_reply(TurnId(3), "One, two, three, four").expect("turn 3 exists");

        assert_eq!(history.reply(TurnId(3)), Some("One, two"));
    }

    #[test]
    fn truncate_to_nothing_drops_reply_message() {
        let mut history = history();
        history.push_user(TurnId(1), "Hello.");
        history.set_reply(TurnId(1), "Hi!").expect("turn 1 exists");
        history.truncate_reply(TurnId(1), "").expect("turn 1 exists");
        history.push_user(TurnId(2), "Sorry, go on.");

        let roles: Vec<Role> = history.messages().iter().map(|message| message.role).collect();
        assert_eq!(roles, vec![Role::System, Role::User, Role::User]);
    }

    #[test]
    fn truncate_unknown_turn_fails() {
        let mut history = history();
        history.push_user(TurnId(1), "Hello.");
        let error = history.truncate_reply(TurnId(7), "Hi").expect_err("turn 7 never started");
        assert_eq!(error, HistoryError::UnknownTurn { turn: TurnId(7) });
        assert!(error.to_string().contains("turn-7"), "{error}");
    }

    #[test]
    fn limit_drops_oldest_exchange() {
        let mut history = ConversationHistory::new("", HistoryLimits { max_exchanges: 2 });
        for turn in 1..=3 {
            history.push_user(TurnId(turn), format!("message {turn}"));
            history.set_reply(TurnId(turn), format!("reply {turn}")).expect("turn just pushed");
        }

        let turns: Vec<TurnId> = history.exchanges().map(|exchange| exchange.turn).collect();
        assert_eq!(turns, vec![TurnId(2), TurnId(3)]);
        assert_eq!(history.reply(TurnId(1)), None);
    }

    #[test]
    fn zero_limit_keeps_current_exchange() {
        let mut history = ConversationHistory::new("", HistoryLimits { max_exchanges: 0 });
        history.push_user(TurnId(1), "Hello.");
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn drop_oldest_keeps_last_exchange() {
        let mut history = history();
        history.push_user(TurnId(1), "one");
        history.push_user(TurnId(2), "two");
        assert!(history.drop_oldest());
        assert!(!history.drop_oldest(), "the exchange being answered stays");
        assert_eq!(history.len(), 1);
    }

    #[test]
    fn repeated_turn_updates_latest_exchange() {
        let mut history = history();
        history.push_user(TurnId(4), "first part");
        history.set_reply(TurnId(4), "reply one").expect("turn 4 exists");
        history.push_user(TurnId(4), "second part");
        history.set_reply(TurnId(4), "reply two").expect("turn 4 exists");

        let replies: Vec<&str> = history.exchanges().map(|exchange| exchange.reply.as_str()).collect();
        assert_eq!(replies, vec!["reply one", "reply two"]);
    }
}
