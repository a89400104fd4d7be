"""Ollama's HTTP dialect (`/api/chat`, `/api/generate`, `/api/embed`, `/api/tags`, `/api/show`,
`/api/ps`, `/api/version`) over the chat and embedding paths."""
