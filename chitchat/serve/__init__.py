"""The HTTP server: an OpenAI-style API and the chat page (`web/`) over one batching model worker."""
