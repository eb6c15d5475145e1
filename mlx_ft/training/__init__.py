"""train: one run, from a config and a prepared data folder to a run folder (adapter, checkpoints, metrics).

- `run`: `train()`: data, model and adapter set up, the run folder, then the loop
- `loop`: our training loop on mlx_lm's pieces, and what happens between steps (reports, validation, checkpoints,
  early stopping, Ctrl-C)
- `objectives`: SFT, DPO and ORPO in one shape (tokenize, batches, loss, evaluate, metric names)
- `batches`: tokenized chats, batches by token length or packed
- `preference`: the DPO and ORPO losses and DPO's reference model
- `loss`: the masked loss, normalised over the global batch, output layer on learned positions only
- `checkpoints`: adapter + optimizer state + counters, for exact resume
- `flops`: the work of a step, for GFLOP/s and MFU
- `loss_plot`: loss.png from metrics.jsonl
"""
