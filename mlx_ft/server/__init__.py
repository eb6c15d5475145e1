"""`serve`: the web chat, its JSON APIs (the seed's, the page's, OpenAI's) and the runs dashboard."""
