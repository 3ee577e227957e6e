"""What tests share, one copy of each; test modules import from here and never from one another. Fixtures
are defined here and registered by name in the conftest of each layer that uses them.

    paths.py          ROOT, FIXTURE_DIR (nothing outside the repository is ever read)
    environment.py    isolated_environment: no WCSYNC_*/WOO_* setting leaks in (autouse, tests/conftest.py)
    databases.py      sqlite_url, postgres_url, database_url (both backends), the pg_* session fixtures
    pgserver.py       the throwaway PostgreSQL server the suite (and bench/) starts
    network.py        free_port
    sandbox.py        sandbox / shared_sandbox: the sandbox store, configured by @pytest.mark.sandbox(...)
    hostile_store.py  HostileStore: a store that answers whatever a test scripts
    services.py       services / pg_services / app / runner fixtures, FAST client options, store_of, run_sync
    aggregates.py     Sync, make_record: events made by driving the real aggregates
    events.py         json_ready: stored events as JSON (the event fixtures)
    api.py            Api, ApiThread, config_of, error_of: the HTTP API in a thread, and its client
    cli.py            wcsync, spawn_wcsync, wcsync_env, as_json, run_in_repo: the command (or any) as a subprocess
    credentials.py    encodings: every form a credential travels in
    waiting.py        wait_until
    workers.py        worker_running, WorkerThread, QUICK: a job worker on a thread; check_mirror
    no_io.py          forbidding_io: the guard that fails a unit test doing I/O (tests/unit/conftest.py)
"""
