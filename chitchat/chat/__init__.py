"""The terminal chat: a session with its history and transcript, and the REPL around it."""
