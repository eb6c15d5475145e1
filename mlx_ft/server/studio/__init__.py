"""The studio's APIs (`/api/studio/...`, `/api/runs`): `data` (data sets, previews, the new-run form), `jobs` (train,
eval, export jobs), `models` (the models a conversation or compare can name, and compare), `runs` (the dashboard)."""
