"""Using a model: answers (`generation`, with the shared defaults in `sampling`), `infer` (one prompt or a batch
file), the terminal chat (`chat_repl`), `evaluate` (loss and generation metrics, base vs tuned) and its `scores`
(exact match, BLEU-4, ROUGE-L, label accuracy); `tool_calls` (the OpenAI tool calls in an answer, per template
family)."""
