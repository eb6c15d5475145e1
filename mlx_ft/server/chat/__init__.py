"""The chat: its pages (`/`, `/chat`) and the page's conversation API over the history, and the seed's `/api/chat`."""
