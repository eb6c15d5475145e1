"""The OpenAI-compatible API (`/v1/...`): `request` checks what a request asks, `routes` answers it."""
