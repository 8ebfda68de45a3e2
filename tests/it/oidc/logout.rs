//! RP-initiated logout, back-channel logout and the session binding.
