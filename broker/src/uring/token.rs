//! What a completion's `user_data` says: which operation, and for which
//! connection incarnation.
//!
//! `slot:32 | generation:24 | kind:8`. The slot is the connection's index
//! in the slab; the generation is bumped every time a slot is reused, so a
//! completion that arrives for a connection that is gone can never be taken
//! for the one now in its slot.

/// The operation a completion finishes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// Multishot accept; the slot is the listener's index.
    Accept = 1,
    /// Multishot recv.
    Recv = 2,
    /// The connection's one send (`send` or `sendmsg`).
    Send = 3,
    /// Cancelling the connection's recv (burst cap).
    Cancel = 4,
    /// `shutdown(SHUT_RDWR)` when closing.
    Shutdown = 5,
    /// Closing the connection's fixed file.
    Close = 6,
    /// Closing a fixed file that got no slot (slab full); no connection.
    CloseOrphan = 7,
    /// The eventfd read another thread's `Waker` completes.
    Wake = 8,
    /// A message another ring posted with `IORING_OP_MSG_RING`.
    RingMsg = 9,
    /// Our own `IORING_OP_MSG_RING` failed (success posts nothing).
    RingMsgSent = 10,
    /// Cancelling a listener's accept (pausing at `max_conns`).
    AcceptCancel = 11,
}

impl Kind {
    fn from_u8(v: u8) -> Option<Kind> {
        Some(match v {
            1 => Kind::Accept,
            2 => Kind::Recv,
            3 => Kind::Send,
            4 => Kind::Cancel,
            5 => Kind::Shutdown,
            6 => Kind::Close,
            7 => Kind::CloseOrphan,
            8 => Kind::Wake,
            9 => Kind::RingMsg,
            10 => Kind::RingMsgSent,
            11 => Kind::AcceptCancel,
            _ => return None,
        })
    }
}

/// Generations wrap at 24 bits.
pub(crate) const GEN_MASK: u32 = (1 << 24) - 1;

/// A decoded `user_data`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Token {
    pub(crate) slot: u32,
    pub(crate) gen: u32,
    pub(crate) kind: Kind,
}

impl Token {
    pub(crate) fn new(kind: Kind, slot: u32, gen: u32) -> Token {
        Token {
            slot,
            gen: gen & GEN_MASK,
            kind,
        }
    }

    pub(crate) fn encode(self) -> u64 {
        (u64::from(self.slot) << 32) | (u64::from(self.gen & GEN_MASK) << 8) | self.kind as u64
    }

    /// `None` for a `user_data` the loop never produced.
    pub(crate) fn decode(user_data: u64) -> Option<Token> {
        Some(Token {
            slot: (user_data >> 32) as u32,
            gen: ((user_data >> 8) as u32) & GEN_MASK,
            kind: Kind::from_u8(user_data as u8)?,
        })
    }
}

/// The `user_data` another ring must use when it wakes a loop with
/// `IORING_OP_MSG_RING` (see [`super::Loop::post`]).
pub(crate) const RING_MSG: u64 = Kind::RingMsg as u64;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for (kind, slot, gen) in [
            (Kind::Recv, 0, 1),
            (Kind::Send, u32::MAX, GEN_MASK),
            (Kind::RingMsgSent, 12345, 77),
        ] {
            let t = Token::new(kind, slot, gen);
            assert_eq!(Token::decode(t.encode()), Some(t));
        }
        // The generation is cut to 24 bits, never spilling into the slot.
        let t = Token::new(Kind::Close, 3, GEN_MASK + 2);
        assert_eq!((t.slot, t.gen), (3, 1));
        assert_eq!(Token::decode(0), None);
        assert_eq!(Token::decode(RING_MSG).map(|t| t.kind), Some(Kind::RingMsg));
    }
}
