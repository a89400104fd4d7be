"""The web chat page served at `/` (off with --disable-frontend): static files shipped in the
package (no CDN, no build step); the page itself talks to /v1/models and /v1/chat/completions."""
