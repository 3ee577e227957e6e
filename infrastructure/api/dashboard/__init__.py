"""The operator's dashboard on `wcsync serve`: pages (pages.py), what they show (views.py), their defences
(guard.py), templates and static assets. docs/DASHBOARD.md has the page contract."""
